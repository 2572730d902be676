"""Tests of brainfm-train: learning on a planted signal, determinism, CLI, real-data learning."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from toy_cohort import N_ROIS, ROIS, TINY, make_toy_cohort

from brainfm.errors import UsageError
from brainfm.models.checkpoint import load_checkpoint
from brainfm.models.cli import main
from brainfm.models.loop import make_config, regression_metrics, split_subjects
from brainfm.models.model import BrainFM
from brainfm.models.options import TrainOptions
from brainfm.models.predict import predict_subject
from brainfm.models.runtime import setup, state_hash
from brainfm.models.sessions import load_sessions
from brainfm.models.targets import TargetSpec, load_participants, target_matrix
from brainfm.models.timeseries import find_timeseries
from brainfm.models.train import finetune, load_encoder, pretrain


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "deriv"
    make_toy_cohort(root, 60, seed=1)
    return root


def _opts(**kw: object) -> TrainOptions:
    base = {"atlas": "Toy", "epochs": 3, "batch_size": 16, "lr": 3e-3, "patience": 50,
            "val_fraction": 0.2, "seed": 0, "model": dict(TINY)}
    base.update(kw)
    return TrainOptions(**base)  # type: ignore[arg-type]


def test_finetune_learns_planted_connectivity_signal(toy: Path, tmp_path: Path) -> None:
    sessions = load_sessions(find_timeseries(toy, "Toy"))
    frame = load_participants(toy / "participants.tsv")
    specs = [TargetSpec("age", "age")]
    y = target_matrix(frame, [s.participant_id for s in sessions], specs)
    opts = _opts(epochs=25)
    ctx = setup(opts)
    model, scaler, info = finetune(sessions, y, specs, opts, ctx)
    val = info["metrics"]["age"]
    assert val["n"] >= 10
    assert val["mae"] < 0.8 * val["mae_training_mean"], val
    # fresh subjects from the same generator
    test_root = tmp_path / "test"
    truth = make_toy_cohort(test_root, 20, seed=99, start=500)
    card = {"window": TINY["window"], "sampling_rate_hz": 0.5, "roi_names": ROIS,
            "targets": [{"name": "age", "column": "age", "mean": float(scaler.mean[0]),
                         "std": float(scaler.std[0])}]}
    preds = [predict_subject(model, card, [f])["predictions"]["age"]
             for f in find_timeseries(test_root, "Toy")]
    mae = np.mean(np.abs(np.array(preds) - truth["age"].to_numpy()))
    baseline = np.mean(np.abs(scaler.mean[0] - truth["age"].to_numpy()))
    assert mae < 0.8 * baseline, (mae, baseline)


def test_training_is_deterministic(toy: Path) -> None:
    sessions = load_sessions(find_timeseries(toy, "Toy"))[:24]
    frame = load_participants(toy / "participants.tsv")
    specs = [TargetSpec("age", "age"), TargetSpec("fluid", "SCORE")]
    y = target_matrix(frame, [s.participant_id for s in sessions], specs)
    hashes = []
    for seed in (3, 3, 4):
        opts = _opts(epochs=2, seed=seed)
        model, _, _ = finetune(sessions, y, specs, opts, setup(opts))
        hashes.append(state_hash(model))
    assert hashes[0] == hashes[1] != hashes[2]
    pre_hashes = []
    for _ in range(2):
        opts = _opts(epochs=1, seed=5)
        model, _ = pretrain(sessions, opts, setup(opts))
        pre_hashes.append(state_hash(model))
    assert pre_hashes[0] == pre_hashes[1]


def test_load_encoder_checks_architecture(toy: Path) -> None:
    sessions = load_sessions(find_timeseries(toy, "Toy"))[:12]
    opts = _opts(epochs=1)
    pre, info = pretrain(sessions, opts, setup(opts))
    assert "val_reconstruction_loss" in info["metrics"]
    cfg = make_config(N_ROIS, ["age"], opts, base=pre.config)
    model = BrainFM(cfg)
    load_encoder(model, pre)
    for key, value in pre.state_dict().items():
        if key.startswith("encoder."):
            assert torch.equal(model.state_dict()[key], value)
    wider = make_config(N_ROIS, ["age"], _opts(model={**TINY, "enc_dim": 8}))
    with pytest.raises(UsageError, match="does not match"):
        load_encoder(BrainFM(wider), pre)
    with pytest.raises(UsageError, match="unknown model option"):
        make_config(N_ROIS, ["age"], _opts(model={"d_modle": 3}))


@pytest.mark.slow
def test_torchrun_two_processes(toy: Path, tmp_path: Path) -> None:
    """DistributedDataParallel on CPU (gloo) without code changes; rank 0 writes."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('atlas = "Toy"\nepochs = 2\nbatch_size = 16\n[model]\n'
                   + "".join(f"{k} = {v}\n" for k, v in TINY.items()))
    out = tmp_path / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "brainfm.models.cli", "finetune", str(toy), "--config", str(cfg),
         "--target", "age", "-o", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("finetune epoch 2/2") == 1  # only rank 0 logs
    _, card = load_checkpoint(out)
    assert card["training"]["epochs_run"] == 2


def test_split_and_metrics() -> None:
    ids = ["a", "a", "b", "c", "d", "e", "f", "g", "h", "i"]
    tr, va = split_subjects(ids, 0.25, seed=0)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(10))
    assert {ids[i] for i in tr}.isdisjoint({ids[i] for i in va}) and va.size >= 1
    m = regression_metrics(np.array([1.0, 2.0, 3.0, np.nan]), np.array([1.0, 2.0, 4.0, 5.0]))
    assert m["n"] == 3 and m["mae"] == pytest.approx(1 / 3) and m["r"] > 0.9


def test_cli_pretrain_finetune_predict_cv(toy: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "atlas: Toy\nepochs: 2\nbatch-size: 16\nseed: 1\nval_fraction: 0.2\n"
        "model:\n" + "".join(f"  {k}: {v}\n" for k, v in TINY.items())
    )
    lmae = tmp_path / "lmae"
    assert main(["pretrain", str(toy), "--config", str(cfg), "-o", str(lmae)]) == 0
    _, pcard = load_checkpoint(lmae)
    assert pcard["atlas"] == "Toy" and pcard["roi_names"] == ROIS
    assert pcard["denoising_strategy"] == "synthetic"
    out = tmp_path / "model"
    assert main(["finetune", str(toy), "--config", str(cfg), "--epochs", "3", "--init",
                 str(lmae), "--target", "age", "--target", "fluid_intelligence=SCORE",
                 "-o", str(out)]) == 0
    model, card = load_checkpoint(out)
    assert [t["name"] for t in card["targets"]] == ["age", "fluid_intelligence"]
    assert card["targets"][1]["column"] == "SCORE"
    assert card["training"]["epochs"] == 3 and card["window"] == TINY["window"]
    assert "age" in card["metrics"]["inner_validation"]
    # the encoder starts from the pretrained weights (it moved only by fine-tuning)
    assert any(k.startswith("encoder.") for k in model.state_dict())
    pred_tsv = tmp_path / "pred.tsv"
    assert main(["predict", "--model", str(out), str(toy), "-o", str(pred_tsv)]) == 0
    table = pd.read_csv(pred_tsv, sep="\t")
    assert list(table.columns) == ["participant_id", "age", "age_std", "fluid_intelligence",
                                   "fluid_intelligence_std"]
    assert len(table) == 60 and table["participant_id"].str.startswith("sub-").all()
    assert (table["age_std"] > 0).all() and table["age"].between(-50, 100).all()
    cv = tmp_path / "cv"
    assert main(["cv", str(toy), "--config", str(cfg), "--target", "age", "--folds", "2",
                 "--group-by", "site", "--pretrain-epochs", "1", "--recipe", "network",
                 "-o", str(cv)]) == 0
    metrics = json.loads((cv / "metrics.json").read_text())
    assert metrics["folds"] == 2 and set(metrics["targets"]["age"]) >= {"mae", "r", "r2"}
    assert len(metrics["targets"]["age"]["mae"]["per_fold"]) == 2
    cvp = pd.read_csv(cv / "predictions.tsv", sep="\t")
    assert len(cvp) == 60 and set(cvp["fold"]) == {1, 2}
    assert {"age_true", "age", "age_std", "site"} <= set(cvp.columns)


def test_predict_subject_shapes(toy: Path) -> None:
    sessions = load_sessions(find_timeseries(toy, "Toy"))[:12]
    frame = load_participants(toy / "participants.tsv")
    specs = [TargetSpec("age", "age")]
    y = target_matrix(frame, [s.participant_id for s in sessions], specs)
    opts = _opts(epochs=1)
    model, scaler, _ = finetune(sessions, y, specs, opts, setup(opts))
    card = {"window": TINY["window"], "sampling_rate_hz": 0.5, "roi_names": ROIS,
            "targets": [{"name": "age", "column": "age", "mean": float(scaler.mean[0]),
                         "std": float(scaler.std[0])}]}
    s = sessions[0]
    res = predict_subject(model, card, s, stride=8)
    assert res["n_windows"] >= 2 and res["window_predictions"].shape == (res["n_windows"], 1)
    assert res["predictions"]["age"] == pytest.approx(res["window_predictions"].mean())
    u = res["uncertainty"]["age"]
    assert res["predictions"]["age_std"] == pytest.approx(np.hypot(u["model_std"],
                                                                   u["window_std"]))
    if res["gate_weights"] is not None:
        assert res["gate_weights"].shape[0] == N_ROIS
        assert np.all(res["gate_weights"][~s.roi_mask] == 0)
    # raw arrays in the card's ROI order give the same answer as the loaded files
    raw = [(pd.read_csv(p, sep="\t", na_values="n/a").to_numpy(),
            json.loads(Path(p).with_suffix(".json").read_text())["RepetitionTime"])
           for p in s.sources]
    res2 = predict_subject(model, card, raw, stride=8)
    assert res2["predictions"]["age"] == pytest.approx(res["predictions"]["age"], rel=1e-4)


def test_cli_errors(toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--epochs", "1", "--window", "32", "--patch-len", "4", "-o", str(tmp_path / "o")]
    assert main(["finetune", str(tmp_path / "nope"), "--target", "age", *common]) == 66
    assert "brainfm-train: error: derivatives folder not found" in capsys.readouterr().err
    assert main(["pretrain", str(toy), "--atlas", "CC200", *common]) == 66
    assert "atlases present: Toy" in capsys.readouterr().err
    assert main(["finetune", str(toy), "--atlas", "Toy", "--target", "iq=FSIQ", *common]) == 64
    assert "'FSIQ' not in" in capsys.readouterr().err
    empty = tmp_path / "participants.tsv"
    empty.write_text("participant_id\tage\nsub-999\t20\n")
    assert main(["finetune", str(toy), "--atlas", "Toy", "--target", "age",
                 "--participants-tsv", str(empty), *common]) == 66
    assert "no value" in capsys.readouterr().err
    assert main(["finetune", str(toy), "--atlas", "Toy", "--target", "age",
                 "--participants-tsv", str(tmp_path / "missing.tsv"), *common]) == 66
    assert main(["finetune", str(toy), "--atlas", "Toy", *common]) == 64
    assert main(["cv", str(toy), "--atlas", "Toy", "--target", "age", "--folds", "1",
                 *common]) == 64
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("epochz: 3\n")
    assert main(["pretrain", str(toy), "--config", str(bad_cfg), *common]) == 64
    assert "epochz" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "nomodel"), str(toy), "-o",
                 str(tmp_path / "p.tsv")]) in (64, 66)
    with pytest.raises(SystemExit) as exc:
        main(["finetune", str(toy), "--epochs", "x"])
    assert exc.value.code == 64


#: Settings of the real-data learning test: short enough for 2 shared CPU cores (one thread,
#: which is far faster than two when other processes compete for the cores).
REAL_OPTIONS: dict[str, object] = {"epochs": 30, "patience": 8, "batch_size": 16, "lr": 2e-3,
                                   "threads": 1, "val_fraction": 0.15, "seed": 0}


@pytest.mark.slow
@pytest.mark.realdata
def test_real_abide_age_beats_training_mean(abide_dir: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """A short fine-tune on 200 ABIDE subjects beats the training-mean age predictor."""
    from sklearn.model_selection import train_test_split

    from brainfm.importers.pcp import import_pcp

    caplog.set_level(logging.INFO, logger="brainfm")
    deriv = tmp_path / "abide"
    import_pcp(abide_dir, deriv)
    frame = load_participants(deriv / "participants.tsv")
    subset, _ = train_test_split(frame.index.to_numpy(), train_size=200, random_state=0,
                                 stratify=frame["site"])
    train_ids, test_ids = train_test_split(subset, test_size=0.25, random_state=0,
                                           stratify=frame.loc[subset, "site"])
    opts = TrainOptions(atlas="CC200", **REAL_OPTIONS)  # type: ignore[arg-type]
    threads = torch.get_num_threads()
    try:
        ctx = setup(opts)
        start = time.perf_counter()
        train_sessions = load_sessions(find_timeseries(deriv, "CC200", participants=train_ids))
        specs = [TargetSpec("age", "age")]
        y = target_matrix(frame, [s.participant_id for s in train_sessions], specs)
        model, scaler, _info = finetune(train_sessions, y, specs, opts, ctx)
        seconds = time.perf_counter() - start
        card = {"window": model.config.window, "sampling_rate_hz": 0.5,
                "roi_names": train_sessions[0].roi_names,
                "targets": [{"name": "age", "column": "age", "mean": float(scaler.mean[0]),
                             "std": float(scaler.std[0])}]}
        test_sessions = load_sessions(find_timeseries(deriv, "CC200", participants=test_ids))
        pred = np.array([predict_subject(model, card, s)["predictions"]["age"]
                         for s in test_sessions])
    finally:
        torch.set_num_threads(threads)
    truth = frame.loc[[s.participant_id for s in test_sessions], "age"].to_numpy()
    mae = float(np.mean(np.abs(pred - truth)))
    baseline = float(np.mean(np.abs(scaler.mean[0] - truth)))
    print(f"real ABIDE: {len(train_ids)} train / {len(test_ids)} test subjects, "
          f"MAE {mae:.2f} vs training mean {baseline:.2f} years, fine-tune {seconds:.0f} s")
    assert mae <= 0.9 * baseline, (mae, baseline)
