"""Raw BIDS in: the participant level preprocesses raw BOLD when no derivatives exist."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainfm.bidsapp.cli import main
from brainfm.testdata.native import make_native_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return make_native_dataset(tmp_path_factory.mktemp("raw") / "ds", n_volumes=64, seed=2)


def test_minimal_preprocessing_then_parcellation(native, tmp_path):
    out = tmp_path / "out"
    assert main([str(native.bids_dir), str(out), "participant", "--preproc", "minimal",
                 "--skip-bids-validation", "--nuisance-regressors", "none", "--lower-bpf", "0",
                 "--upper-bpf", "0", "--fd-thresh", "0", "--min-time", "60",
                 "-w", str(tmp_path / "work"), "--nprocs", "2", "--poll-sleep", "0.05"]) == 0
    assert (out / "sourcedata" / "brainfm-minimal-preproc" / "dataset_description.json").is_file()
    series = pd.read_csv(out / "sub-01" / "func" / "sub-01_task-rest_space-MNI152NLin6Asym_"
                         "atlas-CC200_stat-mean_timeseries.tsv", sep="\t", na_values=["n/a"])
    truth = np.load(native.out_dir / "truth" / "sub-01_task-rest_truth.npz")
    painted = truth["roi_signal"] + truth["roi_nuisance"]
    got = series.to_numpy()
    a, b = got - got.mean(0), painted - painted.mean(0)
    with np.errstate(invalid="ignore"):
        r = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))
    assert np.nanmedian(r) >= 0.8


def test_fmriprep_backend_missing_is_a_clear_error(native, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main([str(native.bids_dir), str(tmp_path / "out"), "participant", "--preproc",
                 "fmriprep", "--skip-bids-validation", "-w", str(tmp_path / "w")]) == 66
    err = capsys.readouterr().err
    assert "fMRIPrep is not available" in err and "--preproc minimal" in err
