"""Everything the group level computes, in memory: :class:`GroupResult` and its metrics.

:func:`compute_group` reads the output dataset (nothing is written); the BIDS App's group
level (:mod:`brainfm.bidsapp.group`) writes the result and the report renders it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainfm.errors import InputError, UsageError
from brainfm.group.age_accuracy import age_accuracy, warn_outside
from brainfm.group.age_ranges import add_training_range_column, ranges_by_model
from brainfm.group.brainage import BIAS_METHODS, gap_age_slope
from brainfm.group.experts import ExpertWeights, read_expert_weights
from brainfm.group.left_out import describe, left_out, participant_folders, warn_left_out
from brainfm.group.metrics import pearson_r, regression_metrics
from brainfm.group.models import check_models, participants_by_model
from brainfm.group.read_outputs import NA, collect_methods_info
from brainfm.group.table import (
    BIAS_WARNING,
    DEFAULT_FOLDS,
    DEFAULT_SEED,
    add_brain_age_gap,
    build_group_table,
    correct_brain_age,
)


@dataclass
class GroupResult:
    """Everything the group level computed (before anything is written).

    Attributes
    ----------
    table : pandas.DataFrame
        The ``group_predictions.tsv`` rows.
    targets : list of str
        Predicted targets.
    metrics : dict
        The ``group_metrics.json`` content.
    correction : dict or None
        The ``group_biascorrection.json`` content (``None`` without correction).
    expert_weights : dict
        Atlas label to :class:`~brainfm.group.experts.ExpertWeights`.
    methods : dict
        From :func:`~brainfm.group.read_outputs.collect_methods_info`.
    run_qc : pandas.DataFrame
        Every run's QC row.
    notes : list of str
        Warnings for the report (participants without known values, ...).
    truth_columns : dict
        Target to the ``participants.tsv`` column of its known values.
    target_notes : dict
        Target to the model card's plain-words caveat (e.g. not predictable out of site).
    left_out : list of dict
        Participants and sessions without a prediction, with the reason
        (:func:`~brainfm.group.left_out.left_out`).
    n_participant_folders : int
        The ``sub-<label>`` folders of the output dataset (the M of "N of M participants").
    """

    table: pd.DataFrame
    targets: list[str]
    metrics: dict[str, Any]
    correction: dict[str, Any] | None
    expert_weights: dict[str, ExpertWeights]
    methods: dict[str, Any]
    run_qc: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    truth_columns: dict[str, str] = field(default_factory=dict)
    target_notes: dict[str, str] = field(default_factory=dict)
    left_out: list[dict] = field(default_factory=list)
    n_participant_folders: int = 0


def compute_group_metrics(table: pd.DataFrame, targets: list[str],
                          correction: dict[str, Any] | None = None,
                          per_model: bool = True) -> dict[str, Any]:
    """The content of ``group_metrics.json``.

    Parameters
    ----------
    table : pandas.DataFrame
        The group table.
    targets : list of str
        Predicted targets.
    correction : dict or None
        The correction info (adds the ``bias_corrected`` entry).
    per_model : bool
        When the rows come from several models (``model`` column): add ``models`` (model
        hash to the same metrics over its rows); the top-level metrics are then pooled.

    Returns
    -------
    dict
        ``n_sessions``, ``n_participants``, ``targets`` (per target with known values:
        :func:`~brainfm.group.metrics.regression_metrics` plus ``n_predicted``),
        ``targets_without_known_values``, ``brain_age_gap`` (``n``, ``mean``, ``std``,
        ``r_with_age``, ``slope_with_age``), ``bias_corrected`` (with a correction, also
        ``gap_slope_with_age``) and ``description``.
    """
    out: dict[str, Any] = {
        "description": "Accuracy of brainfm's predictions against the known values of "
                       "participants.tsv, over participant sessions with both (one row of "
                       "group_predictions.tsv each). r2 is the coefficient of determination "
                       "1 - SS_res/SS_tot (negative when worse than predicting the mean).",
        "n_sessions": int(len(table)),
        "n_participants": int(table["participant_id"].nunique()),
        "targets": {},
        "targets_without_known_values": [],
    }
    for target in targets:
        if target in table and table[target].notna().any():
            out["targets"][target] = {
                **regression_metrics(table[target], table[f"{target}_pred"]),
                "n_predicted": int(table[f"{target}_pred"].notna().sum()),
            }
        else:
            out["targets_without_known_values"].append(target)
    if "age_gap" in table:
        gap = table["age_gap"].to_numpy(dtype=float)
        ok = np.isfinite(gap)
        out["brain_age_gap"] = {
            "n": int(ok.sum()),
            "mean": float(gap[ok].mean()) if ok.any() else None,
            "std": float(gap[ok].std(ddof=1)) if ok.sum() > 1 else None,
            "r_with_age": pearson_r(table["age"], gap),
            "slope_with_age": gap_age_slope(table["age"], gap),
        }
    if correction is not None and "age_pred_corrected" in table:
        metrics = regression_metrics(table["age"], table["age_pred_corrected"])
        out["bias_corrected"] = {
            "method": correction["method"], "fit": correction["fit"], **metrics,
            "gap_r_with_age": pearson_r(table["age"], table["age_gap_corrected"]),
            "gap_slope_with_age": gap_age_slope(table["age"], table["age_gap_corrected"]),
            "warning": BIAS_WARNING,
        }
    groups = participants_by_model(table)
    if per_model and len(groups) > 1:
        models = table["model"].fillna(NA).astype(str)
        out["description"] += (f" The rows come from {len(groups)} models "
                               "(--allow-mixed-models): 'models' holds the metrics of each "
                               "model's rows; the top-level metrics pool them.")
        out["models"] = {
            m: {**compute_group_metrics(table[models == m], targets, None, per_model=False),
                "participants": ids}
            for m, ids in groups.items()}
        for values in out["models"].values():
            values.pop("description")
    return out


def compute_group(output_dir: str | Path, bids_dir: str | Path | None,
                  bias_correction: str = "none", reference_ages: str | Path | None = None,
                  n_folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED,
                  allow_mixed_models: bool = False) -> GroupResult:
    """Everything of the group level, in memory (nothing written).

    Parameters
    ----------
    output_dir : path
        The brainfm output dataset (participant level already run).
    bids_dir : path or None
        The input dataset (``participants.tsv``).
    bias_correction : {'none', 'linear', 'residual'}
        The brain-age bias correction.
    reference_ages : path, optional
        Reference sample for the correction (see :func:`correct_brain_age`).
    n_folds, seed : int
        Cross-validated correction settings.
    allow_mixed_models : bool
        Accept predictions of several models (metrics per model); else refuse them.

    Returns
    -------
    GroupResult
        The tables, metrics and report inputs.

    Raises
    ------
    InputError
        No predictions (the participant level has not run), malformed inputs.
    UsageError
        Inconsistent options; predictions of several models without ``allow_mixed_models``.
    """
    output_dir = Path(output_dir)
    if bias_correction not in BIAS_METHODS:
        raise UsageError(f"unknown bias correction '{bias_correction}' (choose from "
                         f"{', '.join(BIAS_METHODS)})")
    if reference_ages is not None and not Path(reference_ages).is_file():
        raise InputError(f"--reference-ages {reference_ages} does not exist")
    if not output_dir.is_dir():
        raise InputError(f"output_dir {output_dir} does not exist; run the participant level "
                         "first")
    table, targets, sidecars, run_qc, truth_columns = build_group_table(output_dir, bids_dir)
    check_models(table, output_dir, allow_mixed_models)
    ranges = ranges_by_model(sidecars)
    table = add_brain_age_gap(add_training_range_column(table, ranges))
    table, correction = correct_brain_age(table, bias_correction, reference_ages, n_folds, seed)
    metrics = compute_group_metrics(table, targets, correction)
    accuracy = age_accuracy(table, ranges)
    if accuracy is not None:
        metrics["age_accuracy"] = accuracy
    notes = [text for text in [warn_outside(table, ranges)] if text]
    for target in targets:
        if target in table:
            missing = table.loc[table[target].isna(), "participant_id"].unique().tolist()
            if missing:
                notes.append(f"{len(missing)} participant(s) without a known {target}: "
                             f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
    dropped = left_out(output_dir, table, targets, run_qc)
    warn_left_out(dropped)
    if dropped:
        notes.append(f"{len(dropped)} participant(s) or session(s) without predictions, left "
                     f"out of the metrics: {describe(dropped[:20])}"
                     f"{' ...' if len(dropped) > 20 else ''}")
    folders = participant_folders(output_dir)
    has_pred = table[[f"{t}_pred" for t in targets]].notna().any(axis=1)
    metrics["n_participant_folders"] = len(folders)
    metrics["n_participants_with_predictions"] = int(
        table.loc[has_pred, "participant_id"].nunique())
    if metrics["targets_without_known_values"]:
        notes.append("no known values (participants.tsv) for: "
                     + ", ".join(metrics["targets_without_known_values"]))
    return GroupResult(table=table, targets=targets, metrics=metrics, correction=correction,
                       expert_weights=read_expert_weights(output_dir),
                       methods=collect_methods_info(output_dir, sidecars), run_qc=run_qc,
                       notes=notes, truth_columns=truth_columns,
                       target_notes={t: n for sc in sidecars
                                     for t, n in (sc.get("TargetNotes") or {}).items()},
                       left_out=dropped, n_participant_folders=len(folders))
