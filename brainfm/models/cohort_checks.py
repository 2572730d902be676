"""Checks of a training cohort before any training: target values, cohort size and sites.

``brainfm-train finetune``, ``cv`` and ``ensemble`` read their targets through
:func:`training_targets`, which refuses a cohort that cannot give a useful model before any
training starts (one error naming ``participants.tsv``, the participants and the fix):

- **Age targets** (a target named ``age`` or read from a column ``age``, any case), with the
  rules of :mod:`brainfm.ages` that the group level applies too: the missing codes
  (:data:`~brainfm.ages.MISSING_AGE_CODES`), ``n/a`` and empty cells are unknown ages, left out
  of the age target with one warning line naming how many participants and which; values at or
  below 0 or at or above :data:`~brainfm.ages.MAX_AGE` cannot be ages in years
  (:class:`InputError`); a column whose median known age exceeds
  :data:`~brainfm.ages.MONTHS_MEDIAN_AGE` was written in months (:class:`InputError`: divide by
  12).
- **Cohort size**: fewer than :data:`MIN_SUBJECTS` participants with time series and a known
  value of some target cannot be both trained on and validated (:class:`InputError`).

:func:`check_sites` adds the ensemble's rule: its inner folds hold out whole sites, so it needs
:data:`MIN_SITES` sites (:class:`UsageError`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from brainfm.ages import MAX_AGE, MISSING_AGE_CODES, impossible_ages, looks_like_months
from brainfm.errors import InputError, UsageError
from brainfm.models.targets import TargetSpec, resolve_column, target_matrix

LOGGER = logging.getLogger(__name__)

#: Fewest participants with a known target that can be trained on and validated.
MIN_SUBJECTS = 40

#: Fewest sites ``brainfm-train ensemble`` can hold out whole (one per inner fold and member).
MIN_SITES = 3

#: Target names and participants.tsv columns the age rules apply to (lower case).
AGE_NAMES = frozenset({"age"})

#: Participants named in one message at most.
_NAMED = 20


def is_age_target(spec: TargetSpec) -> bool:
    """Whether the age rules apply to a target.

    Parameters
    ----------
    spec : TargetSpec
        The target.

    Returns
    -------
    bool
        True when its name or its column is ``age`` (:data:`AGE_NAMES`, any case).
    """
    return spec.name.lower() in AGE_NAMES or spec.column.lower() in AGE_NAMES


def _named(items: Sequence[str]) -> str:
    more = f" and {len(items) - _NAMED} more" if len(items) > _NAMED else ""
    return ", ".join(items[:_NAMED]) + more


def clean_ages(frame: pd.DataFrame, participant_ids: Sequence[str], column: str,
               source: str) -> pd.DataFrame:
    """Read the missing codes of an age column as missing and refuse ages that cannot be years.

    Only the participants with time series are looked at (the others do not train).

    Parameters
    ----------
    frame : pandas.DataFrame
        From :func:`~brainfm.models.targets.load_participants` (index: labels without
        ``sub-``).
    participant_ids : sequence of str
        Participants with time series (labels without ``sub-``; repeats allowed).
    column : str
        The age column of ``frame``.
    source : str
        The participants file, for the messages.

    Returns
    -------
    pandas.DataFrame
        A copy of ``frame`` with the codes of :data:`MISSING_AGE_CODES` replaced by NaN.

    Raises
    ------
    InputError
        The column looks like months (:func:`~brainfm.ages.looks_like_months`), or holds
        values that :func:`~brainfm.ages.impossible_ages` refuses.
    """
    frame = frame.copy()
    frame.loc[frame[column].isin(MISSING_AGE_CODES), column] = np.nan
    ids = list(dict.fromkeys(str(p) for p in participant_ids))
    ages = frame[column].reindex(ids)
    known = ages.dropna()
    if looks_like_months(known):
        median = float(known.median())
        examples = [f"sub-{p}: {v:g}" for p, v in known.items()][:5]
        raise InputError(
            f"{source}: column '{column}' has a median of {median:g} over {len(known)} "
            f"participants ({', '.join(examples)} ...): these look like ages in months; "
            "brainfm-train needs ages in years (divide the column by 12)")
    bad = known[impossible_ages(known)]
    if not bad.empty:
        raise InputError(
            f"{source}: column '{column}' holds {len(bad)} value(s) that cannot be ages in "
            f"years (0 < age < {MAX_AGE:g}): "
            f"{_named([f'sub-{p}: {v:g}' for p, v in bad.items()])}; correct them, or write "
            "n/a for unknown ages")
    unknown = [f"sub-{p}" for p in ages.index[ages.isna()]]
    if unknown:
        LOGGER.warning("%s: no age for %d of the %d participants with time series (n/a, empty, "
                       "not in the file, or a missing code %s); left out of the age target: %s",
                       source, len(unknown), len(ids),
                       "/".join(f"{c:g}" for c in MISSING_AGE_CODES), _named(unknown))
    return frame


def check_subject_count(participant_ids: Sequence[str], y: np.ndarray, source: str) -> int:
    """Refuse a cohort too small to train and validate a model.

    Parameters
    ----------
    participant_ids : sequence of str
        One per row of ``y`` (repeats allowed: sessions).
    y : ndarray of shape (len(participant_ids), K)
        Raw targets, NaN where missing.
    source : str
        The participants file, for the message.

    Returns
    -------
    int
        Participants with a known value of at least one target.

    Raises
    ------
    InputError
        Fewer than :data:`MIN_SUBJECTS` such participants.
    """
    known = np.isfinite(np.asarray(y, dtype=np.float64)).any(axis=1)
    n = len({p for p, k in zip(participant_ids, known, strict=True) if k})
    if n < MIN_SUBJECTS:
        total = len(set(participant_ids))
        raise InputError(
            f"too few subjects to train and validate a model: {n}; at least {MIN_SUBJECTS} "
            f"(participants with time series and a known target in {source}: {n} of {total}); "
            "add participants, or fill in their targets")
    return n


def training_targets(frame: pd.DataFrame, participant_ids: Sequence[str],
                     specs: Sequence[TargetSpec], source: str) -> np.ndarray:
    """The checked raw targets of a training cohort (what finetune, cv and ensemble train on).

    Parameters
    ----------
    frame : pandas.DataFrame
        From :func:`~brainfm.models.targets.load_participants`.
    participant_ids : sequence of str
        One per session (labels without ``sub-``).
    specs : sequence of TargetSpec
        Targets; the age rules apply to those of :func:`is_age_target`.
    source : str
        The participants file, for the messages.

    Returns
    -------
    ndarray of shape (len(participant_ids), K), float64
        As :func:`~brainfm.models.targets.target_matrix`, missing age codes as NaN.

    Raises
    ------
    InputError
        Impossible ages, ages in months, too few participants with a known target, or the
        errors of :func:`~brainfm.models.targets.target_matrix`.
    UsageError
        A target column is missing.
    """
    for spec in specs:
        if is_age_target(spec):
            column = resolve_column(frame, spec.column, source)
            if pd.api.types.is_numeric_dtype(frame[column]):
                frame = clean_ages(frame, participant_ids, column, source)
    y = target_matrix(frame, participant_ids, specs, source)
    check_subject_count(participant_ids, y, source)
    return y


def check_sites(sites: Sequence[object], site_column: str, source: str) -> int:
    """Refuse an ensemble cohort with too few sites to hold out whole sites.

    Parameters
    ----------
    sites : sequence
        Site of each training participant (NaN/None where unknown).
    site_column : str
        The participants.tsv column (``--site-column``).
    source : str
        The participants file, for the message.

    Returns
    -------
    int
        Distinct known sites.

    Raises
    ------
    UsageError
        Fewer than :data:`MIN_SITES` sites.
    """
    known = sorted({str(s) for s in sites if not pd.isna(s)})
    if len(known) < MIN_SITES:
        shown = f" ({', '.join(known[:10])})" if known else ""
        raise UsageError(
            f"brainfm-train ensemble holds out whole sites, but column '{site_column}' of "
            f"{source} names {len(known)} site(s){shown} among the participants it would "
            f"train on; at least {MIN_SITES} are needed: add participants from other sites, "
            f"pass --site-column a column with at least {MIN_SITES} sites (e.g. scanner), or train "
            "without site hold-out with brainfm-train finetune (or cv --group-by none)")
    return len(known)
