"""nipype crash files turned into brainfm errors (same class, so the same exit code).

A node that raised a :class:`~brainfm.errors.BrainfmError` keeps its class and message; any
other failure becomes a :class:`~brainfm.errors.ProcessingError` naming the failing node. Used by
the participant level and by the minimal preprocessing's runner.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from brainfm.errors import BrainfmError, ProcessingError

LOGGER = logging.getLogger(__name__)

_ERROR_LINE = re.compile(r"^(?:[\w.]*\.)?(\w+Error): (.*)$")


def _error_classes() -> dict[str, type[BrainfmError]]:
    """Every BrainfmError subclass known now (subclasses of subclasses too), by name."""
    found: dict[str, type[BrainfmError]] = {}
    todo = [BrainfmError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def crashfiles_since(crash_dir: str | Path, since: float) -> list[Path]:
    """The crash files nipype wrote into ``crash_dir`` since ``since`` (``time.time()``)."""
    return sorted(p for p in Path(crash_dir).glob("crash-*.txt")
                  if p.stat().st_mtime >= since - 1)


def error_from_crashfile(crashfile: Path) -> tuple[str | None, BrainfmError]:
    """The participant and the brainfm error of one nipype crash file.

    A node that raised a :class:`BrainfmError` keeps its class (and so its exit code) and its
    message; any other failure becomes a :class:`ProcessingError` naming the failing node.
    """
    text = crashfile.read_text(errors="replace")
    node = re.search(r"^Node: (.+)$", text, flags=re.MULTILINE)
    node_name = node.group(1).strip() if node else crashfile.name
    subject = re.search(r"single_subject_([A-Za-z0-9]+)_wf", node_name)
    classes = _error_classes()
    matches = [_ERROR_LINE.match(line.strip()) for line in text.splitlines()]
    matches = [m for m in matches if m and m.group(1) in classes]
    if matches:
        cls = classes[matches[-1].group(1)]
        error = cls(f"{matches[-1].group(2)} (node {node_name}; details: {crashfile})")
    else:
        last = [line for line in text.splitlines() if line.strip()][-1]
        error = ProcessingError(f"node {node_name} failed: {last.strip()} (details: {crashfile})")
    return (subject.group(1) if subject else None), error


def failures_from_crashfiles(crash_dir: Path, since: float) -> dict[str | None, BrainfmError]:
    """The first error of each participant among the crash files written since ``since``.

    Each is logged as an ERROR; a failure outside any participant is keyed ``None``.
    """
    crashfiles = crashfiles_since(crash_dir, since)
    if not crashfiles:
        return {None: ProcessingError(f"the workflow failed; see the log above and {crash_dir}")}
    failed: dict[str | None, BrainfmError] = {}
    for crashfile in crashfiles:
        subject, error = error_from_crashfile(crashfile)
        if subject not in failed:
            failed[subject] = error
            LOGGER.error("%s failed: %s", f"sub-{subject}" if subject else "the workflow", error)
    return failed


def combined_error(failed: dict[str | None, BrainfmError], n_participants: int) -> BrainfmError:
    """One error for the participants that failed (the others finished).

    A single failure keeps its class (and exit code) and message; several give a
    :class:`ProcessingError` (exit 1) naming each participant.
    """
    finished = n_participants - len(failed)
    if len(failed) == 1:
        subject, error = next(iter(failed.items()))
        if subject is None or n_participants == 1:
            return error
        return type(error)(f"sub-{subject}: {error} ({finished} other participant(s) finished)")
    names = ", ".join(f"sub-{s}" if s else "the workflow" for s in failed)
    return ProcessingError(f"{len(failed)} of {n_participants} participants failed: {names} "
                           f"(each reason is logged above); {finished} finished")
