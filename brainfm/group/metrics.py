"""Accuracy metrics of predictions against known values (MAE, RMSE, Pearson r, R²).

R² is the coefficient of determination ``1 - SS_res / SS_tot`` of the predictions themselves
(scikit-learn's convention): it is negative when the predictions are worse than the cohort mean,
and it is *not* the square of Pearson's r.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

#: Fewest pairs for which a correlation and R² are reported (below: ``None``).
MIN_PAIRS = 3


def _clean_pairs(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    true = np.asarray(y_true, dtype=float).ravel()
    pred = np.asarray(y_pred, dtype=float).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} values but y_pred has {pred.size}")
    keep = np.isfinite(true) & np.isfinite(pred)
    return true[keep], pred[keep]


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def pearson_r(x: Any, y: Any) -> float | None:
    """Pearson correlation of the finite pairs of ``x`` and ``y``.

    Parameters
    ----------
    x, y : array-like
        Paired values; pairs with a NaN on either side are dropped.

    Returns
    -------
    float or None
        The correlation, or ``None`` with fewer than :data:`MIN_PAIRS` pairs or a constant side.
    """
    a, b = _clean_pairs(x, y)
    if a.size < MIN_PAIRS or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return _finite_or_none(stats.pearsonr(a, b)[0])


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """Accuracy of ``y_pred`` against ``y_true``.

    Parameters
    ----------
    y_true, y_pred : array-like
        Known and predicted values, paired; pairs with a NaN on either side are dropped.

    Returns
    -------
    dict
        ``n`` (pairs used), ``mae``, ``rmse``, ``mean_error`` (mean of ``pred - true``),
        ``pearson_r``, ``pearson_p`` and ``r2`` (coefficient of determination). Values that cannot
        be computed (no pairs; fewer than :data:`MIN_PAIRS` pairs or a constant side for r and
        R²) are ``None``.
    """
    true, pred = _clean_pairs(y_true, y_pred)
    out: dict[str, Any] = {"n": int(true.size), "mae": None, "rmse": None, "mean_error": None,
                           "pearson_r": None, "pearson_p": None, "r2": None}
    if true.size == 0:
        return out
    err = pred - true
    out["mae"] = float(np.mean(np.abs(err)))
    out["rmse"] = float(np.sqrt(np.mean(err**2)))
    out["mean_error"] = float(np.mean(err))
    if true.size >= MIN_PAIRS and np.ptp(true) > 0:
        ss_tot = float(np.sum((true - true.mean()) ** 2))
        out["r2"] = _finite_or_none(1.0 - float(np.sum(err**2)) / ss_tot)
        if np.ptp(pred) > 0:
            r, p = stats.pearsonr(true, pred)
            out["pearson_r"] = _finite_or_none(r)
            out["pearson_p"] = _finite_or_none(p)
    return out
