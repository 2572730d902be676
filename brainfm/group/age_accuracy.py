"""Accuracy of the predicted age where the model knows ages and where it does not.

Per age band of the model card (:mod:`brainfm.models.age_bands`), and separately for the
participants whose known age lies inside and outside the card's training range: a pooled MAE
over a cohort the model has never seen the like of says little.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from brainfm.group.age_ranges import OUTSIDE_COLUMN
from brainfm.group.metrics import pearson_r
from brainfm.models.age_bands import DEFAULT_EDGES, assign_bands, band_labels, band_table

LOGGER = logging.getLogger(__name__)

#: Share of the participants with a known age outside the training range that is warned about.
MOST = 0.5


def _accuracy(true: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    ok = np.isfinite(true) & np.isfinite(pred)
    err = pred[ok] - true[ok]
    return {"n": int(ok.sum()),
            "mae": float(np.mean(np.abs(err))) if ok.any() else None,
            "mean_error": float(np.mean(err)) if ok.any() else None,
            "pearson_r": pearson_r(true[ok], pred[ok])}


def band_accuracy(table: pd.DataFrame, edges: list[float]) -> list[dict[str, Any]]:
    """Per band of known age: ``band``, ``n``, ``mae``, ``mean_error``, ``pearson_r`` (n >= 3).

    Parameters
    ----------
    table : pandas.DataFrame
        The group table (``age``, ``age_pred``).
    edges : list of float
        Inner band edges.

    Returns
    -------
    list of dict
        One entry per band (empty bands with ``n`` 0 and ``None`` values).
    """
    true = table["age"].to_numpy(dtype=float)
    pred = table["age_pred"].to_numpy(dtype=float)
    bands = assign_bands(true, edges)
    rows = []
    for k, (label, row) in enumerate(zip(band_labels(edges), band_table(true, pred,
                                                                        edges=edges),
                                         strict=True)):
        sel = bands == k
        rows.append({"band": label, "n": row["n"], "mae": row["mae"],
                     "mean_error": row["bias"], "pearson_r": pearson_r(true[sel], pred[sel])})
    return rows


def range_accuracy(table: pd.DataFrame) -> dict[str, Any]:
    """Accuracy inside and outside the training range (:data:`OUTSIDE_COLUMN`).

    Returns
    -------
    dict
        ``inside`` and ``outside``: ``n``, ``mae``, ``mean_error``, ``pearson_r``; ``outside``
        also ``participants``. Empty when no row knows its range.
    """
    if OUTSIDE_COLUMN not in table or table[OUTSIDE_COLUMN].isna().all():
        return {}
    true = table["age"].to_numpy(dtype=float)
    pred = table["age_pred"].to_numpy(dtype=float)
    out = {}
    for key, flag in (("inside", "false"), ("outside", "true")):
        sel = (table[OUTSIDE_COLUMN] == flag).to_numpy()
        out[key] = _accuracy(true[sel], pred[sel])
    out["outside"]["participants"] = sorted(set(table.loc[table[OUTSIDE_COLUMN] == "true",
                                                          "participant_id"]))
    return out


def age_accuracy(table: pd.DataFrame, ranges: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The ``age_accuracy`` entry of ``group_metrics.json``.

    Parameters
    ----------
    table : pandas.DataFrame
        The group table (``age``, ``age_pred``, :data:`OUTSIDE_COLUMN`, ``model``).
    ranges : dict
        Model hash to :func:`~brainfm.group.age_ranges.card_ranges`.

    Returns
    -------
    dict or None
        ``band_edges``, ``bands`` (:func:`band_accuracy`), ``training_range`` and
        ``reliable_range`` (model hash to the card's, ``None`` where unknown),
        ``training_range_accuracy`` (:func:`range_accuracy`); ``None`` without known ages and
        age predictions.
    """
    if "age" not in table or "age_pred" not in table or not table["age"].notna().any():
        return None
    edges = list(next(iter(ranges.values()))["band_edges"] if ranges else DEFAULT_EDGES)
    return {
        "description": "Accuracy of age_pred per band of known age (the model card's "
                       "BandEdges, else the default 13, 18, 30 years) and for the participants "
                       "whose known age lies inside and outside the card's TrainingRange. "
                       "pearson_r needs n >= 3.",
        "band_edges": edges,
        "bands": band_accuracy(table, edges),
        "training_range": {m: r["training_range"] for m, r in ranges.items()},
        "reliable_range": {m: r["reliable_range"] for m, r in ranges.items()},
        "training_range_accuracy": range_accuracy(table),
    }


def _range_text(ranges: dict[str, dict[str, Any]]) -> str:
    known = {tuple(r["training_range"]) for r in ranges.values() if r["training_range"]}
    return ", ".join(f"{'' if lo is None else f'{lo:g}'}-{'' if hi is None else f'{hi:g}'} y"
                     for lo, hi in sorted(known, key=str))


def outside_warning(table: pd.DataFrame, ranges: dict[str, dict[str, Any]]) -> str | None:
    """One line when most participants with a known age lie outside the training range.

    Parameters
    ----------
    table : pandas.DataFrame
        The group table with :data:`OUTSIDE_COLUMN`.
    ranges : dict
        Model hash to :func:`~brainfm.group.age_ranges.card_ranges` (for the message).

    Returns
    -------
    str or None
        The warning, or ``None`` when at most half lie outside (or nobody's range is known).
    """
    if OUTSIDE_COLUMN not in table:
        return None
    known = table.drop_duplicates("participant_id")[OUTSIDE_COLUMN].dropna()
    n_out = int((known == "true").sum())
    if not len(known) or n_out <= MOST * len(known):
        return None
    return (f"{n_out} of {len(known)} participants with a known age lie outside the model's "
            f"training age range ({_range_text(ranges)}; see age_outside_training_range): its "
            "accuracy there was never measured, and the brain-age gap there mostly reflects "
            "the model's range")


def warn_outside(table: pd.DataFrame, ranges: dict[str, dict[str, Any]]) -> str | None:
    """Log :func:`outside_warning` (one warning line) and return it."""
    text = outside_warning(table, ranges)
    if text:
        LOGGER.warning("%s", text)
    return text
