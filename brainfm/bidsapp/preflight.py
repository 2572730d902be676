"""Check every selected run against the options before any work is done.

:func:`~brainfm.bidsapp.inputs.collect_runs` has checked each run's files (headers, rows,
repetition time); this checks what the options ask of them (the strategy's confound columns,
the FD column for censoring, the band-pass against each run's Nyquist frequency) with the same
function the denoising node uses, so that bad input fails before shared outputs are written.
Runs too short for ``--min-time`` are not an error: they are excluded later with the reason,
and said here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from brainfm.bidsapp.inputs import BoldRun
from brainfm.errors import BrainfmError, InputError
from brainfm.fileio import read_tsv
from brainfm.postproc.censoring import resolve_dummy_scans
from brainfm.postproc.denoise import check_run_inputs

LOGGER = logging.getLogger(__name__)


def check_runs(runs: dict[str, Sequence[BoldRun]], settings: Mapping[str, object],
               failed: dict[str, BrainfmError] | None = None) -> None:
    """Check the confounds and options of every run (see the module docstring).

    Parameters
    ----------
    runs : dict
        Participant label to its runs (from ``collect_runs``).
    settings : mapping
        The workflow settings (``strategy``, ``fd_thresh``, ``dummy_scans``, ``lower_bpf``,
        ``upper_bpf``, ``min_time``).
    failed : dict, optional
        When given, a participant with a bad input file is removed from ``runs`` and its error
        put here, so that the others can go on; by default the first problem is raised.

    Raises
    ------
    InputError, UsageError
        The first problem found, naming the file and the fix (usage errors always: they
        concern every participant).
    """
    for subject in list(runs):
        try:
            _check_participant(runs[subject], settings)
        except InputError as err:
            if failed is None:
                raise
            failed[subject] = err
            del runs[subject]
            LOGGER.error("sub-%s is left out: %s", subject, err)


def _check_participant(sub_runs: Sequence[BoldRun], settings: Mapping[str, object]) -> None:
    for run in sub_runs:
        try:
            confounds = read_tsv(run.confounds_file)
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read confounds file {run.confounds_file} ({err}); it "
                             "must be fMRIPrep's tab-separated table") from err
        check_run_inputs(confounds, run.n_volumes, tr=run.repetition_time,
                         strategy=str(settings["strategy"]),
                         fd_thresh=settings["fd_thresh"], lower_bpf=settings["lower_bpf"],
                         upper_bpf=settings["upper_bpf"],
                         confounds_file=str(run.confounds_file))
        dummy = resolve_dummy_scans(settings["dummy_scans"], confounds)
        usable = (run.n_volumes - dummy) * run.repetition_time
        if usable < float(settings["min_time"]):
            LOGGER.warning(
                "%s lasts %.0f s after %d dummy scan(s), less than --min-time %g s: it will "
                "be excluded (lower --min-time to keep it)", run.bold_file.name, usable,
                dummy, settings["min_time"])
