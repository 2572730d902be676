"""Check every value of a PCP phenotype sheet before anything is imported.

Each problem names the sheet, its line and ``FILE_ID``, what is wrong and the fix. A value that
cannot be read (``twelve``, ``1e400``, an age below zero, a subject ID that is not a number, a
``FILE_ID`` given twice) is an error: guessing would write a wrong phenotype. A code outside its
levels (``SEX`` 3) or an IQ outside any test's range is written as ``n/a`` with a warning that
names the row.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from brainfm.errors import InputError

LOGGER = logging.getLogger(__name__)

#: The value PCP sheets use for "not recorded".
MISSING_CODE = -9999.0
#: Plausible ranges; a value outside is an error (age, FD) or n/a with a warning (IQ).
AGE_RANGE = (0.0, 120.0)
IQ_RANGE = (20.0, 200.0)
FD_RANGE = (0.0, 20.0)
_SUB_ID = re.compile(r"^\d+(\.0*)?$")
_CODES = {"SEX": {1.0, 2.0}, "DX_GROUP": {1.0, 2.0}}


def _where(path: Path, index: int, file_id: str) -> str:
    return f"{path}, line {index + 2} (FILE_ID {file_id})"  # line 1 is the header


def cell_number(text: object, column: str, where: str,
                missing_code: float | None = MISSING_CODE,
                missing_text: tuple[str, ...] = ("",)) -> float:
    """A table cell as a float: NaN when missing, an error naming the place when unreadable.

    Parameters
    ----------
    text : object
        The cell (a string, or NaN/None when empty).
    column : str
        Its column, for the message.
    where : str
        File and line, for the message.
    missing_code : float or None
        The number that means "not recorded" (PCP's -9999), or None.
    missing_text : tuple of str
        Cell texts that mean "not recorded" (the empty cell by default).

    Raises
    ------
    InputError
        Not a number, or not finite.
    """
    if text is None or (isinstance(text, float) and np.isnan(text)) \
            or str(text).strip() in missing_text:
        return float("nan")
    try:
        value = float(str(text))
    except ValueError:
        codes = [f"{missing_code:g}"] if missing_code is not None else []
        unknown = " / ".join(codes + [repr(t) if t else "an empty cell" for t in missing_text])
        raise InputError(f"{where}: {column} {text!r} is not a number; write a number, or "
                         f"{unknown} if it is unknown") from None
    if missing_code is not None and value == missing_code:
        return float("nan")
    if not np.isfinite(value):
        raise InputError(f"{where}: {column} {text!r} is not a finite number; fix the value")
    return value


def check_pcp_phenotype(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Check and convert the PCP phenotype columns brainfm imports.

    Parameters
    ----------
    frame : pandas.DataFrame
        The sheet as read, every cell a string (or NaN when empty), rows without a
        ``FILE_ID`` (or ``no_filename``) kept so that line numbers stay true.
    path : Path
        The sheet (named in messages).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``FILE_ID``; ``SUB_ID`` an int, the other checked columns floats with NaN
        for unknown.

    Raises
    ------
    InputError
        An unreadable value or a duplicate ``FILE_ID``, naming the line.
    """
    has_file = frame["FILE_ID"].notna() & (frame["FILE_ID"].astype(str) != "no_filename")
    seen: dict[str, int] = {}
    rows = []
    for index, row in frame[has_file].iterrows():
        file_id = str(row["FILE_ID"]).strip()
        where = _where(path, int(index), file_id)
        if file_id in seen:
            raise InputError(f"{where}: FILE_ID {file_id} also on line {seen[file_id] + 2}; "
                             "keep one row per scan")
        seen[file_id] = int(index)
        sub_id = str(row["SUB_ID"]).strip()
        if not _SUB_ID.match(sub_id):
            raise InputError(f"{where}: SUB_ID {row['SUB_ID']!r} is not a positive whole "
                             "number; it becomes the BIDS label sub-<SUB_ID>, fix the value")
        out = {"FILE_ID": file_id, "SUB_ID": int(float(sub_id)), "SITE_ID": row["SITE_ID"]}
        age = cell_number(row["AGE_AT_SCAN"], "AGE_AT_SCAN", where)
        if not np.isnan(age) and not AGE_RANGE[0] < age <= AGE_RANGE[1]:
            raise InputError(f"{where}: AGE_AT_SCAN {row['AGE_AT_SCAN']!r} is outside "
                             f"{AGE_RANGE[0]:g}-{AGE_RANGE[1]:g} years; fix the value")
        out["AGE_AT_SCAN"] = age
        fd = cell_number(row.get("func_mean_fd"), "func_mean_fd", where)
        if not np.isnan(fd) and not FD_RANGE[0] <= fd <= FD_RANGE[1]:
            raise InputError(f"{where}: func_mean_fd {row['func_mean_fd']!r} is outside "
                             f"{FD_RANGE[0]:g}-{FD_RANGE[1]:g} mm; fix the value")
        out["func_mean_fd"] = fd
        for column in ("FIQ", "VIQ", "PIQ"):
            value = cell_number(row.get(column), column, where)
            if not np.isnan(value) and not IQ_RANGE[0] <= value <= IQ_RANGE[1]:
                LOGGER.warning("%s: %s %s is outside %g-%g; written as n/a", where, column,
                               row[column], *IQ_RANGE)
                value = float("nan")
            out[column] = value
        for column, levels in _CODES.items():
            value = cell_number(row[column], column, where)
            if not np.isnan(value) and value not in levels:
                LOGGER.warning("%s: %s %s is not one of %s; written as n/a", where, column,
                               row[column], sorted(int(v) for v in levels))
                value = float("nan")
            out[column] = value
        rows.append(out)
    return pd.DataFrame(rows, columns=["FILE_ID", "SUB_ID", "SITE_ID", "AGE_AT_SCAN",
                                       "func_mean_fd", "FIQ", "VIQ", "PIQ", *_CODES]
                        ).set_index("FILE_ID")
