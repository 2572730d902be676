"""Local masked autoencoder: masks, loss on hidden tokens of present ROIs only, encoder."""

from __future__ import annotations

import pytest
import torch

from brainfm.models.lmae import (
    LMAE,
    local_span_mask,
    make_token_mask,
    masked_reconstruction_loss,
    patchify,
    random_token_mask,
)

# small tensors: one intra-op thread avoids OpenMP stalls on a shared, busy machine
pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _runs(row: torch.Tensor) -> list[int]:
    """Lengths of the maximal runs of True in a 1-D bool tensor."""
    runs, cur = [], 0
    for v in row.tolist():
        if v:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    if cur:
        runs.append(cur)
    return runs


@pytest.mark.parametrize(("n_patches", "ratio", "min_span"),
                         [(16, 0.5, 2), (16, 0.5, 4), (32, 0.4, 3), (10, 0.3, 1), (16, 0.75, 5)])
def test_local_mask_fraction_and_min_span(n_patches, ratio, min_span):
    g = torch.Generator().manual_seed(0)
    mask = local_span_mask(8, 50, n_patches, ratio, min_span, generator=g)
    assert mask.shape == (8, 50, n_patches) and mask.dtype == torch.bool
    m = round(ratio * n_patches)
    assert (mask.sum(-1) == m).all()  # exactly round(ratio * L) per ROI
    assert abs(mask.float().mean().item() - ratio) <= 0.5 / n_patches + 1e-9
    for row in mask.reshape(-1, n_patches):
        assert min(_runs(row)) >= min_span
    # the spans move around and their number varies
    assert len({tuple(r.tolist()) for r in mask.reshape(-1, n_patches)}) > 20
    assert len({len(_runs(r)) for r in mask.reshape(-1, n_patches)}) > 1 or m // min_span == 1


def test_masks_are_reproducible_with_a_generator():
    a = local_span_mask(2, 5, 16, 0.5, 2, generator=torch.Generator().manual_seed(3))
    b = local_span_mask(2, 5, 16, 0.5, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_random_mask_hides_independent_tokens():
    mask = random_token_mask(4, 100, 16, 0.5, generator=torch.Generator().manual_seed(0))
    assert (mask.sum(-1) == 8).all()
    # isolated single hidden patches occur (they never do with min_span 2 local masking)
    assert any(1 in _runs(r) for r in mask.reshape(-1, 16))
    assert torch.equal(make_token_mask("random", 4, 100, 16, 0.5, 2,
                                       torch.Generator().manual_seed(0)), mask)


def test_mask_argument_errors():
    with pytest.raises(ValueError, match="min_span"):
        local_span_mask(1, 1, 16, 0.25, 5)
    with pytest.raises(ValueError, match="mask_ratio"):
        local_span_mask(1, 1, 16, 0.99, 2)
    with pytest.raises(ValueError, match="masking"):
        make_token_mask("blocky", 1, 1, 16, 0.5, 2)
    with pytest.raises(ValueError, match="multiple"):
        LMAE(10, 30, 4, 8)


def test_loss_ignores_targets_of_visible_tokens_and_missing_rois():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 6, 8, 4, generator=g)
    target = torch.randn(2, 6, 8, 4, generator=g)
    token_mask = local_span_mask(2, 6, 8, 0.5, 2, generator=g)
    roi_mask = torch.ones(2, 6, dtype=torch.bool)
    roi_mask[1, 2] = False
    base = masked_reconstruction_loss(pred, target, token_mask, roi_mask)
    counted = token_mask & roi_mask[:, :, None]
    expected = (pred - target).pow(2).mean(-1)[counted].mean()
    torch.testing.assert_close(base, expected)
    # perturbing visible tokens' targets, or any target of a missing ROI (even NaN): no change
    t2 = target.clone()
    t2[~token_mask] += 100.0
    t2[1, 2] = float("nan")
    torch.testing.assert_close(masked_reconstruction_loss(pred, t2, token_mask, roi_mask), base)
    # perturbing a hidden token's target of a present ROI changes it
    t3 = target.clone()
    idx = torch.nonzero(counted)[0]
    t3[idx[0], idx[1], idx[2]] += 1.0
    assert masked_reconstruction_loss(pred, t3, token_mask, roi_mask) != base


def _model(**kw) -> LMAE:
    torch.manual_seed(0)
    return LMAE(n_rois=12, window=32, patch_len=4, d_model=16, n_layers=2, n_latents=4, **kw)


def test_encoder_shapes_and_hidden_values_are_not_seen():
    model = _model().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 12, 32, generator=g)
    roi_mask = torch.ones(3, 12, dtype=torch.bool)
    tokens = model(x, roi_mask)
    assert tokens.shape == (3, 12, 8, 16)
    token_mask = model.make_mask(3, generator=g)
    h1 = model(x, roi_mask, token_mask)
    x2 = x.clone()
    x2_patches = patchify(x2, 4)
    x2_patches[token_mask] = 1e3  # change only the hidden patches
    h2 = model(x2_patches.reshape(3, 12, 32), roi_mask, token_mask)
    torch.testing.assert_close(h1, h2)


def test_missing_rois_are_neither_input_nor_loss():
    model = _model().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 12, 32, generator=g)
    roi_mask = torch.ones(2, 12, dtype=torch.bool)
    roi_mask[0, :3] = False
    token_mask = model.make_mask(2, generator=g)
    loss, info = model.loss(x, roi_mask, token_mask)
    x_bad = x.clone()
    x_bad[0, :3] = float("nan")
    loss_bad, info_bad = model.loss(x_bad, roi_mask, token_mask)
    torch.testing.assert_close(loss_bad, loss)
    assert info_bad["n_loss_tokens"] == float((token_mask & roi_mask[:, :, None]).sum())
    assert info_bad["masked_fraction"] == pytest.approx(0.5)
    # present ROIs' tokens do not depend on what a missing ROI holds
    x_other = x.clone()
    x_other[0, :3] = 50.0
    torch.testing.assert_close(model(x_other, roi_mask)[0, 3:], model(x, roi_mask)[0, 3:])
    model.train()
    loss_bad, _ = model.loss(x_bad, roi_mask, token_mask)
    loss_bad.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_loss_draws_its_own_mask_and_learns():
    model = _model(masking="local", mask_ratio=0.5, min_span_patches=2)
    g = torch.Generator().manual_seed(3)
    t = torch.arange(32, dtype=torch.float32)
    phase = torch.rand(8, 12, 1, generator=g) * 6.28
    x = torch.sin(0.4 * t + phase)  # smooth signals: reconstructable from context
    roi_mask = torch.ones(8, 12, dtype=torch.bool)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(60):
        loss, info = model.loss(x, roi_mask, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = info["loss"] if first is None else first
        assert set(info) == {"loss", "masked_fraction", "n_loss_tokens"}
    assert info["loss"] < 0.5 * first


def test_all_rois_missing_gives_zero_loss_not_nan():
    model = _model()
    x = torch.randn(1, 12, 32)
    loss, info = model.loss(x, torch.zeros(1, 12, dtype=torch.bool))
    assert float(loss.detach()) == 0.0 and info["n_loss_tokens"] == 0.0
    assert torch.isfinite(model(x, torch.zeros(1, 12, dtype=torch.bool))).all()
