"""Tests of ``brainfm-import pcp`` on a synthetic PCP folder and on the real ABIDE archive."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fake_pcp import N_ROIS, make_fake_pcp

from brainfm.errors import InputError, UsageError
from brainfm.importers.cli import main
from brainfm.importers.pcp import SITE_REPETITION_TIME, import_pcp, parse_tr_overrides
from brainfm.models.sessions import load_sessions
from brainfm.models.targets import load_participants
from brainfm.models.timeseries import find_timeseries


@pytest.mark.parametrize("archive", [False, True])
def test_import_synthetic(tmp_path: Path, archive: bool) -> None:
    src = make_fake_pcp(tmp_path / "pcp", archive=archive)
    out = tmp_path / "deriv"
    summary = import_pcp(src, out)
    assert summary.n_subjects == 3 and summary.masked_rois == 1
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "brainfm-import"
    files = find_timeseries(out, "CC200")
    assert [f.subject for f in files] == ["0050102", "0050103", "0051556"]
    tsv = files[0].path
    assert tsv.name == (
        "sub-0050102_task-rest_space-MNI152NLin6Asym_atlas-CC200_stat-mean_timeseries.tsv"
    )
    header = tsv.read_text().splitlines()[0].split("\t")
    assert header[0] == "CC200_001" and header[-1] == "CC200_200" and len(header) == N_ROIS
    meta = json.loads(tsv.with_suffix(".json").read_text())
    assert meta["RepetitionTime"] == 1.5 and meta["DenoisingStrategy"] == "pcp-cpac-filt_global"
    assert meta["Sources"][0].endswith("Olin_0050102_rois_cc200.1D")
    assert meta["NumberOfVolumesRetained"] == 40
    assert json.loads(files[2].sidecar.read_text())["RepetitionTime"] == 2.2
    second = files[1].path.read_text().splitlines()[1].split("\t")
    assert second[5] == "n/a" and second[4] != "n/a"
    sessions = load_sessions(files)
    assert not sessions[1].roi_mask[5] and sessions[0].roi_mask.all()
    part = load_participants(out / "participants.tsv")
    assert list(part.columns) == ["age", "sex", "site", "diagnosis", "fiq", "viq", "piq",
                                  "mean_fd"]
    assert np.isnan(part.loc["0050102", "piq"]) and part.loc["0050103", "piq"] == 110
    assert np.isnan(part.loc["0050103", "fiq"])
    assert part.loc["0050103", "sex"] == "F" and part.loc["0050103", "diagnosis"] == "autism"
    assert part.loc["0051556", "site"] == "SBL"
    raw = (out / "participants.tsv").read_text()
    assert "-9999" not in raw and "n/a" in raw
    assert not list(tmp_path.glob(".deriv*"))


def test_unknown_site_and_override(tmp_path: Path) -> None:
    src = make_fake_pcp(tmp_path / "pcp", extra_site=True)
    with pytest.raises(UsageError, match="MARS"):
        import_pcp(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    summary = import_pcp(src, tmp_path / "out", tr_override={"mars": 2.4, "OLIN": 1.6})
    assert summary.sites == {"OLIN": 2, "SBL": 1, "MARS": 1}
    metas = [json.loads(f.sidecar.read_text()) for f in find_timeseries(tmp_path / "out", "CC200")]
    assert [m["RepetitionTime"] for m in metas] == [1.6, 1.6, 2.2, 2.4]
    with pytest.raises(UsageError, match="not empty"):
        import_pcp(src, tmp_path / "out", tr_override={"MARS": 2.4})
    assert parse_tr_overrides(["olin=1.5"]) == {"OLIN": 1.5}
    with pytest.raises(UsageError):
        parse_tr_overrides(["OLIN"])


def test_failed_import_leaves_nothing(tmp_path: Path) -> None:
    src = make_fake_pcp(tmp_path / "pcp")
    bad = src / "rois_cc200" / "SBL_0051556_rois_cc200.1D"
    bad.write_text("#1\t#2\n1\tx\n2\t3\n")
    with pytest.raises(InputError, match="SBL_0051556"):
        import_pcp(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "pcp"]


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pcp", str(tmp_path / "missing"), str(tmp_path / "out")]) == 66
    assert "brainfm-import: error:" in capsys.readouterr().err
    src = make_fake_pcp(tmp_path / "pcp")
    assert main(["pcp", str(src), str(tmp_path / "out"), "--atlas", "cc999"]) == 64
    assert main(["pcp", str(src), str(tmp_path / "out"), "--tr-override", "SBL=2.0"]) == 0
    meta = json.loads(next((tmp_path / "out").glob("sub-0051556/func/*.json")).read_text())
    assert meta["RepetitionTime"] == 2.0 and meta["RepetitionTimeSource"] == "--tr-override"
    with pytest.raises(SystemExit) as exc:
        main(["pcp", str(src)])
    assert exc.value.code == 64


@pytest.mark.slow
@pytest.mark.realdata
def test_import_real_abide(abide_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "abide"
    summary = import_pcp(abide_dir, out)
    assert summary.n_subjects == 782 and not summary.skipped
    assert summary.seconds < 60
    files = find_timeseries(out, "CC200")
    assert len(files) == 782
    part = load_participants(out / "participants.tsv")
    assert len(part) == 782 and part["age"].notna().all()
    assert part["age"].between(6, 65).all() and set(part["sex"]) == {"M", "F"}
    assert part["piq"].isna().sum() >= 18 and part["piq"].dropna().between(30, 200).all()
    by_site: dict[str, set[float]] = {}
    for f in files:
        meta = json.loads(f.sidecar.read_text())
        by_site.setdefault(meta["Site"], set()).add(meta["RepetitionTime"])
        assert part.loc[f.subject, "site"] == meta["Site"]
    assert len(by_site) == 17
    for site, trs in by_site.items():
        assert trs == {SITE_REPETITION_TIME[site]}
    header = files[0].path.read_text().split("\n", 1)[0].split("\t")
    assert header == [f"CC200_{k:03d}" for k in range(1, 201)]


def test_pipeline_is_recorded(tmp_path: Path) -> None:
    """The PCP pipeline the user names is what every sidecar and the dataset description say
    (the nofilt_noglobal copy is not filt_global); an unknown one is a usage error (exit 64)."""
    src = make_fake_pcp(tmp_path / "pcp")
    out = tmp_path / "nofilt"
    assert main(["pcp", str(src), str(out), "--pipeline", "nofilt_noglobal"]) == 0
    for f in find_timeseries(out, "CC200"):
        assert json.loads(f.sidecar.read_text())["DenoisingStrategy"] == \
            "pcp-cpac-nofilt_noglobal"
    desc = json.loads((out / "dataset_description.json").read_text())
    assert "nofilt_noglobal" in desc["Name"]
    assert "no band-pass, no global signal regression" in desc["GeneratedBy"][1]["Description"]
    with pytest.raises(UsageError, match="not a PCP pipeline"):
        import_pcp(src, tmp_path / "bad", pipeline="nofilt")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as exc:  # argparse's choices, with the usage exit code
        main(["pcp", str(src), str(tmp_path / "bad2"), "--pipeline", "nofilt"])
    assert exc.value.code == 64
