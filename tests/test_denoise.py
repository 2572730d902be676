"""Denoising of ROI signals and connectivity, with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainfm.errors import InputError, UsageError
from brainfm.postproc.confounds import MOTION_PARAMS
from brainfm.postproc.connectivity import fisher_z, pearson_connectivity
from brainfm.postproc.denoise import (
    DenoiseResult,
    denoise_roi_signals,
    signal_exclusion,
    trend_regressors,
)

TR = 2.0


def _confounds(n_vols: int, seed: int = 0, fd: np.ndarray | None = None) -> pd.DataFrame:
    """A synthetic fMRIPrep-like table: random-walk motion, tissue signals, FD."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(rng.standard_normal((n_vols, 6)).cumsum(axis=0) * 0.05,
                         columns=list(MOTION_PARAMS))
    for name in ("white_matter", "csf", "global_signal"):
        table[name] = 100 + rng.standard_normal(n_vols)
    if fd is None:
        fd = np.abs(rng.standard_normal(n_vols)) * 0.1
    table["framewise_displacement"] = fd
    table.loc[0, "framewise_displacement"] = np.nan
    return table


def _run(signals, confounds, **kwargs) -> DenoiseResult:
    options = {"tr": TR, "strategy": "24P", "fd_thresh": 0.0, "dummy_scans": 0,
               "lower_bpf": None, "upper_bpf": None, "min_time": 0.0}
    options.update(kwargs)
    return denoise_roi_signals(signals, confounds, **options)


def test_planted_motion_artefact_is_removed_by_24p_not_by_none():
    n_vols = 200
    confounds = _confounds(n_vols)
    rng = np.random.default_rng(3)
    neural = rng.standard_normal((n_vols, 4))
    motion = confounds[list(MOTION_PARAMS)].to_numpy()
    artefact = motion @ rng.standard_normal((6, 4)) * 20  # linear combination of the 6 params
    for strategy, removed in (("24P", True), ("none", False)):
        clean = _run(neural, confounds, strategy=strategy).timeseries
        dirty = _run(neural + artefact, confounds, strategy=strategy).timeseries
        left = dirty - clean  # the part of the artefact that survives (the pipeline is linear)
        art_only = _run(artefact, confounds, strategy="none").timeseries  # band-passed artefact
        fraction = np.sum(left**2) / np.sum(art_only**2)
        if removed:
            assert fraction < 0.01
        else:
            assert fraction > 0.99


def test_roi_denoising_equals_voxel_denoising_then_averaging():
    n_vols = 150
    fd = np.full(n_vols, 0.1)
    fd[[20, 21, 60, 129]] = 1.0  # censored, including a mirrored pair (20 and 129)
    confounds = _confounds(n_vols, fd=fd)
    rng = np.random.default_rng(5)
    voxels = rng.standard_normal((n_vols, 30)) + 50
    parcels = np.repeat(np.arange(3), 10)
    rois = np.stack([voxels[:, parcels == k].mean(axis=1) for k in range(3)], axis=1)
    kwargs = {"strategy": "36P", "fd_thresh": 0.5, "dummy_scans": 3}
    per_voxel = _run(voxels, confounds, **kwargs).timeseries
    averaged = np.stack([per_voxel[:, parcels == k].mean(axis=1) for k in range(3)], axis=1)
    np.testing.assert_allclose(_run(rois, confounds, **kwargs).timeseries, averaged,
                               atol=1e-10)


def test_censored_values_do_not_leak_into_the_filter():
    # Values of censored volumes must not matter, also for a censored volume whose mirror
    # position (T-1-t) is censored too (nilearn 0.14.1 does not interpolate those).
    n_vols = 120
    fd = np.full(n_vols, 0.1)
    censored = [0, 30, 45, 89, 119]  # 30 <-> 89 mirror each other; 0 and 119 at the ends
    fd[censored] = 2.0  # volume 0 has no FD (n/a in fMRIPrep): it goes as a dummy scan
    confounds = _confounds(n_vols, fd=fd)
    rng = np.random.default_rng(7)
    signals = rng.standard_normal((n_vols, 3))
    spiked = signals.copy()
    spiked[censored] += 1000.0
    a = _run(signals, confounds, fd_thresh=0.5, dummy_scans=1)
    b = _run(spiked, confounds, fd_thresh=0.5, dummy_scans=1)
    assert a.timeseries.shape == (n_vols - len(censored), 3)
    np.testing.assert_allclose(a.timeseries, b.timeseries, atol=1e-8)
    assert a.outliers["outlier"].sum() == len(censored) - 1


def test_censoring_shapes_and_nan_rois():
    n_vols = 100
    fd = np.full(n_vols, 0.1)
    fd[[10, 50]] = 0.9
    confounds = _confounds(n_vols, fd=fd)
    signals = np.random.default_rng(2).standard_normal((n_vols, 4))
    signals[:, 2] = np.nan
    result = _run(signals, confounds, strategy="pcp", fd_thresh=0.5, dummy_scans=4)
    assert result.timeseries.shape == (100 - 4 - 2, 4)
    assert np.isnan(result.timeseries[:, 2]).all()
    assert np.isfinite(result.timeseries[:, [0, 1, 3]]).all()
    assert result.sample_mask.sum() == 94 and result.retained_seconds == 94 * TR
    assert result.design_matrix.shape[0] == n_vols
    assert {"trend_linear", "trend_quadratic", "trans_x_lag1"} <= set(result.design_matrix)
    assert (result.high_pass, result.low_pass) == (0.01, 0.1)
    assert result.excluded_reason is None
    assert result.outliers["dummy"].sum() == 4 and result.outliers["outlier"].sum() == 2


def test_constant_rois_carry_no_signal_and_an_empty_run_is_excluded():
    """An all-zero (or constant) ROI is n/a like one outside the field of view; a run where most
    ROIs carry no signal is excluded with the reason, so no prediction comes from nothing."""
    n_vols = 80
    confounds = _confounds(n_vols)
    signals = np.random.default_rng(3).standard_normal((n_vols, 6))
    signals[:, 1] = 0.0
    signals[:, 4] = 7.5
    result = _run(signals, confounds)
    assert np.isnan(result.timeseries[:, [1, 4]]).all()
    assert np.isfinite(result.timeseries[:, [0, 2, 3, 5]]).all()
    assert signal_exclusion(result.timeseries, "Toy") is None  # 4 of 6 carry a signal
    empty = _run(np.zeros((n_vols, 6)), confounds)
    assert np.isnan(empty.timeseries).all()
    reason = signal_exclusion(empty.timeseries, "CC200")
    assert reason is not None and reason.startswith("only 0 of 6 CC200 ROIs carry a signal")
    assert signal_exclusion(np.empty((0, 6)), "CC200").startswith("only 0 of 6")


@pytest.mark.parametrize("value", [np.nan, "high"])
def test_unusable_fd_stops_censoring_instead_of_silently_keeping_volumes(value):
    n_vols = 60
    confounds = _confounds(n_vols)
    confounds["framewise_displacement"] = confounds["framewise_displacement"].astype(object)
    confounds.loc[1:, "framewise_displacement"] = value
    signals = np.random.default_rng(4).standard_normal((n_vols, 3))
    with pytest.raises(InputError, match="framewise_displacement is n/a or not a number in 59"):
        _run(signals, confounds, fd_thresh=0.5, confounds_file="sub-01_confounds.tsv")
    assert _run(signals, confounds, fd_thresh=0.0).excluded_reason is None  # censoring off


def test_min_time_exclusion():
    n_vols = 100
    fd = np.full(n_vols, 0.1)
    fd[1:59] = 0.9  # 58 high-motion volumes: 42 left = 84 s
    confounds = _confounds(n_vols, fd=fd)
    signals = np.random.default_rng(1).standard_normal((n_vols, 3))
    result = _run(signals, confounds, fd_thresh=0.5, min_time=120)
    assert result.excluded_reason == (
        "only 84.0 s retained after censoring at FD > 0.5 mm (minimum 120 s)")
    assert result.timeseries.shape == (0, 3)
    assert result.retained_seconds == 84.0
    kept = _run(signals, confounds, fd_thresh=0.5, min_time=60)
    assert kept.excluded_reason is None and kept.timeseries.shape == (42, 3)


def test_band_pass_is_applied():
    n_vols = 300
    confounds = _confounds(n_vols)
    t = np.arange(n_vols) * TR
    slow, fast = np.sin(2 * np.pi * 0.04 * t), np.sin(2 * np.pi * 0.2 * t)
    result = _run(np.stack([slow + fast], axis=1), confounds, strategy="none")
    out = result.timeseries[:, 0]
    assert np.corrcoef(out, slow)[0, 1] > 0.95
    unfiltered = _run(np.stack([slow + fast], axis=1), confounds, strategy="none",
                      lower_bpf=0, upper_bpf=0).timeseries[:, 0]
    assert np.corrcoef(unfiltered, fast)[0, 1] > 0.6
    # low-pass above Nyquist is switched off; high-pass above it is an error
    assert _run(np.ones((n_vols, 1)) + slow[:, None], confounds, strategy="none",
                tr=7.0).low_pass is None
    with pytest.raises(UsageError, match="Nyquist"):
        _run(slow[:, None], confounds, tr=7.0, lower_bpf=0.075, upper_bpf=0.2)


def test_wrong_row_count_names_file_and_counts():
    confounds = _confounds(90)
    with pytest.raises(InputError) as err:
        _run(np.zeros((100, 2)), confounds, confounds_file="sub-01_desc-confounds.tsv")
    message = str(err.value)
    assert "sub-01_desc-confounds.tsv" in message and "90 rows" in message
    assert "100 volumes" in message


def test_nan_in_confounds_and_bad_options():
    confounds = _confounds(100)
    confounds.loc[40, "rot_x"] = np.nan
    with pytest.raises(InputError, match="rot_x"):
        _run(np.zeros((100, 2)), confounds, confounds_file="c.tsv")
    confounds = _confounds(100)
    with pytest.raises(UsageError, match="unknown denoising strategy"):
        _run(np.zeros((100, 2)), confounds, strategy="aroma")
    with pytest.raises(UsageError, match="repetition time"):
        _run(np.zeros((100, 2)), confounds, tr=0)
    with pytest.raises(InputError, match="framewise_displacement"):
        _run(np.zeros((100, 2)), confounds.drop(columns="framewise_displacement"),
             fd_thresh=0.5)


def test_trend_regressors():
    trends = trend_regressors(5, 2)
    assert list(trends.columns) == ["trend_linear", "trend_quadratic"]
    np.testing.assert_allclose(trends["trend_linear"], [-1, -0.5, 0, 0.5, 1])
    assert trend_regressors(5, 1).shape == (5, 1) and trend_regressors(5, 0).shape == (5, 0)


def test_pearson_connectivity_and_fisher_z():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4))
    x[:, 1] = 2 * x[:, 0] + 1
    x[:, 3] = np.nan
    r = pearson_connectivity(x)
    assert r.shape == (4, 4)
    np.testing.assert_allclose(r[0, 1], 1.0)
    np.testing.assert_allclose(r[:3, :3], np.corrcoef(x[:, :3].T), atol=1e-12)
    assert np.isnan(r[3]).all() and np.isnan(r[:, 3]).all()
    constant = pearson_connectivity(np.ones((10, 2)))
    assert np.isnan(constant).all()
    z = fisher_z(r)
    np.testing.assert_allclose(z[0, 2], np.arctanh(r[0, 2]))
    assert np.isfinite(z[0, 0]) and np.isnan(z[3, 3])
