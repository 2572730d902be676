"""Age bands: the one home of the bands every accuracy figure and every choice is split by.

Training cohorts are never spread evenly over age (ABIDE I: two thirds of its subjects are under
18 and 48 of 782 are 30 or older), so a pooled MAE is a children's MAE. Every accuracy table
gives the bands beside the pooled figure, and the recipe makes its choices on the
**age-balanced MAE**, the mean of the per-band MAEs over the bands that hold subjects
(equivalently: each subject weighted by the inverse of its band's size,
:func:`balanced_weights`).

Bands are half-open intervals ``[edge_k, edge_{k+1})`` of age in years, by default
``< 13``, ``13-18``, ``18-30``, ``>= 30`` (:data:`DEFAULT_EDGES`); a model card records the
edges it used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Inner edges of the default bands, in years: < 13, 13-18, 18-30, >= 30.
DEFAULT_EDGES: tuple[float, ...] = (13.0, 18.0, 30.0)


def band_labels(edges: Sequence[float] = DEFAULT_EDGES) -> list[str]:
    """Labels of the bands cut by ``edges`` (``<13``, ``13-18``, ..., ``>=30``).

    Parameters
    ----------
    edges : sequence of float
        Increasing inner band edges.

    Returns
    -------
    list of str
        ``len(edges) + 1`` labels.
    """
    fmt = [f"{float(e):g}" for e in edges]
    if not fmt:
        return ["all"]
    inner = [f"{a}-{b}" for a, b in zip(fmt[:-1], fmt[1:], strict=True)]
    return [f"<{fmt[0]}", *inner, f">={fmt[-1]}"]


def assign_bands(values: Any, edges: Sequence[float] = DEFAULT_EDGES) -> np.ndarray:
    """Band index of each value (``-1`` where the value is not finite).

    Parameters
    ----------
    values : array-like
        Ages (or predicted ages) in years.
    edges : sequence of float
        Inner band edges.

    Returns
    -------
    ndarray of int
        ``k`` for ``edges[k-1] <= value < edges[k]``.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    out = np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="right")
    return np.where(np.isfinite(v), out, -1).astype(int)


def balanced_weights(ages: Any, edges: Sequence[float] = DEFAULT_EDGES) -> np.ndarray:
    """Per-subject weights that make a weighted mean the mean over age bands.

    Each subject of a band holding ``n_b`` subjects gets ``1 / (B n_b)``, where ``B`` is the
    number of bands that hold subjects; subjects without a finite age get weight 0 (and, when
    no age is known at all, every subject the same weight: the pooled mean).

    Parameters
    ----------
    ages : array-like of shape (n,)
        Ages in years.
    edges : sequence of float
        Inner band edges.

    Returns
    -------
    ndarray of shape (n,)
        Non-negative weights summing to 1.
    """
    band = assign_bands(ages, edges)
    weights = np.zeros(band.size)
    present = [b for b in np.unique(band) if b >= 0]
    if not present:
        return np.full(band.size, 1.0 / max(band.size, 1))
    for b in present:
        members = band == b
        weights[members] = 1.0 / (len(present) * members.sum())
    return weights


def balanced_mae(y_true: Any, y_pred: Any, ages: Any | None = None,
                 edges: Sequence[float] = DEFAULT_EDGES) -> float:
    """Age-balanced MAE: the mean of the per-band MAEs (bands of ``ages``, default ``y_true``).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,) or (n_candidates, n) for ``y_pred``
        Known and predicted values (finite).
    ages : array-like of shape (n,), optional
        Ages that define the bands (default: ``y_true``, for an age target).
    edges : sequence of float
        Inner band edges.

    Returns
    -------
    float or ndarray
        The balanced MAE (one per candidate row when ``y_pred`` is 2-D).
    """
    y = np.asarray(y_true, dtype=np.float64)
    weights = balanced_weights(y if ages is None else ages, edges)
    err = np.abs(np.asarray(y_pred, dtype=np.float64) - y)
    out = err @ weights
    return float(out) if np.ndim(out) == 0 else out


def band_table(y_true: Any, y_pred: Any, ages: Any | None = None,
               edges: Sequence[float] = DEFAULT_EDGES) -> list[dict[str, Any]]:
    """MAE, mean error (bias) and count of each band, for reports and cards.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        Known and predicted values; pairs with a NaN are left out.
    ages : array-like of shape (n,), optional
        Ages that define the bands (default: ``y_true``).
    edges : sequence of float
        Inner band edges.

    Returns
    -------
    list of dict
        Per band: ``band`` (label), ``n``, ``mae`` and ``bias`` (mean of predicted - true;
        ``None`` for an empty band).
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    band = assign_bands(y if ages is None else ages, edges)
    ok = np.isfinite(y) & np.isfinite(p)
    rows = []
    for k, label in enumerate(band_labels(edges)):
        sel = ok & (band == k)
        err = p[sel] - y[sel]
        rows.append({"band": label, "n": int(sel.sum()),
                     "mae": float(np.mean(np.abs(err))) if sel.any() else None,
                     "bias": float(np.mean(err)) if sel.any() else None})
    return rows
