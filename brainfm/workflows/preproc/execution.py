"""Run a preprocessing workflow and turn a nipype failure into a brainfm error."""

from __future__ import annotations

import time
from pathlib import Path

from nipype.pipeline import engine as pe

from brainfm.errors import BrainfmError, ProcessingError
from brainfm.workflows.crashes import crashfiles_since, error_from_crashfile
from brainfm.workflows.plugins import make_plugin


def error_from_crash(crash_dir: Path, since: float) -> BrainfmError:
    """The brainfm error of the first nipype crash file written since ``since``."""
    crashfiles = crashfiles_since(crash_dir, since)
    if not crashfiles:
        return ProcessingError(f"the preprocessing workflow failed; see the log and {crash_dir}")
    return error_from_crashfile(crashfiles[0])[1]


def run_workflow(workflow: pe.Workflow, work_dir: str | Path, nprocs: int,
                 poll_sleep: float = 0.2) -> None:
    """Run a workflow (MultiProc when ``nprocs > 1``), raising brainfm errors on failure.

    Parameters
    ----------
    workflow : nipype.pipeline.engine.Workflow
        The workflow (its ``base_dir`` is set to ``work_dir``).
    work_dir : str or pathlib.Path
        nipype working folder; crash files go to ``work_dir/crash``.
    nprocs : int
        Parallel processes.
    poll_sleep : float
        MultiProc's polling interval (s).

    Raises
    ------
    BrainfmError
        The error of the failing node (see :func:`error_from_crash`); a
        :class:`~brainfm.workflows.plugins.DiskFullError` when a disk is full.
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    workflow.base_dir = str(work)
    crash_dir = work / "crash"
    workflow.config["execution"].update({
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": True,
        "remove_unnecessary_outputs": False,
        "poll_sleep_duration": poll_sleep,
    })
    started = time.time()
    try:
        workflow.run(plugin=make_plugin(nprocs, [work]))
    except RuntimeError as err:
        raise error_from_crash(crash_dir, started) from err
