"""Mamba-style selective state-space model (SSM) in pure PyTorch.

The selective scan computes, for every batch element ``b``, channel ``d`` and state ``n``::

    h[t] = exp(delta[t] * A) * h[t-1] + delta[t] * B[t] * u[t]
    y[t] = sum_n C[t, n] * h[t, n] + D * u[t]
    out  = y * silu(z)                      (when z is given)

with the tensor layout of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``:
``u, delta, z: (b, d, l)``, ``A: (d, n)``, ``B, C: (b, n, l)``, ``D, delta_bias: (d,)``.

Three implementations share that signature:

- :func:`selective_scan_ref`: a plain sequential loop over time, the reference.
- :func:`selective_scan_chunked`: a chunked scan for CPU (and any device). The sequence is cut into
  ``c`` chunks of length ``T`` (about ``sqrt(l)``). (1) Inside the chunks the recurrence runs from a
  zero state for all chunks at once, so each of the ``T`` steps is one vectorised operation over
  ``b * d * c * n`` elements. (2) The within-chunk cumulative sums of the log-decays
  ``S[t] = sum_{s<=t} delta[s] * A`` (all <= 0 because ``A < 0``, so ``exp(S) <= 1``: no overflow)
  give each chunk's total decay; a short sequential pass over the ``c`` chunks carries the state.
  (3) ``h[t] = h_local[t] + exp(S[t]) * h_carry`` fixes every position in one vectorised step.
  That is ``O(l)`` work (like the loop, unlike the ``O(l log l)`` Hillis-Steele scan or the
  ``O(l T)`` quadratic intra-chunk form), with about ``2 sqrt(l)`` Python-level steps instead of
  ``l``. It is differentiable with autograd.
- the ``mamba_ssm`` CUDA kernel, used by :func:`selective_scan` when ``mamba_ssm`` imports and the
  tensors are on a CUDA device.

:class:`MambaBlock` is the Mamba (S6) block and :class:`SSMEncoder` a residual, pre-norm stack.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # optional CUDA kernel; every import of mamba_ssm fails without its compiled extension
    from mamba_ssm.ops.selective_scan_interface import (
        selective_scan_fn as _mamba_selective_scan_fn,
    )
except Exception:  # ImportError, or OSError/RuntimeError from a missing CUDA extension
    _mamba_selective_scan_fn = None

__all__ = [
    "HAS_MAMBA_KERNEL",
    "MambaBlock",
    "RMSNorm",
    "SSMEncoder",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]

#: True when the mamba-ssm CUDA kernel could be imported.
HAS_MAMBA_KERNEL: bool = _mamba_selective_scan_fn is not None


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, length), got shape {tuple(u.shape)}")
    b, d, l_ = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (dim={d}, d_state), got shape {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (b, n, l_):
            raise ValueError(f"{name} must be (batch, d_state, length) = {(b, n, l_)}, "
                             f"got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (d,):
            raise ValueError(f"{name} must be (dim,) = ({d},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 are computed in float32."""
    return torch.promote_types(dtype, torch.float32)


def _prepare_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool,
                   dtype: torch.dtype) -> Tensor:
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None,
            out_dtype: torch.dtype) -> Tensor:
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan as a plain sequential loop over time (the reference).

    Parameters
    ----------
    u : Tensor
        Input, shape (batch, dim, length).
    delta : Tensor
        Step sizes before ``delta_bias``/softplus, shape (batch, dim, length).
    A : Tensor
        State matrix (diagonal per channel), shape (dim, d_state); negative for a stable scan.
    B, C : Tensor
        Input-dependent input and output matrices, shape (batch, d_state, length).
    D : Tensor, optional
        Skip connection, shape (dim,).
    z : Tensor, optional
        Gate, shape (batch, dim, length); the output is multiplied by ``silu(z)``.
    delta_bias : Tensor, optional
        Added to ``delta`` (shape (dim,)) before the softplus.
    delta_softplus : bool
        Apply ``softplus`` to ``delta + delta_bias``.
    return_last_state : bool
        Also return the final state, shape (batch, dim, d_state).

    Returns
    -------
    Tensor or tuple of Tensor
        Output of shape (batch, dim, length) in ``u``'s dtype, and the last state (in the compute
        dtype: float64 for float64 inputs, float32 otherwise) when ``return_last_state``.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u.dtype)
    out_dtype = u.dtype
    u = u.to(dtype)
    delta = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    A, B, C = A.to(dtype), B.to(dtype), C.to(dtype)
    b, d, length = u.shape
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (b, d, l, n)
    drive = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # (b, d, l, n)
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    # unbind (not indexing) keeps the backward pass linear in the length
    for decay_t, drive_t, c_t in zip(decay.unbind(2), drive.unbind(2), C.unbind(2),
                                     strict=True):
        h = decay_t * h + drive_t
        ys.append(torch.einsum("bdn,bn->bd", h, c_t))
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(b, d, 0)
    out = _finish(y, u, D, z, out_dtype)
    return (out, h) if return_last_state else out


def default_chunk_size(length: int) -> int:
    """Chunk length for :func:`selective_scan_chunked`: about ``sqrt(length)``, at least 1.

    Parameters
    ----------
    length : int
        Sequence length.

    Returns
    -------
    int
        The chunk length; it balances the within-chunk steps against the carry steps.
    """
    return max(1, int(math.ceil(math.sqrt(max(length, 1)))))


def _chunk(t: Tensor, T: int, nc: int) -> Tensor:
    """(b, k, l) -> time-major chunk layout (T, b, k, nc), zero-padded to nc * T (a view)."""
    pad = nc * T - t.shape[-1]
    if pad:
        t = F.pad(t, (0, pad))
    b, k = t.shape[:2]
    return t.reshape(b, k, nc, T).permute(3, 0, 1, 2)


def _unchunk(t: Tensor, length: int) -> Tensor:
    """(T, b, k, nc) -> (b, k, length)."""
    T, b, k, nc = t.shape
    return t.permute(1, 2, 3, 0).reshape(b, k, nc * T)[:, :, :length]


def _linear_scan(dl: Tensor, An: Tensor, coef: Tensor, vec: Tensor,
                 h0: Tensor | None = None) -> Tensor:
    """All states of ``h[t] = exp(dl[t] * A) * h[t-1] + coef[t] * vec[t]``.

    Chunk layout (chunk ``c`` holds flat steps ``c*T .. c*T+T-1``): ``dl``, ``coef``:
    (T, b, d, nc, 1); ``vec``: (T, b, 1, nc, n); ``An``: (d, 1, n); ``h0``: optional state
    (b, d, n) before the first step. Returns the states (T, b, d, nc, n). Runs outside autograd,
    one (b, d, nc, n) slice at a time so that the temporaries stay in cache.
    """
    T, b, d, nc, _ = dl.shape
    n = An.shape[-1]
    h = torch.empty(T, b, d, nc, n, dtype=vec.dtype, device=vec.device)
    # (1) local recurrences from a zero state, all chunks at once (exp(dl * A) <= 1)
    torch.mul(coef[0], vec[0], out=h[0])
    for t in range(1, T):
        torch.addcmul(coef[t] * vec[t], torch.exp(dl[t] * An), h[t - 1], out=h[t])
    if nc == 1 and h0 is None:
        return h
    # (2) carry the state across chunks. The cumulative sum of the log-decays dl * A factorises
    # as A * cumsum(dl), taken over (T, b, d, nc) only; every exp(...) below is <= 1.
    cum = torch.cumsum(dl, dim=0)  # (T, b, d, nc, 1)
    chunk_decay = torch.exp(cum[-1] * An)  # (b, d, nc, n)
    h_in = torch.empty(b, d, nc, n, dtype=h.dtype, device=h.device)  # state entering chunk c
    if h0 is None:
        h_in[:, :, 0] = 0
    else:
        h_in[:, :, 0] = h0
    for c in range(1, nc):
        torch.addcmul(h[T - 1, :, :, c - 1], chunk_decay[:, :, c - 1], h_in[:, :, c - 1],
                      out=h_in[:, :, c])
    # (3) every position adds its decayed incoming state
    for t in range(T):
        h[t].addcmul_(torch.exp(cum[t] * An), h_in)
    return h


class _ChunkedScan(torch.autograd.Function):
    """Core scan ``y[t] = C[t] . h[t]`` with a hand-written chunked backward (a reverse scan)."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,  # type: ignore[override]
                chunk_size: int) -> tuple[Tensor, Tensor]:
        b, d, length = u.shape
        T = min(chunk_size, length)
        nc = -(-length // T)
        An = A[:, None, :]
        dl = _chunk(delta, T, nc).unsqueeze(-1)  # (T, b, d, nc, 1); padded steps: delta = 0
        du = _chunk(delta * u, T, nc).unsqueeze(-1)
        Bt = _chunk(B, T, nc).transpose(2, 3).unsqueeze(2)  # (T, b, 1, nc, n)
        Ct = _chunk(C, T, nc).transpose(2, 3).unsqueeze(2)
        h = _linear_scan(dl, An, du, Bt)  # (T, b, d, nc, n)
        y = torch.empty(T, b, d, nc, dtype=h.dtype, device=h.device)
        for t in range(T):
            torch.linalg.vecdot(h[t], Ct[t], out=y[t])
        last = h[T - 1, :, :, nc - 1].clone()  # padded steps keep the state: this is h[l-1]
        ctx.save_for_backward(u, delta, A, B, C, h)
        ctx.chunk = (T, nc)
        return _unchunk(y, length), last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: Tensor | None, glast: Tensor | None):  # type: ignore[override]
        u, delta, A, B, C, h = ctx.saved_tensors
        T, nc = ctx.chunk
        b, d, length = u.shape
        n = A.shape[1]
        An = A[:, None, :]
        dl = _chunk(delta, T, nc).unsqueeze(-1)  # (T, b, d, nc, 1)
        ul = _chunk(u, T, nc).unsqueeze(-1)
        Bt = _chunk(B, T, nc).transpose(2, 3).unsqueeze(2)  # (T, b, 1, nc, n)
        Ct = _chunk(C, T, nc).transpose(2, 3).unsqueeze(2)
        if gy is None:
            gy = torch.zeros_like(u)
        gyc = _chunk(gy, T, nc).unsqueeze(-1)  # (T, b, d, nc, 1)
        # reverse scan gh[t] = gy[t] C[t] + exp(delta[t+1] A) gh[t+1] (gh[l-1] also gets glast):
        # flipping T and nc turns the chunk layout into the reversed sequence's chunk layout, and
        # the padded steps (delta = 0, gy = 0) pass the state through unchanged
        d_next = _chunk(F.pad(delta[:, :, 1:], (0, 1)), T, nc).unsqueeze(-1)
        gh = _linear_scan(d_next.flip(0, 3), An, gyc.flip(0, 3), Ct.flip(0, 3),
                          h0=glast).flip(0, 3)
        g_u = torch.empty(T, b, d, nc, dtype=h.dtype, device=h.device)
        g_delta = torch.empty_like(g_u)
        g_B = torch.empty(T, b, nc, n, dtype=h.dtype, device=h.device)
        g_C = torch.empty_like(g_B)
        g_A = torch.zeros_like(A)
        h_first = torch.zeros(b, d, nc, n, dtype=h.dtype, device=h.device)
        h_first[:, :, 1:] = h[T - 1, :, :, :-1]  # state before each chunk's first step
        for t in range(T):
            ght = gh[t]
            hp = h[t - 1] if t > 0 else h_first
            q = ght * hp * torch.exp(dl[t] * An)  # gradient on the log-decay delta[t] * A
            s1 = torch.linalg.vecdot(ght, Bt[t])  # (b, d, nc)
            dlt, ult = dl[t].squeeze(-1), ul[t].squeeze(-1)
            torch.addcmul(torch.linalg.vecdot(q, An), ult, s1, out=g_delta[t])
            torch.mul(dlt, s1, out=g_u[t])
            g_A += (q * dl[t]).sum(dim=(0, 2))
            torch.sum(ght * (dl[t] * ul[t]), dim=1, out=g_B[t])
            torch.sum(h[t] * gyc[t], dim=1, out=g_C[t])
        g_B = g_B.permute(1, 3, 2, 0).reshape(b, n, nc * T)[:, :, :length]
        g_C = g_C.permute(1, 3, 2, 0).reshape(b, n, nc * T)[:, :, :length]
        return _unchunk(g_u, length), _unchunk(g_delta, length), g_A, g_B, g_C, None


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan computed chunk-parallel in pure PyTorch (differentiable with autograd).

    Same arguments, layout and results as :func:`selective_scan_ref`; see the module docstring
    for the algorithm. The core recurrence is an autograd function whose backward pass is the
    same chunked scan run backwards in time (first-order gradients only); ``delta_bias``,
    softplus, ``D`` and ``z`` are ordinary autograd operations.

    Parameters
    ----------
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        As in :func:`selective_scan_ref`.
    chunk_size : int, optional
        Chunk length; default :func:`default_chunk_size` (about ``sqrt(length)``).

    Returns
    -------
    Tensor or tuple of Tensor
        Output (batch, dim, length) in ``u``'s dtype, and the last state (batch, dim, d_state)
        when ``return_last_state``.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u.dtype)
    out_dtype = u.dtype
    u = u.to(dtype)
    delta = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    A, B, C = A.to(dtype), B.to(dtype), C.to(dtype)
    b, d, length = u.shape
    n = A.shape[1]
    if length == 0:
        y = u.new_zeros(b, d, 0)
        out = _finish(y, u, D, z, out_dtype)
        return (out, u.new_zeros(b, d, n)) if return_last_state else out
    T = int(chunk_size) if chunk_size is not None else default_chunk_size(length)
    if T < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    y, last = _ChunkedScan.apply(u, delta, A, B, C, T)
    out = _finish(y, u, D, z, out_dtype)
    return (out, last) if return_last_state else out


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan: the mamba-ssm CUDA kernel on CUDA tensors when installed, else chunked.

    Signature and layout of ``mamba_ssm``'s ``selective_scan_fn``.

    Parameters
    ----------
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        As in :func:`selective_scan_ref`.
    chunk_size : int, optional
        Chunk length of the pure-PyTorch path (ignored by the CUDA kernel).

    Returns
    -------
    Tensor or tuple of Tensor
        Output (batch, dim, length) in ``u``'s dtype, and the last state when requested.
    """
    if _mamba_selective_scan_fn is not None and u.is_cuda and u.dtype != torch.float64:
        _check_shapes(u, delta, A, B, C, D, z, delta_bias)
        return _mamba_selective_scan_fn(
            u.contiguous(), delta.contiguous(), A.float().contiguous(), B.contiguous(),
            C.contiguous(), None if D is None else D.float().contiguous(),
            None if z is None else z.contiguous(),
            None if delta_bias is None else delta_bias.float().contiguous(),
            delta_softplus, return_last_state,
        )
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  return_last_state, chunk_size=chunk_size)


class RMSNorm(nn.Module):
    """Root-mean-square layer normalisation with a learned scale.

    Parameters
    ----------
    dim : int
        Size of the last dimension.
    eps : float
        Added to the mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` over its last dimension."""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(kind: str, dim: int) -> nn.Module:
    """Build a normalisation layer.

    Parameters
    ----------
    kind : {"rms", "layer"}
        RMSNorm or LayerNorm.
    dim : int
        Feature size.

    Returns
    -------
    nn.Module
        The normalisation module.
    """
    if kind == "rms":
        return RMSNorm(dim)
    if kind == "layer":
        return nn.LayerNorm(dim)
    raise ValueError(f"norm must be 'rms' or 'layer', got {kind!r}")


class MambaBlock(nn.Module):
    """Mamba (S6) block: gated selective SSM over a sequence.

    ``in_proj`` splits into a branch ``x`` and a gate ``z``; ``x`` goes through a causal depthwise
    convolution and SiLU; ``x_proj`` gives the input-dependent ``dt`` (low rank), ``B`` and ``C``;
    ``dt_proj`` lifts ``dt`` to every channel; the selective scan (with ``A = -exp(A_log)``,
    skip ``D`` and gate ``silu(z)``) is projected back by ``out_proj``.

    Parameters
    ----------
    d_model : int
        Input and output feature size.
    d_state : int
        SSM state size per channel.
    d_conv : int
        Kernel size of the causal depthwise convolution.
    expand : int
        Inner width is ``expand * d_model``.
    dt_rank : int or "auto"
        Rank of the ``dt`` projection; ``"auto"`` is ``ceil(d_model / 16)``.
    dt_min, dt_max : float
        Range of the initial step sizes (log-uniform).
    dt_init_floor : float
        Lower bound on the initial step sizes.
    bias : bool
        Biases in ``in_proj`` and ``out_proj``.
    conv_bias : bool
        Bias in the convolution.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, bias: bool = False, conv_bias: bool = True) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv,
                                groups=self.d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        # dt initialisation as in Mamba: softplus(bias) log-uniform in [dt_min, dt_max]
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """Apply the block.

        Parameters
        ----------
        hidden : Tensor
            Sequence, shape (batch, length, d_model).

        Returns
        -------
        Tensor
            Shape (batch, length, d_model).
        """
        length = hidden.shape[1]
        xz = self.in_proj(hidden).transpose(1, 2)  # (b, 2 d_inner, l)
        x, z = xz.chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :length])
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, l, r + 2n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (b, d_inner, l)
        A = -torch.exp(self.A_log.float())
        y = selective_scan(x.contiguous(), delta.contiguous(), A,
                           B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
                           D=self.D.float(), z=z.contiguous(),
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))


class SSMEncoder(nn.Module):
    """Residual stack of pre-norm :class:`MambaBlock` layers with a final norm.

    Parameters
    ----------
    d_model : int
        Feature size.
    n_layers : int
        Number of blocks.
    d_state, d_conv, expand : int
        Passed to :class:`MambaBlock`.
    norm : {"rms", "layer"}
        Normalisation before each block and at the end.
    dropout : float
        Dropout on each block's output before the residual sum.
    """

    def __init__(self, d_model: int, n_layers: int, d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, norm: str = "rms", dropout: float = 0.0) -> None:
        super().__init__()
        self.norms = nn.ModuleList([make_norm(norm, d_model) for _ in range(n_layers)])
        self.blocks = nn.ModuleList(
            [MambaBlock(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
             for _ in range(n_layers)])
        self.final_norm = make_norm(norm, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Encode a sequence.

        Parameters
        ----------
        x : Tensor
            Shape (batch, length, d_model).

        Returns
        -------
        Tensor
            Shape (batch, length, d_model), normalised.
        """
        for norm, block in zip(self.norms, self.blocks, strict=True):
            x = x + self.dropout(block(norm(x)))
        return self.final_norm(x)
