"""What counts as an age in years: one home for the rules that training and the group level apply.

``participants.tsv`` ages (BIDS: years) are checked the same way wherever they are read:
``brainfm-train`` (:mod:`brainfm.models.cohort_checks`) and ``brainfm … group``
(:mod:`brainfm.group.participants`). Each caller words its own message; the rules are here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Numbers that datasets write for an unknown value; read as missing (n/a), with a warning.
MISSING_AGE_CODES = (-9999.0, -999.0, -99.0)

#: Ages (years) a participant can have lie above 0 and below this.
MAX_AGE = 120.0

#: A cohort whose median "age" exceeds this many years has its ages in months: no cohort of
#: people has a median age over 100 years, while one typing error in an elderly cohort (a
#: single 190) is named as an impossible age rather than read as months.
MONTHS_MEDIAN_AGE = 100.0


def impossible_ages(values: Any) -> np.ndarray:
    """Which known values cannot be ages in years (at or below 0, at or above :data:`MAX_AGE`).

    Parameters
    ----------
    values : array-like of float
        Ages, missing codes already read as NaN.

    Returns
    -------
    ndarray of bool
        True for a finite value outside ``0 < age < MAX_AGE``.
    """
    v = np.asarray(values, dtype=np.float64)
    return np.isfinite(v) & ((v <= 0) | (v >= MAX_AGE))


def looks_like_months(values: Any) -> bool:
    """Whether a column of ages was written in months (median known value above
    :data:`MONTHS_MEDIAN_AGE`).

    Parameters
    ----------
    values : array-like of float
        Ages, missing codes already read as NaN.

    Returns
    -------
    bool
    """
    v = np.asarray(values, dtype=np.float64)
    known = v[np.isfinite(v)]
    return bool(known.size) and float(np.median(known)) > MONTHS_MEDIAN_AGE
