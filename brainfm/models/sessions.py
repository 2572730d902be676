"""Sessions: the runs of one participant session, preprocessed, with their connectivity."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brainfm.derivatives import parse_entities
from brainfm.errors import InputError
from brainfm.models.timeseries import (
    DEFAULT_SAMPLING_RATE_HZ,
    RunFile,
    fisher_z_connectivity,
    read_timeseries,
    resample_timeseries,
    standardise,
    valid_roi_mask,
)

LOGGER = logging.getLogger(__name__)


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
    expected_from: str = "the model",
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
    expected_from : str, optional
        What ``expected_roi_names`` come from, for the message (default ``"the model"``).

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
        if expected_roi_names is not None and list(expected_roi_names) != roi_names:
            raise InputError(f"{rf.path}: its ROI names do not match those of "
                             f"{expected_from}: {header_difference(roi_names, expected_roi_names)}"
                             "; use time series of the same atlas (or re-run its parcellation)")
        if names is None:
            names = roi_names
        elif roi_names != names:
            raise InputError(f"{rf.path}: its ROI names differ from those of the session's "
                             f"first run {run_files[0].path}: "
                             f"{header_difference(roi_names, names)}")
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


def segment_connectivity(session: SessionData, n_segments: int) -> list[np.ndarray]:
    """Fisher-z connectivity of consecutive, equal parts of a session's series.

    The session's (resampled, standardised) runs are concatenated and cut into ``n_segments``
    parts (the first ones a time point shorter when the length does not divide); each part's
    connectivity is a noisier view of the same brain, which the linear members train on as
    augmentation (:func:`brainfm.models.linear_member.fit_linear`).

    Parameters
    ----------
    session : SessionData
        The session.
    n_segments : int
        Number of parts (at least 1).

    Returns
    -------
    list of ndarray of shape (N, N), float32
        One connectivity matrix per part, in time order.
    """
    if n_segments < 1:
        raise ValueError(f"n_segments must be at least 1, not {n_segments}")
    series = np.concatenate([run.T for run in session.runs]).astype(np.float64)
    bounds = np.linspace(0, series.shape[0], n_segments + 1).astype(int)
    return [fisher_z_connectivity(series[lo:hi], session.roi_mask)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


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
        Run files, e.g. from :func:`~brainfm.models.timeseries.find_timeseries`.

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


def header_difference(found: Sequence[str], expected: Sequence[str]) -> str:
    """How an ROI header differs from the expected one, in words (count, or first column).

    Parameters
    ----------
    found, expected : sequence of str
        The file's ROI names and the expected ones, in column order.

    Returns
    -------
    str
        E.g. ``"199 columns where 200 are expected (CC200_137 is missing)"`` or ``"column 2 is
        'CC200_003' where 'CC200_002' is expected (same ROIs, another order)"``.
    """
    found, expected = [str(n) for n in found], [str(n) for n in expected]
    if len(found) != len(expected):
        missing = [n for n in expected if n not in set(found)][:3]
        extra = [n for n in found if n not in set(expected)][:3]
        what = "; ".join(part for part in (
            f"{', '.join(missing)} missing" if missing else "",
            f"{', '.join(extra)} unexpected" if extra else "") if part)
        return (f"{len(found)} columns where {len(expected)} are expected"
                + (f" ({what})" if what else ""))
    i = next(k for k, (a, b) in enumerate(zip(found, expected, strict=True)) if a != b)
    order = ("same ROIs, another order" if sorted(found) == sorted(expected)
             else "other ROI names")
    return f"column {i + 1} is {found[i]!r} where {expected[i]!r} is expected ({order})"


def _cohort_header(files: Sequence[RunFile]) -> tuple[list[str], str] | None:
    """The ROI header most of the cohort's files have, and how many have it; None if unread."""
    headers: Counter[tuple[str, ...]] = Counter()
    for rf in files:
        try:
            headers[tuple(str(c) for c in pd.read_csv(rf.path, sep="\t", nrows=0).columns)] += 1
        except (OSError, ValueError, pd.errors.ParserError):
            continue  # load_session names the unreadable file
    if not headers:
        return None
    header, count = headers.most_common(1)[0]
    return list(header), f"{count} of the {len(files)} files of the cohort"


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
        From :func:`~brainfm.models.timeseries.find_timeseries`.
    sampling_rate_hz : float, optional
        Common sampling rate.
    expected_roi_names : sequence of str, optional
        Required header; by default the header most of the files have, which all must match
        (so the message names the odd files, not the first one read).

    Returns
    -------
    list of SessionData
        One per (participant, session), in the order of ``files``.
    """
    files = list(files)
    groups = group_sessions(files)
    sessions: list[SessionData] = []
    names = list(expected_roi_names) if expected_roi_names is not None else None
    origin = "the model"
    if names is None:  # the header most files have: the odd file out is the one named
        found = _cohort_header(files)
        if found is not None:
            names, origin = found
    for i, runs in enumerate(groups.values()):
        sess = load_session(runs, sampling_rate_hz, names, expected_from=origin)
        names = sess.roi_names
        sessions.append(sess)
        if (i + 1) % 200 == 0:
            LOGGER.info("loaded %d/%d sessions", i + 1, len(groups))
    return sessions
