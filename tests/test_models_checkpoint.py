"""Checkpoints: safetensors + model card, hash check, atlas/ROI checks, no pickle."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from brainfm.errors import InputError
from brainfm.models.checkpoint import (
    CARD_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    _ElementBudget,
    load_checkpoint,
    resolve_model_dir,
    save_checkpoint,
    verify_checkpoint,
)
from brainfm.models.model import BrainFM, BrainFMConfig

# small tensors: one intra-op thread avoids OpenMP stalls on a shared, busy machine
pytestmark = pytest.mark.usefixtures("single_torch_thread")


ROIS = [f"CC200_{i:03d}" for i in range(1, 13)]


def _model() -> BrainFM:
    torch.manual_seed(0)
    cfg = BrainFMConfig(n_rois=12, window=16, patch_len=4, d_model=8, n_experts=2, rw_steps=1,
                        ssm_layers=1, d_state=4, targets=["age", "piq"], enc_dim=8,
                        enc_layers=1, n_latents=2, expert_hidden=4, graph_topk=3, readout_dim=2)
    return BrainFM(cfg)


def _card() -> dict:
    return {
        "atlas": "CC200",
        "roi_names": ROIS,
        "sampling_rate_hz": 0.5,
        "window": 16,
        "targets": [{"name": "age", "column": "age", "mean": np.float64(17.1), "std": 7.5},
                    {"name": "piq", "column": "piq", "mean": 105.0, "std": np.float32(14.0)}],
        "training": {"cohort": "ABIDE", "n_subjects": np.int64(12)},
        "metrics": {"age_mae": float("nan"), "per_fold": np.array([1.0, 2.0])},
        "denoising_strategy": "simple",
    }


@pytest.fixture()
def saved(tmp_path):
    model = _model()
    out = save_checkpoint(tmp_path / "m", model, _card())
    return model, out


def test_round_trip(saved):
    model, out = saved
    assert (out / WEIGHTS_FILE).is_file() and (out / CARD_FILE).is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted([WEIGHTS_FILE, CARD_FILE])
    loaded, card = load_checkpoint(out, expected_atlas="CC200", expected_roi_names=ROIS)
    assert not loaded.training
    for key in ("config", "weights_sha256", "brainfm_version", "torch_version",
                "format_version", "atlas", "roi_names", "targets", "training", "metrics"):
        assert key in card
    assert card["targets"][0]["mean"] == pytest.approx(17.1)
    assert card["metrics"]["age_mae"] is None and card["metrics"]["per_fold"] == [1.0, 2.0]
    assert BrainFMConfig.from_dict(card["config"]) == model.config
    model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 16, generator=g)
    mask = torch.ones(2, 12, dtype=torch.bool)
    a, b = model(x, mask), loaded(x, mask)
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    torch.testing.assert_close(a.logvar, b.logvar, rtol=0, atol=0)


def test_checkpoint_files_are_readable_by_others(saved):
    """A model on a shared cluster is read by other users (and by a container's user)."""
    _, out = saved
    for name in (WEIGHTS_FILE, CARD_FILE):
        assert (out / name).stat().st_mode & 0o777 == 0o644


def test_loading_never_unpickles(saved, monkeypatch):
    _, out = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    load_checkpoint(out)


def test_error_is_an_input_error_with_exit_code_66():
    assert issubclass(CheckpointError, InputError)
    assert CheckpointError("x").exit_code == 66


def test_missing_files(tmp_path, saved):
    _, out = saved
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (out / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load_checkpoint(out)


def test_hash_mismatch_names_the_file(saved):
    _, out = saved
    data = bytearray((out / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (out / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256") as exc:
        load_checkpoint(out)
    assert str(out / WEIGHTS_FILE) in str(exc.value)


def test_atlas_and_roi_checks(saved):
    _, out = saved
    with pytest.raises(CheckpointError, match="atlas 'CC200'.*'Schaefer200'"):
        load_checkpoint(out, expected_atlas="Schaefer200")
    with pytest.raises(CheckpointError, match="expects 12 ROIs but the data have 11"):
        load_checkpoint(out, expected_roi_names=ROIS[:-1])
    swapped = ROIS[:]
    swapped[3], swapped[4] = swapped[4], swapped[3]
    with pytest.raises(CheckpointError, match="column 4"):
        load_checkpoint(out, expected_roi_names=swapped)


def test_element_budget_counts_every_factory_form():
    budget = _ElementBudget(limit=100)
    with budget:
        torch.empty(3, 4)
        torch.zeros((5,))
        torch.randn(size=(2, 3))
        torch.full((4, 2), 1.0)
    assert budget.used == 12 + 5 + 6 + 8
    with pytest.raises(CheckpointError, match="more than 100"), _ElementBudget(limit=100):
        torch.ones(10, 11)


def test_verifying_leaves_the_random_stream_alone(saved):
    _, out = saved
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    verify_checkpoint(out)
    assert torch.equal(torch.rand(4), expected)


def test_verifying_the_default_model_builds_nothing_on_the_meta_device():
    # the meta device's random fills import torch._dynamo (about 1.3 s of every participant run)
    code = ("import sys; from brainfm.models.checkpoint import resolve_model_dir, "
            "verify_checkpoint; verify_checkpoint(resolve_model_dir('default')); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_weights_that_do_not_fit_the_config(saved):
    _, out = saved
    card = json.loads((out / CARD_FILE).read_text())
    card["config"]["d_model"] = 16
    (out / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="does not describe its weights"):
        load_checkpoint(out)
    # a card asking for a huge model fails on its element budget, before any allocation
    card["config"]["d_model"] = 10**7
    (out / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="does not describe its weights"):
        load_checkpoint(out)
    card["config"]["d_model"] = 16
    card["config"]["colour"] = "blue"
    (out / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="invalid config"):
        load_checkpoint(out)


def test_bad_card(saved):
    _, out = saved
    (out / CARD_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=CARD_FILE):
        load_checkpoint(out)
    (out / CARD_FILE).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(out)


def test_save_overwrites_atomically(saved):
    model, out = saved
    first = json.loads((out / CARD_FILE).read_text())["weights_sha256"]
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_checkpoint(out, model, _card())
    second = json.loads((out / CARD_FILE).read_text())["weights_sha256"]
    assert first != second
    assert sorted(p.name for p in out.iterdir()) == sorted([WEIGHTS_FILE, CARD_FILE])
    load_checkpoint(out)


def test_resolve_model_dir(tmp_path, saved):
    _, out = saved
    assert resolve_model_dir(str(out)) == out
    with pytest.raises(CheckpointError, match="brainfm-train"):
        resolve_model_dir(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=CARD_FILE):
        resolve_model_dir(tmp_path / "empty")
    try:
        default = resolve_model_dir("default")
    except CheckpointError as exc:  # no packaged model in this checkout
        assert "brainfm-train" in str(exc)
    else:
        assert default.parts[-3:] == ("data", "models", "default")
        assert (default / CARD_FILE).is_file()


def test_verify_checks_everything_without_loading_the_weights(saved, monkeypatch):
    """The participant level's pre-flight: the card back and every check done (the weights'
    hash and tensor shapes), without loading the tensors or building the model."""
    from brainfm.models import checkpoint

    _, out = saved
    monkeypatch.setattr(checkpoint, "load_file", None)  # loading the tensors would fail
    assert verify_checkpoint(out)["atlas"] == "CC200"
    assert verify_checkpoint(out, expected_atlas="CC200")["roi_names"] == ROIS
    card = json.loads((out / CARD_FILE).read_text())
    card["config"]["d_model"] = 16  # an architecture the weights do not have
    (out / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="does not describe its weights"):
        verify_checkpoint(out)
