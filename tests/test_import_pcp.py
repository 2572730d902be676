"""Tests of ``brainfm-import pcp`` on a synthetic PCP folder and on the real ABIDE archive."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainfm.errors import InputError, UsageError
from brainfm.importers.cli import main
from brainfm.importers.pcp import SITE_REPETITION_TIME, import_pcp, parse_tr_overrides
from brainfm.models.data import find_timeseries, load_participants, load_sessions

N_ROIS = 200
SUBJECTS = [  # FILE_ID, SUB_ID, SITE_ID, age, sex, dx, PIQ, T
    ("Olin_0050102", 50102, "OLIN", 14.0, 1, 2, -9999, 40),
    ("Olin_0050103", 50103, "OLIN", 22.5, 2, 1, 110, 40),
    ("SBL_0051556", 51556, "SBL", 35.0, 1, 1, 95, 30),
]


def _fake_1d(rng: np.random.Generator, n_t: int, zero_col: int | None = None) -> str:
    data = rng.normal(scale=10, size=(n_t, N_ROIS))
    if zero_col is not None:
        data[:, zero_col] = 0.0
    head = "\t".join(f"#{k}" for k in range(1, N_ROIS + 1))
    rows = ["\t".join(f"{v:.6f}" for v in row) for row in data]
    return head + "\n" + "\n".join(rows) + "\n"


def _fake_pcp(root: Path, archive: bool = False, extra_site: bool = False) -> Path:
    rng = np.random.default_rng(0)
    rois = root / "rois_cc200"
    rois.mkdir(parents=True)
    subjects = list(SUBJECTS)
    if extra_site:
        subjects.append(("Mars_0099999", 99999, "MARS", 40.0, 1, 2, 100, 30))
    for i, (fid, *_rest, n_t) in enumerate(subjects):
        text = _fake_1d(rng, n_t, zero_col=5 if i == 1 else None)
        (rois / f"{fid}_rois_cc200.1D").write_text(text)
    pheno = pd.DataFrame(
        [
            {"SUB_ID": s, "subject": s, "SITE_ID": site, "FILE_ID": fid, "DX_GROUP": dx,
             "AGE_AT_SCAN": age, "SEX": sex, "FIQ": "", "VIQ": 100, "PIQ": piq,
             "func_mean_fd": 0.1}
            for fid, s, site, age, sex, dx, piq, _ in subjects
        ]
    )
    pheno.to_csv(root / "Phenotypic_V1_0b_preprocessed1.csv", index=False)
    if archive:
        with tarfile.open(root / "rois_cc200.tar.xz", "w:xz") as tar:
            tar.add(rois, arcname="rois_cc200")
        for f in rois.iterdir():
            f.unlink()
        rois.rmdir()
    return root


@pytest.mark.parametrize("archive", [False, True])
def test_import_synthetic(tmp_path: Path, archive: bool) -> None:
    src = _fake_pcp(tmp_path / "pcp", archive=archive)
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
    src = _fake_pcp(tmp_path / "pcp", extra_site=True)
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
    src = _fake_pcp(tmp_path / "pcp")
    bad = src / "rois_cc200" / "SBL_0051556_rois_cc200.1D"
    bad.write_text("#1\t#2\n1\tx\n2\t3\n")
    with pytest.raises(InputError, match="SBL_0051556"):
        import_pcp(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "pcp"]


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pcp", str(tmp_path / "missing"), str(tmp_path / "out")]) == 66
    assert "brainfm-import: error:" in capsys.readouterr().err
    src = _fake_pcp(tmp_path / "pcp")
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
