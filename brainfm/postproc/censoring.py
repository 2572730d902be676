"""Volume censoring: dummy scans and framewise-displacement outliers.

Choice, as in XCP-D: only the volume whose framewise displacement (FD, Power et al. 2012, mm)
exceeds the threshold is flagged, not its neighbours. FD of volume *t* measures the movement
between *t-1* and *t*, so the flagged volume is the one acquired after the movement. (Power et
al. 2014 also flagged neighbouring volumes; XCP-D and nilearn's ``load_confounds`` do not.)
The first FD value, which fMRIPrep leaves empty, counts as 0. Dummy (non-steady-state) volumes
at the start of the run are always dropped, whatever their FD.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from brainfm.errors import UsageError


def _as_fd(fd: np.ndarray) -> np.ndarray:
    values = np.asarray(fd, dtype=np.float64).reshape(-1)
    return np.where(np.isfinite(values), values, 0.0)


#: fMRIPrep's one-hot columns of the initial non-steady-state volumes it detected.
NON_STEADY_STATE_PREFIX = "non_steady_state_outlier"


def resolve_dummy_scans(dummy_scans: int | str, confounds: pd.DataFrame) -> int:
    """The dummy scans of a run: a number as given, or ``auto`` from fMRIPrep's confounds.

    Parameters
    ----------
    dummy_scans : int or "auto"
        ``--dummy-scans``.
    confounds : pandas.DataFrame
        The run's ``desc-confounds_timeseries.tsv``.

    Returns
    -------
    int
        For ``auto``, the number of ``non_steady_state_outlier_XX`` columns (the volumes
        fMRIPrep found before the steady state; 0 when there are none), as XCP-D counts them.
    """
    if dummy_scans != "auto":
        return int(dummy_scans)
    return sum(str(c).startswith(NON_STEADY_STATE_PREFIX) for c in confounds.columns)


def censoring_mask(fd: np.ndarray, fd_thresh: float, dummy_scans: int) -> np.ndarray:
    """Which volumes to keep.

    Parameters
    ----------
    fd : numpy.ndarray, shape (T,)
        Framewise displacement per volume in mm; missing values (NaN, e.g. the first volume)
        count as 0.
    fd_thresh : float
        Volumes with FD strictly above this are censored; ``<= 0`` disables FD censoring.
    dummy_scans : int
        Number of initial volumes always removed (``>= 0``).

    Returns
    -------
    numpy.ndarray of bool, shape (T,)
        ``True`` for retained volumes.

    Raises
    ------
    UsageError
        ``dummy_scans`` is negative.
    """
    if int(dummy_scans) != dummy_scans or dummy_scans < 0:
        raise UsageError(f"--dummy-scans must be a non-negative integer, got {dummy_scans}")
    values = _as_fd(fd)
    keep = np.ones(values.shape[0], dtype=bool)
    keep[: int(dummy_scans)] = False
    if fd_thresh is not None and fd_thresh > 0:
        keep &= ~(values > fd_thresh)
    return keep


def outliers_table(fd: np.ndarray, mask: np.ndarray, fd_thresh: float,
                   dummy_scans: int | None = None) -> pd.DataFrame:
    """Per-volume censoring record (written as the run's ``outliers.tsv``).

    Parameters
    ----------
    fd : numpy.ndarray, shape (T,)
        Framewise displacement (mm); NaN is written as missing.
    mask : numpy.ndarray of bool, shape (T,)
        Retained volumes, from :func:`censoring_mask`.
    fd_thresh : float
        The FD threshold used (``<= 0``: FD censoring was off).
    dummy_scans : int, optional
        Number of dummy volumes; when omitted, every removed volume that is not an FD outlier
        is marked as dummy.

    Returns
    -------
    pandas.DataFrame
        Columns ``framewise_displacement`` (float), ``outlier`` (0/1: FD above the threshold)
        and ``dummy`` (0/1: initial volume dropped). A volume can be both.
    """
    raw = np.asarray(fd, dtype=np.float64).reshape(-1)
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    if mask.shape != raw.shape:
        raise ValueError(f"mask has {mask.size} volumes but fd has {raw.size}")
    values = _as_fd(raw)
    outlier = (values > fd_thresh) if fd_thresh is not None and fd_thresh > 0 else (
        np.zeros(raw.shape, dtype=bool))
    if dummy_scans is None:
        dummy = ~mask & ~outlier
    else:
        dummy = np.arange(raw.size) < int(dummy_scans)
    return pd.DataFrame({
        "framewise_displacement": raw,
        "outlier": outlier.astype(int),
        "dummy": dummy.astype(int),
    })


def count_non_steady_state(confounds: pd.DataFrame) -> int:
    """Number of initial non-steady-state volumes fMRIPrep detected (for ``--dummy-scans auto``).

    Parameters
    ----------
    confounds : pandas.DataFrame
        fMRIPrep confounds table.

    Returns
    -------
    int
        Number of leading volumes flagged by the ``non_steady_state_outlier*`` columns (0 when
        there are none).
    """
    cols = [c for c in confounds.columns if re.fullmatch(r"non_steady_state_outlier_?\d+", str(c))]
    if not cols:
        return 0
    flagged = (confounds[cols].fillna(0).to_numpy(dtype=float) > 0).any(axis=1)
    leading = int(np.argmin(flagged)) if not flagged.all() else int(flagged.size)
    return leading
