"""ROI time-series derivatives as model inputs: discovery, reading and preprocessing.

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
6. cut windows: random windows for training (:class:`~brainfm.models.windows.WindowDataset`),
   sliding windows for prediction (:func:`~brainfm.models.windows.sliding_windows`).

Steps 1-5 are here; sessions are :mod:`brainfm.models.sessions`, windows
:mod:`brainfm.models.windows`, targets (``participants.tsv``) :mod:`brainfm.models.targets`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import resample_poly

from brainfm.atlases import atlas_key, atlas_label
from brainfm.derivatives import parse_entities, strip_prefix
from brainfm.errors import InputError
from brainfm.fileio import write_json_atomic, write_tsv_atomic
from brainfm.postproc.connectivity import fisher_z

#: Default common sampling rate of the model inputs (Hz); 0.5 Hz is a repetition time of 2 s.
DEFAULT_SAMPLING_RATE_HZ = 0.5

TIMESERIES_SUFFIX = "_stat-mean_timeseries.tsv"


#: Standard deviation below which an ROI time series counts as constant.
_CONSTANT_EPS = 1e-8


#: Largest absolute correlation before the Fisher transform (keeps arctanh finite).
_R_CLIP = 1.0 - 1e-6


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
        Atlas label as in the ``atlas-`` entity (``CC200``, ``Schaefer200`` ...) or a built-in
        atlas name (``Schaefer2018-200``, mapped by :func:`brainfm.atlases.atlas_label`);
        matched case-insensitively and ignoring ``-``/``_``.
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
    label = atlas_label(atlas)
    wanted_atlas = atlas_key(label)
    keep = None if participants is None else {strip_prefix(p, "sub-") for p in participants}
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
            if atlas_key(ent["atlas"]) != wanted_atlas:
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
        asked = f" (atlas {atlas})" if label != str(atlas).strip() else ""
        raise InputError(
            f"no '*_atlas-{label}{TIMESERIES_SUFFIX}' files{asked} found under {where}{other}; "
            "run the participant level or brainfm-import first, or pick another --atlas"
        )
    return found


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
        conn[np.ix_(idx, idx)] = fisher_z(sub.T @ sub, clip=_R_CLIP)
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
    write_tsv_atomic(path, frame, float_format="%.6g")
    write_json_atomic(path.with_name(path.name[: -len(".tsv")] + ".json"), meta)
    return path
