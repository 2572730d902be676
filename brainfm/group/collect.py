"""Read the participant-level outputs (and ``participants.tsv``) for the group level.

Only files in the output dataset are read: the predictions and their sidecars, the RWMoE expert
weights, the run QC tables, the time-series sidecars (for the methods), the copied atlases and
``dataset_description.json``; plus ``participants.tsv`` of the input dataset when present.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainfm.derivatives import (
    ATLAS_DATASET,
    ID_COLUMNS,
    find_atlas_images,
    incomplete_participants,
    read_tsv,
)
from brainfm.errors import InputError

LOGGER = logging.getLogger(__name__)

#: Glob patterns (relative to the output dataset) of the per-session prediction tables.
PREDICTION_GLOBS = ("sub-*/func/sub-*_desc-brainfm_predictions.tsv",
                    "sub-*/ses-*/func/sub-*_desc-brainfm_predictions.tsv")
#: Glob patterns of the RWMoE expert-weight tables.
EXPERT_GLOBS = ("sub-*/func/sub-*_desc-rwmoe_expertweights.tsv",
                "sub-*/ses-*/func/sub-*_desc-rwmoe_expertweights.tsv")
#: Columns of a prediction table that are not targets.
QC_COLUMNS = ("n_runs", "retained_seconds")
#: The value BIDS uses for a missing entry, and the session of datasets without sessions.
NA = "n/a"

_ATLAS_RE = re.compile(r"_atlas-([A-Za-z0-9]+)_")


def _glob(root: Path, patterns: tuple[str, ...]) -> list[Path]:
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
    return [p for p in _glob(Path(output_dir), PREDICTION_GLOBS)
            if p.relative_to(output_dir).parts[0] not in incomplete]


def prediction_targets(columns: list[str]) -> list[str]:
    """Target names of a prediction table: every column ``X`` that has an ``X_std`` partner."""
    cols = [str(c) for c in columns]
    return [c for c in cols
            if f"{c}_std" in cols and c not in ID_COLUMNS and c not in QC_COLUMNS]


def _present_intervals(table: pd.DataFrame, prefix: str) -> list[str]:
    """The calibrated-interval columns of a target that a table has (``<prefix>_lower90`` ...)."""
    return [c for level in (50, 90) for side in ("lower", "upper")
            if (c := f"{prefix}_{side}{level}") in table]


def _ids_from_name(path: Path) -> tuple[str, str]:
    sub = re.search(r"(sub-[A-Za-z0-9]+)", path.name)
    ses = re.search(r"_(ses-[A-Za-z0-9]+)", path.name)
    return (sub.group(1) if sub else NA), (ses.group(1) if ses else NA)


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
        ``<t>_pred``, ``<t>_pred_std`` per target, ``n_runs``, ``retained_seconds``.
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
            for col in (target, f"{target}_std", *_present_intervals(table, target)):
                values = pd.to_numeric(table[col], errors="coerce")
                if (table[col].notna() & values.isna()).any():
                    raise InputError(f"{path}: column '{col}' holds non-numeric values")
                table[col] = values
        rename = {t: f"{t}_pred" for t in file_targets}
        rename.update({f"{t}_std": f"{t}_pred_std" for t in file_targets})
        rename.update({c: c.replace(f"{t}_", f"{t}_pred_", 1) for t in file_targets
                       for c in _present_intervals(table, t)})
        rows.append(table.rename(columns=rename))
        sidecar_path = path.with_suffix(".json")
        sidecar: dict[str, Any] = {}
        if sidecar_path.is_file():
            try:
                sidecar = json.loads(sidecar_path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise InputError(f"cannot read the sidecar {sidecar_path}: {err}") from err
        sidecars.append({**sidecar, "_file": str(path)})
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
        columns += [c for c in _present_intervals(table, f"{target}_pred")]
    columns += [c for c in ("out_of_distribution",) if c in table]
    columns += list(QC_COLUMNS)
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


def _normalise_participant_id(value: str) -> str:
    value = str(value).strip()
    return value if value.startswith("sub-") or value == NA else f"sub-{value}"


def read_participants(path: str | Path, numeric_columns: list[str],
                      required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a ``participants.tsv`` and check that the given columns are numeric.

    Parameters
    ----------
    path : path
        The file (``bids_dir/participants.tsv`` or a reference sample's).
    numeric_columns : list of str
        Columns that must hold numbers or ``n/a`` where present (e.g. ``age``).
    required : tuple of str
        Columns that must exist.

    Returns
    -------
    pandas.DataFrame
        The table with ``participant_id`` normalised to ``sub-<label>`` and the numeric columns
        converted to float.

    Raises
    ------
    InputError
        Missing file or column, or non-numeric values (the message names the file, the
        column and the offending rows).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"participants table {path} does not exist")
    table = read_tsv(path)
    missing = [c for c in ("participant_id", *required) if c not in table]
    if missing:
        raise InputError(f"{path} has no column(s) {', '.join(missing)}")
    table["participant_id"] = table["participant_id"].map(_normalise_participant_id)
    problems = []
    for col in numeric_columns:
        if col not in table:
            continue
        raw = table[col]
        values = pd.to_numeric(raw, errors="coerce")
        bad = raw.notna() & values.isna()
        if bad.any():
            rows = [f"line {i + 2} ({table.at[i, 'participant_id']}: {raw.at[i]!r})"
                    for i in table.index[bad][:10]]
            more = f" and {int(bad.sum()) - 10} more" if bad.sum() > 10 else ""
            problems.append(f"column '{col}' is not numeric at {', '.join(rows)}{more}")
        table[col] = values.astype(float)
    if problems:
        raise InputError(f"{path}: {'; '.join(problems)}. Use numbers, or n/a for unknown "
                         "values.")
    dup = table["participant_id"].duplicated(keep=False)
    if dup.any() and "session_id" not in table:
        raise InputError(f"{path}: participant_id repeated: "
                         f"{', '.join(sorted(set(table.loc[dup, 'participant_id'])))}")
    return table


def target_truth_columns(sidecars: list[dict], targets: list[str]) -> dict[str, str]:
    """The ``participants.tsv`` column each target was trained on, from the model cards.

    Parameters
    ----------
    sidecars : list of dict
        Prediction sidecars (``ModelCard`` with ``TargetColumns``, e.g.
        ``{"fluid_intelligence": "piq"}``).
    targets : list of str
        Target names.

    Returns
    -------
    dict
        Target to column name, for the targets whose model card names one.
    """
    out: dict[str, str] = {}
    for side in sidecars:
        card = side.get("ModelCard")
        columns = card.get("TargetColumns") if isinstance(card, dict) else None
        if not isinstance(columns, dict):
            continue
        for target in targets:
            column = columns.get(target)
            if isinstance(column, str) and column and target not in out:
                out[target] = column
    return out


def truth_sources(participants: pd.DataFrame | None, targets: list[str],
                  truth_columns: dict[str, str] | None = None) -> dict[str, str]:
    """Which ``participants.tsv`` column holds the known value of each target.

    The column named like the target is used when present, else the column the model was
    trained on (``truth_columns``, from the model card), when present.

    Returns
    -------
    dict
        Target to column name, for the targets with a known-value column.
    """
    if participants is None:
        return {}
    out = {}
    for target in targets:
        if target in participants:
            out[target] = target
        elif (truth_columns or {}).get(target) in participants:
            out[target] = truth_columns[target]
    return out


def merge_group_table(predictions: pd.DataFrame, targets: list[str],
                      qc_summary: pd.DataFrame | None = None,
                      participants: pd.DataFrame | None = None,
                      extra_columns: tuple[str, ...] = ("sex", "site"),
                      truth_columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Join predictions, known values and QC into the group table.

    Parameters
    ----------
    predictions : pandas.DataFrame
        From :func:`read_predictions`.
    targets : list of str
        Target names.
    qc_summary : pandas.DataFrame, optional
        From :func:`summarise_run_qc` (adds ``mean_fd`` and ``n_runs_excluded``).
    participants : pandas.DataFrame, optional
        From :func:`read_participants`; its target columns become the known values (named
        like the target, e.g. ``age``); ``extra_columns`` present are copied too. When it has a
        ``session_id`` column, rows are matched on participant and session.
    extra_columns : tuple of str
        Descriptive columns copied from ``participants`` when present.
    truth_columns : dict, optional
        Target to the ``participants`` column holding its known value when no column is named
        like the target (see :func:`truth_sources`).

    Returns
    -------
    pandas.DataFrame
        ``participant_id``, ``session_id``, per target ``<t>_pred``, ``<t>_pred_std``, the
        calibrated intervals (``<t>_pred_lower90`` ...) when the model gives them and the
        known ``<t>`` (when known for anyone), then ``out_of_distribution`` (when given),
        ``n_runs``, ``n_runs_excluded``,
        ``retained_seconds``, ``mean_fd`` and the extra columns.
    """
    table = predictions.copy()
    if qc_summary is not None and not qc_summary.empty:
        table = table.merge(qc_summary, on=list(ID_COLUMNS), how="left")
    for col in ("mean_fd", "n_runs_excluded"):
        if col not in table:
            table[col] = np.nan
    known: list[str] = []
    extras: list[str] = []
    if participants is not None:
        sources = truth_sources(participants, targets, truth_columns)
        known = list(sources)
        extras = [c for c in extra_columns if c in participants and c not in targets]
        keys = ["participant_id"]
        if "session_id" in participants and participants["session_id"].ne(NA).any():
            keys.append("session_id")
        part = participants[keys + extras].copy()
        for target, column in sources.items():
            part[target] = participants[column]
        part = part.drop_duplicates(subset=keys)
        table = table.merge(part, on=keys, how="left")
        unknown = sorted(set(predictions["participant_id"]) - set(participants["participant_id"]))
        if unknown:
            LOGGER.warning("%d participant(s) with predictions are not in participants.tsv: %s",
                           len(unknown), ", ".join(unknown[:10]))
    columns = list(ID_COLUMNS)
    for target in targets:
        columns += [f"{target}_pred", f"{target}_pred_std",
                    *_present_intervals(table, f"{target}_pred")]
        if target in known:
            columns.append(target)
    columns += [c for c in ("out_of_distribution",) if c in table]
    columns += ["n_runs", "n_runs_excluded", "retained_seconds", "mean_fd", *extras]
    return table.reindex(columns=columns)


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
    for path in _glob(Path(output_dir), EXPERT_GLOBS):
        match = _ATLAS_RE.search(path.name)
        if not match:
            continue
        table = read_tsv(path)
        experts = [c for c in table.columns if str(c).startswith("expert_")]
        if "Node" not in table or not experts:
            raise InputError(f"{path} must have a 'Node' column and 'expert_<k>' columns")
        weights = table.set_index(table["Node"].astype(str))[experts].apply(
            pd.to_numeric, errors="coerce")
        by_atlas.setdefault(match.group(1), []).append((path, weights))
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return content if isinstance(content, dict) else {}


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
        side = _read_json(path)
        add("strategies", side.get("DenoisingStrategy"))
        add("fd_thresholds", side.get("FDThreshold"))
        bp = side.get("BandpassFilter") or {}
        if isinstance(bp, dict):
            add("bandpass", (bp.get("HighPass"), bp.get("LowPass")))
        add("repetition_times", side.get("RepetitionTime"))
        regressors = side.get("NuisanceRegressors")
        if isinstance(regressors, list):
            add("n_regressors", len(regressors))
    for path in sorted((output_dir / ATLAS_DATASET).glob("atlas-*_description.json")):
        label = path.name[len("atlas-"):-len("_description.json")]
        side = _read_json(path)
        images = find_atlas_images(output_dir, label)
        info["atlases"][label] = {
            "name": side.get("AtlasName", label),
            "citation": " ".join(str(r) for r in side.get("ReferencesAndLinks") or []),
            "space": images[0].parent.parent.name[len("tpl-"):] if images else ""}
    for side in sidecars:
        card = side.get("ModelCard")
        if card and card not in info["model_cards"]:
            info["model_cards"].append(card)
        add("model_sha256", side.get("ModelSHA256"))
    desc = _read_json(output_dir / "dataset_description.json")
    info["generated_by"] = [g for g in desc.get("GeneratedBy", []) if isinstance(g, dict)]
    return info
