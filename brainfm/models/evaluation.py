"""Accuracy of pooled out-of-fold predictions: headline metrics, age bands, coverage, spread.

The one home of the evaluation that ``brainfm-train cv`` reports and the accuracy benchmark
shares (``benchmarks/evaluation.py``): every figure is computed from the test predictions of all
outer folds pooled, so that each subject counts once; the spread over folds (mean ± sd) is
reported beside it, never as the headline (folds of a few subjects, e.g. one small site, give
fold correlations that say little).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from brainfm.models.age_bands import (
    DEFAULT_EDGES,
    assign_bands,
    balanced_mae,
    band_labels,
    band_table,
)
from brainfm.models.loop import regression_metrics


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def interval_coverage(y_true: Any, lower: Any, upper: Any, ages: Any | None = None,
                      edges: Sequence[float] = DEFAULT_EDGES) -> dict[str, dict[str, Any]]:
    """Share of true values inside ``[lower, upper]``, overall and per age band.

    Parameters
    ----------
    y_true, lower, upper : array-like of shape (n,)
        Known values and interval bounds (rows with a NaN are left out).
    ages : array-like of shape (n,), optional
        Ages that define the bands (default: ``y_true``); subjects without a finite age count
        in ``all`` only.
    edges : sequence of float
        Inner band edges (:mod:`brainfm.models.age_bands`).

    Returns
    -------
    dict
        ``all`` and each band label: ``n``, ``coverage`` and ``median_width`` (``None`` for an
        empty band).
    """
    y = np.asarray(y_true, dtype=np.float64)
    lo = np.asarray(lower, dtype=np.float64)
    hi = np.asarray(upper, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(lo) & np.isfinite(hi)
    inside = (y >= lo) & (y <= hi)
    band = assign_bands(y if ages is None else ages, edges)

    def entry(mask: np.ndarray) -> dict[str, Any]:
        m = mask & ok
        return {"n": int(m.sum()), "coverage": float(inside[m].mean()) if m.any() else None,
                "median_width": float(np.median((hi - lo)[m])) if m.any() else None}

    out = {"all": entry(np.ones(y.size, dtype=bool))}
    for k, label in enumerate(band_labels(edges)):
        out[label] = entry(band == k)
    return out


def fold_spread(y_true: Any, y_pred: Any, fold: Any) -> dict[str, dict[str, Any]]:
    """Mean and sd over outer folds of each fold's MAE, r and R² (the spread, not a headline).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        Pooled known and predicted values.
    fold : array-like of shape (n,)
        Outer fold of each row.

    Returns
    -------
    dict
        Per metric (``mae``, ``r``, ``r2``): ``mean``, ``sd`` (ddof 1) over the folds where it
        is defined, and ``per_fold``.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    f = np.asarray(fold)
    per = [regression_metrics(y[f == k], p[f == k]) for k in sorted(set(f.tolist()))]
    out: dict[str, dict[str, Any]] = {}
    for metric in ("mae", "r", "r2"):
        vals = np.array([m[metric] for m in per], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        out[metric] = {"mean": float(finite.mean()) if finite.size else None,
                       "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
                       "per_fold": [_finite_or_none(v) for v in vals]}
    return out


def evaluate_predictions(y_true: Any, y_pred: Any, fold: Any, ages: Any | None = None,
                         lower90: Any | None = None, upper90: Any | None = None,
                         edges: Sequence[float] = DEFAULT_EDGES) -> dict[str, Any]:
    """Evaluate one model's pooled out-of-fold predictions of one target.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        Known and predicted values, pooled over the outer folds (NaN rows are left out).
    fold : array-like of shape (n,)
        Outer fold of each row (for :func:`fold_spread`).
    ages : array-like of shape (n,), optional
        Ages of the subjects: with them, the per-band table and the age-balanced MAE.
    lower90, upper90 : array-like of shape (n,), optional
        90 % interval bounds: with them, the coverage overall and per band.
    edges : sequence of float
        Inner age-band edges.

    Returns
    -------
    dict
        ``pooled`` (``mae``, ``r``, ``r2``, ``n`` of all rows), ``balanced_mae`` and ``bands``
        (per band ``n``, ``mae``, ``bias`` and, with intervals, ``coverage_90``) when ages are
        given, ``coverage_90`` (overall and per band) when intervals are given, and
        ``fold_spread``.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(p)
    pooled = {k: _finite_or_none(v) if k != "n" else int(v)
              for k, v in regression_metrics(y, p).items()}
    out: dict[str, Any] = {"pooled": pooled}
    coverage = None
    if lower90 is not None and upper90 is not None:
        coverage = interval_coverage(y, lower90, upper90, ages, edges)
        out["coverage_90"] = coverage
    if ages is not None and ok.any():
        a = np.asarray(ages, dtype=np.float64)
        has_age = ok & np.isfinite(a)
        out["balanced_mae"] = (balanced_mae(y[has_age], p[has_age], a[has_age], edges)
                               if has_age.any() else None)
        bands = band_table(y, p, a, edges)
        if coverage is not None:
            for row in bands:
                row["coverage_90"] = coverage[row["band"]]["coverage"]
        out["bands"] = bands
    out["fold_spread"] = fold_spread(y[ok], p[ok], np.asarray(fold)[ok])
    return out


def correlation_ci(y: np.ndarray, pred: np.ndarray, groups: np.ndarray, n_boot: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """Pearson r with bootstrap 95 % CIs over subjects and over sites.

    Parameters
    ----------
    y, pred : ndarray of shape (n,)
        Known and predicted values (pairs with a NaN are left out).
    groups : ndarray of shape (n,)
        Site of each subject (whole sites are resampled for ``ci95_sites``).
    n_boot : int
        Bootstrap replicates.
    seed : int
        Seed.

    Returns
    -------
    dict
        ``n``, ``r``, ``ci95_subjects`` and ``ci95_sites`` (``None`` with fewer than 4 pairs or
        constant predictions).
    """
    ok = np.isfinite(y) & np.isfinite(pred)
    y, pred, g = y[ok], pred[ok], np.asarray(groups)[ok]
    out: dict[str, Any] = {"n": int(y.size), "r": None, "ci95_subjects": None, "ci95_sites": None}
    if y.size < 4 or pred.std() == 0:
        return out
    out["r"] = float(np.corrcoef(y, pred)[0, 1])
    rng = np.random.default_rng(seed)

    def r_of(s: np.ndarray) -> float:
        a, b = y[s], pred[s]
        return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else np.nan

    subj = [r_of(rng.integers(0, y.size, y.size)) for _ in range(n_boot)]
    names = np.array(sorted(set(g.tolist())))
    members = [np.flatnonzero(g == name) for name in names]
    site = [r_of(np.concatenate([members[i] for i in rng.integers(0, names.size, names.size)]))
            for _ in range(n_boot)]
    out["ci95_subjects"] = [float(v) for v in np.nanpercentile(subj, [2.5, 97.5])]
    out["ci95_sites"] = [float(v) for v in np.nanpercentile(site, [2.5, 97.5])]
    return out
