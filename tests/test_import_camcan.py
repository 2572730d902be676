"""``brainfm-import camcan`` on a synthetic release in the cc700-scored layout."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainfm.importers.cli import main
from brainfm.models.targets import load_participants, parse_target_spec, target_matrix

PEOPLE = [("CC110033", 24.0, "MALE", 38), ("CC120065", 31.0, "FEMALE", 35),
          ("CC520097", 63.0, "FEMALE", 27), ("CC710982", 84.0, "MALE", None)]


def make_release(root: Path, people=PEOPLE) -> Path:
    """participant_data.csv and one scored Cattell file per participant with a score."""
    scored = root / "cc700-scored"
    data = scored / "Cattell" / "release001" / "data"
    data.mkdir(parents=True)
    pd.DataFrame({"Observations": [p[0] for p in people], "age": [p[1] for p in people],
                  "hand": [90.0] * len(people), "gender_text": [p[2] for p in people]}
                 ).to_csv(scored / "participant_data.csv", index=False)
    for ccid, _age, _sex, total in people:
        if total is not None:
            pd.DataFrame({"CCID": [ccid], "Version": ["A"], "TotalScore": [total]}).to_csv(
                data / f"Cattell_{ccid}_scored.txt", sep="\t", index=False)
    return scored


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_camcan_targets_reach_brainfm_train(tmp_path):
    scored = make_release(tmp_path)
    before = _digest(scored)
    out = tmp_path / "derivatives" / "brainfm"
    assert main(["camcan", str(scored), str(out)]) == 0
    table = pd.read_csv(out / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert table["participant_id"].tolist() == [f"sub-{p[0]}" for p in PEOPLE]
    assert table["sex"].tolist() == ["M", "F", "F", "M"]
    assert table["fluid_intelligence"].tolist() == ["38.0", "35.0", "27.0", "n/a"]
    assert table["site"].tolist() == ["CBU"] * 4
    assert (out / "participants.json").is_file()
    assert _digest(scored) == before  # the release is never touched
    # what brainfm-train reads: age and the Cattell total by their names
    frame = load_participants(out / "participants.tsv")
    specs = [parse_target_spec("age"), parse_target_spec("fluid_intelligence")]
    y = target_matrix(frame, [p[0] for p in PEOPLE], specs, str(out / "participants.tsv"))
    np.testing.assert_array_equal(y[:3], [[24, 38], [31, 35], [63, 27]])
    assert np.isnan(y[3, 1]) and y[3, 0] == 84


def test_bids_participants_tsv_is_accepted(tmp_path):
    scored = make_release(tmp_path)
    bids = tmp_path / "participants.tsv"
    pd.DataFrame({"participant_id": [f"sub-{p[0]}" for p in PEOPLE],
                  "age": [p[1] for p in PEOPLE], "sex": ["M", "F", "F", "M"]}
                 ).to_csv(bids, sep="\t", index=False)
    out = tmp_path / "out"
    assert main(["camcan", str(scored), str(out), "--participants", str(bids)]) == 0
    assert load_participants(out / "participants.tsv")["age"].tolist() == [24, 31, 63, 84]


@pytest.mark.parametrize("break_release,code,words", [
    (lambda s: (s / "participant_data.csv").write_text("Observations,age\nXX1,30\n"), 66,
     "not a Cam-CAN CCID"),
    (lambda s: (s / "participant_data.csv").write_text(
        "Observations,age\nCC110033,30\nCC110033,31\n"), 66, "listed twice"),
    (lambda s: (s / "participant_data.csv").write_text("Observations,age\nCC110033,230\n"),
     66, "outside"),
    (lambda s: next(s.rglob("Cattell_CC110033_scored.txt")).write_text("CCID\tScore\nx\t3\n"),
     66, "no TotalScore"),
    (lambda s: (s / "participant_data.csv").unlink(), 66, "participant_data.csv"),
])
def test_bad_release_files_are_named(tmp_path, capsys, break_release, code, words):
    scored = make_release(tmp_path)
    break_release(scored)
    out = tmp_path / "out"
    assert main(["camcan", str(scored), str(out)]) == code
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (out / "participants.tsv").exists()


def test_existing_output_needs_overwrite_and_output_stays_outside_the_release(tmp_path, capsys):
    scored = make_release(tmp_path)
    out = tmp_path / "out"
    assert main(["camcan", str(scored), str(out)]) == 0
    assert main(["camcan", str(scored), str(out)]) == 64
    assert "--overwrite" in capsys.readouterr().err
    assert main(["camcan", str(scored), str(out), "--overwrite"]) == 0
    assert main(["camcan", str(scored), str(scored / "out")]) == 64
    assert not (scored / "out").exists()
