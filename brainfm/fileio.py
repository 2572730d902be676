"""Safe file I/O: atomic writes that never land in an input, the output lock, BIDS tables.

Every file brainfm writes goes through :func:`write_atomic` (or the text, JSON, TSV and copy
forms built on it): a temporary file in the destination folder, then an atomic rename, so a
reader (or a crash) never sees a half-written file; and each destination is checked against the
protected input datasets first (:func:`check_writable_path`). Files shared by parallel jobs are
written under :func:`output_lock`. Low level on purpose: every layer, the models included, may
import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainfm.errors import InputError, UsageError

#: Environment variable holding the input folders no write may land in (``os.pathsep``-joined);
#: an environment variable so that nipype's worker processes and cluster jobs inherit it.
PROTECTED_ENV = "BRAINFM_PROTECTED_INPUTS"
#: The folders inside a protected input that may be written (the output dataset only).
ALLOWED_ENV = "BRAINFM_ALLOWED_OUTPUTS"


@contextlib.contextmanager
def protected_inputs(folders: Sequence[str | Path | None],
                     allowed: Sequence[str | Path | None] = ()) -> Iterator[None]:
    """Refuse, inside the block, any write into ``folders`` (here and in child processes).

    Every brainfm output goes through :func:`write_atomic` (and the forms built on it) or
    :func:`output_lock`, which resolve the destination (symbolic links included) and call
    :func:`check_writable_path`. The previous setting is restored on exit.

    Parameters
    ----------
    folders : sequence of path
        The input datasets (None entries are skipped).
    allowed : sequence of path, optional
        Folders inside an input that may be written all the same: the output dataset at
        ``bids_dir/derivatives/<name>``, where BIDS puts derivatives.
    """
    values = {PROTECTED_ENV: folders, ALLOWED_ENV: allowed}
    previous = {name: os.environ.get(name) for name in values}
    for name, paths in values.items():
        os.environ[name] = os.pathsep.join(str(Path(f).resolve()) for f in paths if f)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_writable_path(path: Path) -> None:
    """Raise :class:`~brainfm.errors.UsageError` when ``path`` resolves into a protected input.

    Parameters
    ----------
    path : Path
        A destination about to be written (it need not exist; symbolic links in its existing
        part are followed).
    """
    protected = [Path(p) for p in os.environ.get(PROTECTED_ENV, "").split(os.pathsep) if p]
    if not protected:
        return
    target = Path(path).resolve()
    allowed = [Path(p) for p in os.environ.get(ALLOWED_ENV, "").split(os.pathsep) if p]
    if any(target == root or root in target.parents for root in allowed):
        return
    for root in protected:
        if target == root or root in target.parents:
            raise UsageError(
                f"refusing to write {path}: it resolves to {target}, inside the input dataset "
                f"{root} (a symbolic link in the output or work folder?). brainfm never writes "
                "into its inputs; remove the link or choose another output folder.")


def check_output_folder(folder: Path, what: str) -> None:
    """An output or work folder must be a folder (or creatable) and writable.

    Parameters
    ----------
    folder : Path
        The folder to be written (it need not exist).
    what : str
        How the message names it (``output_dir``, ``work dir``).

    Raises
    ------
    UsageError
        It is a file or a dangling symbolic link, or it (or its nearest existing parent) is not
        writable.
    """
    if folder.is_symlink() and not folder.exists():
        raise UsageError(f"{what} {folder} is a symbolic link to {os.readlink(folder)}, which "
                         "does not exist (or loops back); create the folder it points to, or "
                         "remove the link")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what} {folder} is a file, not a folder; choose a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {folder} cannot be written ({existing} is not writable); "
                         "choose a folder you can write to")


def write_atomic(path: str | Path, write: Callable[[Path], Any], suffix: str = ".tmp") -> Path:
    """Write ``path`` through ``write(tmp)`` into a temporary file beside it, then rename.

    Parameters
    ----------
    path : path
        The destination (its folder is created; it must not resolve into a protected input).
    write : callable
        Writes the content to the temporary path it is given (e.g. ``torch.save``,
        ``nibabel.save``, ``safetensors``' ``save_file``).
    suffix : str, optional
        End of the temporary file's name (``.nii.gz`` for writers that choose the format by
        the extension, as nibabel does).

    Returns
    -------
    Path
        ``path``, now complete and readable by everyone (mode 0644).
    """
    path = Path(path)
    check_writable_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600: shared outputs must be readable by others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write a JSON sidecar atomically (sorted keys, 2-space indent)."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    return write_text_atomic(path, text)


def write_tsv_atomic(path: str | Path, table: pd.DataFrame, *, index: bool = False,
                     float_format: str | None = None) -> Path:
    """Write a table as BIDS TSV (``n/a`` for missing values) atomically.

    ``float_format`` (e.g. ``"%.6g"``) shortens long float columns such as time series.
    Flags (columns of booleans, with or without missing values) are written ``true``/``false``.
    """
    table = table.copy()
    for col in table.columns:
        if table[col].dtype.kind not in "bO":
            continue
        known = table[col].dropna()
        if len(known) and known.map(lambda v: isinstance(v, (bool, np.bool_))).all():
            table[col] = table[col].map(lambda v: v if pd.isna(v) else ("true" if v else "false"))
    text = table.to_csv(sep="\t", index=index, na_rep="n/a", lineterminator="\n",
                        float_format=float_format)
    return write_text_atomic(path, text)


#: Identifier columns kept as text when reading BIDS tables.
ID_COLUMNS = ("participant_id", "session_id")


def read_tsv(path: str | Path) -> pd.DataFrame:
    """Read a BIDS TSV: ``n/a`` (and empty cells) are missing, ID columns stay text.

    Parameters
    ----------
    path : path
        The file.

    Returns
    -------
    pandas.DataFrame
        The table; ``participant_id`` and ``session_id`` are strings (``'n/a'`` kept as is).

    Raises
    ------
    InputError
        The file cannot be read or parsed (the message names it).
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a", "", "NaN", "nan"],
                            keep_default_na=False,
                            dtype={c: str for c in ID_COLUMNS})
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputError(f"cannot read {path}: {err}") from err
    for col in ID_COLUMNS:
        if col in table:
            table[col] = table[col].fillna("n/a").astype(str).str.strip()
    return table


def copy_atomic(source: str | Path, destination: str | Path) -> Path:
    """Copy a file to ``destination`` atomically (:func:`write_atomic`)."""
    return write_atomic(destination, lambda tmp: shutil.copyfile(source, tmp))


def copy_nifti_atomic(source: str | Path, destination: str | Path) -> Path:
    """Copy a NIfTI image atomically, re-saved by nibabel when ``.nii`` and ``.nii.gz`` differ."""
    source, destination = Path(source), Path(destination)
    extension = "".join(destination.suffixes[-2:])
    if "".join(source.suffixes[-2:]) == extension:
        return copy_atomic(source, destination)
    import nibabel as nib

    return write_atomic(destination, lambda tmp: nib.save(nib.load(str(source)), str(tmp)),
                        suffix=extension)


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when it is missing, unreadable or not an object."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


@contextlib.contextmanager
def output_lock(output_dir: str | Path, timeout: float = 600.0) -> Iterator[None]:
    """Hold an exclusive lock on the output dataset while writing its shared files.

    A :class:`filelock.FileLock` on ``<output_dir>/.brainfm.lock``: an OS lock, or a soft lock
    where the file system has no ``flock`` (filelock falls back by itself, e.g. on Lustre
    without the flock mount option), and a clear error after ``timeout`` seconds instead of a
    hang.
    """
    from filelock import FileLock, Timeout

    lock_path = Path(output_dir) / ".brainfm.lock"
    check_writable_path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, timeout=timeout)
    try:
        lock.acquire()
    except Timeout as err:
        raise UsageError(f"{lock_path} stayed locked for {timeout:g} s: another brainfm job "
                         "writes to this output folder (or one was killed on a file system "
                         "without locks: remove the file if no job runs)") from err
    try:
        yield
    finally:
        lock.release()


#: Hidden folder (output dataset, work folder) of the participants' lock files.
PARTICIPANT_LOCKS = ".brainfm-locks"


@contextlib.contextmanager
def participant_locks(labels: Sequence[str], folders: Sequence[str | Path],
                      timeout: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on each participant in each folder while the block runs.

    One :class:`filelock.FileLock` per participant and folder (the output dataset and the work
    folder), ``<folder>/.brainfm-locks/sub-<label>.lock``, taken in a fixed order so that two jobs
    never wait for each other. A second job for a participant that another job processes fails
    at once (``timeout`` 0) or after waiting ``timeout`` seconds, before it writes anything of
    that participant; the locks go with the process that holds them, also when it is killed.

    Parameters
    ----------
    labels : sequence of str
        Participant labels, without ``sub-``.
    folders : sequence of path
        Folders the participants' files are written into.
    timeout : float, optional
        Seconds to wait for a participant another job holds (default: do not wait).

    Raises
    ------
    UsageError
        A participant stayed locked (exit 64); the message names it, the lock file and the fix.
    """
    from filelock import FileLock, Timeout

    with contextlib.ExitStack() as stack:
        busy: list[tuple[str, Path]] = []
        for label in sorted(set(labels)):
            for folder in dict.fromkeys(Path(f) for f in folders):
                lock_path = folder / PARTICIPANT_LOCKS / f"sub-{label}.lock"
                check_writable_path(lock_path)
                lock_path.parent.mkdir(parents=True, exist_ok=True)
                lock = FileLock(lock_path)
                try:  # wait once: the others busy then are named without more waiting
                    lock.acquire(timeout=0 if busy else timeout)
                except Timeout:
                    busy.append((label, lock_path))
                    break
                stack.callback(lock.release)
        if busy:
            names = ", ".join(f"sub-{label}" for label, _ in busy)
            waited = f"stayed locked for {timeout:g} s" if timeout else "is locked"
            raise UsageError(
                f"{names} {'is' if len(busy) == 1 else 'are'} being processed by another "
                f"brainfm job: {busy[0][1]} {waited}. Let that job finish (then rerun this "
                f"command), leave {names} out of --participant-label, or pass --lock-timeout "
                "SECONDS to wait")
        yield
