"""Bad input at the participant level: clear message, right exit code, nothing half-written,
and the input dataset never modified."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from brainfm.bidsapp.cli import main
from brainfm.testdata import make_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("base") / "ds", n_subjects=2, n_volumes=60,
                        seed=7)


@pytest.fixture()
def dataset(base_dataset, tmp_path):
    """A private copy of the small fixture that a test may break."""
    shutil.copytree(base_dataset.out_dir, tmp_path / "ds")
    return tmp_path / "ds" / "bids"


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            + str(p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def run(bids: Path, out: Path, *extra: str) -> int:
    return main([str(bids), str(out), "participant", "--skip-bids-validation", "--min-time", "0",
                 "-w", str(out.parent / "work"), "--nprocs", "1", *extra])


def func(bids: Path, sub: str) -> Path:
    return bids / "derivatives" / "fmriprep" / f"sub-{sub}" / "func"


def bold_of(bids: Path, sub: str) -> Path:
    return next(func(bids, sub).glob("*_desc-preproc_bold.nii.gz"))


def test_good_run_leaves_input_untouched(dataset, tmp_path):
    before = snapshot(dataset)
    assert run(dataset, tmp_path / "out") == 0
    assert snapshot(dataset) == before
    assert (tmp_path / "out" / "sub-02" / "func").is_dir()


def test_unknown_participant(dataset, tmp_path, capsys):
    assert run(dataset, tmp_path / "out", "--participant-label", "sub-99") == 18
    assert "sub-99" in capsys.readouterr().err


def test_no_bold_in_a_standard_space(dataset, tmp_path, capsys):
    for path in func(dataset, "01").glob("*space-MNI152NLin6Asym*"):
        path.rename(path.with_name(path.name.replace("MNI152NLin6Asym", "T1w")))
    assert run(dataset, tmp_path / "out", "--participant-label", "01") == 66
    err = capsys.readouterr().err
    assert "standard space" in err and "space-T1w" in err


def test_missing_confounds(dataset, tmp_path, capsys):
    next(func(dataset, "01").glob("*_desc-confounds_timeseries.tsv")).unlink()
    assert run(dataset, tmp_path / "out", "--participant-label", "01") == 66
    assert "confounds" in capsys.readouterr().err


def test_confounds_with_fewer_rows_than_volumes(dataset, tmp_path, capsys):
    conf = next(func(dataset, "01").glob("*_desc-confounds_timeseries.tsv"))
    table = pd.read_csv(conf, sep="\t")
    table.iloc[:-5].to_csv(conf, sep="\t", index=False, na_rep="n/a")
    assert run(dataset, tmp_path / "out", "--participant-label", "01") == 66
    err = capsys.readouterr().err
    assert conf.name in err and "55 rows" in err and "60 volumes" in err


def test_nans_in_bold(dataset, tmp_path, capsys):
    bold = bold_of(dataset, "02")
    img = nb.load(bold)
    data = np.asarray(img.dataobj, dtype=np.float32)
    mask = np.asarray(nb.load(next(func(dataset, "02").glob("*_desc-brain_mask.nii.gz")))
                      .dataobj) > 0
    data[mask, 10] = np.nan
    nb.Nifti1Image(data, img.affine, img.header).to_filename(bold)
    assert run(dataset, tmp_path / "out") == 66
    err = capsys.readouterr().err
    assert bold.name in err and "NaN" in err
    assert not (tmp_path / "out" / "sub-02" / "func").exists()  # nothing half-written


def test_truncated_nifti(dataset, tmp_path, capsys):
    bold = bold_of(dataset, "01")
    raw = bold.read_bytes()
    bold.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(EOFError):  # the fixture really is truncated
        gzip.decompress(bold.read_bytes())
    assert run(dataset, tmp_path / "out", "--participant-label", "01") == 66
    assert bold.name in capsys.readouterr().err
    assert not (tmp_path / "out" / "sub-01" / "func").exists()


def test_run_shorter_than_minimum_is_excluded_with_reason(dataset, tmp_path):
    out = tmp_path / "out"
    assert main([str(dataset), str(out), "participant", "--skip-bids-validation",
                 "--participant-label", "01", "--min-time", "600", "-w", str(tmp_path / "w"),
                 "--nprocs", "1"]) == 0
    qc = pd.read_csv(out / "sub-01" / "sub-01_desc-runs_qc.tsv", sep="\t")
    assert list(qc["status"]) == ["excluded"]
    assert "600" in qc["reason"][0]
    assert not list((out / "sub-01" / "func").glob("*_stat-mean_timeseries.tsv"))
    # the default model has nothing to predict from: the report says so instead of a figure
    assert "No prediction: no run of this session passed QC" in (out / "sub-01.html").read_text()


def test_unknown_atlas(dataset, tmp_path, capsys):
    assert run(dataset, tmp_path / "out", "--atlases", "Nonexistent300") == 64
    err = capsys.readouterr().err
    assert "Nonexistent300" in err and "CC200" in err
    assert not (tmp_path / "out").exists()
