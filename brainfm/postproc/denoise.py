"""Denoising of ROI mean signals: censoring, confound regression, trends and band-pass.

Denoising is applied to the ROI means rather than to every voxel. This is mathematically the
same as denoising each voxel and then averaging over the parcel, because every step here is
linear in the data and uses the same design and sample mask for all voxels: cubic-spline
interpolation of censored volumes, polynomial detrending, Butterworth filtering and projection
onto the orthogonal complement of the confounds (no standardisation, no voxel-dependent
weights), and it costs N ROI series instead of ~200,000 voxel series.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from nilearn import signal as nsignal
from scipy.interpolate import CubicSpline

from brainfm.errors import InputError, ProcessingError, UsageError
from brainfm.postproc.censoring import censoring_mask, outliers_table
from brainfm.postproc.confounds import band_pass, get_strategy, select_confounds

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DenoiseResult:
    """Outcome of :func:`denoise_roi_signals` for one run.

    Attributes
    ----------
    timeseries : numpy.ndarray, shape (T_retained, N)
        Denoised ROI signals of the retained volumes (censored and dummy volumes removed);
        ROIs that were NaN on input stay NaN. Shape ``(0, N)`` when the run is excluded.
    design_matrix : pandas.DataFrame
        Nuisance regressors plus trend columns, one row per input volume (T rows).
    sample_mask : numpy.ndarray of bool, shape (T,)
        ``True`` for retained volumes.
    outliers : pandas.DataFrame
        ``framewise_displacement``, ``outlier`` (0/1), ``dummy`` (0/1) per volume.
    retained_seconds : float
        Retained volumes times the repetition time.
    excluded_reason : str or None
        Why the run is excluded (too little data left), else ``None``.
    high_pass, low_pass : float or None
        Band-pass edges actually applied (Hz; ``None`` = off).
    """

    timeseries: np.ndarray
    design_matrix: pd.DataFrame
    sample_mask: np.ndarray
    outliers: pd.DataFrame
    retained_seconds: float
    excluded_reason: str | None
    high_pass: float | None = None
    low_pass: float | None = None


def trend_regressors(n_volumes: int, order: int) -> pd.DataFrame:
    """Polynomial trend regressors over the whole run (Legendre polynomials, no constant).

    Parameters
    ----------
    n_volumes : int
        Number of volumes.
    order : int
        0 (none), 1 (linear) or 2 (linear and quadratic).

    Returns
    -------
    pandas.DataFrame
        Columns ``trend_linear`` and, for order 2, ``trend_quadratic``. They are defined on the
        acquisition time of every volume, so they stay correct when volumes are censored.
    """
    t = np.linspace(-1.0, 1.0, n_volumes) if n_volumes > 1 else np.zeros(n_volumes)
    columns = {}
    if order >= 1:
        columns["trend_linear"] = t
    if order >= 2:
        columns["trend_quadratic"] = 1.5 * t**2 - 0.5
    return pd.DataFrame(columns, index=pd.RangeIndex(n_volumes), dtype=np.float64)


def _interpolate_censored(signals: np.ndarray, design: np.ndarray, keep: np.ndarray,
                          tr: float) -> tuple[np.ndarray, np.ndarray]:
    """Replace censored volumes inside the run by a cubic spline through the retained ones."""
    times = np.arange(keep.size) * tr
    out = []
    for values in (signals, design):
        if values.shape[1] == 0:
            out.append(values)
            continue
        filled = values.copy()
        spline = CubicSpline(times[keep], values[keep], axis=0, extrapolate=False)
        filled[~keep] = spline(times[~keep])
        out.append(filled)
    return out[0], out[1]


def _exclusion_text(retained: float, fd_thresh: float, dummy_scans: int,
                    min_time: float) -> str:
    steps = []
    if fd_thresh is not None and fd_thresh > 0:
        steps.append(f"censoring at FD > {fd_thresh:g} mm")
    if dummy_scans:
        steps.append(f"dropping {int(dummy_scans)} dummy scans")
    how = f" after {' and '.join(steps)}" if steps else ""
    return f"only {retained:.1f} s retained{how} (minimum {min_time:g} s)"


#: A run is excluded when fewer than this share of an atlas' ROIs carry a signal.
MIN_SIGNAL_ROI_FRACTION = 0.5


def signal_exclusion(timeseries: np.ndarray, atlas: str) -> str | None:
    """Why a denoised run carries too little signal to use, or None when it is fine.

    Parameters
    ----------
    timeseries : numpy.ndarray, shape (T, N)
        Denoised ROI signals of one atlas (n/a columns: no signal).
    atlas : str
        Atlas label, for the message.

    Returns
    -------
    str or None
        The exclusion reason when fewer than :data:`MIN_SIGNAL_ROI_FRACTION` of the ROIs have a
        finite, non-constant signal.
    """
    x = np.asarray(timeseries, dtype=np.float64)
    n = x.shape[1]
    with np.errstate(invalid="ignore"):
        ok = np.all(np.isfinite(x), axis=0) & (np.ptp(np.nan_to_num(x), axis=0) > 0) \
            if x.shape[0] else np.zeros(n, dtype=bool)
    if n and ok.sum() < MIN_SIGNAL_ROI_FRACTION * n:
        return (f"only {int(ok.sum())} of {n} {atlas} ROIs carry a signal (the BOLD is empty, "
                "constant or outside the brain mask there); check the preprocessed run")
    return None


@dataclass
class RunInputs:
    """What :func:`check_run_inputs` found usable in a run's confounds and options."""

    design: pd.DataFrame
    fd: np.ndarray
    high_pass: float | None
    low_pass: float | None


def check_run_inputs(confounds: pd.DataFrame, n_volumes: int, *, tr: float, strategy: str,
                     fd_thresh: float | None, lower_bpf: float | None, upper_bpf: float | None,
                     confounds_file: str | Path = "") -> RunInputs:
    """Check one run's confounds and the options against each other, before any denoising.

    The one home of these checks: the participant level calls it for every run before any work
    (:mod:`brainfm.bidsapp.preflight`), the denoising node again on the same files.

    Parameters
    ----------
    confounds : pandas.DataFrame
        The run's fMRIPrep confounds table.
    n_volumes : int
        Volumes of the BOLD run.
    tr : float
        Repetition time in seconds.
    strategy : str
        Denoising strategy.
    fd_thresh : float or None
        FD censoring threshold in mm (``<= 0`` or None: off).
    lower_bpf, upper_bpf : float or None
        Band-pass overrides (see :func:`~brainfm.postproc.confounds.band_pass`).
    confounds_file : str or Path, optional
        Where the table came from (named in messages).

    Returns
    -------
    RunInputs
        The strategy's design matrix (with trends), the FD trace (NaN where absent), and the
        band-pass edges in force (a low-pass at or above Nyquist is switched off, logged).

    Raises
    ------
    UsageError
        Non-positive TR, inverted band-pass, or a high-pass at or above the Nyquist frequency.
    InputError
        Rows differ from the volumes, columns the strategy needs are missing or not numeric, or
        FD censoring is asked for and the FD column is absent or n/a after the first volume.
    """
    where = str(confounds_file) or "(confounds table)"
    if tr is None or not np.isfinite(tr) or tr <= 0:
        raise UsageError(f"repetition time must be a positive number of seconds, got {tr}")
    spec = get_strategy(strategy)
    high, low = band_pass(strategy, lower_bpf, upper_bpf)
    if len(confounds) != n_volumes:
        raise InputError(
            f"confounds file {where} has {len(confounds)} rows but the BOLD run has {n_volumes} "
            "volumes; use the confounds file fMRIPrep wrote for this run (one row per volume)"
        )
    design = pd.concat(
        [select_confounds(confounds, strategy, str(confounds_file)),
         trend_regressors(n_volumes, spec.detrend_order)], axis=1)
    censoring = fd_thresh is not None and fd_thresh > 0
    if "framewise_displacement" in confounds.columns:
        fd = pd.to_numeric(confounds["framewise_displacement"], errors="coerce").to_numpy(float)
        missing = np.flatnonzero(~np.isfinite(fd[1:])) + 1  # fMRIPrep leaves only the first n/a
        if censoring and missing.size:
            raise InputError(
                f"confounds file {where}: framewise_displacement is n/a or not a number in "
                f"{missing.size} volume(s) after the first (e.g. row {int(missing[0]) + 1}), so "
                f"censoring at FD > {fd_thresh:g} mm cannot be applied; use the confounds file "
                "fMRIPrep wrote for this run, or --fd-thresh 0 to turn censoring off"
            )
    elif censoring:
        raise InputError(
            f"confounds file {where} has no framewise_displacement column, needed for "
            f"censoring at FD > {fd_thresh:g} mm; use fMRIPrep's confounds or --fd-thresh 0"
        )
    else:
        fd = np.full(n_volumes, np.nan)
    nyquist = 0.5 / tr
    if high is not None and high >= nyquist:
        raise UsageError(
            f"high-pass cutoff {high:g} Hz is at or above the Nyquist frequency {nyquist:g} Hz "
            f"(TR {tr:g} s of {where}); lower --lower-bpf or set it to 0"
        )
    if low is not None and low >= nyquist:
        LOGGER.warning("low-pass %g Hz is at or above the Nyquist frequency %g Hz (TR %g s): "
                       "no low-pass filtering", low, nyquist, tr)
        low = None
    return RunInputs(design, fd, high, low)


def denoise_roi_signals(timeseries: np.ndarray, confounds: pd.DataFrame, *, tr: float,
                        strategy: str, fd_thresh: float, dummy_scans: int,
                        lower_bpf: float | None, upper_bpf: float | None, min_time: float,
                        confounds_file: str = "") -> DenoiseResult:
    """Censor, regress confounds from, detrend and band-pass one run's ROI signals.

    Every step is linear, so denoising ROI means equals denoising voxels and then averaging (see
    the module docstring). The work is done by :func:`nilearn.signal.clean` with
    ``detrend=True``, ``standardize=None``, ``filter='butterworth'`` (order 5, zero phase),
    confounds z-scored, and the sample mask. With a band-pass, nilearn 0.14.1 fills censored
    volumes by cubic-spline interpolation, detrends and filters signals and confounds alike
    (Lindquist et al., Human Brain Mapping 2019), then drops the censored volumes and regresses
    the confounds on the retained ones; without a band-pass it drops the censored volumes first.

    Two details of nilearn 0.14.1 are handled here. (1) Censored volumes at the start or end of
    the run are not extrapolated, so the run is first trimmed to its first..last retained
    volume. (2) Its interpolation indexes the censored volumes with ``~`` applied to an integer
    index array, which misses censored volumes whose mirror position (T-1-t) is also censored:
    those would enter the filter with their original, motion-corrupted values. The censored
    volumes are therefore interpolated here first (the same cubic spline through the same
    retained volumes), which makes nilearn's own interpolation a no-op.

    Parameters
    ----------
    timeseries : numpy.ndarray, shape (T, N)
        Raw ROI mean signals; a column with any non-finite value is an unusable ROI (output NaN).
    confounds : pandas.DataFrame
        The full fMRIPrep confounds table of the run (T rows).
    tr : float
        Repetition time in seconds.
    strategy : str
        Denoising strategy (see :mod:`brainfm.postproc.confounds`).
    fd_thresh : float
        Framewise-displacement threshold in mm; ``<= 0`` disables FD censoring.
    dummy_scans : int
        Initial volumes to drop.
    lower_bpf, upper_bpf : float or None
        High-pass and low-pass cutoffs (Hz); ``None`` = strategy default, ``0`` = off. A
        low-pass at or above the Nyquist frequency is switched off (logged).
    min_time : float
        Minimum retained time in seconds; below it the run is excluded.
    confounds_file : str, optional
        Path of the confounds table, named in error messages.

    Returns
    -------
    DenoiseResult

    Raises
    ------
    InputError
        The confounds table has a different number of rows than there are volumes, lacks
        required columns, or has missing values beyond the leading derivative rows.
    UsageError
        Bad options (unknown strategy, non-positive TR, high-pass at or above Nyquist, ...).
    ProcessingError
        nilearn failed unexpectedly.
    """
    signals = np.asarray(timeseries, dtype=np.float64)
    where = confounds_file or "(confounds table)"
    if signals.ndim != 2:
        raise InputError(f"ROI signals must be a (volumes, ROIs) array, got shape {signals.shape}")
    n_vols, n_rois = signals.shape
    if min_time is None or min_time < 0:
        raise UsageError(f"--min-time must be >= 0 seconds, got {min_time}")
    checked = check_run_inputs(confounds, n_vols, tr=tr, strategy=strategy, fd_thresh=fd_thresh,
                               lower_bpf=lower_bpf, upper_bpf=upper_bpf,
                               confounds_file=confounds_file)
    design, fd, high, low = checked.design, checked.fd, checked.high_pass, checked.low_pass
    keep = censoring_mask(fd, fd_thresh, dummy_scans)
    outliers = outliers_table(fd, keep, fd_thresh, dummy_scans)
    n_keep = int(keep.sum())
    retained = float(n_keep * tr)

    def result(series: np.ndarray, reason: str | None) -> DenoiseResult:
        return DenoiseResult(series, design, keep, outliers, retained, reason, high, low)

    n_regressors = design.shape[1]
    if retained < min_time:
        return result(np.empty((0, n_rois)), _exclusion_text(retained, fd_thresh, dummy_scans,
                                                             min_time))
    if n_keep <= n_regressors + 1:
        return result(np.empty((0, n_rois)),
                      f"only {n_keep} volumes retained for {n_regressors} regressors")

    out = np.full((n_keep, n_rois), np.nan)
    usable = np.all(np.isfinite(signals), axis=0)
    partial = ~usable & np.any(np.isfinite(signals), axis=0)
    with np.errstate(invalid="ignore"):
        usable &= np.ptp(np.where(np.isfinite(signals), signals, 0.0)[keep], axis=0) > 0
    # a constant (e.g. all-zero) ROI carries no signal: n/a, like one outside the field of view
    if partial.any():
        LOGGER.warning("%d ROI(s) have some non-finite values and are set to n/a",
                       int(partial.sum()))
    if not usable.any():
        return result(out, None)
    retained_idx = np.flatnonzero(keep)
    segment = slice(int(retained_idx[0]), int(retained_idx[-1]) + 1)
    seg_keep = keep[segment]
    x = signals[segment][:, usable]
    d = design.to_numpy(dtype=np.float64)[segment]
    filtering = high is not None or low is not None
    if filtering and not seg_keep.all():
        x, d = _interpolate_censored(x, d, seg_keep, tr)
    try:
        cleaned = nsignal.clean(
            x,
            confounds=d if d.shape[1] else None,
            sample_mask=None if seg_keep.all() else seg_keep,
            detrend=True,
            standardize=None,
            standardize_confounds=True,
            filter="butterworth" if filtering else False,
            low_pass=low,
            high_pass=high,
            t_r=tr,
            extrapolate=False,
        )
    except ValueError as err:
        if "padlen" in str(err):
            return result(np.empty((0, n_rois)),
                          f"the {x.shape[0]}-volume span of retained data is too short "
                          f"for the band-pass filter ({err})")
        raise ProcessingError(f"denoising failed for {where}: {err}") from err
    if cleaned.shape[0] != n_keep:
        raise ProcessingError(
            f"denoising {where}: nilearn returned {cleaned.shape[0]} volumes, expected {n_keep}"
        )
    out[:, usable] = cleaned
    return result(out, None)
