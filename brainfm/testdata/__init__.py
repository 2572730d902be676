"""Synthetic BIDS + fMRIPrep-derivatives test data with a known ground truth.

:func:`make_dataset` paints CC200 parcel signals (synthetic, or real ABIDE PCP ROI series when an
ABIDE folder is given), physiological nuisance, an optional motion artefact and noise into BOLD
images on the bundled CC200 atlas grid, writes a raw BIDS skeleton, fMRIPrep-style derivatives
(preprocessed BOLD, brain mask, confounds) and the ground truth, and returns a
:class:`DatasetTruth`. The command line is ``brainfm-make-testdata``.
"""

from brainfm.testdata.maker import make_dataset
from brainfm.testdata.truth import DatasetTruth, RunTruth

__all__ = ["DatasetTruth", "RunTruth", "make_dataset"]
