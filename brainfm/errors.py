"""Exceptions that carry the BIDS-App exit code they map to.

The command line catches :class:`BrainfmError` and exits with its ``exit_code``; plain functions
raise the most specific subclass with a message that names the offending file and the fix.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class BrainfmError(Exception):
    """Base class for errors that brainfm reports to the user without a traceback."""

    exit_code: int = 1


class UsageError(BrainfmError):
    """Wrong command-line usage or inconsistent options (exit 64)."""

    exit_code = 64


class InputError(BrainfmError):
    """A required input is missing, unreadable or malformed (exit 66)."""

    exit_code = 66


class InvalidBIDSError(BrainfmError):
    """The input dataset is not valid BIDS (exit 16)."""

    exit_code = 16


class NothingSelectedError(BrainfmError):
    """The participant/session/task filters selected no data (exit 18)."""

    exit_code = 18


class ProcessingError(BrainfmError):
    """A processing step failed (exit 1)."""

    exit_code = 1


class UsageArgumentParser(argparse.ArgumentParser):
    """``argparse`` parser whose usage errors exit with 64 (the BIDS-App convention), not 2.

    Every brainfm command line uses it (``brainfm``, ``brainfm-train``, ``brainfm-import``,
    ``brainfm-make-testdata``), also for subcommands (``parser_class=``).
    """

    def error(self, message: str) -> NoReturn:  # noqa: D102
        self.print_usage(sys.stderr)
        self.exit(UsageError.exit_code, f"{self.prog}: error: {message}\n")
