"""Where a benchmark ran: the git commit and the machine (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """Short commit of the repository, ``+dirty`` when tracked files differ from it.

    Returns
    -------
    str
        The commit, or ``unknown`` outside a git checkout.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=REPO,
                               capture_output=True, check=False).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo`` on Linux), else what ``platform`` knows.

    Returns
    -------
    str
        E.g. ``AMD EPYC``.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: system, architecture, CPU count and model.

    Returns
    -------
    str
        E.g. ``Linux x86_64, 2 CPU(s) (AMD EPYC)``.
    """
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU(s) ({cpu_name()})"
