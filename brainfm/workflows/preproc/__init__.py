"""Raw-BOLD preprocessing workflows: fMRIPrep (:mod:`.fmriprep`) or brainfm's minimal
preprocessing (:mod:`.minimal`). Both write an fMRIPrep-style derivatives folder that the
participant level reads like any fMRIPrep output.
"""

from brainfm.workflows.preproc.fmriprep import (
    fmriprep_output_dir,
    init_fmriprep_wf,
    run_fmriprep,
)
from brainfm.workflows.preproc.minimal import (
    init_minimal_preproc_wf,
    init_minimal_run_wf,
    minimal_output_dir,
    run_minimal_preproc,
)

__all__ = [
    "fmriprep_output_dir",
    "init_fmriprep_wf",
    "init_minimal_preproc_wf",
    "init_minimal_run_wf",
    "minimal_output_dir",
    "run_fmriprep",
    "run_minimal_preproc",
]
