"""Known values from ``participants.tsv``, and their merge with the predictions."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from brainfm.ages import MAX_AGE, MISSING_AGE_CODES, impossible_ages, looks_like_months
from brainfm.derivatives import reliability_columns
from brainfm.errors import InputError
from brainfm.fileio import ID_COLUMNS, read_tsv
from brainfm.group.read_outputs import NA, present_intervals

LOGGER = logging.getLogger(__name__)


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


def replace_missing_codes(table: pd.DataFrame, columns: list[str], path: str | Path
                          ) -> pd.DataFrame:
    """Read the missing codes (:data:`~brainfm.ages.MISSING_AGE_CODES`) of numeric columns as n/a.

    One warning line names the file, the column and the participants.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`read_participants` (numeric columns already float).
    columns : list of str
        Columns to clean (those absent are skipped).
    path : path
        The file, for the warning.

    Returns
    -------
    pandas.DataFrame
        A copy with the codes replaced by NaN.
    """
    table = table.copy()
    for col in columns:
        if col not in table:
            continue
        coded = table[col].isin(MISSING_AGE_CODES)
        if coded.any():
            ids = table.loc[coded, "participant_id"].tolist()
            LOGGER.warning("%s: column '%s' holds the missing code(s) %s for %d participant(s), "
                           "read as n/a: %s", path, col,
                           "/".join(f"{v:g}" for v in sorted(set(table.loc[coded, col]))),
                           len(ids), ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else ""))
            table.loc[coded, col] = np.nan
    return table


def check_ages(table: pd.DataFrame, column: str, path: str | Path) -> None:
    """Refuse ages that cannot be ages in years (after the missing codes were read as n/a).

    Parameters
    ----------
    table : pandas.DataFrame
        The participants table (``column`` float).
    column : str
        The age column.
    path : path
        The file, for the message.

    Raises
    ------
    InputError
        Ages that :func:`~brainfm.ages.impossible_ages` refuses (naming the participants), or
        a column that :func:`~brainfm.ages.looks_like_months`.
    """
    if column not in table:
        return
    ages = table[column].to_numpy(dtype=float)
    known = np.isfinite(ages)
    def named(rows: np.ndarray) -> str:
        items = [f"{table.at[i, 'participant_id']}: {ages[k]:g}"
                 for k, i in enumerate(table.index) if rows[k]]
        return ", ".join(items[:10]) + (f" and {len(items) - 10} more" if len(items) > 10
                                        else "")

    if looks_like_months(ages):
        raise InputError(
            f"{path}: column '{column}' has a median of {np.median(ages[known]):g} "
            f"({named(known)}): these look like ages in months; participants.tsv ages must be "
            "in years (divide the column by 12)")
    bad = impossible_ages(ages)
    if bad.any():
        raise InputError(
            f"{path}: column '{column}' holds values that cannot be ages in years "
            f"(0 < age < {MAX_AGE:g}): {named(bad)}. Correct them, or write n/a (or "
            f"{'/'.join(f'{v:g}' for v in MISSING_AGE_CODES)}) for unknown ages.")


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
                    *present_intervals(table, f"{target}_pred"),
                    *[c for c in reliability_columns(target) if c in table]]
        if target in known:
            columns.append(target)
    columns += [c for c in ("out_of_distribution", "model") if c in table]
    columns += ["n_runs", "n_runs_excluded", "retained_seconds", "mean_fd", *extras]
    return table.reindex(columns=columns)
