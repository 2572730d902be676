"""The group table: predictions, QC and known values merged; brain-age gap and its correction.

Plain functions over :mod:`brainfm.group.read_outputs`'s readers, used by
:func:`brainfm.group.result.compute_group`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainfm.errors import InputError, UsageError
from brainfm.group.brainage import (
    BIAS_METHODS,
    METHOD_REFERENCES,
    apply_bias_correction,
    brain_age_gap,
    cross_validated_bias_correction,
    fit_bias_correction,
)
from brainfm.group.participants import (
    check_ages,
    merge_group_table,
    read_participants,
    replace_missing_codes,
    target_truth_columns,
    truth_sources,
)
from brainfm.group.read_outputs import read_predictions, read_run_qc, summarise_run_qc

LOGGER = logging.getLogger(__name__)


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


def load_participants(bids_dir: str | Path | None, targets: list[str],
                      extra_numeric: tuple[str, ...] = (),
                      age_column: str = "age") -> pd.DataFrame | None:
    """Read ``bids_dir/participants.tsv`` when it exists, checking its numeric columns.

    The missing codes (:data:`~brainfm.ages.MISSING_AGE_CODES`) of the numeric
    columns are read as n/a with one warning each; the ages must then be ages in years
    (:func:`~brainfm.group.participants.check_ages`).

    Parameters
    ----------
    bids_dir : path or None
        The input dataset.
    targets : list of str
        Predicted targets (their columns must be numeric too).
    extra_numeric : tuple of str
        Further columns that must be numeric (the model's target columns).
    age_column : str
        The column of the known ages (``age``, or the model card's target column for age when
        ``participants.tsv`` has no ``age``).

    Returns
    -------
    pandas.DataFrame or None
        The table, or ``None`` without ``participants.tsv``.

    Raises
    ------
    InputError
        Non-numeric ages or target values, impossible ages (naming the file and rows).
    """
    if bids_dir is None:
        return None
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        LOGGER.info("no %s: the group report has predictions only (no known values)", path)
        return None
    numeric = list(dict.fromkeys([*NUMERIC_PARTICIPANT_COLUMNS, *targets, *extra_numeric]))
    table = replace_missing_codes(read_participants(path, numeric), numeric, path)
    check_ages(table, "age" if "age" in table else age_column, path)
    return table


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
    participants = load_participants(bids_dir, targets, tuple(model_columns.values()),
                                     model_columns.get("age", "age"))
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
        reference = replace_missing_codes(read_participants(ref_path, ["age"],
                                                            required=("age",)), ["age"], ref_path)
        check_ages(reference, "age", ref_path)
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
    desc["age_outside_training_range"] = (
        "true when the known age lies outside the age range of the model's training cohort "
        "(the predictions sidecar's ModelCard.TrainingRange), false inside, n/a when the age "
        "or the range is unknown.")
    desc["age_reliable"] = ("From the participant level: false where the model card's "
                            "out-of-fold evidence says the model cannot tell ages apart there "
                            "(ModelCard.ReliableRange) or the data are shorter than one window.")
    desc["age_expected_mae"] = ("From the participant level: the held-out MAE of the age band "
                                "the prediction falls in (years).")
    desc["model"] = ("The model that made the prediction: ModelSHA256 of the predictions "
                     "sidecar (WeightsSHA256 for sidecars without it; n/a without a sidecar).")
    desc["out_of_distribution"] = ("True when the session lies outside what the model's "
                                   "training cohort covers (see the predictions sidecar).")
    return {c: {"Description": desc[c]} for c in table.columns if c in desc}
