"""The participants and sessions of an output dataset that the group metrics leave out, and why.

Every ``sub-<label>`` folder of the output dataset counts: one whose outputs are incomplete,
one with time series (or run QC) but no predictions table, and a session whose prediction is
n/a (every run excluded) are named with the reason, so that the report's "N of M" is true.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from brainfm.derivatives import incomplete_participants
from brainfm.group.read_outputs import NA

LOGGER = logging.getLogger(__name__)

#: The reasons, as written in ``group_predictions.json`` and the log.
INCOMPLETE = ("incomplete participant-level outputs (interrupted or failed; rerun the "
              "participant level for it)")
NO_PREDICTIONS = ("time series but no predictions table (the model stage did not run: "
                  "--model none, or no model suited the run)")
NOTHING = "no time series and no predictions (every run excluded, or nothing was processed)"
SESSION_WITHOUT = "runs processed but no predictions table for the session"
ALL_EXCLUDED = "no prediction: every run was excluded (see its run QC table)"


def participant_folders(output_dir: str | Path) -> list[str]:
    """The ``sub-<label>`` folders of an output dataset, sorted."""
    return sorted(p.name for p in Path(output_dir).glob("sub-*") if p.is_dir())


def left_out(output_dir: str | Path, table: pd.DataFrame, targets: list[str],
             run_qc: pd.DataFrame | None = None) -> list[dict]:
    """Participants and sessions of the output dataset without a prediction in ``table``.

    Parameters
    ----------
    output_dir : path
        The brainfm output dataset.
    table : pandas.DataFrame
        The group table (``participant_id``, ``session_id``, ``<target>_pred``).
    targets : list of str
        Predicted targets.
    run_qc : pandas.DataFrame, optional
        Every run's QC row: a session with runs but no row in ``table`` is named too.

    Returns
    -------
    list of dict
        ``participant_id``, ``session_id`` (``'n/a'`` for a whole participant) and ``reason``,
        sorted by participant.
    """
    output_dir = Path(output_dir)
    incomplete = set(incomplete_participants(output_dir))
    in_table = set(table["participant_id"])
    out: list[dict] = []
    for sub in participant_folders(output_dir):
        if sub in incomplete:
            reason = INCOMPLETE
        elif sub in in_table:
            continue
        elif any((output_dir / sub).rglob("*_timeseries.tsv")):
            reason = NO_PREDICTIONS
        else:
            reason = NOTHING
        out.append({"participant_id": sub, "session_id": NA, "reason": reason})
    if run_qc is not None and len(run_qc):
        rows = set(zip(table["participant_id"], table["session_id"], strict=True))
        sessions = sorted({(p, s) for p, s in zip(run_qc["participant_id"],
                                                   run_qc["session_id"], strict=True)
                           if p in in_table and (p, s) not in rows})
        out += [{"participant_id": p, "session_id": s, "reason": SESSION_WITHOUT}
                for p, s in sessions]
    columns = [f"{t}_pred" for t in targets if f"{t}_pred" in table]
    if columns and len(table):
        unpredicted = table[table[columns].isna().all(axis=1)]
        out += [{"participant_id": p, "session_id": s, "reason": ALL_EXCLUDED}
                for p, s in unpredicted[["participant_id", "session_id"]].to_numpy()]
    return sorted(out, key=lambda e: (e["participant_id"], e["session_id"]))


def describe(entries: list[dict]) -> str:
    """``sub-02 (reason); sub-05 ses-1 (reason)``: the entries in one line."""
    return "; ".join(f"{e['participant_id']}"
                     + ("" if e["session_id"] == NA else f" {e['session_id']}")
                     + f" ({e['reason']})" for e in entries)


def warn_left_out(entries: list[dict]) -> None:
    """One warning line naming every participant or session left out, with its reason."""
    if entries:
        LOGGER.warning("%d participant(s) or session(s) left out of the group metrics: %s",
                       len(entries), describe(entries))
