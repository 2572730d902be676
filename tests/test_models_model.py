"""BrainFM assembly: config, forward contract, ablations, missing data, Gaussian NLL."""

from __future__ import annotations

import json
import math

import pytest
import torch

from brainfm.models.model import (
    BrainFM,
    BrainFMConfig,
    ModelOutput,
    fisher_z_connectivity,
    gaussian_nll,
)

# small tensors: one intra-op thread avoids OpenMP stalls on a shared, busy machine
pytestmark = pytest.mark.usefixtures("single_torch_thread")


CONTRACT = dict(n_rois=200, window=64, patch_len=4, d_model=64, n_experts=4, rw_steps=3,
                ssm_layers=2, d_state=16, targets=["age", "piq"], mask_ratio=0.5,
                min_span_patches=2, masking="local", use_rwmoe=True, use_ssm=True, dropout=0.1)


def _small(**kw) -> BrainFMConfig:
    base = dict(n_rois=16, window=32, patch_len=4, d_model=16, n_experts=3, rw_steps=2,
                ssm_layers=1, d_state=4, targets=["age", "piq"], enc_dim=8, enc_layers=1,
                n_latents=4, expert_hidden=8, graph_topk=4, readout_dim=2)
    base.update(kw)
    return BrainFMConfig(**base)


def _batch(cfg: BrainFMConfig, b: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.n_rois, cfg.window, generator=g)
    roi_mask = torch.ones(b, cfg.n_rois, dtype=torch.bool)
    roi_mask[0, :3] = False
    conn = fisher_z_connectivity(torch.randn(b, cfg.n_rois, 100, generator=g), roi_mask)
    return x, roi_mask, conn


def test_contract_config_forward_and_pretrain():
    cfg = BrainFMConfig(**CONTRACT)
    torch.manual_seed(0)
    model = BrainFM(cfg)
    x, roi_mask, conn = _batch(cfg, b=2)
    out = model(x, roi_mask, conn)
    assert isinstance(out, ModelOutput)
    assert out.mean.shape == (2, 2) and out.logvar.shape == (2, 2)
    assert out.gate_weights.shape == (2, 200, 4) and out.aux_loss.dim() == 0
    assert out.time_gate_weights is not None and out.time_gate_weights.shape == (2, 16, 4)
    loss, info = model.pretrain_loss(x, roi_mask, conn=None,
                                     generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and set(info) >= {"loss", "masked_fraction", "n_loss_tokens"}
    assert all(isinstance(v, float) for v in info.values())
    keys = [k for k in model.state_dict() if k.startswith("encoder.")]
    assert keys and all(not k.startswith("encoder.") for k in model.state_dict()
                        if k not in keys)
    assert model.encoder is model.get_submodule("encoder")


def test_config_round_trip_and_validation():
    cfg = BrainFMConfig(**CONTRACT)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert BrainFMConfig.from_dict(d) == cfg
    assert BrainFMConfig.from_dict({"targets": ["age"]}) == BrainFMConfig()
    with pytest.raises(ValueError, match="unknown"):
        BrainFMConfig.from_dict({**d, "colour": "blue"})
    with pytest.raises(ValueError, match="multiple of patch_len"):
        BrainFMConfig(window=30, patch_len=4)
    with pytest.raises(ValueError, match="masking"):
        BrainFMConfig(masking="block")
    with pytest.raises(ValueError, match="min_span_patches"):
        BrainFMConfig(min_span_patches=9)
    with pytest.raises(ValueError, match="targets"):
        BrainFMConfig(targets=[])


@pytest.mark.parametrize("kw", [
    {},
    {"use_rwmoe": False},
    {"use_ssm": False},
    {"use_rwmoe": False, "use_ssm": False},
    {"masking": "random"},
    {"graph": "learned"},
    {"use_conn_features": False, "readout_dim": 0},
    {"moe_top_k": 0, "balance": "cv2"},
])
def test_ablations_run_and_train(kw):
    cfg = _small(**kw)
    torch.manual_seed(0)
    model = BrainFM(cfg)
    x, roi_mask, conn = _batch(cfg)
    out = model(x, roi_mask, conn)
    assert out.mean.shape == (3, 2) and out.gate_weights.shape == (3, 16, 3)
    if not cfg.use_rwmoe:
        torch.testing.assert_close(out.gate_weights[roi_mask], torch.full((45, 3), 1 / 3))
        assert out.time_gate_weights is None and float(out.aux_loss.detach()) == 0.0
    assert (out.gate_weights[0, :3] == 0).all()
    y = torch.randn(3, 2)
    loss = gaussian_nll(out.mean, out.logvar, y) + out.aux_loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    ploss, _ = model.pretrain_loss(x, roi_mask)
    ploss.backward()


def test_missing_rois_and_missing_connectivity_are_handled():
    cfg = _small(dropout=0.0)
    torch.manual_seed(0)
    model = BrainFM(cfg).eval()
    x, roi_mask, conn = _batch(cfg)
    ref = model(x, roi_mask, conn)
    x2, conn2 = x.clone(), conn.clone()
    x2[0, :3] = float("nan")
    conn2[0, :3, :] = float("nan")
    conn2[0, :, :3] = float("nan")
    conn2[1].fill_diagonal_(float("inf"))
    out = model(x2, roi_mask, conn2)
    torch.testing.assert_close(out.mean, ref.mean)
    torch.testing.assert_close(out.logvar, ref.logvar)
    # without connectivity the window's own is used
    out_none = model(x, roi_mask, None)
    own = model(x, roi_mask, fisher_z_connectivity(x, roi_mask))
    torch.testing.assert_close(out_none.mean, own.mean)
    # samples do not influence each other
    single = model(x[1:2], roi_mask[1:2], conn[1:2])
    torch.testing.assert_close(single.mean, ref.mean[1:2], rtol=1e-4, atol=1e-5)


def test_input_shape_errors():
    cfg = _small()
    model = BrainFM(cfg)
    x, roi_mask, conn = _batch(cfg)
    with pytest.raises(ValueError, match="x must be"):
        model(x[:, :, :20], roi_mask, conn)
    with pytest.raises(ValueError, match="roi_mask"):
        model(x, roi_mask.float(), conn)
    with pytest.raises(ValueError, match="conn"):
        model(x, roi_mask, conn[:, :5])


def test_encoder_weights_transfer():
    cfg = _small()
    torch.manual_seed(0)
    pre = BrainFM(cfg)
    torch.manual_seed(1)
    fine = BrainFM(cfg)
    fine.load_encoder_state_dict(pre.state_dict())
    for k, v in pre.encoder_state_dict().items():
        assert torch.equal(fine.state_dict()[k], v)
    assert not torch.equal(fine.state_dict()["node_proj.weight"],
                           pre.state_dict()["node_proj.weight"])


def test_model_learns_a_connectivity_target():
    cfg = _small(dropout=0.0, ssm_layers=1)
    torch.manual_seed(0)
    model = BrainFM(cfg)
    g = torch.Generator().manual_seed(5)
    b = 24
    x = torch.randn(b, 16, 32, generator=g)
    roi_mask = torch.ones(b, 16, dtype=torch.bool)
    conn = fisher_z_connectivity(torch.randn(b, 16, 60, generator=g), roi_mask)
    y = (conn[:, 0, 1:4].sum(-1, keepdim=True) * 3).repeat(1, 2)
    y = (y - y.mean(0)) / y.std(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        out = model(x, roi_mask, conn)
        loss = torch.nn.functional.mse_loss(out.mean, y) + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.2 * losses[0]


def test_gaussian_nll_values_masks_and_nan_targets():
    mean = torch.tensor([[0.0, 1.0], [2.0, -1.0]], requires_grad=True)
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.5, -0.5]], requires_grad=True)
    target = torch.tensor([[1.0, float("nan")], [2.0, 0.0]])
    mask = torch.tensor([[True, True], [False, True]])
    loss = gaussian_nll(mean, logvar, target, mask)
    terms = [0.5 * (math.log(2 * math.pi) + 0.0 + 1.0),
             0.5 * (math.log(2 * math.pi) - 0.5 + 1.0 / math.exp(-0.5))]
    assert float(loss.detach()) == pytest.approx(sum(terms) / 2)
    loss.backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(logvar.grad).all()
    assert mean.grad[0, 1] == 0 and mean.grad[1, 0] == 0 and logvar.grad[1, 0] == 0
    # no mask: NaN targets are skipped; all masked: zero, with a graph
    assert math.isfinite(float(gaussian_nll(mean, logvar, target).detach()))
    none = gaussian_nll(mean, logvar, target, torch.zeros(2, 2, dtype=torch.bool))
    assert float(none.detach()) == 0.0 and none.requires_grad
    # beta-NLL with beta = 0 is the plain NLL; with beta > 0 it weights by the variance
    plain = gaussian_nll(mean, logvar, target, mask, beta=0.0)
    assert float(plain.detach()) == pytest.approx(float(loss.detach()))
    assert float(gaussian_nll(mean, logvar, target, mask, beta=0.5).detach()) != pytest.approx(
        float(loss.detach()))
    with pytest.raises(ValueError, match="same shape"):
        gaussian_nll(mean, logvar, target[:, :1])


def test_fisher_z_connectivity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 50, generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 4] = False
    z = fisher_z_connectivity(x, mask)
    ref = torch.atanh(torch.corrcoef(x[0]))
    ref.fill_diagonal_(0)
    torch.testing.assert_close(z[0], ref, rtol=1e-4, atol=1e-5)
    assert (z[1, 4] == 0).all() and (z[1, :, 4] == 0).all()
    assert torch.equal(z, z.transpose(1, 2)) or torch.allclose(z, z.transpose(1, 2))


@pytest.mark.parametrize("graph", ["conn", "learned"])
def test_sample_without_any_present_roi_stays_finite(graph):
    cfg = _small(graph=graph)
    torch.manual_seed(0)
    model = BrainFM(cfg)
    x = torch.randn(2, 16, 32)
    roi_mask = torch.ones(2, 16, dtype=torch.bool)
    roi_mask[0] = False
    out = model(x, roi_mask, None)
    loss = gaussian_nll(out.mean, out.logvar, torch.randn(2, 2)) + out.aux_loss
    loss = loss + model.pretrain_loss(x, roi_mask)[0]
    loss.backward()
    assert torch.isfinite(out.mean).all() and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
