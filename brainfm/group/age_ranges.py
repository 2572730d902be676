"""The ages a model knows: training and reliable ranges and age bands of its card, per row.

A predictions sidecar's ``ModelCard`` may carry ``TrainingRange`` (``{"age": [lo, hi]}``),
``ReliableRange`` (``{"age": [lo or null, hi or null]}``) and ``BandEdges`` (``[13, 18, 30]``);
older sidecars lack them, and then the default bands
(:data:`brainfm.models.age_bands.DEFAULT_EDGES`) are used and no training range is known.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from brainfm.group.read_outputs import NA, model_hash
from brainfm.models.age_bands import DEFAULT_EDGES

#: The group-table column that says whether the known age lies outside the training range.
OUTSIDE_COLUMN = "age_outside_training_range"


def _range(value: Any) -> list[float | None] | None:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    out = [float(v) if isinstance(v, int | float) and math.isfinite(v) else None
           for v in value]
    return None if out == [None, None] else out


def card_ranges(card: dict[str, Any] | None, target: str = "age") -> dict[str, Any]:
    """The training range, reliable range and band edges a model card gives for a target.

    Parameters
    ----------
    card : dict or None
        A sidecar's ``ModelCard``.
    target : str
        The target (``age``).

    Returns
    -------
    dict
        ``training_range`` and ``reliable_range`` (``[lo, hi]``, either side ``None`` where
        open; ``None`` when the card has none) and ``band_edges`` (the card's, else
        :data:`~brainfm.models.age_bands.DEFAULT_EDGES`).
    """
    card = card if isinstance(card, dict) else {}

    def of_target(key: str) -> list[float | None] | None:
        value = card.get(key)
        return _range(value.get(target)) if isinstance(value, dict) else None

    edges = card.get("BandEdges")
    valid = (isinstance(edges, list | tuple) and len(edges) > 0
             and all(isinstance(e, int | float) for e in edges)
             and list(edges) == sorted(edges))
    return {"training_range": of_target("TrainingRange"),
            "reliable_range": of_target("ReliableRange"),
            "band_edges": [float(e) for e in (edges if valid else DEFAULT_EDGES)]}


def ranges_by_model(sidecars: list[dict]) -> dict[str, dict[str, Any]]:
    """:func:`card_ranges` of each model (the first sidecar of each model hash)."""
    out: dict[str, dict[str, Any]] = {}
    for side in sidecars:
        out.setdefault(model_hash(side), card_ranges(side.get("ModelCard")))
    return out


def outside_training_range(ages: Any, training_range: list[float | None] | None) -> list:
    """Per age: ``'true'`` outside ``[lo, hi]``, ``'false'`` inside, ``None`` when unknown."""
    out: list[str | None] = []
    for age in np.asarray(ages, dtype=float):
        if training_range is None or not np.isfinite(age):
            out.append(None)
            continue
        lo, hi = training_range
        outside = (lo is not None and age < lo) or (hi is not None and age > hi)
        out.append("true" if outside else "false")
    return out


def add_training_range_column(table: pd.DataFrame,
                              ranges: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Add :data:`OUTSIDE_COLUMN` after ``age`` (each row against its own model's range).

    Parameters
    ----------
    table : pandas.DataFrame
        The group table (``age`` where known, ``model``).
    ranges : dict
        From :func:`ranges_by_model`.

    Returns
    -------
    pandas.DataFrame
        A copy with the column (``true``/``false``; n/a where the age or the range is
        unknown); unchanged without a known-age column.
    """
    if "age" not in table:
        return table
    table = table.copy()
    models = table["model"].fillna(NA) if "model" in table else pd.Series(NA, index=table.index)
    values: list[str | None] = []
    for age, model in zip(table["age"], models, strict=True):
        values += outside_training_range([age], (ranges.get(model) or {}).get("training_range"))
    position = list(table.columns).index("age") + 1
    table.insert(position, OUTSIDE_COLUMN, pd.Series(values, index=table.index, dtype=object))
    return table
