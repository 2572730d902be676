"""The shipped default model: complete card, loads from the installed package, predicts offline."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from brainfm.bidsapp.cli import main
from brainfm.fileio import read_tsv
from brainfm.models.checkpoint import load_checkpoint, resolve_model_dir, sha256_file
from brainfm.postproc.confounds import strategy_matches
from brainfm.testdata import make_dataset


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt to open an internet connection in this process fails the test."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: guarded(
        socket.socket(), a[0] if a else None))


def test_default_model_card_states_data_metrics_and_terms() -> None:
    folder = resolve_model_dir("default")
    assert Path(__file__).resolve().parents[1] / "brainfm" in folder.parents or \
        "site-packages" in str(folder)
    _, card = load_checkpoint(folder)
    assert sha256_file(folder / "model.safetensors") == card["weights_sha256"]
    assert card["atlas"] == "CC200" and card["n_rois"] == 200
    # trained on PCP's own processing, which brainfm's `pcp` strategy reproduces
    assert card["denoising_strategy"] == "pcp-cpac-filt_global"
    assert card["preprocessing"]["nuisance_regressors"] == "pcp"
    assert strategy_matches(card["denoising_strategy"], "pcp")
    assert [t["name"] for t in card["targets"]] == ["age", "fluid_intelligence"]
    assert "performance IQ" in card["targets"][1]["label"]
    cohort = card["training"]["cohort"]
    assert cohort["n_subjects"] == 770 and cohort["n_sites"] == 17
    assert "CC BY-NC-SA" in card["license"] and "non-commercial" in card["terms"]
    # the shipped recipe: network members stacked with linear members, calibrated intervals
    ens = card["ensemble"]
    assert len(ens["members"]) == 3 and {t["name"] for t in ens["targets"]} == {
        "age", "fluid_intelligence"}
    assert all(0 < t["interval_halfwidth"]["0.5"] < t["interval_halfwidth"]["0.9"]
               for t in ens["targets"])
    cv = card["metrics"]["cross_validation"]
    for protocol in ("stratified-kfold", "leave-group-out"):
        for model in ("recipe", "recipe-linear", "recipe-network", "krr"):
            age = cv[protocol][model]["age"]["pooled"]
            assert 0 < age["mae"] < 10 and 0 < age["r"] < 1
    loso = cv["leave-group-out"]
    assert 0.5 < loso["coverage"]["age"]["90"] <= 1.0
    # a target that does not beat the training mean out of site says so in the card
    piq, mean = (loso[m]["fluid_intelligence"]["pooled"]["mae"] for m in ("recipe", "mean"))
    if piq >= mean:
        assert "Not predictable out of site" in card["targets"][1]["note"]


def test_demo_subjects_ship_and_were_held_out_of_training() -> None:
    """The packaged demo subjects are real ABIDE series the default model never trained on."""
    from importlib import resources

    _, card = load_checkpoint(resolve_model_dir("default"))
    demo = Path(str(resources.files("brainfm.data") / "demo" / "abide-pcp-cc200"))
    ids = card["training"]["cohort"]["demo_file_ids"]
    assert len(ids) == 5
    excluded = set(card["training"]["excluded_participants"])
    for fid in ids:
        assert (demo / "rois_cc200" / f"{fid}_rois_cc200.1D").is_file()
        assert fid.rsplit("_", 1)[1] in excluded
    assert fid in (demo / "Phenotypic_V1_0b_preprocessed1.csv").read_text()
    assert "CC BY-NC-SA" in (demo / "README.md").read_text()


@pytest.mark.slow
def test_default_model_predicts_demo_data_offline(tmp_path, no_network, abide_dir_or_none) -> None:
    """``brainfm … participant`` with no --model uses the packaged model, in one process, with
    every internet connection refused."""
    dataset = make_dataset(tmp_path / "demo", n_subjects=1, n_volumes=150, seed=2,
                           abide_dir=abide_dir_or_none)
    out = tmp_path / "out"
    code = main([str(dataset.bids_dir), str(out), "participant", "--skip-bids-validation",
                 "-w", str(tmp_path / "work"), "--nprocs", "1"])
    assert code == 0
    (tsv,) = out.glob("sub-01/**/sub-01_desc-brainfm_predictions.tsv")
    pred = read_tsv(tsv)
    assert len(pred) == 1
    row = pred.iloc[0]
    assert 3 < row["age"] < 80 and 40 < row["fluid_intelligence"] < 160
    assert row["age_std"] >= 0
    # the intervals nest and the 90 % one holds the prediction; they are asymmetric per bin of
    # predicted age (adults are predicted young, so above 18 the 50 % interval may lie above it)
    assert row["age_lower90"] < row["age_lower50"] < row["age_upper50"] < row["age_upper90"]
    assert row["age_lower90"] < row["age"] < row["age_upper90"]
    assert str(row["out_of_distribution"]) in {"True", "False"}
    meta = json.loads(tsv.with_suffix(".json").read_text())
    assert "calibrated" in meta["Description"]
    assert set(meta["TargetNotes"]) <= {"age", "fluid_intelligence"}
    # each target column described the BIDS way, with the target's real name
    assert meta["fluid_intelligence"]["LongName"].startswith("performance IQ (ABIDE PIQ)")
    assert "Not predictable out of site" in meta["fluid_intelligence"]["Description"]
    assert meta["ModelCard"]["TargetLabels"]["age"] == "age (years)"
    assert meta["ModelCard"]["OutOfSiteAccuracy"]["age"]["mae"] > 0
    _, card = load_checkpoint(resolve_model_dir("default"))
    assert meta["ModelSHA256"] == card["model_sha256"] != card["weights_sha256"]
    assert meta["WeightsSHA256"] == card["weights_sha256"]
    assert meta["License"] == card["license"]  # the predictions carry the model's terms
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["License"] == card["license"]


@pytest.mark.slow
def test_default_model_is_skipped_not_forced_when_the_run_does_not_suit_it(tmp_path, caplog):
    """Another strategy with no --model: time series, no predictions, a warning saying why;
    the same with an explicit --model default is a usage error (exit 64) before any work."""
    dataset = make_dataset(tmp_path / "ds", n_subjects=1, n_volumes=150, seed=4)
    common = [str(dataset.bids_dir), "participant", "--skip-bids-validation", "--nprocs", "1",
              "--nuisance-regressors", "24P"]
    explicit = tmp_path / "explicit"
    assert main([common[0], str(explicit), *common[1:], "-w", str(tmp_path / "w1"),
                 "--model", "default"]) == 64
    assert not explicit.exists() or not any(explicit.rglob("*.tsv"))
    implicit = tmp_path / "implicit"
    assert main([common[0], str(implicit), *common[1:], "-w", str(tmp_path / "w2")]) == 0
    assert any(implicit.rglob("*_stat-mean_timeseries.tsv"))
    assert not any(implicit.rglob("*_desc-brainfm_predictions.tsv"))
    assert "Predictions are skipped" in caplog.text and "24P" in caplog.text
