"""Plain functions of brainfm's raw-BOLD preprocessing.

- :mod:`.inputs`: find and check raw BOLD runs (``RepetitionTime``, 4-D, ``SliceTiming``).
- :mod:`.realign`: head motion (nipy ``SpaceTimeRealign``) and slice-timing correction.
- :mod:`.register`: affine registration of the mean EPI to the bundled MNI152NLin6Asym template.
- :mod:`.resample`: one-step resampling (motion + registration) onto the 2 or 3 mm grid.
- :mod:`.confounds`: fMRIPrep-style confounds.
- :mod:`.templates`: the bundled template, tissue masks and output grids.
- :mod:`.steps`, :mod:`.derivatives`: file-level steps and the fMRIPrep-style output folder.
- :mod:`.fmriprep_command`: the fMRIPrep command line (native, fmriprep-docker, Apptainer).

The nipype workflows that run them are in :mod:`brainfm.workflows.preproc`. nipy is imported
only when motion or registration is computed.
"""

from brainfm.preproc.fmriprep_command import (
    build_fmriprep_command,
    detect_backend,
    fmriprep_available,
)
from brainfm.preproc.inputs import RawBoldRun, collect_raw_runs, find_raw_bold
from brainfm.preproc.steps import preprocess_run

__all__ = [
    "RawBoldRun",
    "build_fmriprep_command",
    "collect_raw_runs",
    "detect_backend",
    "find_raw_bold",
    "fmriprep_available",
    "preprocess_run",
]
