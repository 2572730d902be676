"""Brain-age gap and its age-bias correction.

Predicted brain age regresses towards the training-sample mean, so the gap
``predicted - chronological`` correlates negatively with chronological age. Two standard
corrections remove that dependence:

``linear`` (Cole et al. 2018; Beheshti et al. 2019)
    Fit ``predicted = slope * age + intercept`` and invert it:
    ``predicted_corrected = (predicted - intercept) / slope``,
    ``gap_corrected = predicted_corrected - age``.
``residual`` (Smith et al. 2019; Le et al. 2018)
    Fit ``gap = slope * age + intercept`` and keep the residual:
    ``gap_corrected = gap - (slope * age + intercept)``,
    ``predicted_corrected = age + gap_corrected``.

Both use chronological age, so corrected predictions are no longer independent of the truth:
their MAE, r and R² against age are inflated and must not be reported as prediction accuracy
(Butler et al. 2021; de Lange & Cole 2020). Coefficients are fitted either on a separate
reference sample or out-of-fold (K-fold within the cohort, grouped by participant so that
sessions of one participant never sit on both sides).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Accepted values of ``--bias-correction``.
BIAS_METHODS = ("none", "linear", "residual")

#: Fewest (prediction, age) pairs a fit accepts.
MIN_FIT_PAIRS = 3

#: References of the correction methods, for the report's methods paragraph.
METHOD_REFERENCES = {
    "linear": "Cole JH et al. (2018) Mol Psychiatry 23:1385; Beheshti I et al. (2019) "
              "NeuroImage: Clinical 24:102063",
    "residual": "Smith SM et al. (2019) NeuroImage 200:528; Le TT et al. (2018) "
                "Front Aging Neurosci 10:317",
}


def brain_age_gap(predicted: Any, chronological: Any) -> np.ndarray:
    """Brain-age gap (brain-PAD, delta): ``predicted - chronological``.

    Parameters
    ----------
    predicted, chronological : array-like
        Predicted and known ages in years (NaN where unknown).

    Returns
    -------
    numpy.ndarray
        The gap in years (NaN where either side is unknown).
    """
    return np.asarray(predicted, dtype=float) - np.asarray(chronological, dtype=float)


def _check_method(method: str) -> None:
    if method not in ("linear", "residual"):
        raise ValueError(f"unknown bias-correction method '{method}' (linear or residual)")


def fit_bias_correction(predicted: Any, chronological: Any, method: str) -> dict[str, Any]:
    """Fit the coefficients of an age-bias correction by least squares.

    Parameters
    ----------
    predicted, chronological : array-like
        Predicted and known ages of the fitting sample; pairs with a NaN are ignored.
    method : {'linear', 'residual'}
        ``linear`` regresses the prediction on age, ``residual`` regresses the gap on age.

    Returns
    -------
    dict
        ``method``, ``slope``, ``intercept``, ``n`` (pairs used), ``age_range`` ([min, max]).

    Raises
    ------
    ValueError
        Unknown method, fewer than :data:`MIN_FIT_PAIRS` pairs, no spread in age, or (linear) a
        slope too close to zero to invert.
    """
    _check_method(method)
    pred = np.asarray(predicted, dtype=float).ravel()
    age = np.asarray(chronological, dtype=float).ravel()
    keep = np.isfinite(pred) & np.isfinite(age)
    pred, age = pred[keep], age[keep]
    if pred.size < MIN_FIT_PAIRS:
        raise ValueError(f"a bias-correction fit needs at least {MIN_FIT_PAIRS} participants "
                         f"with known age and a prediction (got {pred.size})")
    if np.ptp(age) == 0:
        raise ValueError("a bias-correction fit needs participants of different ages")
    response = pred if method == "linear" else pred - age
    slope, intercept = np.polyfit(age, response, 1)
    if method == "linear" and abs(slope) < 1e-3:
        raise ValueError(f"predicted age does not change with age (slope {slope:.2g}); the "
                         "linear correction would divide by zero")
    return {"method": method, "slope": float(slope), "intercept": float(intercept),
            "n": int(pred.size), "age_range": [float(age.min()), float(age.max())]}


def apply_bias_correction(predicted: Any, chronological: Any,
                          coefficients: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Apply fitted correction coefficients.

    Parameters
    ----------
    predicted, chronological : array-like
        Predicted and known ages (NaN where unknown: the corrected values are NaN there too).
    coefficients : dict
        From :func:`fit_bias_correction` (``method``, ``slope``, ``intercept``).

    Returns
    -------
    predicted_corrected, gap_corrected : numpy.ndarray
        The corrected predicted age and the corrected gap.
    """
    _check_method(coefficients["method"])
    pred = np.asarray(predicted, dtype=float)
    age = np.asarray(chronological, dtype=float)
    slope, intercept = float(coefficients["slope"]), float(coefficients["intercept"])
    if coefficients["method"] == "linear":
        pred_corr = (pred - intercept) / slope
        pred_corr = np.where(np.isfinite(age), pred_corr, np.nan)
        return pred_corr, pred_corr - age
    gap_corr = (pred - age) - (slope * age + intercept)
    return age + gap_corr, gap_corr


def fold_assignment(groups: Sequence[Any], n_folds: int, seed: int = 0) -> np.ndarray:
    """Assign rows to K folds, keeping all rows of one group (participant) in one fold.

    Parameters
    ----------
    groups : sequence
        Group label of every row (the participant ID).
    n_folds : int
        Number of folds (reduced to the number of groups when there are fewer).
    seed : int
        Seed of the shuffle of the groups.

    Returns
    -------
    numpy.ndarray of int
        The fold (0 .. K-1) of every row.
    """
    labels = np.asarray([str(g) for g in groups])
    unique = np.unique(labels)
    order = np.random.default_rng(seed).permutation(unique.size)
    k = max(1, min(int(n_folds), unique.size))
    fold_of = {unique[i]: pos % k for pos, i in enumerate(order)}
    return np.array([fold_of[g] for g in labels], dtype=int)


def cross_validated_bias_correction(
    predicted: Any, chronological: Any, groups: Sequence[Any], method: str,
    n_folds: int = 5, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Correct every row with coefficients fitted on the other folds (out-of-fold).

    Parameters
    ----------
    predicted, chronological : array-like
        Predicted and known ages of the cohort (NaN where unknown).
    groups : sequence
        Participant ID of every row; a participant's sessions stay in one fold.
    method : {'linear', 'residual'}
        The correction.
    n_folds : int
        Number of folds K (at most the number of participants with a known age).
    seed : int
        Seed of the fold assignment.

    Returns
    -------
    predicted_corrected, gap_corrected : numpy.ndarray
        Out-of-fold corrected values (NaN where the age is unknown).
    info : dict
        ``method``, ``fit`` (``'cross-validated'``), ``n_folds``, ``seed``, ``folds`` (each
        fold's coefficients and test participants), and ``full_sample`` (the coefficients fitted
        on all rows, for reference).

    Raises
    ------
    ValueError
        Too few participants with a known age for K-fold fitting.
    """
    _check_method(method)
    pred = np.asarray(predicted, dtype=float).ravel()
    age = np.asarray(chronological, dtype=float).ravel()
    labels = np.asarray([str(g) for g in groups])
    known = np.isfinite(pred) & np.isfinite(age)
    n_groups = np.unique(labels[known]).size
    if n_groups < MIN_FIT_PAIRS + 1:
        raise ValueError(f"cross-validated bias correction needs at least {MIN_FIT_PAIRS + 1} "
                         f"participants with known age (got {n_groups})")
    folds = np.full(pred.size, -1, dtype=int)
    folds[known] = fold_assignment(labels[known], n_folds, seed)
    k = int(folds.max()) + 1
    pred_corr = np.full(pred.size, np.nan)
    gap_corr = np.full(pred.size, np.nan)
    fold_info = []
    for fold in range(k):
        test = folds == fold
        train = known & ~test
        coefs = fit_bias_correction(pred[train], age[train], method)
        pc, gc = apply_bias_correction(pred[test], age[test], coefs)
        pred_corr[test], gap_corr[test] = pc, gc
        fold_info.append({**coefs, "fold": fold,
                          "test_participants": sorted(set(labels[test].tolist()))})
    return pred_corr, gap_corr, {
        "method": method, "fit": "cross-validated", "n_folds": k, "seed": int(seed),
        "folds": fold_info, "full_sample": fit_bias_correction(pred, age, method),
    }


def gap_age_slope(chronological: Any, gap: Any) -> float | None:
    """Least-squares slope of the brain-age gap on age (years of gap per year of age).

    The usual regression to the mean gives a negative slope; a bias correction should bring
    it near 0 (report both, before and after).

    Parameters
    ----------
    chronological, gap : array-like
        Known ages and gaps; pairs with a NaN are ignored.

    Returns
    -------
    float or None
        The slope, or ``None`` with fewer than :data:`MIN_FIT_PAIRS` pairs or no spread in age.
    """
    age = np.asarray(chronological, dtype=float).ravel()
    delta = np.asarray(gap, dtype=float).ravel()
    keep = np.isfinite(age) & np.isfinite(delta)
    if keep.sum() < MIN_FIT_PAIRS or np.ptp(age[keep]) == 0:
        return None
    return float(np.polyfit(age[keep], delta[keep], 1)[0])
