"""Age bands, the balanced criterion, recalibration, Mondrian intervals and the reliable range."""

from __future__ import annotations

import numpy as np
import pytest

from brainfm.models import age_bands as B
from brainfm.models import calibration as C


def test_balanced_mae_is_the_mean_of_band_maes() -> None:
    rng = np.random.default_rng(0)
    age = np.concatenate([rng.uniform(7, 13, 300), rng.uniform(13, 18, 200),
                          rng.uniform(18, 30, 60), rng.uniform(30, 60, 10)])
    pred = age + rng.normal(0, 1, age.size) - 10 * (age >= 30)
    bands = [(0, 13), (13, 18), (18, 30), (30, np.inf)]  # float64 loop reference
    reference = np.mean([np.mean(np.abs(pred - age)[(age >= lo) & (age < hi)])
                         for lo, hi in bands])
    assert B.balanced_mae(age, pred) == pytest.approx(reference, rel=1e-12)
    assert B.balanced_weights(age).sum() == pytest.approx(1.0)
    # the 10 adults weigh a quarter: the pooled MAE hides them
    assert B.balanced_mae(age, pred) > 2 * np.mean(np.abs(pred - age))
    table = B.band_table(age, pred)
    assert [r["band"] for r in table] == ["<13", "13-18", "18-30", ">=30"]
    assert table[3]["n"] == 10 and table[3]["bias"] == pytest.approx(-10, abs=1)
    # candidates as rows
    rows = B.balanced_mae(age, np.stack([pred, age]))
    assert rows.shape == (2,) and rows[1] == 0.0


def test_band_edges_are_half_open() -> None:
    assert B.assign_bands([12.99, 13.0, 18.0, 30.0, np.nan]).tolist() == [0, 1, 2, 3, -1]
    assert B.band_labels([18]) == ["<18", ">=18"]


def test_recalibration_inverts_regression_to_the_mean_without_the_held_fold() -> None:
    rng = np.random.default_rng(1)
    truth = rng.uniform(7, 50, 400)
    pred = 0.5 * truth + 9 + rng.normal(0, 1.5, truth.size)
    folds = [np.arange(k, truth.size, 4) for k in range(4)]
    weights = np.full(truth.size, 1 / truth.size)
    fitted, crossed = C.fit_recalibration(truth, pred, weights, folds, (7, 50))
    assert fitted["slope"] == pytest.approx(0.5, abs=0.03)
    assert fitted["intercept"] == pytest.approx(9, abs=1)
    assert np.mean(np.abs(crossed - truth)) < 0.5 * np.mean(np.abs(pred - truth))
    # each fold is corrected by the line of the other folds only (numpy polyfit reference)
    held = folds[2]
    rest = np.setdiff1d(np.arange(truth.size), held)
    slope, intercept = np.polyfit(truth[rest], pred[rest], 1)
    np.testing.assert_allclose(crossed[held], np.clip((pred[held] - intercept) / slope, 7, 50))
    # a flat relation is not inverted
    assert C.fit_recalibration(truth, rng.normal(20, 1, truth.size), weights, folds,
                               (7, 50))[0] is None


def test_mondrian_intervals_hold_in_every_bin_and_follow_the_bias() -> None:
    rng = np.random.default_rng(2)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        pred = rng.uniform(5, 40, n)
        # young predictions: small symmetric errors; old: large errors, truth above (skewed)
        resid = np.where(pred < 20, rng.normal(0, 1, n), np.abs(rng.normal(0, 8, n)))
        return pred, resid

    pred, resid = draw(2000)
    bins = C.fit_mondrian_intervals(pred, resid, [20.0], [0.9])
    assert bins["edges"] == [20.0]
    (lo_young, hi_young), (lo_old, hi_old) = bins["offsets"]["0.9"]
    assert hi_old > 3 * hi_young and lo_old > -1  # asymmetric where the residuals are
    # the conformal quantiles are order statistics of each bin's residuals
    old = np.sort(resid[pred >= 20])
    n = old.size
    assert hi_old == old[int(np.ceil((n + 1) * 0.95)) - 1]
    assert lo_old == old[int(np.floor((n + 1) * 0.05)) - 1]
    fresh_pred, fresh_resid = draw(4000)
    for inside_bin in (fresh_pred < 20, fresh_pred >= 20):
        offs = np.array([C.interval_offsets(bins, p, 0.9) for p in fresh_pred[inside_bin]])
        r = fresh_resid[inside_bin]
        coverage = np.mean((r >= offs[:, 0]) & (r <= offs[:, 1]))
        assert 0.87 <= coverage <= 0.94


def test_sparse_bins_are_merged_into_a_neighbour() -> None:
    pred = np.concatenate([np.full(100, 10.0), np.full(100, 15.0), np.full(5, 35.0)])
    bins = C.fit_mondrian_intervals(pred, np.zeros(pred.size), [13, 18, 30], [0.9], min_n=40)
    assert bins["edges"] == [13]  # 18-30 was empty, >= 30 too small: both joined 13-18
    assert bins["n"] == [100, 105]


def test_reliable_range_excludes_the_biased_band() -> None:
    rng = np.random.default_rng(3)
    child = rng.uniform(7, 17, 500)
    adult = rng.uniform(18, 60, 150)
    truth = np.concatenate([child, adult])
    # children resolved, adults all predicted about 21 y whatever their age
    pred = np.concatenate([child + rng.normal(0, 1.5, child.size), rng.normal(21, 2, 150)])
    rel = C.fit_reliable_range(truth, pred, [13, 18, 30], float(truth.mean()))
    flags = {row["predicted"]: row["reliable"] for row in rel["bins"]}
    assert flags["<13"] and flags["13-18"] and not flags["18-30"]
    assert rel["range"] == [None, 18.0]
    assert C.in_reliable_range(rel, 12.0) and not C.in_reliable_range(rel, 22.0)
    assert C.expected_mae(rel, 22.0) == rel["bins"][2]["mae"]
    # a target no better than its mean is reliable nowhere
    noise = rng.normal(100, 15, 600)
    flat = C.fit_reliable_range(noise, np.full(600, 100.0) + rng.normal(0, 1, 600), [],
                                float(noise.mean()))
    assert flat["range"] is None and not C.in_reliable_range(flat, 100.0)
