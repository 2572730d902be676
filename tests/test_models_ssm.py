"""Selective scan (chunked pure PyTorch vs sequential reference), Mamba block, SSM encoder."""

from __future__ import annotations

import pytest
import torch

from brainfm.models import ssm
from brainfm.models.ssm import (
    MambaBlock,
    SSMEncoder,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


# small tensors: one intra-op thread avoids OpenMP stalls on a shared, busy machine
pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _inputs(b: int, d: int, n: int, length: int, dtype: torch.dtype, seed: int = 0,
            grad: bool = True) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype)

    ins = [r(b, d, length), r(b, d, length), -torch.rand(d, n, generator=g, dtype=dtype) * 3,
           r(b, n, length), r(b, n, length), r(d), r(b, d, length), r(d)]
    return [t.requires_grad_(grad) for t in ins]


def _run(fn, ins, **kw):
    u, delta, A, B, C, D, z, db = ins
    return fn(u, delta, A, B, C, D=D, z=z, delta_bias=db, delta_softplus=True,
              return_last_state=True, **kw)


@pytest.mark.parametrize("length", [1, 2, 7, 16, 33, 100])
@pytest.mark.parametrize("chunk_size", [None, 1, 4, 5, 64])
def test_chunked_matches_reference_float64_forward_and_gradients(length, chunk_size):
    ins = _inputs(2, 3, 4, length, torch.float64, seed=length)
    y_ref, s_ref = _run(selective_scan_ref, ins)
    y, s = _run(selective_scan_chunked, ins, chunk_size=chunk_size)
    assert y.dtype == torch.float64 and y.shape == (2, 3, length) and s.shape == (2, 3, 4)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=1e-10)
    g = torch.Generator().manual_seed(99)
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    ws = torch.randn(s.shape, generator=g, dtype=torch.float64)
    g_ref = torch.autograd.grad((y_ref * wy).sum() + (s_ref * ws).sum(), ins)
    g_new = torch.autograd.grad((y * wy).sum() + (s * ws).sum(), ins)
    for name, a, b in zip(NAMES, g_new, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=f"gradient of {name}")


@pytest.mark.parametrize("which", ["y", "last"])
def test_gradients_when_only_one_output_is_used(which):
    ins = _inputs(2, 5, 3, 23, torch.float64, seed=3)
    y_ref, s_ref = _run(selective_scan_ref, ins)
    y, s = _run(selective_scan_chunked, ins, chunk_size=4)
    loss_ref = y_ref.pow(2).sum() if which == "y" else s_ref.pow(2).sum()
    loss = y.pow(2).sum() if which == "y" else s.pow(2).sum()
    g_ref = torch.autograd.grad(loss_ref, ins, allow_unused=True)
    g_new = torch.autograd.grad(loss, ins, allow_unused=True)
    for name, a, b in zip(NAMES, g_new, g_ref, strict=True):
        if b is None:
            assert a is None or float(a.abs().max()) == 0.0, name
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=f"gradient of {name}")


def test_without_optional_arguments_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(1, 2, 9, dtype=torch.float64, generator=g, requires_grad=True)
    delta = torch.rand(1, 2, 9, dtype=torch.float64, generator=g).requires_grad_()
    A = (-torch.rand(2, 3, dtype=torch.float64, generator=g)).requires_grad_()
    B = torch.randn(1, 3, 9, dtype=torch.float64, generator=g, requires_grad=True)
    C = torch.randn(1, 3, 9, dtype=torch.float64, generator=g, requires_grad=True)
    torch.testing.assert_close(selective_scan_chunked(u, delta, A, B, C, chunk_size=4),
                               selective_scan_ref(u, delta, A, B, C), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan_chunked(*a, chunk_size=4), (u, delta, A, B, C))


@pytest.mark.parametrize("length", [16, 130])
def test_float32_close_to_float64_reference(length):
    ins64 = _inputs(2, 8, 16, length, torch.float64, seed=7, grad=False)
    ins32 = [t.float() for t in ins64]
    y_ref, s_ref = _run(selective_scan_ref, ins64)
    y, s = _run(selective_scan_chunked, ins32)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.double(), s_ref, rtol=1e-4, atol=1e-4)
    y_seq = _run(selective_scan_ref, ins32)[0]
    torch.testing.assert_close(y, y_seq, rtol=1e-4, atol=1e-4)


def test_half_precision_inputs_are_computed_in_float32():
    ins = [t.to(torch.bfloat16) for t in _inputs(1, 4, 2, 10, torch.float32, grad=False)]
    y, s = _run(selective_scan_chunked, ins)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    y_ref, _ = _run(selective_scan_ref, ins)
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)


def test_long_sequence_stays_finite_with_strong_decay():
    # large delta * |A| (fast forgetting) must not overflow: the scan never exponentiates a
    # positive number
    ins = _inputs(1, 4, 8, 300, torch.float32, grad=False)
    ins[1] = ins[1] * 0 + 30.0  # delta = softplus(30 + bias) ~ 30
    y, s = _run(selective_scan_chunked, ins)
    y_ref, s_ref = _run(selective_scan_ref, ins)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)


def test_empty_sequence():
    u = torch.zeros(2, 3, 0)
    y, s = selective_scan_chunked(u, u, -torch.ones(3, 4), torch.zeros(2, 4, 0),
                                  torch.zeros(2, 4, 0), return_last_state=True)
    assert y.shape == (2, 3, 0) and s.shape == (2, 3, 4)


def test_shape_errors():
    ins = _inputs(2, 3, 4, 5, torch.float32, grad=False)
    u, delta, A, B, C, *_ = ins
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_chunked(u, delta, A[:2], B, C)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_chunked(u, delta, A, B[:, :2], C)
    with pytest.raises(ValueError, match="delta must"):
        selective_scan_ref(u, delta[:, :, :3], A, B, C)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_chunked(u, delta, A, B, C, chunk_size=0)


def test_dispatch_uses_pure_pytorch_on_cpu():
    ins = _inputs(2, 3, 4, 11, torch.float32, grad=False)
    torch.testing.assert_close(_run(selective_scan, ins)[0], _run(selective_scan_chunked, ins)[0])


@pytest.mark.skipif(not (ssm.HAS_MAMBA_KERNEL and torch.cuda.is_available()),
                    reason="needs mamba-ssm and a CUDA device")
def test_mamba_kernel_matches_reference_on_cuda():  # pragma: no cover - GPU only
    ins = [t.detach().cuda().requires_grad_() for t in _inputs(2, 16, 8, 100, torch.float32)]
    y, s = _run(selective_scan, ins)
    y_ref, s_ref = _run(selective_scan_ref, ins)
    torch.testing.assert_close(y, y_ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(s, s_ref, rtol=1e-3, atol=1e-3)
    g = torch.autograd.grad(y.sum(), ins)
    g_ref = torch.autograd.grad(y_ref.sum(), ins)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


def test_mamba_block_is_causal_and_differentiable():
    torch.manual_seed(0)
    block = MambaBlock(8, d_state=4, d_conv=3, expand=2)
    assert block.A_log.shape == (16, 4) and block.dt_proj.out_features == 16
    x = torch.randn(2, 12, 8, requires_grad=True)
    y = block(x)
    assert y.shape == (2, 12, 8)
    x2 = x.detach().clone()
    x2[:, 7:] += torch.randn(2, 5, 8)
    y2 = block(x2)
    torch.testing.assert_close(y2[:, :7], y[:, :7].detach())
    assert not torch.allclose(y2[:, 7:], y[:, 7:].detach())
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_ssm_encoder(norm):
    torch.manual_seed(0)
    enc = SSMEncoder(16, n_layers=2, d_state=4, norm=norm, dropout=0.1)
    x = torch.randn(3, 10, 16)
    y = enc(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.pow(2).mean().backward()
    assert all(p.grad is not None for p in enc.parameters())
    with pytest.raises(ValueError, match="norm"):
        SSMEncoder(16, 1, norm="batch")
