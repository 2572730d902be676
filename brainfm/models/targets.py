"""Prediction targets from ``participants.tsv``: specifications, the target matrix, scaling."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainfm.derivatives import strip_prefix
from brainfm.errors import InputError, UsageError


@dataclass(frozen=True)
class TargetSpec:
    """A prediction target: output ``name`` read from the participants.tsv ``column``.

    Attributes
    ----------
    name : str
        Output name (``age``, ``fluid_intelligence`` ...).
    column : str
        Column of ``participants.tsv`` (case-insensitive match).
    """

    name: str
    column: str


def parse_target_spec(spec: str) -> TargetSpec:
    """Parse ``name`` or ``name=COLUMN``.

    Parameters
    ----------
    spec : str
        ``age`` (column ``age``) or ``fluid_intelligence=PIQ``.

    Returns
    -------
    TargetSpec
        Name and column.

    Raises
    ------
    UsageError
        Empty name or column, or characters other than letters, digits, ``_`` and ``-``.
    """
    name, _, column = str(spec).partition("=")
    name, column = name.strip(), (column.strip() or name.strip())
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", name or "") or not column:
        raise UsageError(
            f"bad --target '{spec}': use NAME or NAME=COLUMN (e.g. fluid_intelligence=PIQ)"
        )
    return TargetSpec(name=name, column=column)


def load_participants(path: Path | str) -> pd.DataFrame:
    """Read ``participants.tsv``.

    Parameters
    ----------
    path : path
        Tab-separated file with a ``participant_id`` column (with or without ``sub-``).

    Returns
    -------
    pandas.DataFrame
        Indexed by participant label without ``sub-`` (str); ``n/a`` and empty cells are NaN;
        numeric-looking columns are numeric.

    Raises
    ------
    InputError
        The file is missing, unreadable or has no ``participant_id`` column.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"participants file not found: {path} (pass --participants-tsv)"
        )
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a", ""],
                            keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    cols = {c.lower(): c for c in frame.columns}
    if "participant_id" not in cols:
        raise InputError(f"{path} has no participant_id column")
    frame = frame.rename(columns={cols["participant_id"]: "participant_id"})
    frame["participant_id"] = [
        strip_prefix(p, "sub-") for p in frame["participant_id"].astype(str)
    ]
    frame = frame.drop_duplicates("participant_id").set_index("participant_id")
    for col in frame.columns:
        converted = pd.to_numeric(frame[col], errors="coerce")
        if converted.notna().sum() == frame[col].notna().sum():
            frame[col] = converted.astype(np.float64)
    return frame


def resolve_column(frame: pd.DataFrame, column: str, source: str = "participants.tsv") -> str:
    """Find ``column`` in ``frame`` case-insensitively.

    Parameters
    ----------
    frame : pandas.DataFrame
        Participants table.
    column : str
        Wanted column.
    source : str, optional
        File name for the error message.

    Returns
    -------
    str
        The column's actual name.

    Raises
    ------
    UsageError
        No such column (the message lists the available ones).
    """
    for c in frame.columns:
        if str(c).lower() == column.lower():
            return str(c)
    raise UsageError(
        f"target column '{column}' not in {source} (columns: {', '.join(map(str, frame.columns))})"
    )


def target_matrix(
    frame: pd.DataFrame,
    participant_ids: Sequence[str],
    specs: Sequence[TargetSpec],
    source: str = "participants.tsv",
) -> np.ndarray:
    """Raw target values for the given participants.

    Parameters
    ----------
    frame : pandas.DataFrame
        From :func:`load_participants`.
    participant_ids : sequence of str
        Labels without ``sub-`` (one per session; repeats allowed).
    specs : sequence of TargetSpec
        Targets.
    source : str, optional
        File name for messages.

    Returns
    -------
    ndarray of shape (len(participant_ids), K), float64
        NaN where a value or participant is missing.

    Raises
    ------
    UsageError
        A target column is missing.
    InputError
        A target column is not numeric, or a target has no value for any participant.
    """
    out = np.full((len(participant_ids), len(specs)), np.nan)
    for k, spec in enumerate(specs):
        col = resolve_column(frame, spec.column, source)
        values = frame[col]
        if not pd.api.types.is_numeric_dtype(values):
            raise InputError(f"column '{col}' of {source} is not numeric; cannot be a target")
        lookup = values.to_dict()
        out[:, k] = [float(lookup.get(p, np.nan)) for p in participant_ids]
        if not np.isfinite(out[:, k]).any():
            raise InputError(
                f"target '{spec.name}' (column '{col}' of {source}) has no value for any of the "
                f"{len(set(participant_ids))} participants with time series"
            )
    return out


@dataclass
class TargetScaler:
    """Standardisation of targets, fitted on training subjects.

    Attributes
    ----------
    mean : ndarray of shape (K,)
        Per-target mean.
    std : ndarray of shape (K,)
        Per-target standard deviation (1 where undefined).
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> TargetScaler:
        """Fit on raw values (NaN ignored).

        Parameters
        ----------
        values : ndarray of shape (n, K)
            Raw targets.

        Returns
        -------
        TargetScaler
            The fitted scaler.
        """
        values = np.asarray(values, dtype=np.float64)
        mean = np.zeros(values.shape[1])
        std = np.ones(values.shape[1])
        for k in range(values.shape[1]):
            col = values[:, k][np.isfinite(values[:, k])]
            if col.size:
                mean[k] = col.mean()
            if col.size > 1 and col.std() > 0:
                std[k] = col.std()
        return cls(mean=mean, std=std)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Standardise raw values.

        Parameters
        ----------
        values : ndarray of shape (n, K)
            Raw targets.

        Returns
        -------
        ndarray of shape (n, K)
            ``(values - mean) / std``.
        """
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.std

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """Restore raw units.

        Parameters
        ----------
        values : ndarray of shape (n, K)
            Standardised values.

        Returns
        -------
        ndarray of shape (n, K)
            ``values * std + mean``.
        """
        return np.asarray(values, dtype=np.float64) * self.std + self.mean
