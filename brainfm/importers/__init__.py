"""Importers of public datasets into brainfm ROI time-series derivatives.

``brainfm-import pcp`` (:func:`brainfm.importers.pcp.import_pcp`) converts the ABIDE I
Preprocessed Connectomes Project ROI time series and phenotype sheet.
"""

from brainfm.importers.pcp import SITE_REPETITION_TIME, ImportSummary, import_pcp

__all__ = ["SITE_REPETITION_TIME", "ImportSummary", "import_pcp"]
