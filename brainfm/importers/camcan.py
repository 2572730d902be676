"""Cam-CAN targets: age, sex and the Cattell Culture Fair total into ``participants.tsv``.

Cam-CAN (Shafto et al. 2014), the cohort of the method's paper, releases its imaging as BIDS
(which fMRIPrep and then ``brainfm participant`` process) and its behavioural scores separately,
in the ``cc700-scored`` folder of the data release. This importer reads that folder as public
Cam-CAN loaders do (Engemann et al. 2020, ``dengemann/meg-mri-surrogate-biomarkers-aging-2020``;
the release itself needs a data agreement and was not available to us):

- ``participant_data.csv``: one row per participant, ``Observations`` (the CCID, e.g.
  ``CC110033``), ``age`` (years), ``gender_text`` (``MALE``/``FEMALE``); or the BIDS release's
  ``participants.tsv`` (``participant_id`` ``sub-CC110033``, ``age``, ``sex``) given with
  ``--participants``;
- ``Cattell/release001/data/Cattell_<CCID>_scored.txt``: one tab-separated file per participant
  whose ``TotalScore`` column is the Cattell Culture Fair total (0-46), the paper's fluid
  intelligence.

It writes ``participants.tsv`` (``participant_id``, ``age``, ``sex``, ``fluid_intelligence``,
``site``) and its ``participants.json`` into a brainfm derivatives folder, where
``brainfm-train`` looks for targets.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainfm.errors import InputError, UsageError
from brainfm.fileio import write_json_atomic, write_tsv_atomic
from brainfm.importers.phenotype import cell_number

LOGGER = logging.getLogger(__name__)

#: Cam-CAN participant IDs: ``CC`` and six digits.
CCID = re.compile(r"^CC\d{6}$")
#: Range of the Cattell Culture Fair total (scale 2, four subtests).
CATTELL_RANGE = (0.0, 46.0)
#: Cam-CAN's stage-2 age range is 18-88; anything outside 0-120 is an error.
AGE_RANGE = (0.0, 120.0)
#: Where the scored Cattell files are inside ``cc700-scored``.
CATTELL_GLOB = "Cattell/release001/data/Cattell_*_scored.txt"
_SEX = {"MALE": "M", "FEMALE": "F", "M": "M", "F": "F", "1": "M", "2": "F"}

SIDECAR = {
    "participant_id": {"Description": "Cam-CAN CCID with the sub- prefix"},
    "age": {"Description": "age at the home interview", "Units": "years"},
    "sex": {"Description": "sex", "Levels": {"M": "male", "F": "female"}},
    "fluid_intelligence": {
        "Description": "Cattell Culture Fair total score (TotalScore of the cc700-scored "
                       "Cattell file), the fluid intelligence measure of Cam-CAN",
        "Units": "correct answers (0-46)"},
    "site": {"Description": "acquisition site (Cam-CAN scanned at one site, the MRC CBU)"},
}


@dataclass
class CamcanSummary:
    """What :func:`import_camcan` wrote."""

    path: Path
    n_participants: int
    n_with_cattell: int
    cattell_without_participant: list[str]


def _ccid(text: object, where: str) -> str:
    value = str(text).strip()
    value = value[4:] if value.startswith("sub-") else value
    if not CCID.match(value):
        raise InputError(f"{where}: participant '{text}' is not a Cam-CAN CCID (CC and six "
                         "digits); give the release's participant_data.csv or participants.tsv")
    return value


def _number(text: object, limits: tuple[float, float], what: str, where: str) -> float:
    value = cell_number(text, what, where, missing_code=None, missing_text=("", "n/a"))
    if np.isfinite(value) and not limits[0] <= value <= limits[1]:
        raise InputError(f"{where}: {what} {value:g} is outside {limits[0]:g}-{limits[1]:g}")
    return value


def read_participant_data(path: Path) -> pd.DataFrame:
    """Age and sex per CCID from ``participant_data.csv`` or a BIDS ``participants.tsv``.

    Returns
    -------
    pandas.DataFrame
        Indexed by CCID, columns ``age`` (float) and ``sex`` (``M``/``F``/``n/a``).
    """
    if not path.is_file():
        raise InputError(f"Cam-CAN participant data {path} does not exist; give the release's "
                         "cc700-scored folder or --participants FILE")
    sep = "\t" if path.suffix == ".tsv" else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read Cam-CAN participant data {path}: {exc}") from exc
    columns = {c.lower(): c for c in table.columns}
    id_col = columns.get("observations") or columns.get("participant_id") or columns.get("ccid")
    sex_col = columns.get("gender_text") or columns.get("sex")
    if id_col is None or "age" not in columns:
        raise InputError(f"{path} has no participant column (Observations or participant_id) "
                         f"and age column; its columns are {list(table.columns)}")
    rows = {}
    for i, row in table.iterrows():
        where = f"{path}, line {int(i) + 2}"
        ccid = _ccid(row[id_col], where)
        if ccid in rows:
            raise InputError(f"{where}: participant {ccid} is listed twice")
        sex = _SEX.get(str(row[sex_col]).strip().upper(), "n/a") if sex_col else "n/a"
        rows[ccid] = {"age": _number(row[columns["age"]], AGE_RANGE, "age", where),
                      "sex": sex}
    return pd.DataFrame.from_dict(rows, orient="index")


def read_cattell(scored_dir: Path) -> dict[str, float]:
    """Cattell totals per CCID from the per-participant scored files.

    Raises
    ------
    InputError
        No file, a file without ``TotalScore``, or a total that is not a valid score.
    """
    files = sorted(scored_dir.glob(CATTELL_GLOB))
    if not files:
        raise InputError(f"no Cattell scores in {scored_dir} (looked for {CATTELL_GLOB}); give "
                         "the release's cc700-scored folder")
    totals = {}
    for path in files:
        ccid = _ccid(path.name.split("_")[1], str(path))
        try:
            table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise InputError(f"cannot read Cattell file {path}: {exc}") from exc
        if "TotalScore" not in table.columns or table.empty:
            raise InputError(f"Cattell file {path} has no TotalScore value; its columns are "
                             f"{list(table.columns)}")
        values = {_number(v, CATTELL_RANGE, "TotalScore", str(path))
                  for v in table["TotalScore"]}
        values = {v for v in values if np.isfinite(v)}
        if len(values) > 1:
            raise InputError(f"Cattell file {path} gives {len(values)} different totals")
        totals[ccid] = values.pop() if values else float("nan")
    return totals


def import_camcan(scored_dir: str | Path, out_dir: str | Path,
                  participants: str | Path | None = None,
                  overwrite: bool = False) -> CamcanSummary:
    """Write Cam-CAN's targets as ``out_dir/participants.tsv`` (and its sidecar).

    Parameters
    ----------
    scored_dir : path
        The release's ``cc700-scored`` folder.
    out_dir : path
        The brainfm derivatives folder (``brainfm participant``'s output) or any folder.
    participants : path, optional
        Participant data (default ``scored_dir/participant_data.csv``).
    overwrite : bool
        Replace an existing ``participants.tsv``.

    Returns
    -------
    CamcanSummary
        The file written and its counts.

    Raises
    ------
    UsageError
        ``participants.tsv`` exists and ``overwrite`` is false; or the output is inside the
        release folder.
    InputError
        Missing or malformed release files (the message names the file and line).
    """
    scored_dir, out_dir = Path(scored_dir), Path(out_dir)
    if not scored_dir.is_dir():
        raise InputError(f"Cam-CAN scored folder {scored_dir} does not exist")
    target = out_dir / "participants.tsv"
    if out_dir.resolve().is_relative_to(scored_dir.resolve()):
        raise UsageError(f"the output {out_dir} is inside the Cam-CAN release {scored_dir}; "
                         "write it to the brainfm derivatives folder")
    if target.exists() and not overwrite:
        raise UsageError(f"{target} exists; pass --overwrite to replace it")
    people = read_participant_data(Path(participants) if participants
                                   else scored_dir / "participant_data.csv")
    cattell = read_cattell(scored_dir)
    orphans = sorted(set(cattell) - set(people.index))
    if orphans:
        LOGGER.warning("%d Cattell files have no participant data (left out), e.g. %s",
                       len(orphans), orphans[0])
    table = pd.DataFrame({
        "participant_id": [f"sub-{c}" for c in people.index],
        "age": people["age"].to_numpy(),
        "sex": people["sex"].to_numpy(),
        "fluid_intelligence": [cattell.get(c, np.nan) for c in people.index],
        "site": "CBU",
    }).sort_values("participant_id")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tsv_atomic(target, table)
    write_json_atomic(out_dir / "participants.json", SIDECAR)
    n_cattell = int(np.isfinite(table["fluid_intelligence"].to_numpy(dtype=float)).sum())
    return CamcanSummary(path=target, n_participants=len(table), n_with_cattell=n_cattell,
                         cattell_without_participant=orphans)
