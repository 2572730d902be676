"""nipype's Linear and MultiProc plugins, made to stop at once when a disk is full.

A full work or output disk fails every node that follows, and nipype's own plugins make it
worse: a MultiProc worker whose result file could not be written raises while it reports the
failure, its future's callback raises too, the task never completes and the plugin waits for it
for ever; writing the crash file then fails in the main process with a traceback. These
subclasses change only that: a node that failed for want of space (``ENOSPC``, ``EDQUOT``, or
``EFBIG`` from a file-size limit) stops the whole run with a :class:`DiskFullError` naming the
file, or the folder whose disk is full, before the crash file is written; a worker that cannot
report still completes its task; and the worker processes are ended when the run stops.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from traceback import format_exception
from typing import Any

from nipype.pipeline.plugins.base import report_nodes_not_run, str2bool
from nipype.pipeline.plugins.linear import LinearPlugin
from nipype.pipeline.plugins.multiproc import MultiProcPlugin, run_node
from nipype.pipeline.plugins.tools import report_crash

from brainfm.errors import ProcessingError
from brainfm.logs import QuietFileHandler

#: errno values that mean "this disk (or quota, or file-size limit) has no room".
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: ``OSError: [Errno 28] No space left on device: '/path'`` in a formatted traceback.
_ERRNOS = "|".join(str(n) for n in NO_SPACE_ERRNOS)
_NO_SPACE_LINE = re.compile(
    rf"\[Errno (?P<errno>{_ERRNOS})\] (?P<strerror>[^:\n']+)(?:: '(?P<file>[^'\n]+)')?")
#: A file system with less free space than this counts as full.
_FULL_BYTES = 1 << 20


class DiskFullError(ProcessingError):
    """A write failed because its disk, quota or file-size limit is exhausted (exit 1)."""


def _no_space_in(error: BaseException | str) -> tuple[str, str | None] | None:
    """``(strerror, file or None)`` when ``error`` (or its chain, or a traceback text) says
    a write found no room; None otherwise."""
    if isinstance(error, str):
        found = _NO_SPACE_LINE.search(error)
        return (found["strerror"], found["file"]) if found else None
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return exc.strerror or os.strerror(exc.errno), exc.filename
        todo += [exc.__cause__, exc.__context__]
    # a worker's exception carries the worker's traceback as text (_RemoteTraceback)
    return _no_space_in("".join(format_exception(error)))


def _full_folders(folders: Sequence[str | Path]) -> list[str]:
    """The folders among ``folders`` whose file system has (almost) no free space."""
    full = []
    for folder in folders:
        existing = Path(folder)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            if shutil.disk_usage(existing).free < _FULL_BYTES:
                full.append(str(folder))
        except OSError:
            continue
    return full


def disk_full_error(error: BaseException | str, folders: Sequence[str | Path] = (),
                    node: Any = None) -> DiskFullError | None:
    """The :class:`DiskFullError` for ``error`` when it is a write that found no room, else None.

    Parameters
    ----------
    error : BaseException or str
        An exception (its ``__cause__``/``__context__`` chain is searched) or a formatted
        traceback (a nipype node's).
    folders : sequence of path, optional
        The folders the run writes (work dir, output dir): those on a full file system are
        named when the error names no file.
    node : nipype node, optional
        The node that failed, named in the message.

    Returns
    -------
    DiskFullError or None
        One line: what could not be written, why, and the fix.
    """
    found = _no_space_in(error)
    if found is None:
        return None
    strerror, filename = found
    where = filename or ", ".join(_full_folders(folders))
    if not where and node is not None:
        where = str(node.output_dir())
    name = f" (node {node.fullname})" if node is not None else ""
    return DiskFullError(
        f"cannot write {where or 'the work or output folder'}: {strerror}{name}; free space on "
        "that disk (or raise the quota or file-size limit), or choose a --work-dir or "
        "output_dir with room, then rerun the same command")


@functools.cache
def _worker_logs_to(log_file: str) -> None:
    """In a MultiProc worker, send nipype's log lines to ``log_file`` instead of stdout.

    A worker imports nipype afresh, with its console handler; the main process sends its own
    lines to the same file at default verbosity (see the participant level).
    """
    root = logging.getLogger("nipype")
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    handler = QuietFileHandler(log_file, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root.addHandler(handler)


def _run_node(node: Any, updatehash: bool, taskid: int, log_file: str | None) -> dict:
    """nipype's ``run_node`` in a worker, its log lines in ``log_file`` when one is given."""
    if log_file:
        _worker_logs_to(log_file)
    return run_node(node, updatehash, taskid)


class _StopWhenDiskFull:
    """What both plugins share: check a failed node for a full disk before reporting it."""

    plugin_args: dict[str, Any]

    def _folders(self) -> list[str]:
        return [str(f) for f in self.plugin_args.get("brainfm_folders", ())]

    def _raise_if_disk_full(self, node: Any, failure: BaseException | str) -> None:
        error = disk_full_error(failure, self._folders(), node)
        if error is not None:
            raise error from None

    def _write_crash(self, node: Any, traceback: list[str] | str | None) -> str:
        """nipype's crash file, or a DiskFullError where it cannot be written."""
        try:
            return report_crash(node, traceback=traceback)
        except OSError as err:
            raise (disk_full_error(err, self._folders(), node) or ProcessingError(
                f"cannot write the crash file of node {node.fullname} into "
                f"{node.config['execution'].get('crashdump_dir')}: {err}")) from None


class BrainfmLinearPlugin(_StopWhenDiskFull, LinearPlugin):
    """nipype's Linear plugin (serial, in this process) that stops when a disk is full.

    The loop is nipype 1.10's ``LinearPlugin.run`` with one change: a node that failed for
    want of space stops the run (:class:`DiskFullError`) instead of going on to the next.
    """

    def run(self, graph: Any, config: dict, updatehash: bool = False) -> None:  # noqa: D102
        import networkx as nx
        from nipype.pipeline.engine.utils import topological_sort

        old_wd = os.getcwd()
        notrun, donotrun, errors = [], [], []
        stop_on_first_crash = str2bool(config["execution"]["stop_on_first_crash"])
        nodes, _ = topological_sort(graph)
        try:
            for node in nodes:
                if node in donotrun:
                    continue
                endstatus = "end"
                try:
                    if self._status_callback:
                        self._status_callback(node, "start")
                    node.run(updatehash=updatehash)
                except Exception as exc:
                    endstatus = "exception"
                    self._raise_if_disk_full(node, exc)
                    crashfile = self._write_crash(node, format_exception(exc))
                    subnodes = list(nx.dfs_preorder_nodes(graph, node))
                    notrun.append({"node": node, "dependents": subnodes,
                                   "crashfile": crashfile})
                    donotrun.extend(subnodes)
                    errors.append(exc)
                    if stop_on_first_crash:
                        break
                finally:
                    if self._status_callback:
                        self._status_callback(node, endstatus)
        finally:
            os.chdir(old_wd)
        report_nodes_not_run(notrun)
        if errors:
            error, cause = errors[0], None
            if len(errors) > 1:
                error, cause = RuntimeError(f"{len(errors)} raised. Re-raising first."), error
            raise error from cause


class BrainfmMultiProcPlugin(_StopWhenDiskFull, MultiProcPlugin):
    """nipype's MultiProc plugin that stops when a disk is full and never waits for ever.

    A worker that raised while reporting its node's failure (its result file could not be
    written) still completes its task, with that traceback; a node that failed for want of
    space stops the run (:class:`DiskFullError`) before its crash file is written; and when the
    run stops, for any reason, the worker processes are ended rather than waited for.
    """

    def run(self, graph: Any, config: dict, updatehash: bool = False) -> None:  # noqa: D102
        try:
            super().run(graph, config, updatehash=updatehash)
        except BaseException:
            self._stop_workers()
            raise

    def _submit_job(self, node: Any, updatehash: bool = False) -> int:
        self._taskid += 1
        taskid = self._taskid
        if getattr(node.interface, "terminal_output", "") == "stream":
            node.interface.terminal_output = "allatonce"
        future = self.pool.submit(_run_node, node, updatehash, taskid,
                                  self.plugin_args.get("brainfm_log_file"))
        future.add_done_callback(functools.partial(self._task_done, taskid))
        self._task_obj[taskid] = future
        return taskid

    def _task_done(self, taskid: int, future: Any) -> None:
        """Record a task's result; a worker that raised gives its traceback as the result."""
        try:
            result = future.result()
        except BaseException as exc:  # noqa: BLE001 - any worker failure fails the node
            result = {"result": None, "traceback": format_exception(exc), "taskid": taskid}
        self._taskresult[taskid] = result

    def _report_crash(self, node: Any, result: dict | None = None) -> str:
        traceback = (result or {}).get("traceback") or ""
        self._raise_if_disk_full(node, "".join(traceback))
        if result is not None:
            node._result = result["result"]
            node._traceback = traceback
        return self._write_crash(node, traceback or None)

    def _stop_workers(self) -> None:
        """End the worker processes now (running nodes are lost; a rerun redoes them)."""
        pool = self.pool
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:  # Python < 3.14 has no ProcessPoolExecutor.terminate_workers
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=5)


def make_plugin(nprocs: int, folders: Sequence[str | Path], log_file: str | Path | None = None,
                **plugin_args: Any) -> BrainfmLinearPlugin | BrainfmMultiProcPlugin:
    """The plugin brainfm runs its workflows with: MultiProc when ``nprocs > 1``, else Linear.

    Parameters
    ----------
    nprocs : int
        Parallel processes.
    folders : sequence of path
        The folders the run writes (named when a disk is full).
    log_file : path, optional
        Where MultiProc workers write nipype's log lines (default: their console).
    **plugin_args
        More plugin arguments (``status_callback``, ``mp_context``, ...).

    Returns
    -------
    plugin
        An instance to pass to ``workflow.run(plugin=...)``.
    """
    plugin_args["brainfm_folders"] = [str(f) for f in folders]
    plugin_args["brainfm_log_file"] = str(log_file) if log_file else None
    if nprocs > 1:
        return BrainfmMultiProcPlugin(plugin_args={"n_procs": int(nprocs),
                                                   "raise_insufficient": False, **plugin_args})
    return BrainfmLinearPlugin(plugin_args=plugin_args)


__all__ = ["BrainfmLinearPlugin", "BrainfmMultiProcPlugin", "DiskFullError", "disk_full_error",
           "make_plugin"]
