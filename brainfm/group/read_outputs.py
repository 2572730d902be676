"""Read the participant-level outputs for the group level.

Only files in the output dataset are read: the predictions and their sidecars, the run QC
tables, the time-series sidecars (for the methods), the copied atlases and
``dataset_description.json``. The expert weights are :mod:`brainfm.group.experts`, the known
values (``participants.tsv``) :mod:`brainfm.group.participants`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainfm.derivatives import (
    ATLAS_DATASET,
    bandpass_cutoffs,
    find_atlas_images,
    incomplete_participants,
    parse_entities,
    reliability_columns,
)
from brainfm.errors import InputError
from brainfm.fileio import ID_COLUMNS, read_json, read_tsv

#: Glob patterns (relative to the output dataset) of the per-session prediction tables.
PREDICTION_GLOBS = ("sub-*/func/sub-*_desc-brainfm_predictions.tsv",
                    "sub-*/ses-*/func/sub-*_desc-brainfm_predictions.tsv")


#: Columns of a prediction table that are not targets.
QC_COLUMNS = ("n_runs", "retained_seconds")


#: The value BIDS uses for a missing entry, and the session of datasets without sessions.
NA = "n/a"

#: Sidecar keys that identify the model of a prediction, first preferred: ``ModelSHA256``
#: (weights and card), then ``WeightsSHA256`` (the weights alone).
MODEL_HASH_KEYS = ("ModelSHA256", "WeightsSHA256")


def model_hash(sidecar: dict[str, Any]) -> str:
    """The model that made a prediction, from its sidecar.

    Parameters
    ----------
    sidecar : dict
        A predictions sidecar (empty when the file is missing).

    Returns
    -------
    str
        The first of :data:`MODEL_HASH_KEYS` the sidecar holds, else ``'n/a'``.
    """
    for key in MODEL_HASH_KEYS:
        value = sidecar.get(key)
        if isinstance(value, str) and value:
            return value
    return NA


def glob_outputs(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    found: set[Path] = set()
    for pattern in patterns:
        found.update(root.glob(pattern))
    return sorted(found)


def find_prediction_files(output_dir: str | Path) -> list[Path]:
    """List the participant-level prediction tables of an output dataset.

    Parameters
    ----------
    output_dir : path
        The brainfm output dataset.

    Returns
    -------
    list of pathlib.Path
        ``sub-X/[ses-Y/]func/sub-X[_ses-Y]_desc-brainfm_predictions.tsv``, sorted.
    """
    incomplete = set(incomplete_participants(output_dir))
    return [p for p in glob_outputs(Path(output_dir), PREDICTION_GLOBS)
            if p.relative_to(output_dir).parts[0] not in incomplete]


def prediction_targets(columns: list[str]) -> list[str]:
    """Target names of a prediction table: every column ``X`` that has an ``X_std`` partner."""
    cols = [str(c) for c in columns]
    return [c for c in cols
            if f"{c}_std" in cols and c not in ID_COLUMNS and c not in QC_COLUMNS]


def present_intervals(table: pd.DataFrame, prefix: str) -> list[str]:
    """The calibrated-interval columns of a target that a table has (``<prefix>_lower90`` ...)."""
    return [c for level in (50, 90) for side in ("lower", "upper")
            if (c := f"{prefix}_{side}{level}") in table]


def as_flag(values: Any) -> pd.Series:
    """Booleans written ``true``/``false`` (``None``, written n/a, where unknown)."""
    def one(v: Any) -> str | None:
        if isinstance(v, bool | np.bool_):
            return "true" if v else "false"
        text = str(v).strip().lower()
        if text in ("true", "1", "1.0"):
            return "true"
        if text in ("false", "0", "0.0"):
            return "false"
        return None
    series = pd.Series(values)
    return pd.Series([one(v) for v in series], index=series.index, dtype=object)



def _ids_from_name(path: Path) -> tuple[str, str]:
    entities = parse_entities(path.name)
    sub, ses = (f"{key}-{entities[key]}" if key in entities else NA for key in ("sub", "ses"))
    return sub, ses


def read_predictions(output_dir: str | Path) -> tuple[pd.DataFrame, list[str], list[dict]]:
    """Read every participant's prediction table into one table.

    Target columns ``<t>`` and ``<t>_std`` are renamed ``<t>_pred`` and ``<t>_pred_std`` so
    that the known values from ``participants.tsv`` can keep the plain name.

    Parameters
    ----------
    output_dir : path
        The brainfm output dataset.

    Returns
    -------
    table : pandas.DataFrame
        One row per participant and session: ``participant_id``, ``session_id``,
        ``<t>_pred``, ``<t>_pred_std`` per target (and ``<t>_reliable``,
        ``<t>_expected_mae`` where the tables have them), ``model`` (:func:`model_hash`),
        ``n_runs``, ``retained_seconds``.
    targets : list of str
        Target names in order of first appearance (e.g. ``['age', 'fluid_intelligence']``).
    sidecars : list of dict
        The JSON sidecars of the tables (empty dict where a sidecar is missing), with the
        key ``_file`` added.

    Raises
    ------
    InputError
        No prediction found (the participant level has not run), or a malformed table.
    """
    output_dir = Path(output_dir)
    files = find_prediction_files(output_dir)
    if not files:
        raise InputError(
            f"no participant-level predictions found in {output_dir} (expected "
            "sub-<label>/[ses-<label>/]func/sub-<label>[_ses-<label>]_desc-brainfm_"
            "predictions.tsv). Run the participant level first: "
            f"brainfm <bids_dir> {output_dir} participant"
        )
    rows, targets, sidecars = [], [], []
    for path in files:
        table = read_tsv(path)
        if table.empty:
            raise InputError(f"{path} has no rows; rerun the participant level for it")
        file_targets = prediction_targets(list(table.columns))
        if not file_targets:
            raise InputError(f"{path} has no prediction columns (a '<target>' column with a "
                             "'<target>_std' partner); rerun the participant level for it")
        sub, ses = _ids_from_name(path)
        if "participant_id" not in table or (table["participant_id"] == NA).all():
            table["participant_id"] = sub
        if "session_id" not in table:
            table["session_id"] = ses
        for target in file_targets:
            if target not in targets:
                targets.append(target)
            for col in (target, f"{target}_std", *present_intervals(table, target)):
                values = pd.to_numeric(table[col], errors="coerce")
                if (table[col].notna() & values.isna()).any():
                    raise InputError(f"{path}: column '{col}' holds non-numeric values")
                table[col] = values
        rename = {t: f"{t}_pred" for t in file_targets}
        rename.update({f"{t}_std": f"{t}_pred_std" for t in file_targets})
        rename.update({c: c.replace(f"{t}_", f"{t}_pred_", 1) for t in file_targets
                       for c in present_intervals(table, t)})
        rows.append(table.rename(columns=rename))
        sidecar_path = path.with_suffix(".json")
        sidecar: dict[str, Any] = {}
        if sidecar_path.is_file():
            try:
                sidecar = json.loads(sidecar_path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise InputError(f"cannot read the sidecar {sidecar_path}: {err}") from err
        sidecars.append({**sidecar, "_file": str(path)})
        rows[-1]["model"] = model_hash(sidecar)
    table = pd.concat(rows, ignore_index=True, sort=False)
    dup = table.duplicated(subset=list(ID_COLUMNS), keep=False)
    if dup.any():
        pairs = sorted({f"{p} {s}" for p, s in table.loc[dup, list(ID_COLUMNS)].to_numpy()})
        raise InputError(f"several predictions for the same participant and session in "
                         f"{output_dir}: {', '.join(pairs)}")
    for col in QC_COLUMNS:
        if col not in table:
            table[col] = np.nan
        table[col] = pd.to_numeric(table[col], errors="coerce")
    columns = list(ID_COLUMNS)
    for target in targets:
        columns += [f"{target}_pred", f"{target}_pred_std"]
        columns += [c for c in present_intervals(table, f"{target}_pred")]
        columns += [c for c in reliability_columns(target) if c in table]
    for target in targets:
        if f"{target}_reliable" in table:
            table[f"{target}_reliable"] = as_flag(table[f"{target}_reliable"])
        if f"{target}_expected_mae" in table:
            table[f"{target}_expected_mae"] = pd.to_numeric(table[f"{target}_expected_mae"],
                                                            errors="coerce")
    columns += [c for c in ("out_of_distribution",) if c in table]
    columns += ["model", *QC_COLUMNS]
    table = table.reindex(columns=columns)
    return table.sort_values(list(ID_COLUMNS)).reset_index(drop=True), targets, sidecars


def read_run_qc(output_dir: str | Path) -> pd.DataFrame:
    """Concatenate the participants' run QC tables (``sub-X/sub-X_desc-runs_qc.tsv``).

    Parameters
    ----------
    output_dir : path
        The brainfm output dataset.

    Returns
    -------
    pandas.DataFrame
        One row per run (``participant_id``, ``session_id``, ``run``, ``n_volumes``,
        ``n_retained``, ``retained_seconds``, ``mean_fd``, ``status``, ``reason``); empty when
        no QC table exists.
    """
    incomplete = set(incomplete_participants(output_dir))
    paths = sorted(p for p in Path(output_dir).glob("sub-*/sub-*_desc-runs_qc.tsv")
                   if p.parent.name not in incomplete)
    tables = [read_tsv(p) for p in paths]
    tables = [t for t in tables if not t.empty]
    if not tables:
        return pd.DataFrame(columns=["participant_id", "session_id", "run", "n_volumes",
                                     "n_retained", "retained_seconds", "mean_fd", "status",
                                     "reason"])
    qc = pd.concat(tables, ignore_index=True, sort=False)
    for col in ("n_volumes", "n_retained", "retained_seconds", "mean_fd"):
        if col in qc:
            qc[col] = pd.to_numeric(qc[col], errors="coerce")
    return qc


def summarise_run_qc(qc: pd.DataFrame) -> pd.DataFrame:
    """Per participant and session: mean FD of the included runs and the runs excluded.

    Parameters
    ----------
    qc : pandas.DataFrame
        From :func:`read_run_qc`.

    Returns
    -------
    pandas.DataFrame
        ``participant_id``, ``session_id``, ``mean_fd`` (mean over included runs, weighted by
        their retained volumes; over all runs when none was included), ``n_runs_excluded``.
    """
    out = []
    if qc.empty:
        return pd.DataFrame(columns=["participant_id", "session_id", "mean_fd",
                                     "n_runs_excluded"])
    status = qc.get("status", pd.Series("included", index=qc.index)).fillna("included")
    for (sub, ses), group in qc.groupby(["participant_id", "session_id"], sort=True):
        included = group[status.loc[group.index] == "included"]
        use = included if not included.empty else group
        fd = use["mean_fd"].to_numpy(dtype=float)
        weights = use["n_retained"].to_numpy(dtype=float) if "n_retained" in use else None
        ok = np.isfinite(fd)
        if weights is not None:
            ok &= np.isfinite(weights) & (weights > 0)
            mean_fd = float(np.average(fd[ok], weights=weights[ok])) if ok.any() else np.nan
        else:
            mean_fd = float(np.mean(fd[ok])) if ok.any() else np.nan
        if not ok.any() and np.isfinite(fd).any():
            mean_fd = float(np.nanmean(fd))
        out.append({"participant_id": sub, "session_id": ses, "mean_fd": mean_fd,
                    "n_runs_excluded": int(len(group) - len(included))})
    return pd.DataFrame(out)


def find_atlas(output_dir: str | Path, atlas: str) -> tuple[Path, pd.DataFrame] | None:
    """The copied atlas of the output dataset: its label image and ``dseg.tsv`` table.

    Parameters
    ----------
    output_dir : path
        The brainfm output dataset.
    atlas : str
        The ``atlas-`` label.

    Returns
    -------
    tuple or None
        ``(image path, table with index and name)``, or ``None`` when not found.
    """
    images = find_atlas_images(output_dir, atlas)
    if not images:
        return None
    image = images[0]
    table_path = image.with_name(image.name.replace(".nii.gz", ".tsv"))
    if not table_path.is_file():
        return None
    table = read_tsv(table_path)
    if not {"index", "name"} <= set(table.columns):
        return None
    return image, table


def collect_methods_info(output_dir: str | Path, sidecars: list[dict]) -> dict[str, Any]:
    """What the methods paragraph needs, read from the outputs' sidecars.

    Parameters
    ----------
    output_dir : path
        The brainfm output dataset.
    sidecars : list of dict
        The prediction sidecars from :func:`read_predictions`.

    Returns
    -------
    dict
        ``strategies``, ``fd_thresholds``, ``bandpass``, ``repetition_times``,
        ``n_regressors`` (sets/lists gathered over the time-series sidecars), ``atlases``
        (label → name, citation, space), ``model_cards`` (distinct ``ModelCard`` summaries),
        ``model_sha256`` (distinct hashes), ``generated_by`` (from ``dataset_description.json``).
    """
    output_dir = Path(output_dir)
    info: dict[str, Any] = {"strategies": [], "fd_thresholds": [], "bandpass": [],
                            "repetition_times": [], "n_regressors": [], "atlases": {},
                            "model_cards": [], "model_sha256": [], "generated_by": []}

    def add(key: str, value: Any) -> None:
        if value is not None and value not in info[key]:
            info[key].append(value)

    for path in sorted(output_dir.glob("sub-*/**/func/*_stat-mean_timeseries.json")):
        side = read_json(path)
        add("strategies", side.get("DenoisingStrategy"))
        add("fd_thresholds", side.get("FDThreshold"))
        add("bandpass", bandpass_cutoffs(side))
        add("repetition_times", side.get("RepetitionTime"))
        regressors = side.get("NuisanceRegressors")
        if isinstance(regressors, list):
            add("n_regressors", len(regressors))
    for path in sorted((output_dir / ATLAS_DATASET).glob("atlas-*_description.json")):
        label = path.name[len("atlas-"):-len("_description.json")]
        side = read_json(path)
        images = find_atlas_images(output_dir, label)
        info["atlases"][label] = {
            "name": side.get("AtlasName", label),
            "citation": " ".join(str(r) for r in side.get("ReferencesAndLinks") or []),
            "space": images[0].parent.parent.name[len("tpl-"):] if images else ""}
    for side in sidecars:
        card = side.get("ModelCard")
        if card and card not in info["model_cards"]:
            info["model_cards"].append(card)
        if model_hash(side) != NA:
            add("model_sha256", model_hash(side))
    desc = read_json(output_dir / "dataset_description.json")
    info["generated_by"] = [g for g in desc.get("GeneratedBy", []) if isinstance(g, dict)]
    return info
