"""Evaluation tables of the accuracy benchmark: pooled, per site, per age band, coverage, paired.

Plain functions over the benchmark's fold records (``accuracy.py``): each record holds the test
predictions of one fold (``predictions``: ``participant_id``, one list per target, and for the
shipped recipe the interval columns). Everything pools the test predictions of all folds, so
each subject counts once per protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from brainfm.models.age_bands import DEFAULT_EDGES, balanced_weights, band_labels
from brainfm.models.evaluation import interval_coverage

#: Age bands of the report (years): label -> [low, high) (brainfm.models.age_bands).
AGE_BANDS = dict(zip(band_labels(DEFAULT_EDGES),
                     zip((0.0, *DEFAULT_EDGES), (*DEFAULT_EDGES, np.inf), strict=True),
                     strict=True))


def pooled(records: Sequence[dict[str, Any]], index: dict[str, int], column: str
           ) -> tuple[np.ndarray, np.ndarray]:
    """Cohort indices and pooled values of one prediction column over all folds."""
    idx = np.array([index[p] for r in records for p in r["predictions"]["participant_id"]],
                   dtype=int)
    values = np.array([np.nan if v is None else v for r in records
                       for v in r["predictions"][column]], dtype=np.float64)
    return idx, values


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float | int | None]:
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    out: dict[str, float | int | None] = {"n": int(ok.sum()), "mae": None, "mean_error": None,
                                          "r": None}
    if y.size:
        out["mae"] = float(np.mean(np.abs(p - y)))
        out["mean_error"] = float(np.mean(p - y))
    if y.size > 2 and y.std() > 0 and p.std() > 0:
        out["r"] = float(np.corrcoef(y, p)[0, 1])
    return out


def band_table(truth: np.ndarray, idx: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """MAE, mean error and n per age band (``truth`` is the cohort's age)."""
    age = truth[idx]
    return {band: _metrics(age[(age >= lo) & (age < hi)], pred[(age >= lo) & (age < hi)])
            for band, (lo, hi) in AGE_BANDS.items()}


def site_table(truth: np.ndarray, sites: np.ndarray, idx: np.ndarray, pred: np.ndarray
               ) -> dict[str, Any]:
    """MAE, mean error, r and n per site."""
    s = sites[idx]
    return {site: _metrics(truth[idx][s == site], pred[s == site])
            for site in sorted(set(s.tolist()))}


def coverage(truth: np.ndarray, age: np.ndarray, idx: np.ndarray, lower: np.ndarray,
             upper: np.ndarray) -> dict[str, Any]:
    """Share of true values inside ``[lower, upper]``, overall and per age band.

    The cohort-indexed form of :func:`brainfm.models.evaluation.interval_coverage` (its home).

    Parameters
    ----------
    truth : ndarray
        The target of every cohort subject.
    age : ndarray
        Age of every cohort subject (for the bands).
    idx : ndarray of int
        Cohort indices of the predictions.
    lower, upper : ndarray
        Interval bounds, aligned with ``idx``.

    Returns
    -------
    dict
        ``all`` and each band: ``coverage`` and ``n``; plus the median interval ``width``.
    """
    return interval_coverage(truth[idx], lower, upper, age[idx], DEFAULT_EDGES)


def paired_mae_ratio(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, groups: np.ndarray,
                     n_boot: int = 2000, seed: int = 0, balanced: bool = False
                     ) -> dict[str, Any]:
    """MAE of A over MAE of B on the same subjects, with bootstrap CIs.

    Two bootstraps: over subjects, and over groups (sites: whole sites are resampled, which is
    the honest one when errors are correlated within a site).

    Parameters
    ----------
    y, pred_a, pred_b : ndarray of shape (n,)
        Truth and the two models' predictions of the same subjects.
    groups : ndarray of shape (n,)
        Site of each subject.
    n_boot : int
        Bootstrap replicates.
    seed : int
        Seed.
    balanced : bool
        Compare age-balanced MAEs (the mean of the per-band MAEs, bands of ``y``), with the
        band weights recomputed in every resample.

    Returns
    -------
    dict
        ``ratio``, ``difference`` (MAE A − MAE B), ``ci95_subjects`` and ``ci95_sites`` of the
        ratio, ``n``.
    """
    ok = np.isfinite(y) & np.isfinite(pred_a) & np.isfinite(pred_b)
    ea, eb, g = np.abs(pred_a[ok] - y[ok]), np.abs(pred_b[ok] - y[ok]), np.asarray(groups)[ok]
    yy = y[ok]

    def maes(s: np.ndarray) -> tuple[float, float]:
        w = balanced_weights(yy[s]) if balanced else np.full(s.size, 1.0 / s.size)
        return float(ea[s] @ w), float(eb[s] @ w)

    rng = np.random.default_rng(seed)
    n = ea.size
    boot_subjects = []
    for _ in range(n_boot):
        a, b = maes(rng.integers(0, n, n))
        boot_subjects.append(a / b)
    names = np.array(sorted(set(g.tolist())))
    members = [np.flatnonzero(g == name) for name in names]
    boot_sites = []
    for _ in range(n_boot):
        pick = rng.integers(0, names.size, names.size)
        a, b = maes(np.concatenate([members[i] for i in pick]))
        boot_sites.append(a / b)
    mae_a, mae_b = maes(np.arange(n))
    return {"n": int(n), "ratio": mae_a / mae_b, "difference": mae_a - mae_b,
            "ci95_subjects": [float(v) for v in np.percentile(boot_subjects, [2.5, 97.5])],
            "ci95_sites": [float(v) for v in np.percentile(boot_sites, [2.5, 97.5])]}


def share_by_band(age: np.ndarray, idx: np.ndarray, flag: np.ndarray) -> dict[str, Any]:
    """Share of subjects with a true flag, overall and per band of true age (NaN flags skipped)."""
    a = age[idx]
    f = np.asarray(flag, dtype=np.float64)
    ok = np.isfinite(f)

    def entry(mask: np.ndarray) -> dict[str, Any]:
        m = mask & ok
        return {"n": int(m.sum()), "share": float(f[m].mean()) if m.any() else None}

    out = {"all": entry(np.ones_like(ok))}
    for band, (lo, hi) in AGE_BANDS.items():
        out[band] = entry((a >= lo) & (a < hi))
    return out
