"""The participant workflow's predict stage: predictions and expert weights per session, and the
checks of the model against the run (atlas, denoising, missing files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from output_tree import output_tree

from brainfm.atlases import roi_names
from brainfm.bidsapp.cli import main
from brainfm.models.checkpoint import model_sha256, save_checkpoint
from brainfm.models.model import BrainFM, BrainFMConfig
from brainfm.testdata import make_dataset

pytestmark = pytest.mark.slow


def write_model(folder, atlas="CC200", strategy="pcp"):
    """A small untrained model with a complete card (enough to test the plumbing)."""
    torch.manual_seed(0)
    names = roi_names(atlas)
    cfg = BrainFMConfig(n_rois=len(names), window=32, patch_len=4, d_model=16, n_experts=3,
                        ssm_layers=1, d_state=4, targets=["age", "fluid_intelligence"],
                        enc_dim=8, n_latents=4, expert_hidden=8, readout_dim=2)
    card = {"atlas": atlas, "roi_names": names, "sampling_rate_hz": 0.5, "window": 32,
            "targets": [{"name": "age", "column": "age", "mean": 20.0, "std": 8.0},
                        {"name": "fluid_intelligence", "column": "piq", "mean": 105.0,
                         "std": 14.0}],
            "training": {"cohort": ["test"], "n_subjects": 0}, "denoising_strategy": strategy}
    save_checkpoint(folder, BrainFM(cfg), card)
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("pred") / "ds", n_subjects=2, n_sessions=2,
                        n_volumes=80, seed=11)


def run(dataset, out, *extra):
    return main([str(dataset.bids_dir), str(out), "participant", "--skip-bids-validation",
                 "-w", str(out.parent / f"work_{out.name}"), "--nprocs", "2", "--poll-sleep",
                 "0.05", "--min-time", "60", *extra])


def test_predictions_and_expert_weights_per_session(dataset, tmp_path):
    model = write_model(tmp_path / "model")
    out = tmp_path / "out"
    assert run(dataset, out, "--model", str(model)) == 0
    card = json.loads((model / "model_card.json").read_text())
    for sub in ("01", "02"):
        for ses in ("01", "02"):
            func = out / f"sub-{sub}" / f"ses-{ses}" / "func"
            pred = pd.read_csv(func / f"sub-{sub}_ses-{ses}_desc-brainfm_predictions.tsv",
                               sep="\t")
            assert list(pred.columns) == ["participant_id", "session_id", "age", "age_std",
                                          "fluid_intelligence", "fluid_intelligence_std",
                                          "n_runs", "retained_seconds"]
            assert pred["participant_id"][0] == f"sub-{sub}"
            assert pred["session_id"][0] == f"ses-{ses}"
            assert np.isfinite(pred[["age", "age_std", "fluid_intelligence"]].to_numpy()).all()
            assert pred["n_runs"][0] == 1
            sidecar = json.loads((func / f"sub-{sub}_ses-{ses}_desc-brainfm_predictions.json")
                                 .read_text())
            # the model hash covers the card too; the weights' own hash is kept beside it
            assert sidecar["ModelSHA256"] == model_sha256(card, card["weights_sha256"])
            assert sidecar["WeightsSHA256"] == card["weights_sha256"]
            assert sidecar["ModelCard"]["Atlas"] == "CC200"
            weights = pd.read_csv(func / f"sub-{sub}_ses-{ses}_atlas-CC200_desc-rwmoe_"
                                         "expertweights.tsv", sep="\t")
            assert list(weights.columns) == ["Node", "expert_0", "expert_1", "expert_2"]
            sums = weights.drop(columns="Node").sum(axis=1).to_numpy()
            assert np.allclose(sums[sums > 0], 1.0, atol=1e-5)


def test_model_with_another_atlas_is_refused(dataset, tmp_path, capsys):
    model = write_model(tmp_path / "model", atlas="Schaefer2018-200")
    assert run(dataset, tmp_path / "out", "--model", str(model)) == 64
    assert "Schaefer2018-200" in capsys.readouterr().err


def test_missing_model_file(dataset, tmp_path, capsys):
    model = write_model(tmp_path / "model")
    (model / "model.safetensors").unlink()
    assert run(dataset, tmp_path / "out", "--model", str(model)) == 66
    assert "model.safetensors" in capsys.readouterr().err


def test_denoising_mismatch_is_an_error_unless_allowed(dataset, tmp_path, capsys):
    model = write_model(tmp_path / "model", strategy="36P")
    assert run(dataset, tmp_path / "out", "--model", str(model), "--participant-label",
               "01") == 64
    assert "--allow-model-mismatch" in capsys.readouterr().err
    assert run(dataset, tmp_path / "out2", "--model", str(model), "--participant-label", "01",
               "--allow-model-mismatch") == 0
    shutil.rmtree(tmp_path / "out2")


def test_group_level_after_participant(dataset, tmp_path):
    model = write_model(tmp_path / "model")
    out = tmp_path / "out"
    assert run(dataset, out, "--model", str(model)) == 0
    assert main([str(dataset.bids_dir), str(out), "group"]) == 0
    expected = Path(__file__).parent / "data" / "expected_group_outputs.txt"
    assert output_tree(out) == expected.read_text().split()
    table = pd.read_csv(out / "group_predictions.tsv", sep="\t", na_values=["n/a"])
    assert len(table) == 4  # two participants x two sessions
    assert np.isfinite(table[["age_pred", "fluid_intelligence_pred"]].to_numpy()).all()
    # the metrics equal an independent recomputation from the table
    metrics = json.loads((out / "group_metrics.json").read_text())
    err = table["age_pred"] - table["age"]
    age = metrics["targets"]["age"]
    assert age["n"] == 4
    assert age["mae"] == pytest.approx(np.abs(err).mean())
    assert age["pearson_r"] == pytest.approx(np.corrcoef(table["age_pred"], table["age"])[0, 1])
    ss_res = (err**2).sum()
    ss_tot = ((table["age"] - table["age"].mean()) ** 2).sum()
    assert age["r2"] == pytest.approx(1 - ss_res / ss_tot)
    html = (out / "group_report.html").read_text()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")
