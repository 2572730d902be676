"""What a prediction says about itself, fitted on out-of-fold predictions of the training cohort.

Three things, each learned from the held-out-site (out-of-fold) predictions that the recipe
makes of its own training subjects, and each applied to a new subject **without its true
value** (Butler et al. 2021: correcting a test subject with its own age inflates every metric):

- :func:`fit_recalibration` — the out-of-fold slope/intercept inversion. Predictions regress
  towards the training mean (adults predicted young, children old); fitting
  ``prediction = a * truth + b`` on the out-of-fold pairs and predicting ``(p - b) / a`` undoes
  that on average. The recipe keeps it only where its cross-fitted balanced MAE is lower.
- :func:`fit_mondrian_intervals` — intervals calibrated per bin of the predicted value
  (Mondrian split-conformal; Vovk et al. 2005), asymmetric: the lower and upper offsets are
  separate quantiles of the signed residuals, so a bin whose adults are predicted too young gets
  a longer upper side. Bins with too few residuals are merged into a neighbour.
- :func:`fit_reliable_range` — per bin of the predicted value, the out-of-fold MAE, bias and
  coverage of its subjects, and whether the model resolves the target there: enough subjects
  and a bias within a stated tolerance. Predictions in other bins carry ``<target>_reliable``
  false.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from brainfm.models.age_bands import assign_bands, band_labels

#: Fewest residuals a Mondrian bin keeps (smaller bins are merged into a neighbour): 1 / 0.05 - 1
#: residuals give a finite 95th percentile, twice that keeps its sampling error moderate.
MIN_INTERVAL_BIN = 40
#: Fewest out-of-fold subjects a bin of predicted values needs to be called reliable.
MIN_RELIABLE_BIN = 20
#: Largest |mean error| a reliable bin may have, as a fraction of its median prediction (for
#: age: 1.5 y at a predicted 15 y, 3 y at 30 y).
BIAS_TOLERANCE = 0.10
#: Largest ratio of a reliable bin's MAE to the MAE of the training mean on the same subjects
#: (a bin where the model is no better than knowing nothing resolves nothing).
BASELINE_MARGIN = 0.9
#: Smallest slope of ``prediction = a * truth + b`` that is inverted (flatter: not invertible).
MIN_SLOPE = 0.2

Transform = Callable[[Any], np.ndarray]


def conformal_halfwidth(residuals: np.ndarray, level: float) -> float:
    """Split-conformal half-width: the ``ceil((n + 1) level)``-th smallest absolute residual."""
    r = np.sort(np.abs(np.asarray(residuals, dtype=np.float64)[np.isfinite(residuals)]))
    if r.size == 0:
        from brainfm.errors import InputError

        raise InputError("no held-out residuals to calibrate the intervals on")
    k = min(r.size, max(1, math.ceil((r.size + 1) * level)))
    return float(r[k - 1])


def _upper_quantile(residuals: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Weighted split-conformal ``q`` quantile (Tibshirani et al. 2019): the smallest residual
    whose cumulative weight reaches ``q``, the new point counting with the mean weight."""
    order = np.argsort(residuals, kind="stable")
    r, w = residuals[order], weights[order]
    cum = np.cumsum(w) / (w.sum() + w.mean())
    k = int(np.searchsorted(cum, q - 1e-12, side="left"))
    return float(r[min(k, r.size - 1)])


def _signed_offsets(residuals: np.ndarray, level: float, weights: np.ndarray | None = None
                    ) -> tuple[float, float]:
    """Lower and upper conformal offsets of a central ``level`` interval (finite-sample).

    With equal weights the upper offset is the ``ceil((n + 1)(1 + level) / 2)``-th smallest
    residual and the lower one the ``floor((n + 1)(1 - level) / 2)``-th.
    """
    w = np.ones(residuals.size) if weights is None else np.asarray(weights, dtype=np.float64)
    q = 1.0 - (1.0 - level) / 2.0
    return -_upper_quantile(-residuals, w, q), _upper_quantile(residuals, w, q)


# --------------------------------------------------------------------------------------------
# Slope/intercept inversion
# --------------------------------------------------------------------------------------------


def _weighted_line(truth: np.ndarray, pred: np.ndarray, weights: np.ndarray
                   ) -> tuple[float, float]:
    w = weights / weights.sum()
    mt, mp = w @ truth, w @ pred
    var = w @ (truth - mt) ** 2
    slope = float(w @ ((truth - mt) * (pred - mp)) / var) if var > 0 else 0.0
    return slope, float(mp - slope * mt)


def apply_recalibration(pred: Any, recalibration: dict[str, Any] | None) -> np.ndarray:
    """``clip((p - intercept) / slope, low, high)``; ``pred`` unchanged without one."""
    p = np.asarray(pred, dtype=np.float64)
    if not recalibration:
        return p
    low, high = recalibration["clip"]
    return np.clip((p - recalibration["intercept"]) / recalibration["slope"], low, high)


def fit_recalibration(truth: np.ndarray, pred: np.ndarray, weights: np.ndarray,
                      folds: Sequence[np.ndarray], clip: tuple[float, float]
                      ) -> tuple[dict[str, Any] | None, np.ndarray]:
    """The slope/intercept inversion of out-of-fold predictions, and its cross-fitted values.

    Parameters
    ----------
    truth, pred : ndarray of shape (n,)
        Known values and out-of-fold predictions (raw units) of the training subjects.
    weights : ndarray of shape (n,)
        Weights of the least-squares fit (the balanced weights, so that the line is not the
        children's line).
    folds : sequence of ndarray
        Inner folds (positions): each fold is corrected by the line fitted on the others, so
        the returned values can be scored as a new site's.
    clip : (float, float)
        Range the corrected values are clipped to (the training range).

    Returns
    -------
    recalibration : dict or None
        ``slope``, ``intercept``, ``clip`` fitted on all pairs; None when the slope is below
        :data:`MIN_SLOPE` (the inversion would only amplify noise).
    cross_fitted : ndarray of shape (n,)
        Corrected out-of-fold values (``pred`` where a fold's slope is too flat).
    """
    truth = np.asarray(truth, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    crossed = pred.copy()
    for held in folds:
        rest = np.setdiff1d(np.arange(truth.size), held)
        if weights[rest].sum() <= 0:
            continue
        slope, intercept = _weighted_line(truth[rest], pred[rest], weights[rest])
        if slope >= MIN_SLOPE:
            crossed[held] = apply_recalibration(
                pred[held], {"slope": slope, "intercept": intercept, "clip": clip})
    slope, intercept = _weighted_line(truth, pred, weights)
    if slope < MIN_SLOPE:
        return None, crossed
    return {"slope": slope, "intercept": intercept,
            "clip": [float(clip[0]), float(clip[1])]}, crossed


# --------------------------------------------------------------------------------------------
# Mondrian intervals
# --------------------------------------------------------------------------------------------


def _merge_sparse(edges: list[float], counts: list[int], min_n: int) -> list[float]:
    """Drop inner edges until every bin holds ``min_n`` values (the smaller neighbour joins)."""
    edges, counts = list(edges), list(counts)
    while len(counts) > 1 and min(counts) < min_n:
        k = int(np.argmin(counts))
        if k == 0:
            j = 0
        elif k == len(counts) - 1:
            j = k - 1
        else:
            j = k - 1 if counts[k - 1] <= counts[k + 1] else k
        counts[j:j + 2] = [counts[j] + counts[j + 1]]
        del edges[j]
    return edges


def fit_mondrian_intervals(pred_raw: np.ndarray, residual: np.ndarray, edges: Sequence[float],
                           levels: Sequence[float], min_n: int = MIN_INTERVAL_BIN,
                           weights: np.ndarray | None = None) -> dict[str, Any]:
    """Asymmetric conformal offsets per bin of the predicted value.

    Parameters
    ----------
    pred_raw : ndarray of shape (n,)
        Out-of-fold predictions (raw units), which pick the bin.
    residual : ndarray of shape (n,)
        Signed residuals ``truth - prediction`` in the interval space (the target transform).
    edges : sequence of float
        Candidate inner bin edges (raw units); sparse bins are merged.
    levels : sequence of float
        Central interval levels.
    min_n : int
        Fewest residuals per bin.
    weights : ndarray of shape (n,), optional
        Weights of the residuals (weighted conformal). The recipe passes the age-balanced
        weights, so that within a bin the few adults count as much as the many children and
        the interval covers every age band, not only the pooled cohort.

    Returns
    -------
    dict
        ``edges`` (the inner edges kept), ``n`` (residuals per bin) and ``offsets``: per level
        (``"0.9"``) a list of ``[lower, upper]`` per bin, added to the transformed prediction.
    """
    pred_raw = np.asarray(pred_raw, dtype=np.float64)
    residual = np.asarray(residual, dtype=np.float64)
    ok = np.isfinite(pred_raw) & np.isfinite(residual)
    weights = np.ones(ok.size) if weights is None else np.asarray(weights, dtype=np.float64)
    pred_raw, residual, weights = pred_raw[ok], residual[ok], weights[ok]
    if pred_raw.size == 0:
        from brainfm.errors import InputError

        raise InputError("no held-out residuals to calibrate the intervals on")
    inner = [float(e) for e in edges]
    counts = np.bincount(assign_bands(pred_raw, inner), minlength=len(inner) + 1).tolist()
    inner = _merge_sparse(inner, counts, min(min_n, pred_raw.size))
    band = assign_bands(pred_raw, inner)
    offsets: dict[str, list[list[float]]] = {}
    for level in levels:
        offsets[f"{level:g}"] = [
            list(_signed_offsets(residual[band == b], level, weights[band == b]))
            for b in range(len(inner) + 1)]
    return {"edges": inner, "n": np.bincount(band, minlength=len(inner) + 1).tolist(),
            "offsets": offsets}


def interval_offsets(bins: dict[str, Any], pred_raw: float, level: float) -> tuple[float, float]:
    """The ``[lower, upper]`` offsets of the bin ``pred_raw`` falls in (see above)."""
    b = int(assign_bands([pred_raw], bins["edges"])[0])
    lower, upper = bins["offsets"][f"{level:g}"][max(b, 0)]
    return float(lower), float(upper)


# --------------------------------------------------------------------------------------------
# Reliable range
# --------------------------------------------------------------------------------------------


def fit_reliable_range(truth: np.ndarray, pred_raw: np.ndarray, edges: Sequence[float],
                       training_mean: float, inside90: np.ndarray | None = None,
                       min_n: int = MIN_RELIABLE_BIN, tolerance: float = BIAS_TOLERANCE,
                       margin: float = BASELINE_MARGIN) -> dict[str, Any]:
    """Where the model resolves its target, from out-of-fold predictions of the training set.

    A bin of the predicted value (``edges``) is reliable when at least ``min_n`` out-of-fold
    predictions fall in it, the mean error of those predictions (prediction - truth) is
    within ``tolerance`` times their median prediction (a prediction there is, on average, the
    age of the people it is made for), and their MAE is at most ``margin`` times the MAE of the
    training mean on the same subjects (the model tells them apart better than knowing
    nothing). The reliable range is the contiguous run of reliable bins holding the most
    subjects.

    Parameters
    ----------
    truth, pred_raw : ndarray of shape (n,)
        Known values and out-of-fold predictions (raw units).
    edges : sequence of float
        Inner edges of the bins of predicted values.
    training_mean : float
        Mean of the target over the training cohort (the know-nothing prediction).
    inside90 : ndarray of bool, optional
        Whether each subject's calibrated 90 % interval held its true value (reported).
    min_n : int
        Fewest subjects of a reliable bin.
    tolerance : float
        Largest ``|bias| / median prediction`` of a reliable bin.
    margin : float
        Largest ratio of a reliable bin's MAE to the training mean's.

    Returns
    -------
    dict
        ``edges``, ``tolerance``, ``min_n``, ``range`` ([low, high], raw units; ``None`` for an
        unbounded side; ``None`` altogether when no bin is reliable) and ``bins``: per bin of
        predictions ``predicted`` (label), ``n``, ``mae``, ``bias``, ``mean_mae`` (the training
        mean's), ``coverage90`` and ``reliable``.
    """
    truth = np.asarray(truth, dtype=np.float64)
    pred_raw = np.asarray(pred_raw, dtype=np.float64)
    inner = [float(e) for e in edges]
    band = assign_bands(pred_raw, inner)
    rows = []
    for b, label in enumerate(band_labels(inner)):
        sel = (band == b) & np.isfinite(truth)
        err = pred_raw[sel] - truth[sel]
        row: dict[str, Any] = {"predicted": label, "n": int(sel.sum()), "mae": None,
                               "bias": None, "mean_mae": None, "coverage90": None,
                               "reliable": False}
        if sel.any():
            row["mae"] = float(np.mean(np.abs(err)))
            row["bias"] = float(np.mean(err))
            row["mean_mae"] = float(np.mean(np.abs(truth[sel] - training_mean)))
            centre = abs(float(np.median(pred_raw[sel])))
            row["reliable"] = bool(sel.sum() >= min_n and abs(row["bias"]) <= tolerance * centre
                                   and row["mae"] <= margin * row["mean_mae"])
            if inside90 is not None:
                row["coverage90"] = float(np.mean(np.asarray(inside90)[sel]))
        rows.append(row)
    runs: list[list[int]] = []
    for b, row in enumerate(rows):
        if row["reliable"]:
            if runs and runs[-1][-1] == b - 1:
                runs[-1].append(b)
            else:
                runs.append([b])
    span = None
    if runs:
        best = max(runs, key=lambda run: sum(rows[b]["n"] for b in run))
        span = [None if best[0] == 0 else inner[best[0] - 1],
                None if best[-1] == len(inner) else inner[best[-1]]]
    return {"edges": inner, "tolerance": tolerance, "min_n": min_n, "margin": margin,
            "range": span, "bins": rows}


def in_reliable_range(reliable: dict[str, Any] | None, value: float) -> bool | None:
    """Whether a prediction lies in the card's reliable range (None when the card has none)."""
    if reliable is None:
        return None
    span = reliable.get("range")
    if span is None or not math.isfinite(value):
        return False
    low, high = span
    return (low is None or value >= low) and (high is None or value < high)


def expected_mae(reliable: dict[str, Any] | None, value: float) -> float | None:
    """Out-of-fold MAE of the bin of predictions a value falls in (None when unknown)."""
    if reliable is None or not math.isfinite(value):
        return None
    b = int(assign_bands([value], reliable["edges"])[0])
    return reliable["bins"][b]["mae"]
