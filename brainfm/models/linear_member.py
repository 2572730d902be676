"""The recipe's linear members: ridge on normalised Fisher-z edges, chosen on inner site folds.

Kernel ridge with a correlation kernel per target, its penalty (:data:`ALPHA_GRID`), target
transform (:data:`TRANSFORM_CANDIDATES`) and augmentation (:data:`SEGMENT_CANDIDATES`: the
connectivity of parts of each training subject's series as extra rows) chosen on the held-out
MAE of the inner folds (:func:`choose_linear`), then refitted on all rows in the primal form.
Used by :func:`brainfm.models.stacking.fit_ensemble`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from brainfm.models.baselines import (
    ALPHA_GRID,
    connectivity_features,
    correlation_features,
    fit_primal_ridge,
    kernel_ridge_predict,
)
from brainfm.models.ensemble import TRANSFORMS
from brainfm.models.sessions import SessionData, segment_connectivity

#: Target transforms the recipe chooses from on its inner folds. Box-Cox powers below 0 fit
#: the skewed age distribution too, but their inverse is unbounded at a finite value, so the
#: upper interval bound of an adult runs off to centuries: they are not offered.
TRANSFORM_CANDIDATES = ("identity", "log")
#: Augmentations the recipe chooses from on its inner folds: the number of consecutive parts of
#: each training subject's series whose connectivity joins the linear member's training rows
#: (0: whole sessions only). Measured in ``benchmarks/linear_member.py`` (``half-segments``).
SEGMENT_CANDIDATES = (0, 2)



def uniform_weights(n: int) -> np.ndarray:
    """Weights of a plain mean over ``n`` subjects."""
    return np.full(n, 1.0 / max(n, 1))


def _training_rows(edges: np.ndarray, segments: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training rows (whole sessions, then each subject's segments), their subject, their kernel."""
    rows, owner = edges, np.arange(edges.shape[0])
    if segments is not None and segments.shape[1]:
        rows = np.concatenate([edges, segments.reshape(-1, edges.shape[1])])
        owner = np.concatenate([owner, np.repeat(owner, segments.shape[1])])
    return rows, owner, rows @ rows.T


def _held_out_fit(kernel: np.ndarray, owner: np.ndarray, y_t: np.ndarray, y_raw: np.ndarray,
                  folds: list[np.ndarray], inverse: Any, weights: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Whole-session predictions of each fold by the rows of the other folds' subjects, per
    penalty of ``ALPHA_GRID`` (transformed units), and their (weighted) MAE in raw units."""
    oof = np.empty((len(ALPHA_GRID), y_t.size))
    for held in folds:
        kept = np.flatnonzero(~np.isin(owner, held))
        oof[:, held] = kernel_ridge_predict(kernel, y_t[owner], kept, held, ALPHA_GRID)
    weights = uniform_weights(y_t.size) if weights is None else weights
    return oof, np.abs(inverse(oof) - y_raw[None, :]) @ weights


def _linear_member(rows: np.ndarray, owner: np.ndarray, y_t: np.ndarray, oof: np.ndarray,
                   mae: np.ndarray) -> dict[str, Any]:
    """Refit at the penalty with the lowest held-out MAE, on all rows (primal form)."""
    best = int(np.argmin(mae))
    weight, center, intercept = fit_primal_ridge(rows, y_t[owner], ALPHA_GRID[best])
    return {"weight": weight, "center": center, "intercept": intercept,
            "alpha": float(ALPHA_GRID[best]), "oof": oof[best],
            "scores": {f"{a:g}": float(m) for a, m in zip(ALPHA_GRID, mae, strict=True)}}


def fit_linear(edges: np.ndarray, y_t: np.ndarray, y_raw: np.ndarray, folds: list[np.ndarray],
               inverse: Any, segments: np.ndarray | None = None,
               weights: np.ndarray | None = None) -> dict[str, Any]:
    """Linear member of one target: penalty on the inner folds, refit on all, out-of-fold.

    Parameters
    ----------
    edges : ndarray of shape (n, p)
        Normalised edges of the subjects with a value.
    y_t, y_raw : ndarray of shape (n,)
        Transformed and raw targets.
    folds : list of ndarray
        Inner folds (positions).
    inverse : callable
        Inverse transform (the penalty minimises the raw-unit MAE).
    segments : ndarray of shape (n, s, p), optional
        Normalised edges of ``s`` parts of each subject's series (:func:`segment_edges`):
        extra training rows with the subject's target. An inner fold holds out all rows of its
        subjects and predicts them from their whole-session edges, as a new subject is.
    weights : ndarray of shape (n,), optional
        Weights of the held-out MAE that picks the penalty (default: the plain mean; the
        recipe passes :func:`~brainfm.models.age_bands.balanced_weights`).

    Returns
    -------
    dict
        ``weight``, ``center``, ``intercept``, ``alpha``, ``oof`` (transformed) and the
        inner ``scores`` per penalty.
    """
    rows, owner, kernel = _training_rows(edges, segments)
    oof, mae = _held_out_fit(kernel, owner, y_t, y_raw, folds, inverse, weights)
    return _linear_member(rows, owner, y_t, oof, mae)


def segment_edges(sessions: Sequence[SessionData], n_segments: int) -> np.ndarray:
    """Normalised edges of ``n_segments`` parts of each session's series.

    Parameters
    ----------
    sessions : sequence of SessionData
        The sessions.
    n_segments : int
        Parts per session (0: none).

    Returns
    -------
    ndarray of shape (len(sessions), n_segments, p)
        Edges as :func:`~brainfm.models.baselines.correlation_features` normalises them.
    """
    if n_segments == 0:
        return np.zeros((len(sessions), 0, 0))
    conn = [c for s in sessions for c in segment_connectivity(s, n_segments)]
    edges = correlation_features(connectivity_features(conn))
    return edges.reshape(len(sessions), n_segments, -1)


def linear_candidate_name(transform: str, n_segments: int) -> str:
    """Name of a linear-member candidate in the card (``log``, ``log+2 segments``)."""
    return transform if n_segments == 0 else f"{transform}+{n_segments} segments"


def choose_linear(edges: np.ndarray, y_raw: np.ndarray, folds: list[np.ndarray],
                  transforms: Sequence[str] = TRANSFORM_CANDIDATES,
                  segments: dict[int, np.ndarray] | None = None,
                  weights: np.ndarray | None = None
                  ) -> tuple[str, int, dict[str, Any], dict[str, float]]:
    """The target transform and augmentation whose linear member predicts held-out folds best.

    Parameters
    ----------
    edges : ndarray of shape (n, p)
        Normalised edges of the subjects with a value.
    y_raw : ndarray of shape (n,)
        Raw targets (all finite; ``log`` is skipped when one is not positive).
    folds : list of ndarray
        Inner folds (positions).
    transforms : sequence of str, optional
        Names in :data:`~brainfm.models.ensemble.TRANSFORMS`.
    segments : dict, optional
        Augmentation candidates: number of parts -> their edges (:func:`segment_edges`, rows
        of the same subjects). Default: none (whole sessions only).
    weights : ndarray of shape (n,), optional
        Weights of the held-out MAE every choice is made on (default: the plain mean).

    Returns
    -------
    transform : str
        The chosen transform.
    n_segments : int
        The chosen augmentation (0: none).
    fit : dict
        Its linear member (:func:`fit_linear`).
    scores : dict
        Held-out MAE (raw units, at its best penalty) of each candidate, by
        :func:`linear_candidate_name`.
    """
    segments = segments or {0: None}
    held_out, scores = {}, {}
    for count, parts in segments.items():  # one kernel per augmentation, for every transform
        rows, owner, kernel = _training_rows(edges, parts)
        for name in transforms:
            if name == "log" and not np.all(y_raw > 0):
                continue
            forward, inverse = TRANSFORMS[name]
            y_t = forward(y_raw)
            oof, mae = _held_out_fit(kernel, owner, y_t, y_raw, folds, inverse, weights)
            key = linear_candidate_name(name, count)
            held_out[key] = (name, count, rows, owner, y_t, oof, mae)
            scores[key] = float(mae.min())
    order = [linear_candidate_name(t, c) for t in transforms for c in segments]
    best = min(scores, key=lambda key: (scores[key], order.index(key)))
    name, count, rows, owner, y_t, oof, mae = held_out[best]
    return name, count, _linear_member(rows, owner, y_t, oof, mae), scores
