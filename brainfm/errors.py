"""Exceptions that carry the BIDS-App exit code they map to.

The command line catches :class:`BrainfmError` and exits with its ``exit_code``; plain functions
raise the most specific subclass with a message that names the offending file and the fix.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn


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


#: Signals received by the running command (:func:`run_command`), first first.
_RECEIVED: list[int] = []


def interrupted() -> int | None:
    """The first SIGINT/SIGTERM the running command received, or None.

    Libraries that catch the interruption and go on (nipype turns it into a node failure and,
    without ``stop_on_first_crash``, runs the next node) can ask this to stop for good.
    """
    return _RECEIVED[0] if _RECEIVED else None


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Run a command's body with brainfm's exit-code contract; return the exit code.

    A :class:`BrainfmError` prints one ``prog: error: …`` line and returns its code; so does an
    ``OSError`` that names a file (a full disk, a quota, permissions: exit 1). SIGINT and
    SIGTERM (Ctrl-C, ``kill``, a cluster's time limit) interrupt the body and return 130 / 143
    (128 + the signal) with one line, even when a library caught the interruption and raised
    something else in its place (nipype turns it into a node failure), or when it landed in a
    finalizer, where Python would only print it and go on.

    Parameters
    ----------
    prog : str
        Command name for the messages.
    body : callable
        The command; returns its exit code, or None for 0.

    Returns
    -------
    int
        The process exit code.
    """
    received = _RECEIVED
    received.clear()

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        _raise_interrupt(signum, frame)

    previous_hook = sys.unraisablehook

    pending: list[threading.Timer] = []  # the one redelivery in flight, if any
    pending_lock = threading.Lock()

    def on_unraisable(unraisable: Any) -> None:
        # A signal that lands inside a finalizer (a weakref callback, ``__del__``: SQLAlchemy's,
        # under pybids) raises where Python only prints "Exception ignored" and goes on. Say
        # nothing, and deliver the signal again a moment later, from another thread, so that it
        # interrupts the command's own code (again here if it lands in a finalizer again).
        if received and isinstance(unraisable.exc_value, KeyboardInterrupt):
            with pending_lock:
                if not pending:
                    pending.append(threading.Timer(0.01, redeliver))
                    pending[0].daemon = True
                    pending[0].start()
            return
        previous_hook(unraisable)

    def redeliver() -> None:
        with pending_lock:
            if pending:  # emptied once the command has returned
                pending.clear()
                os.kill(os.getpid(), received[0])

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = ({s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
                if in_main_thread else {})
    if in_main_thread:
        sys.unraisablehook = on_unraisable
    try:
        code = body()
        if received:  # swallowed where it landed (a finalizer) and not yet delivered again
            raise KeyboardInterrupt(signal.Signals(received[0]).name)
    except BaseException as err:  # noqa: BLE001 - mapped to exit codes below
        if received:
            # later signals (a second Ctrl-C) must not break the clean exit
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
            name = signal.Signals(received[0]).name
            print(f"{prog}: interrupted by {name}; rerun the same command to finish",
                  file=sys.stderr)
            return 128 + received[0]
        if isinstance(err, BrainfmError):
            print(f"{prog}: error: {err}", file=sys.stderr)
            return err.exit_code
        if isinstance(err, OSError) and err.filename:  # disk full, quota, permissions
            where = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 else "")
            print(f"{prog}: error: cannot write or read {where}: {err.strerror or err}; free "
                  "space or fix the permissions, then rerun the same command",
                  file=sys.stderr)
            return ProcessingError.exit_code
        if isinstance(err, KeyboardInterrupt):
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        raise
    finally:
        with pending_lock:
            for timer in pending:
                timer.cancel()
            pending.clear()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if in_main_thread:
            sys.unraisablehook = previous_hook
    return int(code or 0)
