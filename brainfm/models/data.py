"""ROI time-series derivatives as model inputs: discovery, loading, preprocessing, data sets.

Everything here works on the on-disk format of ``docs/contracts.md``::

    <root>/sub-<p>[/ses-<s>]/func/sub-<p>[_ses-<s>]_task-<t>[_run-<r>]_space-<S>_atlas-<A>_stat-mean_timeseries.tsv

with a JSON sidecar that carries ``RepetitionTime``. The pipeline for one session is

1. find the runs (:func:`find_timeseries`), read each TSV and sidecar (:func:`read_timeseries`);
2. mask ROIs that are all zero, contain ``n/a``/NaN or are constant (:func:`valid_roi_mask`);
   masked ROIs are set to 0 and never used as data;
3. standardise each ROI over the run (:func:`standardise`);
4. compute the full-run Fisher-z connectivity over all runs of the session
   (:func:`fisher_z_connectivity`), at the native sampling rate;
5. resample each run to the common sampling rate (:func:`resample_timeseries`, default 0.5 Hz,
   i.e. a repetition time of 2 s) and standardise again;
6. cut windows: random windows for training (:class:`WindowDataset`), sliding windows for
   prediction (:func:`sliding_windows`).

Targets come from ``participants.tsv`` (:func:`load_participants`, :func:`parse_target_spec`,
:func:`target_matrix`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.signal import resample_poly
from torch.utils.data import Dataset

from brainfm.derivatives import parse_entities
from brainfm.errors import InputError, UsageError

LOGGER = logging.getLogger(__name__)

#: Default common sampling rate of the model inputs (Hz); 0.5 Hz is a repetition time of 2 s.
DEFAULT_SAMPLING_RATE_HZ = 0.5
TIMESERIES_SUFFIX = "_stat-mean_timeseries.tsv"
#: Standard deviation below which an ROI time series counts as constant.
_CONSTANT_EPS = 1e-8
#: Largest absolute correlation before the Fisher transform (keeps arctanh finite).
_R_CLIP = 1.0 - 1e-6


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFile:
    """One ROI time-series file found in a derivatives folder.

    Attributes
    ----------
    path : Path
        The ``*_stat-mean_timeseries.tsv`` file.
    subject : str
        Participant label without ``sub-``.
    session : str or None
        Session label without ``ses-``, or None.
    task : str or None
        Task label.
    run : str or None
        Run label.
    atlas : str
        Atlas label (the ``atlas-`` entity).
    """

    path: Path
    subject: str
    session: str | None
    task: str | None
    run: str | None
    atlas: str

    @property
    def sidecar(self) -> Path:
        """Path of the JSON sidecar next to the TSV."""
        return self.path.with_name(self.path.name[: -len(".tsv")] + ".json")


def _normalise_atlas(atlas: str) -> str:
    return re.sub(r"[^a-z0-9]", "", atlas.lower())


def find_timeseries(
    deriv_dirs: Path | str | Sequence[Path | str],
    atlas: str,
    participants: Iterable[str] | None = None,
) -> list[RunFile]:
    """Find the ROI time-series files of one atlas under one or many derivatives folders.

    Parameters
    ----------
    deriv_dirs : path or sequence of paths
        Derivatives folders (each holding ``sub-*/[ses-*/]func/*_timeseries.tsv``).
    atlas : str
        Atlas label as in the ``atlas-`` entity (``CC200``, ``Schaefer200`` ...); matched
        case-insensitively and ignoring ``-``/``_`` (so ``Schaefer2018-200`` is not
        ``Schaefer200``: pass the BIDS label).
    participants : iterable of str, optional
        Keep only these participant labels (with or without ``sub-``).

    Returns
    -------
    list of RunFile
        Sorted by folder order, subject, session, task and run.

    Raises
    ------
    InputError
        A folder does not exist, or no time series of ``atlas`` were found.
    """
    if isinstance(deriv_dirs, (str, Path)):
        deriv_dirs = [deriv_dirs]
    wanted_atlas = _normalise_atlas(atlas)
    keep = None if participants is None else {_strip_prefix(p, "sub-") for p in participants}
    found: list[RunFile] = []
    seen_atlases: set[str] = set()
    for root in map(Path, deriv_dirs):
        if not root.is_dir():
            raise InputError(f"derivatives folder not found: {root}")
        per_root: list[RunFile] = []
        for path in root.glob(f"sub-*/**/*{TIMESERIES_SUFFIX}"):
            if not path.is_file():
                continue
            ent = parse_entities(path.name)
            if "sub" not in ent or "atlas" not in ent:
                continue
            seen_atlases.add(ent["atlas"])
            if _normalise_atlas(ent["atlas"]) != wanted_atlas:
                continue
            if keep is not None and ent["sub"] not in keep:
                continue
            per_root.append(
                RunFile(
                    path=path,
                    subject=ent["sub"],
                    session=ent.get("ses"),
                    task=ent.get("task"),
                    run=ent.get("run"),
                    atlas=ent["atlas"],
                )
            )
        per_root.sort(key=lambda r: (r.subject, r.session or "", r.task or "", r.run or "", r.path))
        found.extend(per_root)
    if not found:
        where = ", ".join(str(d) for d in deriv_dirs)
        other = f" (atlases present: {', '.join(sorted(seen_atlases))})" if seen_atlases else ""
        raise InputError(
            f"no '*_atlas-{atlas}{TIMESERIES_SUFFIX}' files found under {where}{other}; "
            "run the participant level or brainfm-import first, or pick another --atlas"
        )
    return found


def _strip_prefix(label: str, prefix: str) -> str:
    label = str(label).strip()
    return label[len(prefix) :] if label.startswith(prefix) else label


# --------------------------------------------------------------------------------------------
# Reading and preprocessing
# --------------------------------------------------------------------------------------------


def read_sidecar(path: Path | str) -> dict:
    """Read the JSON sidecar of a time-series file and check ``RepetitionTime``.

    Parameters
    ----------
    path : path
        The ``.json`` sidecar.

    Returns
    -------
    dict
        The sidecar, with ``RepetitionTime`` as a positive float.

    Raises
    ------
    InputError
        The sidecar is missing, is not JSON, or lacks a positive ``RepetitionTime``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"JSON sidecar missing: {path} (it must give RepetitionTime in seconds)"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read JSON sidecar {path}: {exc}") from exc
    tr = meta.get("RepetitionTime") if isinstance(meta, dict) else None
    if tr is None and isinstance(meta, dict) and meta.get("SamplingFrequency"):
        try:
            tr = 1.0 / float(meta["SamplingFrequency"])
        except (TypeError, ValueError, ZeroDivisionError):
            tr = None
    try:
        tr = float(tr)
    except (TypeError, ValueError):
        tr = float("nan")
    if not math.isfinite(tr) or tr <= 0:
        raise InputError(
            f"{path} has no valid RepetitionTime (seconds); add it to the sidecar"
        )
    meta["RepetitionTime"] = tr
    return meta


def read_timeseries(path: Path | str) -> tuple[np.ndarray, list[str], dict]:
    """Read one ROI time-series TSV and its sidecar.

    Parameters
    ----------
    path : path
        A ``*_stat-mean_timeseries.tsv`` file (header = ROI names, ``n/a`` = missing).

    Returns
    -------
    data : ndarray of shape (T, N), float64
        Time points by ROIs, NaN where the file has ``n/a``.
    roi_names : list of str
        The header.
    sidecar : dict
        The JSON sidecar (see :func:`read_sidecar`).

    Raises
    ------
    InputError
        The file cannot be parsed, has no rows, or has non-numeric values.
    """
    path = Path(path)
    sidecar = read_sidecar(path.with_name(path.name[: -len(".tsv")] + ".json"))
    try:
        frame = pd.read_csv(
            path, sep="\t", na_values=["n/a", "NaN", "nan", ""], keep_default_na=False,
            dtype=np.float64, engine="c",
        )
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read ROI time series {path}: {exc}") from exc
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise InputError(
            f"{path} holds {frame.shape[0]} time points x {frame.shape[1]} ROIs; "
            "need at least 2 of each"
        )
    return frame.to_numpy(dtype=np.float64), [str(c) for c in frame.columns], sidecar


def valid_roi_mask(data: np.ndarray) -> np.ndarray:
    """ROIs that carry signal: finite everywhere, not all zero and not constant.

    Parameters
    ----------
    data : ndarray of shape (T, N)
        Time points by ROIs.

    Returns
    -------
    ndarray of shape (N,), bool
        True for usable ROIs.
    """
    finite = np.isfinite(data).all(axis=0)
    safe = np.where(np.isfinite(data), data, 0.0)
    std = safe.std(axis=0)
    return finite & (std > _CONSTANT_EPS * np.maximum(1.0, np.abs(safe).max(axis=0)))


def standardise(data: np.ndarray, roi_mask: np.ndarray) -> np.ndarray:
    """Z-score each valid ROI over time; masked ROIs become 0.

    Parameters
    ----------
    data : ndarray of shape (T, N)
        Time points by ROIs.
    roi_mask : ndarray of shape (N,), bool
        Valid ROIs.

    Returns
    -------
    ndarray of shape (T, N), float64
        Standardised copy.
    """
    out = np.zeros(data.shape, dtype=np.float64)
    if roi_mask.any():
        sub = data[:, roi_mask]
        mean = sub.mean(axis=0)
        std = sub.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        out[:, roi_mask] = (sub - mean) / std
    return out


def resample_timeseries(
    data: np.ndarray, tr: float, target_rate_hz: float = DEFAULT_SAMPLING_RATE_HZ
) -> np.ndarray:
    """Resample time series to a common sampling rate (polyphase, anti-aliased).

    Parameters
    ----------
    data : ndarray of shape (T, N)
        Time points by ROIs, sampled every ``tr`` seconds.
    tr : float
        Repetition time of ``data`` in seconds.
    target_rate_hz : float, optional
        Output sampling rate in Hz (default 0.5, i.e. one sample every 2 s).

    Returns
    -------
    ndarray of shape (T', N)
        Resampled series, ``T'`` = ceil(T * tr * target_rate_hz) (within rounding of the rate
        ratio); a copy of ``data`` when the rates already agree.
    """
    if tr <= 0 or target_rate_hz <= 0:
        raise ValueError("tr and target_rate_hz must be positive")
    ratio = Fraction(tr * target_rate_hz).limit_denominator(1000)
    if ratio == 1:
        return np.array(data, dtype=np.float64, copy=True)
    return resample_poly(
        np.asarray(data, dtype=np.float64), ratio.numerator, ratio.denominator, axis=0,
        padtype="line",
    )


def fisher_z_connectivity(data: np.ndarray, roi_mask: np.ndarray) -> np.ndarray:
    """Full-run Pearson correlation, Fisher z-transformed.

    Parameters
    ----------
    data : ndarray of shape (T, N)
        Time points by ROIs (several runs may be concatenated after standardising each).
    roi_mask : ndarray of shape (N,), bool
        Valid ROIs; rows and columns of masked ROIs are 0.

    Returns
    -------
    ndarray of shape (N, N), float32
        ``arctanh(r)`` with the diagonal set to 0.
    """
    n = data.shape[1]
    conn = np.zeros((n, n), dtype=np.float64)
    idx = np.flatnonzero(roi_mask)
    if idx.size >= 2:
        sub = data[:, idx]
        sub = sub - sub.mean(axis=0)
        norm = np.sqrt((sub**2).sum(axis=0))
        norm = np.where(norm > 0, norm, 1.0)
        sub = sub / norm
        r = np.clip(sub.T @ sub, -_R_CLIP, _R_CLIP)
        conn[np.ix_(idx, idx)] = np.arctanh(r)
    np.fill_diagonal(conn, 0.0)
    return conn.astype(np.float32)


def write_timeseries(
    path: Path | str,
    data: np.ndarray,
    roi_names: Sequence[str],
    repetition_time: float,
    sources: Sequence[str] = (),
    denoising_strategy: str | None = None,
) -> Path:
    """Write one ROI time-series TSV + JSON sidecar in the brainfm derivative format.

    Both files are written to a temporary name and renamed, so readers never see half a file.

    Parameters
    ----------
    path : path
        Target ``*_stat-mean_timeseries.tsv`` path (parent folders are created).
    data : ndarray of shape (T, N)
        Time points by ROIs; NaN is written as ``n/a``.
    roi_names : sequence of str
        Header (N names).
    repetition_time : float
        Seconds between time points.
    sources : sequence of str, optional
        ``Sources`` of the sidecar.
    denoising_strategy : str, optional
        ``DenoisingStrategy`` of the sidecar.

    Returns
    -------
    Path
        The TSV path.
    """
    path = Path(path)
    if not path.name.endswith(".tsv"):
        raise ValueError(f"{path} must end in .tsv")
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != len(roi_names):
        raise ValueError(f"data shape {data.shape} does not match {len(roi_names)} ROI names")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(data, columns=list(roi_names))
    meta: dict[str, object] = {
        "RepetitionTime": float(repetition_time),
        "SamplingFrequency": 1.0 / float(repetition_time),
        "Sources": list(sources),
        "NumberOfVolumesRetained": int(data.shape[0]),
    }
    if denoising_strategy is not None:
        meta["DenoisingStrategy"] = denoising_strategy
    sidecar = path.with_name(path.name[: -len(".tsv")] + ".json")
    for target, writer in (
        (path, lambda h: frame.to_csv(h, sep="\t", index=False, na_rep="n/a",
                                      float_format="%.6g", lineterminator="\n")),
        (sidecar, lambda h: h.write(json.dumps(meta, indent=2) + "\n")),
    ):
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        with open(tmp, "w") as handle:
            writer(handle)
        os.replace(tmp, target)
    return path


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------


@dataclass
class SessionData:
    """All runs of one participant's session, ready for the model.

    Attributes
    ----------
    participant_id : str
        Label without ``sub-``.
    session_id : str or None
        Label without ``ses-``.
    runs : list of ndarray of shape (N, T_r), float32
        Standardised runs at ``sampling_rate_hz``; masked ROIs are 0.
    roi_mask : ndarray of shape (N,), bool
        ROIs valid in every run.
    conn : ndarray of shape (N, N), float32
        Fisher-z connectivity over all runs (0 for masked ROIs and on the diagonal).
    sampling_rate_hz : float
        Sampling rate of ``runs``.
    roi_names : list of str
        ROI names (TSV header).
    sources : list of str
        The TSV files used.
    repetition_times : list of float
        Native repetition time of each run.
    denoising : list of str
        ``DenoisingStrategy`` of each run's sidecar (empty string when absent).
    """

    participant_id: str
    session_id: str | None
    runs: list[np.ndarray]
    roi_mask: np.ndarray
    conn: np.ndarray
    sampling_rate_hz: float
    roi_names: list[str]
    sources: list[str] = field(default_factory=list)
    repetition_times: list[float] = field(default_factory=list)
    denoising: list[str] = field(default_factory=list)

    @property
    def n_rois(self) -> int:
        """Number of ROIs."""
        return int(self.roi_mask.shape[0])

    @property
    def n_timepoints(self) -> int:
        """Total number of (resampled) time points over all runs."""
        return int(sum(r.shape[1] for r in self.runs))


def load_session(
    files: Sequence[RunFile | Path | str],
    sampling_rate_hz: float = DEFAULT_SAMPLING_RATE_HZ,
    expected_roi_names: Sequence[str] | None = None,
) -> SessionData:
    """Load and combine the runs of one participant's session.

    Parameters
    ----------
    files : sequence of RunFile or path
        The runs of one session (same participant and session).
    sampling_rate_hz : float, optional
        Common sampling rate of the output runs.
    expected_roi_names : sequence of str, optional
        When given, every run's header must equal it (e.g. the model card's ROI names).

    Returns
    -------
    SessionData
        Runs standardised and resampled, ROI mask (valid in all runs), full-run connectivity.

    Raises
    ------
    InputError
        No files, unreadable files, inconsistent headers between runs, or a header that differs
        from ``expected_roi_names``.
    """
    if not files:
        raise InputError("no time-series files given for the session")
    run_files = [f if isinstance(f, RunFile) else _runfile_from_path(Path(f)) for f in files]
    raw: list[tuple[np.ndarray, float]] = []
    names: list[str] | None = None
    sidecars: list[dict] = []
    for rf in run_files:
        data, roi_names, meta = read_timeseries(rf.path)
        if names is None:
            names = roi_names
            if expected_roi_names is not None and list(expected_roi_names) != roi_names:
                raise InputError(
                    f"{rf.path}: ROI names do not match the model ({len(roi_names)} columns "
                    f"in the file, {len(expected_roi_names)} expected); use time series of the "
                    "model's atlas"
                )
        elif roi_names != names:
            raise InputError(f"{rf.path}: ROI header differs from the session's first run")
        raw.append((data, float(meta["RepetitionTime"])))
        sidecars.append(meta)
    assert names is not None
    first = run_files[0]
    return session_from_arrays(
        raw,
        names,
        sampling_rate_hz,
        participant_id=first.subject,
        session_id=first.session,
        sources=[str(rf.path) for rf in run_files],
        denoising=[str(m.get("DenoisingStrategy", "")) for m in sidecars],
    )


def session_from_arrays(
    runs: Sequence[tuple[np.ndarray, float]],
    roi_names: Sequence[str],
    sampling_rate_hz: float = DEFAULT_SAMPLING_RATE_HZ,
    participant_id: str = "",
    session_id: str | None = None,
    sources: Sequence[str] = (),
    denoising: Sequence[str] = (),
) -> SessionData:
    """Build a :class:`SessionData` from in-memory runs.

    Parameters
    ----------
    runs : sequence of (ndarray of shape (T, N), float)
        Each run's time points by ROIs (NaN allowed; such ROIs are masked) and its repetition
        time in seconds.
    roi_names : sequence of str
        The N ROI names.
    sampling_rate_hz : float, optional
        Common sampling rate of the output runs.
    participant_id, session_id : str, optional
        Labels without prefixes.
    sources, denoising : sequence of str, optional
        Provenance kept in the result.

    Returns
    -------
    SessionData
        Masked, standardised, resampled runs and the full-run connectivity.

    Raises
    ------
    InputError
        No runs, or a run whose shape does not match ``roi_names``.
    """
    if not runs:
        raise InputError(f"sub-{participant_id}: no runs")
    n = len(roi_names)
    for data, tr in runs:
        if np.ndim(data) != 2 or np.shape(data)[1] != n or np.shape(data)[0] < 2:
            raise InputError(
                f"sub-{participant_id}: run of shape {np.shape(data)} does not match "
                f"{n} ROIs (time points x ROIs, at least 2 time points)"
            )
        if not (float(tr) > 0):
            raise InputError(f"sub-{participant_id}: repetition time {tr} is not positive")
    arrays = [np.asarray(d, dtype=np.float64) for d, _ in runs]
    mask = np.logical_and.reduce([valid_roi_mask(d) for d in arrays])
    std_runs = [standardise(d, mask) for d in arrays]
    conn = fisher_z_connectivity(np.concatenate(std_runs, axis=0), mask)
    resampled = []
    for z, (_, tr) in zip(std_runs, runs, strict=True):
        res = resample_timeseries(z, float(tr), sampling_rate_hz)
        resampled.append(np.ascontiguousarray(standardise(res, mask).T, dtype=np.float32))
    return SessionData(
        participant_id=participant_id,
        session_id=session_id,
        runs=resampled,
        roi_mask=mask,
        conn=conn,
        sampling_rate_hz=float(sampling_rate_hz),
        roi_names=list(roi_names),
        sources=list(sources),
        repetition_times=[float(tr) for _, tr in runs],
        denoising=list(denoising),
    )


def _runfile_from_path(path: Path) -> RunFile:
    ent = parse_entities(path.name)
    if "sub" not in ent:
        raise InputError(f"{path}: file name has no sub-<label> entity")
    return RunFile(path, ent["sub"], ent.get("ses"), ent.get("task"), ent.get("run"),
                   ent.get("atlas", ""))


def group_sessions(files: Iterable[RunFile]) -> dict[tuple[str, str | None], list[RunFile]]:
    """Group run files by (participant, session), keeping their order.

    Parameters
    ----------
    files : iterable of RunFile
        Run files, e.g. from :func:`find_timeseries`.

    Returns
    -------
    dict
        ``(participant, session) -> [RunFile, ...]``; the first folder that holds a session wins
        when several derivatives folders hold the same participant and session.
    """
    groups: dict[tuple[str, str | None], list[RunFile]] = {}
    roots: dict[tuple[str, str | None], Path] = {}
    for rf in files:
        key = (rf.subject, rf.session)
        root = _dataset_root(rf.path)
        if key in roots and roots[key] != root:
            LOGGER.warning(
                "sub-%s%s found in %s and %s; using the first", rf.subject,
                f" ses-{rf.session}" if rf.session else "", roots[key], root,
            )
            continue
        roots[key] = root
        groups.setdefault(key, []).append(rf)
    return groups


def _dataset_root(path: Path) -> Path:
    for parent in path.parents:
        if parent.name.startswith("sub-"):
            return parent.parent
    return path.parent


def load_sessions(
    files: Iterable[RunFile],
    sampling_rate_hz: float = DEFAULT_SAMPLING_RATE_HZ,
    expected_roi_names: Sequence[str] | None = None,
) -> list[SessionData]:
    """Load every (participant, session) found in ``files``.

    Parameters
    ----------
    files : iterable of RunFile
        From :func:`find_timeseries`.
    sampling_rate_hz : float, optional
        Common sampling rate.
    expected_roi_names : sequence of str, optional
        Required header; by default the first file's header, which all others must match.

    Returns
    -------
    list of SessionData
        One per (participant, session), in the order of ``files``.
    """
    groups = group_sessions(files)
    sessions: list[SessionData] = []
    names = list(expected_roi_names) if expected_roi_names is not None else None
    for i, runs in enumerate(groups.values()):
        sess = load_session(runs, sampling_rate_hz, names)
        names = sess.roi_names
        sessions.append(sess)
        if (i + 1) % 200 == 0:
            LOGGER.info("loaded %d/%d sessions", i + 1, len(groups))
    return sessions


# --------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------


def _pad_to(run: np.ndarray, window: int) -> np.ndarray:
    if run.shape[1] >= window:
        return run
    out = np.zeros((run.shape[0], window), dtype=run.dtype)
    out[:, : run.shape[1]] = run
    return out


def sliding_windows(
    runs: Sequence[np.ndarray], window: int, stride: int | None = None
) -> np.ndarray:
    """Cut sliding windows from every run (the last window is aligned to the run's end).

    Parameters
    ----------
    runs : sequence of ndarray of shape (N, T_r)
        Runs of one session.
    window : int
        Window length in samples.
    stride : int, optional
        Step between window starts (default ``window // 2``).

    Returns
    -------
    ndarray of shape (n_windows, N, window), float32
        Runs shorter than ``window`` give one zero-padded window.
    """
    if window < 1:
        raise ValueError("window must be positive")
    stride = max(1, window // 2 if stride is None else int(stride))
    out: list[np.ndarray] = []
    for run in runs:
        run = _pad_to(np.asarray(run, dtype=np.float32), window)
        t = run.shape[1]
        starts = list(range(0, t - window + 1, stride))
        if starts[-1] != t - window:
            starts.append(t - window)
        out.extend(run[:, s : s + window] for s in starts)
    return np.stack(out).astype(np.float32, copy=False)


def random_window(runs: Sequence[np.ndarray], window: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one random window from a session (runs weighted by their length).

    Parameters
    ----------
    runs : sequence of ndarray of shape (N, T_r)
        Runs of one session.
    window : int
        Window length in samples.
    rng : numpy.random.Generator
        Random source.

    Returns
    -------
    ndarray of shape (N, window), float32
        Zero-padded when the chosen run is shorter than ``window``.
    """
    lengths = np.array([max(1, r.shape[1] - window + 1) for r in runs], dtype=np.float64)
    k = int(rng.choice(len(runs), p=lengths / lengths.sum())) if len(runs) > 1 else 0
    run = _pad_to(runs[k], window)
    start = int(rng.integers(0, run.shape[1] - window + 1))
    return np.ascontiguousarray(run[:, start : start + window], dtype=np.float32)


class WindowDataset(Dataset):
    """Random training windows, one item per session and draw.

    Item ``i`` is session ``i % n_sessions``; its window is drawn with a generator seeded by
    ``(seed, epoch, i)``, so the data are reproducible regardless of the sampler's order,
    the number of processes (DistributedDataParallel) or the batch size. Call
    :meth:`set_epoch` at the start of every epoch to draw new windows.

    Parameters
    ----------
    sessions : sequence of SessionData
        The sessions.
    window : int
        Window length in samples.
    targets : ndarray of shape (n_sessions, K), optional
        Standardised targets, NaN where missing; None for pretraining (K = 0).
    draws_per_session : int, optional
        Windows per session and epoch (default 1).
    seed : int, optional
        Base seed.

    Notes
    -----
    Items are dicts with ``x`` (N, window) float32, ``roi_mask`` (N,) bool, ``conn`` (N, N)
    float32, ``targets`` (K,) float32 (0 where missing) and ``target_mask`` (K,) bool.
    """

    def __init__(
        self,
        sessions: Sequence[SessionData],
        window: int,
        targets: np.ndarray | None = None,
        draws_per_session: int = 1,
        seed: int = 0,
    ) -> None:
        self.sessions = list(sessions)
        self.window = int(window)
        self.draws = max(1, int(draws_per_session))
        self.seed = int(seed)
        self.epoch = 0
        n = len(self.sessions)
        tg = np.zeros((n, 0), dtype=np.float32) if targets is None else np.asarray(targets)
        if tg.shape[0] != n:
            raise ValueError(f"targets has {tg.shape[0]} rows for {n} sessions")
        self.target_mask = torch.from_numpy(np.isfinite(tg))
        self.targets = torch.from_numpy(np.nan_to_num(tg, nan=0.0).astype(np.float32))
        self._masks = [torch.from_numpy(s.roi_mask.astype(bool)) for s in self.sessions]
        self._conns = [torch.from_numpy(s.conn.astype(np.float32)) for s in self.sessions]

    def set_epoch(self, epoch: int) -> None:
        """Select the windows of ``epoch``.

        Parameters
        ----------
        epoch : int
            Epoch number.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.sessions) * self.draws

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = index % len(self.sessions)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x = random_window(self.sessions[i].runs, self.window, rng)
        return {
            "x": torch.from_numpy(x),
            "roi_mask": self._masks[i],
            "conn": self._conns[i],
            "targets": self.targets[i],
            "target_mask": self.target_mask[i],
        }


class SlidingWindowDataset(Dataset):
    """Every sliding window of every session (deterministic; for validation and prediction).

    Parameters
    ----------
    sessions : sequence of SessionData
        The sessions.
    window : int
        Window length in samples.
    stride : int, optional
        Step between windows (default ``window // 2``).
    targets : ndarray of shape (n_sessions, K), optional
        Standardised targets, NaN where missing.

    Notes
    -----
    Items are dicts like :class:`WindowDataset`'s plus ``session`` (int index of the session),
    so that window outputs can be averaged per session.
    """

    def __init__(
        self,
        sessions: Sequence[SessionData],
        window: int,
        stride: int | None = None,
        targets: np.ndarray | None = None,
    ) -> None:
        self.sessions = list(sessions)
        n = len(self.sessions)
        tg = np.zeros((n, 0), dtype=np.float32) if targets is None else np.asarray(targets)
        self.target_mask = torch.from_numpy(np.isfinite(tg))
        self.targets = torch.from_numpy(np.nan_to_num(tg, nan=0.0).astype(np.float32))
        self.index: list[tuple[int, int]] = []
        self.windows: list[np.ndarray] = []
        for i, s in enumerate(self.sessions):
            w = sliding_windows(s.runs, window, stride)
            self.windows.append(w)
            self.index.extend((i, j) for j in range(w.shape[0]))
        self._masks = [torch.from_numpy(s.roi_mask.astype(bool)) for s in self.sessions]
        self._conns = [torch.from_numpy(s.conn.astype(np.float32)) for s in self.sessions]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i, j = self.index[index]
        return {
            "x": torch.from_numpy(self.windows[i][j]),
            "roi_mask": self._masks[i],
            "conn": self._conns[i],
            "targets": self.targets[i],
            "target_mask": self.target_mask[i],
            "session": torch.tensor(i),
        }


# --------------------------------------------------------------------------------------------
# Participants and targets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    """A prediction target: output ``name`` read from the participants.tsv ``column``.

    Attributes
    ----------
    name : str
        Output name (``age``, ``fluid_intelligence`` ...).
    column : str
        Column of ``participants.tsv`` (case-insensitive match).
    """

    name: str
    column: str


def parse_target_spec(spec: str) -> TargetSpec:
    """Parse ``name`` or ``name=COLUMN``.

    Parameters
    ----------
    spec : str
        ``age`` (column ``age``) or ``fluid_intelligence=PIQ``.

    Returns
    -------
    TargetSpec
        Name and column.

    Raises
    ------
    UsageError
        Empty name or column, or characters other than letters, digits, ``_`` and ``-``.
    """
    name, _, column = str(spec).partition("=")
    name, column = name.strip(), (column.strip() or name.strip())
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", name or "") or not column:
        raise UsageError(
            f"bad --target '{spec}': use NAME or NAME=COLUMN (e.g. fluid_intelligence=PIQ)"
        )
    return TargetSpec(name=name, column=column)


def load_participants(path: Path | str) -> pd.DataFrame:
    """Read ``participants.tsv``.

    Parameters
    ----------
    path : path
        Tab-separated file with a ``participant_id`` column (with or without ``sub-``).

    Returns
    -------
    pandas.DataFrame
        Indexed by participant label without ``sub-`` (str); ``n/a`` and empty cells are NaN;
        numeric-looking columns are numeric.

    Raises
    ------
    InputError
        The file is missing, unreadable or has no ``participant_id`` column.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"participants file not found: {path} (pass --participants-tsv)"
        )
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a", ""],
                            keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    cols = {c.lower(): c for c in frame.columns}
    if "participant_id" not in cols:
        raise InputError(f"{path} has no participant_id column")
    frame = frame.rename(columns={cols["participant_id"]: "participant_id"})
    frame["participant_id"] = [
        _strip_prefix(p, "sub-") for p in frame["participant_id"].astype(str)
    ]
    frame = frame.drop_duplicates("participant_id").set_index("participant_id")
    for col in frame.columns:
        converted = pd.to_numeric(frame[col], errors="coerce")
        if converted.notna().sum() == frame[col].notna().sum():
            frame[col] = converted.astype(np.float64)
    return frame


def resolve_column(frame: pd.DataFrame, column: str, source: str = "participants.tsv") -> str:
    """Find ``column`` in ``frame`` case-insensitively.

    Parameters
    ----------
    frame : pandas.DataFrame
        Participants table.
    column : str
        Wanted column.
    source : str, optional
        File name for the error message.

    Returns
    -------
    str
        The column's actual name.

    Raises
    ------
    UsageError
        No such column (the message lists the available ones).
    """
    for c in frame.columns:
        if str(c).lower() == column.lower():
            return str(c)
    raise UsageError(
        f"target column '{column}' not in {source} (columns: {', '.join(map(str, frame.columns))})"
    )


def target_matrix(
    frame: pd.DataFrame,
    participant_ids: Sequence[str],
    specs: Sequence[TargetSpec],
    source: str = "participants.tsv",
) -> np.ndarray:
    """Raw target values for the given participants.

    Parameters
    ----------
    frame : pandas.DataFrame
        From :func:`load_participants`.
    participant_ids : sequence of str
        Labels without ``sub-`` (one per session; repeats allowed).
    specs : sequence of TargetSpec
        Targets.
    source : str, optional
        File name for messages.

    Returns
    -------
    ndarray of shape (len(participant_ids), K), float64
        NaN where a value or participant is missing.

    Raises
    ------
    UsageError
        A target column is missing.
    InputError
        A target column is not numeric, or a target has no value for any participant.
    """
    out = np.full((len(participant_ids), len(specs)), np.nan)
    for k, spec in enumerate(specs):
        col = resolve_column(frame, spec.column, source)
        values = frame[col]
        if not pd.api.types.is_numeric_dtype(values):
            raise InputError(f"column '{col}' of {source} is not numeric; cannot be a target")
        lookup = values.to_dict()
        out[:, k] = [float(lookup.get(p, np.nan)) for p in participant_ids]
        if not np.isfinite(out[:, k]).any():
            raise InputError(
                f"target '{spec.name}' (column '{col}' of {source}) has no value for any of the "
                f"{len(set(participant_ids))} participants with time series"
            )
    return out


@dataclass
class TargetScaler:
    """Standardisation of targets, fitted on training subjects.

    Attributes
    ----------
    mean : ndarray of shape (K,)
        Per-target mean.
    std : ndarray of shape (K,)
        Per-target standard deviation (1 where undefined).
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> TargetScaler:
        """Fit on raw values (NaN ignored).

        Parameters
        ----------
        values : ndarray of shape (n, K)
            Raw targets.

        Returns
        -------
        TargetScaler
            The fitted scaler.
        """
        values = np.asarray(values, dtype=np.float64)
        mean = np.zeros(values.shape[1])
        std = np.ones(values.shape[1])
        for k in range(values.shape[1]):
            col = values[:, k][np.isfinite(values[:, k])]
            if col.size:
                mean[k] = col.mean()
            if col.size > 1 and col.std() > 0:
                std[k] = col.std()
        return cls(mean=mean, std=std)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Standardise raw values.

        Parameters
        ----------
        values : ndarray of shape (n, K)
            Raw targets.

        Returns
        -------
        ndarray of shape (n, K)
            ``(values - mean) / std``.
        """
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.std

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """Restore raw units.

        Parameters
        ----------
        values : ndarray of shape (n, K)
            Standardised values.

        Returns
        -------
        ndarray of shape (n, K)
            ``values * std + mean``.
        """
        return np.asarray(values, dtype=np.float64) * self.std + self.mean
