"""Run a preprocessing workflow and turn a nipype failure into a brainfm error."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from nipype.pipeline import engine as pe

from brainfm.errors import BrainfmError, ProcessingError

LOGGER = logging.getLogger("brainfm.preproc")

_ERROR_CLASSES = {cls.__name__: cls for cls in BrainfmError.__subclasses__()}
_ERROR_LINE = re.compile(r"^(?:[\w.]*\.)?(" + "|".join(_ERROR_CLASSES) + r"): (.*)$")


def error_from_crash(crash_dir: Path, since: float) -> BrainfmError:
    """The brainfm error behind the nipype crash files written since ``since``.

    Parameters
    ----------
    crash_dir : pathlib.Path
        nipype's ``crashdump_dir``.
    since : float
        Start time (``time.time()``) of the run.

    Returns
    -------
    BrainfmError
        The error a node raised (same class, so same exit code), or a
        :class:`~brainfm.errors.ProcessingError` naming the failing node.
    """
    crashfiles = sorted(p for p in Path(crash_dir).glob("crash-*.txt")
                        if p.stat().st_mtime >= since - 1)
    if not crashfiles:
        return ProcessingError(f"the preprocessing workflow failed; see the log and {crash_dir}")
    text = crashfiles[0].read_text(errors="replace")
    node = re.search(r"^Node: (.+)$", text, flags=re.MULTILINE)
    node_name = node.group(1).strip() if node else crashfiles[0].name
    matches = [m for m in (_ERROR_LINE.match(line.strip()) for line in text.splitlines()) if m]
    if matches:
        return _ERROR_CLASSES[matches[-1].group(1)](f"{matches[-1].group(2)} (node {node_name})")
    last = [line for line in text.splitlines() if line.strip()][-1]
    return ProcessingError(f"node {node_name} failed: {last.strip()} (details: {crashfiles[0]})")


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
        The error of the failing node (see :func:`error_from_crash`).
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
        if nprocs > 1:
            workflow.run(plugin="MultiProc",
                         plugin_args={"n_procs": int(nprocs), "raise_insufficient": False})
        else:
            workflow.run(plugin="Linear")
    except RuntimeError as err:
        raise error_from_crash(crash_dir, started) from err
