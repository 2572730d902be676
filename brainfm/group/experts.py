"""The RWMoE expert weights of every session, averaged over the cohort per atlas."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brainfm.derivatives import parse_entities
from brainfm.errors import InputError
from brainfm.fileio import read_tsv
from brainfm.group.read_outputs import glob_outputs

LOGGER = logging.getLogger(__name__)

#: Glob patterns of the RWMoE expert-weight tables.
EXPERT_GLOBS = ("sub-*/func/sub-*_desc-rwmoe_expertweights.tsv",
                "sub-*/ses-*/func/sub-*_desc-rwmoe_expertweights.tsv")


@dataclass
class ExpertWeights:
    """Mean RWMoE gate weights of one atlas over the cohort.

    Attributes
    ----------
    atlas : str
        The ``atlas-`` label.
    mean : pandas.DataFrame
        Index ``Node`` (ROI names), columns ``expert_0 .. expert_{E-1}``: mean weight over the
        sessions (NaN for ROIs never present).
    dominant_fraction : pandas.Series
        Per ROI, the fraction of sessions whose most weighted expert is the cohort's dominant
        expert of that ROI (agreement of the routing across participants).
    n_sessions : int
        Number of tables averaged.
    files : list of str
        The tables read.
    """

    atlas: str
    mean: pd.DataFrame
    dominant_fraction: pd.Series
    n_sessions: int
    files: list[str] = field(default_factory=list)


def read_expert_weights(output_dir: str | Path) -> dict[str, ExpertWeights]:
    """Average the participants' RWMoE expert-weight tables, per atlas.

    Parameters
    ----------
    output_dir : path
        The brainfm output dataset.

    Returns
    -------
    dict
        Atlas label to :class:`ExpertWeights`; empty when no table exists. Tables whose expert
        count differs from the most common one are skipped with a warning.

    Raises
    ------
    InputError
        A table without a ``Node`` column or without ``expert_*`` columns.
    """
    by_atlas: dict[str, list[tuple[Path, pd.DataFrame]]] = {}
    for path in glob_outputs(Path(output_dir), EXPERT_GLOBS):
        atlas = parse_entities(path.name).get("atlas")
        if not atlas:
            continue
        table = read_tsv(path)
        experts = [c for c in table.columns if str(c).startswith("expert_")]
        if "Node" not in table or not experts:
            raise InputError(f"{path} must have a 'Node' column and 'expert_<k>' columns")
        weights = table.set_index(table["Node"].astype(str))[experts].apply(
            pd.to_numeric, errors="coerce")
        by_atlas.setdefault(atlas, []).append((path, weights))
    out: dict[str, ExpertWeights] = {}
    for atlas, items in sorted(by_atlas.items()):
        counts = Counter(w.shape[1] for _, w in items)
        n_experts = counts.most_common(1)[0][0]
        kept = [(p, w) for p, w in items if w.shape[1] == n_experts]
        if len(kept) < len(items):
            LOGGER.warning("atlas %s: %d expert-weight table(s) with another number of experts "
                           "than %d skipped", atlas, len(items) - len(kept), n_experts)
        nodes = list(dict.fromkeys(n for _, w in kept for n in w.index))
        stack = np.stack([w.reindex(nodes).to_numpy(dtype=float) for _, w in kept])
        with np.errstate(invalid="ignore"):
            present = np.isfinite(stack).all(axis=2) & (np.nansum(stack, axis=2) > 0)
            masked = np.where(present[..., None], stack, np.nan)
            mean = np.nanmean(masked, axis=0) if present.any() else np.full(stack.shape[1:],
                                                                            np.nan)
        mean_df = pd.DataFrame(mean, index=pd.Index(nodes, name="Node"),
                               columns=[f"expert_{k}" for k in range(n_experts)])
        dominant = np.nanargmax(np.nan_to_num(mean, nan=-1.0), axis=1)
        per_session = np.argmax(np.nan_to_num(masked, nan=-1.0), axis=2)
        agree = (per_session == dominant[None, :]) & present
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = agree.sum(axis=0) / present.sum(axis=0)
        out[atlas] = ExpertWeights(atlas=atlas, mean=mean_df,
                                   dominant_fraction=pd.Series(frac, index=mean_df.index),
                                   n_sessions=len(kept), files=[str(p) for p, _ in kept])
    return out
