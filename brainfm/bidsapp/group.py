"""The group level: cohort table, brain-age gap, bias correction, metrics and HTML report.

Reads only the output dataset (and ``bids_dir/participants.tsv`` when present) and writes, at
the root of the output dataset:

``group_predictions.tsv`` (+ ``.json`` column descriptions)
    One row per participant and session. Predictions are ``<target>_pred`` and
    ``<target>_pred_std`` (e.g. ``age_pred``, ``fluid_intelligence_pred``); the known values
    from ``participants.tsv`` keep the plain name (``age``, ``fluid_intelligence``);
    ``age_gap`` = ``age_pred - age``; with a bias correction also ``age_pred_corrected`` and
    ``age_gap_corrected``; QC: ``n_runs`` (runs used), ``n_runs_excluded``,
    ``retained_seconds``, ``mean_fd``; and ``sex``/``site`` when ``participants.tsv`` has them.
``group_metrics.json``
    Per target with known values: ``n``, ``mae``, ``rmse``, ``mean_error``, ``pearson_r``,
    ``pearson_p``, ``r2`` over the sessions; the brain-age gap summary; the bias-corrected
    metrics when a correction is used (inflated by construction; see the warning in the file).
``group_biascorrection.json``
    The correction's coefficients (only with ``--bias-correction linear|residual``).
``group_report.html``
    The self-contained cohort report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainfm.bidsapp.config import Config
from brainfm.derivatives import (
    incomplete_participants,
    init_output_dataset,
    write_json_atomic,
    write_text_atomic,
    write_tsv_atomic,
)
from brainfm.errors import InputError, UsageError
from brainfm.group.brainage import (
    BIAS_METHODS,
    METHOD_REFERENCES,
    apply_bias_correction,
    brain_age_gap,
    cross_validated_bias_correction,
    fit_bias_correction,
)
from brainfm.group.collect import (
    ExpertWeights,
    collect_methods_info,
    merge_group_table,
    read_expert_weights,
    read_participants,
    read_predictions,
    read_run_qc,
    summarise_run_qc,
    target_truth_columns,
    truth_sources,
)
from brainfm.group.metrics import pearson_r, regression_metrics

LOGGER = logging.getLogger("brainfm")

#: Output file names (at the root of the output dataset).
PREDICTIONS_FILE = "group_predictions.tsv"
METRICS_FILE = "group_metrics.json"
BIAS_FILE = "group_biascorrection.json"
REPORT_FILE = "group_report.html"

#: Known-value columns checked for numbers in ``participants.tsv`` (plus every target).
NUMERIC_PARTICIPANT_COLUMNS = ("age", "fluid_intelligence")

#: Printed in the metrics file and the report whenever a bias correction is used.
BIAS_WARNING = (
    "Bias-corrected brain age uses the chronological age of each participant, so its MAE, "
    "Pearson r and R² against age are inflated by construction and are NOT measures of "
    "prediction accuracy (Butler et al. 2021, Hum Brain Mapp 42:4092; de Lange & Cole 2020, "
    "NeuroImage: Clinical 26:102229). Report the uncorrected metrics as accuracy; use the "
    "corrected gap only as an age-independent individual measure."
)

#: Default number of folds of the cross-validated correction, and its seed.
DEFAULT_FOLDS = 5
DEFAULT_SEED = 0


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
        Atlas label to :class:`~brainfm.group.collect.ExpertWeights`.
    methods : dict
        From :func:`~brainfm.group.collect.collect_methods_info`.
    run_qc : pandas.DataFrame
        Every run's QC row.
    notes : list of str
        Warnings for the report (participants without known values, ...).
    truth_columns : dict
        Target to the ``participants.tsv`` column of its known values.
    target_notes : dict
        Target to the model card's plain-words caveat (e.g. not predictable out of site).
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


def load_participants(bids_dir: str | Path | None, targets: list[str],
                      extra_numeric: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """Read ``bids_dir/participants.tsv`` when it exists, checking its numeric columns.

    Parameters
    ----------
    bids_dir : path or None
        The input dataset.
    targets : list of str
        Predicted targets (their columns must be numeric too).
    extra_numeric : tuple of str
        Further columns that must be numeric (the model's target columns).

    Returns
    -------
    pandas.DataFrame or None
        The table, or ``None`` without ``participants.tsv``.

    Raises
    ------
    InputError
        Non-numeric ages or target values (naming the file and rows).
    """
    if bids_dir is None:
        return None
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        LOGGER.info("no %s: the group report has predictions only (no known values)", path)
        return None
    numeric = list(dict.fromkeys([*NUMERIC_PARTICIPANT_COLUMNS, *targets, *extra_numeric]))
    return read_participants(path, numeric)


def build_group_table(output_dir: str | Path, bids_dir: str | Path | None
                      ) -> tuple[pd.DataFrame, list[str], list[dict], pd.DataFrame,
                                 dict[str, str]]:
    """Read the predictions, QC and known values and merge them (no gap, no correction).

    Parameters
    ----------
    output_dir : path
        The brainfm output dataset.
    bids_dir : path or None
        The input dataset (for ``participants.tsv``).

    Returns
    -------
    table : pandas.DataFrame
        Predictions with known values and QC columns.
    targets : list of str
        Predicted targets.
    sidecars : list of dict
        Prediction sidecars.
    run_qc : pandas.DataFrame
        Every run's QC row.
    truth_columns : dict
        Target to the ``participants.tsv`` column its known values came from (the target's own
        name, else the column named in the model card's ``TargetColumns``).
    """
    predictions, targets, sidecars = read_predictions(output_dir)
    run_qc = read_run_qc(output_dir)
    model_columns = target_truth_columns(sidecars, targets)
    participants = load_participants(bids_dir, targets, tuple(model_columns.values()))
    table = merge_group_table(predictions, targets, summarise_run_qc(run_qc), participants,
                              truth_columns=model_columns)
    return table, targets, sidecars, run_qc, truth_sources(participants, targets,
                                                           model_columns)


def _insert_after(table: pd.DataFrame, after: str, name: str, values: Any) -> pd.DataFrame:
    if name in table:
        table = table.drop(columns=name)
    position = list(table.columns).index(after) + 1 if after in table else len(table.columns)
    table.insert(position, name, values)
    return table


def add_brain_age_gap(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``age_gap`` (``age_pred - age``) after the ``age`` column when both exist."""
    if "age_pred" in table and "age" in table:
        table = _insert_after(table, "age", "age_gap",
                              brain_age_gap(table["age_pred"], table["age"]))
    return table


def correct_brain_age(table: pd.DataFrame, method: str, reference_ages: str | Path | None,
                      n_folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED
                      ) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """Bias-correct the predicted age: fitted on a reference sample, or out-of-fold.

    Parameters
    ----------
    table : pandas.DataFrame
        The group table (``age_pred``; ``age`` where known).
    method : {'none', 'linear', 'residual'}
        The correction (see :mod:`brainfm.group.brainage`).
    reference_ages : path or None
        A ``participants.tsv`` (``participant_id``, ``age``; optionally ``session_id``) of a
        reference sample whose predictions are in ``table``: the coefficients are fitted on it
        and applied to everyone. Its ages also fill ``age`` where ``participants.tsv`` had none.
        Without it the coefficients are fitted out-of-fold (K-fold within the cohort, grouped by
        participant).
    n_folds, seed : int
        Folds and seed of the cross-validated fit.

    Returns
    -------
    table : pandas.DataFrame
        With ``age_pred_corrected`` and ``age_gap_corrected`` (unchanged for ``'none'``).
    correction : dict or None
        The content of ``group_biascorrection.json``.

    Raises
    ------
    UsageError
        Unknown method, or reference ages without a method.
    InputError
        Missing reference file, non-numeric ages, no age predictions, too few participants
        with known age.
    """
    if method not in BIAS_METHODS:
        raise UsageError(f"unknown bias correction '{method}' (choose from "
                         f"{', '.join(BIAS_METHODS)})")
    if method == "none":
        if reference_ages is not None:
            raise UsageError("--reference-ages is only used with --bias-correction linear or "
                             "residual")
        return table, None
    if "age_pred" not in table:
        raise InputError("--bias-correction needs age predictions, but the participant-level "
                         "predictions have no 'age' column")
    table = table.copy()
    info: dict[str, Any]
    if reference_ages is not None:
        ref_path = Path(reference_ages)
        if not ref_path.is_file():
            raise InputError(f"--reference-ages {ref_path} does not exist")
        reference = read_participants(ref_path, ["age"], required=("age",))
        keys = ["participant_id"]
        if "session_id" in reference and reference["session_id"].ne("n/a").any():
            keys.append("session_id")
        ref = reference[keys + ["age"]].rename(columns={"age": "_ref_age"})
        merged = table[keys].merge(ref.drop_duplicates(subset=keys), on=keys, how="left")
        ref_age = merged["_ref_age"].to_numpy(dtype=float)
        in_ref = np.isfinite(ref_age) & np.isfinite(table["age_pred"].to_numpy(dtype=float))
        if in_ref.sum() < 3:
            raise InputError(
                f"--reference-ages {ref_path}: only {int(in_ref.sum())} of its participants "
                "have predictions in the output dataset (at least 3 needed); the reference "
                "sample must be processed at the participant level too"
            )
        if "age" not in table:
            table = _insert_after(table, "age_pred_std", "age", np.nan)
        table["age"] = table["age"].where(table["age"].notna(), pd.Series(ref_age,
                                                                          index=table.index))
        try:
            coefs = fit_bias_correction(table["age_pred"].to_numpy(dtype=float)[in_ref],
                                        ref_age[in_ref], method)
        except ValueError as err:
            raise InputError(f"--reference-ages {ref_path}: {err}") from err
        pred_corr, gap_corr = apply_bias_correction(table["age_pred"], table["age"], coefs)
        info = {**coefs, "fit": "reference", "reference_file": str(ref_path),
                "reference_participants": sorted(set(table.loc[in_ref, "participant_id"]))}
    else:
        if "age" not in table or table["age"].notna().sum() == 0:
            raise InputError(
                "--bias-correction without --reference-ages fits the correction within the "
                "cohort (cross-validated), which needs known ages: add an 'age' column to "
                "bids_dir/participants.tsv or give --reference-ages"
            )
        try:
            pred_corr, gap_corr, info = cross_validated_bias_correction(
                table["age_pred"], table["age"], table["participant_id"], method,
                n_folds=n_folds, seed=seed)
        except ValueError as err:
            raise InputError(f"bias correction: {err}") from err
    table = add_brain_age_gap(table)
    anchor = "age_gap" if "age_gap" in table else "age_pred_std"
    table = _insert_after(table, anchor, "age_pred_corrected", pred_corr)
    table = _insert_after(table, "age_pred_corrected", "age_gap_corrected", gap_corr)
    formula = ("age_pred_corrected = (age_pred - intercept) / slope; "
               "age_gap_corrected = age_pred_corrected - age" if method == "linear" else
               "age_gap_corrected = (age_pred - age) - (slope * age + intercept); "
               "age_pred_corrected = age + age_gap_corrected")
    model = ("age_pred = slope * age + intercept" if method == "linear"
             else "age_pred - age = slope * age + intercept")
    return table, {**info, "model": model, "formula": formula,
                   "reference": METHOD_REFERENCES[method], "warning": BIAS_WARNING}


def compute_group_metrics(table: pd.DataFrame, targets: list[str],
                          correction: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``group_metrics.json``.

    Parameters
    ----------
    table : pandas.DataFrame
        The group table.
    targets : list of str
        Predicted targets.
    correction : dict or None
        The correction info (adds the ``bias_corrected`` entry).

    Returns
    -------
    dict
        ``n_sessions``, ``n_participants``, ``targets`` (per target with known values:
        :func:`~brainfm.group.metrics.regression_metrics` plus ``n_predicted``),
        ``targets_without_known_values``, ``brain_age_gap`` (``n``, ``mean``, ``std``,
        ``r_with_age``), ``bias_corrected`` (with a correction) and ``description``.
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
        }
    if correction is not None and "age_pred_corrected" in table:
        metrics = regression_metrics(table["age"], table["age_pred_corrected"])
        out["bias_corrected"] = {
            "method": correction["method"], "fit": correction["fit"], **metrics,
            "gap_r_with_age": pearson_r(table["age"], table["age_gap_corrected"]),
            "warning": BIAS_WARNING,
        }
    return out


def column_descriptions(table: pd.DataFrame, targets: list[str],
                        truth_columns: dict[str, str] | None = None) -> dict[str, Any]:
    """JSON sidecar of ``group_predictions.tsv``: a description of every column.

    Parameters
    ----------
    table : pandas.DataFrame
        The group table.
    targets : list of str
        Predicted targets.
    truth_columns : dict, optional
        Target to the ``participants.tsv`` column of its known values.

    Returns
    -------
    dict
        Column name to ``{"Description": ...}`` for every column of ``table``.
    """
    desc: dict[str, Any] = {
        "participant_id": "Participant (sub-<label>).",
        "session_id": "Session (ses-<label>), n/a for datasets without sessions.",
        "n_runs": "Runs whose time series entered the prediction.",
        "n_runs_excluded": "Runs excluded at the participant level (see sub-<label>_desc-runs_"
                           "qc.tsv for the reason).",
        "retained_seconds": "Time left after censoring, summed over the runs used (s).",
        "mean_fd": "Mean framewise displacement (Power 2012, mm) of the included runs, "
                   "weighted by their retained volumes.",
        "age_gap": "Brain-age gap: age_pred - age (years).",
        "age_pred_corrected": "Bias-corrected predicted age (uses the known age; see "
                              "group_biascorrection.json).",
        "age_gap_corrected": "Bias-corrected brain-age gap: age_pred_corrected - age (years).",
        "sex": "From participants.tsv.",
        "site": "From participants.tsv.",
    }
    sources = truth_columns or {}
    for target in targets:
        desc[f"{target}_pred"] = f"Predicted {target} (mean over windows and runs)."
        desc[f"{target}_pred_std"] = f"Predictive standard deviation of {target}_pred " \
                                     "(model and window spread)."
        desc[target] = f"Known {target}: column '{sources.get(target, target)}' of " \
                       "participants.tsv."
        for level in (50, 90):
            for side in ("lower", "upper"):
                desc[f"{target}_pred_{side}{level}"] = (
                    f"{side.capitalize()} bound of the calibrated central {level} % interval of "
                    f"{target}_pred (conformal, from held-out-site residuals of the training "
                    "cohort).")
    desc["out_of_distribution"] = ("True when the session lies outside what the model's "
                                   "training cohort covers (see the predictions sidecar).")
    return {c: {"Description": desc[c]} for c in table.columns if c in desc}


def compute_group(output_dir: str | Path, bids_dir: str | Path | None,
                  bias_correction: str = "none", reference_ages: str | Path | None = None,
                  n_folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED) -> GroupResult:
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

    Returns
    -------
    GroupResult
        The tables, metrics and report inputs.

    Raises
    ------
    InputError
        No predictions (the participant level has not run), malformed inputs.
    UsageError
        Inconsistent options.
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
    table = add_brain_age_gap(table)
    table, correction = correct_brain_age(table, bias_correction, reference_ages, n_folds, seed)
    metrics = compute_group_metrics(table, targets, correction)
    notes = []
    for target in targets:
        if target in table:
            missing = table.loc[table[target].isna(), "participant_id"].unique().tolist()
            if missing:
                notes.append(f"{len(missing)} participant(s) without a known {target}: "
                             f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
    has_pred = table[[f"{t}_pred" for t in targets]].notna().any(axis=1)
    predicted = set(zip(table.loc[has_pred, "participant_id"], table.loc[has_pred, "session_id"],
                        strict=True))
    processed = set(zip(table["participant_id"], table["session_id"], strict=True))
    if len(run_qc):
        processed |= set(zip(run_qc["participant_id"], run_qc["session_id"], strict=True))
    unpredicted = sorted(f"{p}" + ("" if s == "n/a" else f" {s}")
                         for p, s in processed - predicted)
    if unpredicted:
        notes.append(f"{len(unpredicted)} participant session(s) processed but without "
                     f"predictions (all runs excluded, or the model stage did not run): "
                     f"{', '.join(unpredicted[:20])}{' ...' if len(unpredicted) > 20 else ''}")
    if metrics["targets_without_known_values"]:
        notes.append("no known values (participants.tsv) for: "
                     + ", ".join(metrics["targets_without_known_values"]))
    return GroupResult(table=table, targets=targets, metrics=metrics, correction=correction,
                       expert_weights=read_expert_weights(output_dir),
                       methods=collect_methods_info(output_dir, sidecars), run_qc=run_qc,
                       notes=notes, truth_columns=truth_columns,
                       target_notes={t: n for sc in sidecars
                                     for t, n in (sc.get("TargetNotes") or {}).items()})


def _update_shared_files(output_dir: Path, bids_dir: Path | None) -> None:
    """Refresh ``.bidsignore`` (the ``group_*`` pattern) keeping the recorded sources."""
    init_output_dataset(output_dir, {"raw": bids_dir} if bids_dir is not None else {})


def write_group_outputs(result: GroupResult, output_dir: str | Path,
                        bids_dir: str | Path | None = None) -> dict[str, Path]:
    """Render the report, then write every group output atomically.

    Parameters
    ----------
    result : GroupResult
        From :func:`compute_group`.
    output_dir : path
        The output dataset.
    bids_dir : path, optional
        The input dataset (named in the report).

    Returns
    -------
    dict
        ``predictions``, ``predictions_json``, ``metrics``, ``report`` and (with a correction)
        ``bias_correction``: the paths written.
    """
    from brainfm.reports.group_report import render_group_report

    output_dir = Path(output_dir)
    html = render_group_report(result, output_dir, bids_dir)
    _update_shared_files(output_dir, Path(bids_dir) if bids_dir else None)
    written = {
        "predictions": write_tsv_atomic(output_dir / PREDICTIONS_FILE, result.table),
        "predictions_json": write_json_atomic(
            output_dir / PREDICTIONS_FILE.replace(".tsv", ".json"),
            column_descriptions(result.table, result.targets, result.truth_columns)),
        "metrics": write_json_atomic(output_dir / METRICS_FILE, result.metrics),
    }
    bias_path = output_dir / BIAS_FILE
    if result.correction is not None:
        written["bias_correction"] = write_json_atomic(bias_path, result.correction)
    elif bias_path.exists():
        bias_path.unlink()  # a previous run's coefficients no longer describe the table
    written["report"] = write_text_atomic(output_dir / REPORT_FILE, html)
    return written


def run_group_level(config: Config) -> dict[str, Path]:
    """Run the group level for a :class:`~brainfm.bidsapp.config.Config`.

    Reads ``config.output_dir`` (and ``config.bids_dir/participants.tsv``), and the optional
    fields ``bias_correction`` (``'none'``, ``'linear'``, ``'residual'``; default ``'none'``)
    and ``reference_ages`` (path or ``None``).

    Parameters
    ----------
    config : brainfm.bidsapp.config.Config
        The run configuration.

    Returns
    -------
    dict
        The files written (see :func:`write_group_outputs`).

    Raises
    ------
    InputError
        No participant-level predictions, malformed ``participants.tsv``, missing
        ``--reference-ages`` (exit 66).
    UsageError
        Inconsistent options (exit 64).
    """
    output_dir = Path(config.output_dir)
    bids_dir = Path(config.bids_dir) if getattr(config, "bids_dir", None) else None
    method = getattr(config, "bias_correction", None) or "none"
    reference = getattr(config, "reference_ages", None)
    LOGGER.info("brainfm group level: %s (bias correction: %s%s)", output_dir, method,
                f", reference {reference}" if reference else "")
    incomplete = incomplete_participants(output_dir)
    if incomplete:
        LOGGER.warning("%d participant(s) with incomplete outputs are left out: %s (their "
                       "participant level was interrupted or failed; rerun it for them)",
                       len(incomplete), ", ".join(incomplete))
    result = compute_group(output_dir, bids_dir, method, reference)
    written = write_group_outputs(result, output_dir, bids_dir)
    LOGGER.info("group level: %d session(s) of %d participant(s); wrote %s",
                result.metrics["n_sessions"], result.metrics["n_participants"],
                ", ".join(p.name for p in written.values()))
    return written
