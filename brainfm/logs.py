"""Console logging of every brainfm command, so that ``-v`` means the same everywhere.

- default: INFO messages (brainfm's progress, other libraries' notices);
- ``-v``: brainfm's DEBUG messages too (and, in ``brainfm participant``, nipype's per-node
  INFO lines on the console instead of the run's log file);
- ``-vv``: DEBUG from every library.
"""

from __future__ import annotations

import argparse
import logging
import sys

VERBOSE_HELP = ("more log output: -v brainfm's debug messages (and nipype's per-node lines), "
                "-vv debug from every library")


def add_verbose_option(parser: argparse.ArgumentParser) -> None:
    """Add the shared ``-v/--verbose`` counter to a command's parser."""
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)


def setup_logging(verbosity: int) -> None:
    """Configure the console for a command run with ``verbosity`` times ``-v``.

    Parameters
    ----------
    verbosity : int
        0, 1 or 2 (more counts as 2).
    """
    logging.basicConfig(level=logging.DEBUG if verbosity > 1 else logging.INFO,
                        format="%(asctime)s | %(levelname)-7s | %(name)s | %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("brainfm").setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)


class QuietFileHandler(logging.FileHandler):
    """A log file that drops a line it cannot write (a full disk) instead of printing a
    traceback on the console: the command stops with its own one-line error then."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: D102, N802
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handleError(record)
