"""Local masked autoencoder (LMAE) over (ROI, time-patch) tokens.

A window of ROI time series ``x`` (batch, N ROIs, W time points) is cut into patches of ``P`` time
points, giving ``N x L`` tokens (``L = W / P``). Each token is a linear patch embedding plus a
learned ROI embedding plus a learned temporal position embedding.

Masking ("local"): for every ROI, contiguous spans of at least ``min_span_patches`` patches (the
width of the haemodynamic response, so that a hidden value cannot be recovered by interpolating its
neighbours) are hidden until ``round(mask_ratio * L)`` patches of that ROI are hidden. The
``"random"`` ablation hides the same number of independent patches per ROI. Hidden tokens are
replaced by a learned mask token (SimMIM-style: the encoder sees the full grid), and so are the
tokens of missing ROIs, which never enter as data: they are also excluded as sources of the spatial
mixing and from the loss.

Encoder: factorised for CPU. Each block mixes (1) over time within each ROI with a learned
``L x L`` linear map (MLP-Mixer token mixing), (2) over ROIs within each time patch through a
bottleneck of ``R`` soft ROI clusters (ROIs are pooled into ``R`` latents by a softmax over present
ROIs, the latents are transformed, and every ROI reads them back through a softmax over latents:
``O(N R)`` instead of the ``O(N^2)`` of attention over ROIs), and (3) over channels with a small
MLP. (1) and (2) read the same normalised tokens and form one residual branch (parallel mixing);
dropout on the token grid is off by default because random numbers for 10^5-10^6 tokens cost more
than the mixing itself on a CPU. Decoder: LayerNorm and a linear map from each token to its ``P``
time points; the loss is the mean squared error over hidden tokens of present ROIs only.

Internally tokens are stored time-major, (batch, L, N, d), so that both mixings are plain batched
matrix products without copies; :meth:`LMAE.forward` returns the (batch, N, L, d) view.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LMAE",
    "FactorisedBlock",
    "local_span_mask",
    "make_token_mask",
    "masked_reconstruction_loss",
    "patchify",
    "random_token_mask",
]

MASKING_MODES = ("local", "random")


def patchify(x: Tensor, patch_len: int) -> Tensor:
    """Cut ROI time series into non-overlapping patches.

    Parameters
    ----------
    x : Tensor
        Shape (batch, n_rois, window); ``window`` must be a multiple of ``patch_len``.
    patch_len : int
        Time points per patch.

    Returns
    -------
    Tensor
        Shape (batch, n_rois, window // patch_len, patch_len).
    """
    b, n, w = x.shape
    if w % patch_len:
        raise ValueError(f"window {w} is not a multiple of patch_len {patch_len}")
    return x.reshape(b, n, w // patch_len, patch_len)


def _n_hidden(n_patches: int, mask_ratio: float) -> int:
    return int(round(mask_ratio * n_patches))


def local_span_mask(batch: int, n_rois: int, n_patches: int, mask_ratio: float,
                    min_span: int, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> Tensor:
    """Hide contiguous spans of patches in every ROI.

    Every ROI gets exactly ``m = round(mask_ratio * n_patches)`` hidden patches, grouped into ``k``
    spans (``k`` uniform in ``1 .. m // min_span``) of at least ``min_span`` patches each. The
    span lengths are a uniformly random composition of ``m`` into ``k`` parts ``>= min_span``; the
    visible patches are a uniformly random composition of ``n_patches - m`` into the ``k + 1``
    gaps around them (adjacent spans may touch and then form one longer span). Hence every maximal
    run of hidden patches is at least ``min_span`` long.

    Parameters
    ----------
    batch, n_rois, n_patches : int
        Shape of the mask.
    mask_ratio : float
        Fraction of patches to hide per ROI, in (0, 1).
    min_span : int
        Minimum span length in patches (>= 1), at most ``round(mask_ratio * n_patches)``.
    generator : torch.Generator, optional
        Random number generator (on ``device``) for reproducible masks.
    device : torch.device or str, optional
        Device of the mask.

    Returns
    -------
    Tensor
        Boolean (batch, n_rois, n_patches); True = hidden.
    """
    m = _n_hidden(n_patches, mask_ratio)
    if min_span < 1:
        raise ValueError(f"min_span must be >= 1, got {min_span}")
    if not 1 <= m < n_patches:
        raise ValueError(f"mask_ratio {mask_ratio} hides {m} of {n_patches} patches; "
                         "it must hide at least one and leave at least one visible")
    if min_span > m:
        raise ValueError(f"min_span {min_span} patches is longer than the {m} hidden patches "
                         f"per ROI (mask_ratio {mask_ratio} x {n_patches} patches)")
    rows = batch * n_rois
    free = n_patches - m
    k_max = m // min_span
    k = torch.randint(1, k_max + 1, (rows,), generator=generator, device=device)
    pos = torch.arange(n_patches, device=device)
    mask = torch.zeros(rows, n_patches, dtype=torch.bool, device=device)
    for kk in range(1, k_max + 1):
        idx = torch.nonzero(k == kk).squeeze(1)
        g = idx.numel()
        if g == 0:
            continue
        extra = m - kk * min_span
        span_len = min_span + _random_composition(g, extra, kk, generator, device)  # (g, kk)
        gaps = _random_composition(g, free, kk + 1, generator, device)  # (g, kk + 1)
        # start of span j = sum of gaps[0..j] + sum of span_len[0..j-1]
        starts = torch.cumsum(gaps[:, :kk], dim=1) + torch.cumsum(span_len, dim=1) - span_len
        ends = starts + span_len
        hidden = ((pos[None, None, :] >= starts[:, :, None])
                  & (pos[None, None, :] < ends[:, :, None])).any(dim=1)
        mask[idx] = hidden
    return mask.view(batch, n_rois, n_patches)


def _random_composition(rows: int, total: int, parts: int, generator: torch.Generator | None,
                        device: torch.device | str | None) -> Tensor:
    """Uniform random compositions of ``total`` into ``parts`` non-negative integers.

    Stars and bars: ``parts - 1`` bars placed uniformly among ``total + parts - 1`` slots.
    """
    if parts == 1:
        return torch.full((rows, 1), total, dtype=torch.long, device=device)
    slots = total + parts - 1
    keys = torch.rand(rows, slots, generator=generator, device=device)
    bars = torch.sort(torch.argsort(keys, dim=1)[:, : parts - 1], dim=1).values  # (rows, parts-1)
    edges = torch.cat([torch.full((rows, 1), -1, dtype=torch.long, device=device), bars,
                       torch.full((rows, 1), slots, dtype=torch.long, device=device)], dim=1)
    return edges[:, 1:] - edges[:, :-1] - 1


def random_token_mask(batch: int, n_rois: int, n_patches: int, mask_ratio: float,
                      generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> Tensor:
    """Hide ``round(mask_ratio * n_patches)`` independent random patches in every ROI.

    Parameters
    ----------
    batch, n_rois, n_patches : int
        Shape of the mask.
    mask_ratio : float
        Fraction of patches to hide per ROI.
    generator : torch.Generator, optional
        Random number generator for reproducible masks.
    device : torch.device or str, optional
        Device of the mask.

    Returns
    -------
    Tensor
        Boolean (batch, n_rois, n_patches); True = hidden.
    """
    m = _n_hidden(n_patches, mask_ratio)
    if not 1 <= m < n_patches:
        raise ValueError(f"mask_ratio {mask_ratio} hides {m} of {n_patches} patches; "
                         "it must hide at least one and leave at least one visible")
    keys = torch.rand(batch, n_rois, n_patches, generator=generator, device=device)
    ranks = torch.argsort(torch.argsort(keys, dim=-1), dim=-1)
    return ranks < m


def make_token_mask(masking: str, batch: int, n_rois: int, n_patches: int, mask_ratio: float,
                    min_span: int, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> Tensor:
    """Token mask for the chosen masking mode.

    Parameters
    ----------
    masking : {"local", "random"}
        Span masking (:func:`local_span_mask`) or independent tokens
        (:func:`random_token_mask`).
    batch, n_rois, n_patches, mask_ratio, min_span, generator, device
        See :func:`local_span_mask`.

    Returns
    -------
    Tensor
        Boolean (batch, n_rois, n_patches); True = hidden.
    """
    if masking == "local":
        return local_span_mask(batch, n_rois, n_patches, mask_ratio, min_span, generator, device)
    if masking == "random":
        return random_token_mask(batch, n_rois, n_patches, mask_ratio, generator, device)
    raise ValueError(f"masking must be one of {MASKING_MODES}, got {masking!r}")


def masked_reconstruction_loss(pred: Tensor, target: Tensor, token_mask: Tensor,
                               roi_mask: Tensor) -> Tensor:
    """Mean squared error over hidden tokens of present ROIs only.

    Parameters
    ----------
    pred, target : Tensor
        Patches (batch, N, L, P); ``target`` may hold anything (even NaN) outside the counted
        tokens.
    token_mask : Tensor
        Boolean (batch, N, L); True = hidden token.
    roi_mask : Tensor
        Boolean (batch, N); False = missing ROI.

    Returns
    -------
    Tensor
        Scalar mean over the counted tokens and their time points (0 when none is counted).
    """
    counted = token_mask & roi_mask[:, :, None]  # (b, N, L)
    zero = torch.zeros((), dtype=pred.dtype, device=pred.device)
    target = torch.where(counted[..., None], target.to(pred.dtype), zero)
    err = (pred - target).pow(2).mean(-1)
    err = torch.where(counted, err, zero)
    return err.sum() / counted.sum().clamp(min=1).to(err.dtype)


class FactorisedBlock(nn.Module):
    """Temporal and spatial (ROI-cluster bottleneck) mixing in parallel, then channel mixing.

    ``h = h + time_mix(norm(h)) + roi_mix(norm(h))``, then ``h = h + mlp(norm_c(h))``.

    Parameters
    ----------
    d_model : int
        Token size.
    n_patches : int
        Number of time patches ``L`` (the temporal mixing is an ``L x L`` map).
    n_latents : int
        Number of soft ROI clusters ``R`` in the spatial bottleneck.
    mlp_ratio : float
        Hidden size of the channel MLP as a multiple of ``d_model``; 0 disables it.
    dropout : float
        Dropout on each branch before its residual sum.
    """

    def __init__(self, d_model: int, n_patches: int, n_latents: int = 16,
                 mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.time_weight = nn.Parameter(torch.empty(n_patches, n_patches))
        self.time_bias = nn.Parameter(torch.zeros(n_patches, 1))
        nn.init.uniform_(self.time_weight, -1 / math.sqrt(n_patches), 1 / math.sqrt(n_patches))
        self.pool_scores = nn.Linear(d_model, n_latents)
        self.latent_mlp = nn.Linear(d_model, d_model)
        self.read_scores = nn.Linear(d_model, n_latents)
        hidden = int(round(mlp_ratio * d_model))
        if hidden > 0:
            self.norm_c: nn.Module | None = nn.LayerNorm(d_model)
            self.mlp: nn.Module | None = nn.Sequential(
                nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        else:
            self.norm_c = None
            self.mlp = None
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, source_mask: Tensor) -> Tensor:
        """Mix a time-major token grid.

        Parameters
        ----------
        h : Tensor
            Tokens, shape (batch, L, N, d).
        source_mask : Tensor
            Boolean (batch, N); False ROIs are not pooled into the latents.

        Returns
        -------
        Tensor
            Shape (batch, L, N, d).
        """
        b, L, N, d = h.shape
        y = self.norm(h)
        # (1) temporal: the same L x L map for every ROI and channel (a bmm, no copies)
        yt = torch.baddbmm(self.time_bias, self.time_weight.expand(b, L, L),
                           y.reshape(b, L, N * d))
        # (2) spatial: N ROIs -> R soft clusters -> N ROIs, per time patch
        ys = y.reshape(b * L, N, d)
        s = self.pool_scores(ys)  # (bL, N, R)
        # a sample without any present ROI pools over all (its tokens are all mask tokens)
        keep = source_mask | ~source_mask.any(dim=1, keepdim=True)
        bias = torch.zeros(b, N, dtype=s.dtype, device=s.device)
        bias = bias.masked_fill(~keep, float("-inf"))
        s = s.view(b, L, N, -1) + bias[:, None, :, None]
        a = torch.softmax(s, dim=2).view(b * L, N, -1)
        latents = F.gelu(self.latent_mlp(torch.bmm(a.transpose(1, 2), ys)))  # (bL, R, d)
        r = torch.softmax(self.read_scores(ys), dim=-1)  # (bL, N, R)
        # temporal + spatial branch in one op: yt + r @ latents
        y = torch.baddbmm(yt.view(b * L, N, d), r, latents).view(b, L, N, d)
        h = h + self.dropout(y)
        # (3) channels
        if self.mlp is not None and self.norm_c is not None:
            h = h + self.dropout(self.mlp(self.norm_c(h)))
        return h


class LMAE(nn.Module):
    """Local masked autoencoder over (ROI, time-patch) tokens.

    Parameters
    ----------
    n_rois : int
        Number of ROIs ``N``.
    window : int
        Time points per window ``W``.
    patch_len : int
        Time points per patch ``P`` (``W`` must be a multiple).
    d_model : int
        Token size.
    n_layers : int
        Number of :class:`FactorisedBlock`.
    mask_ratio : float
        Fraction of patches hidden per ROI in pretraining.
    min_span_patches : int
        Minimum span of hidden patches for ``masking="local"``.
    masking : {"local", "random"}
        Masking mode.
    n_latents : int
        ROI clusters in the spatial bottleneck.
    mlp_ratio : float
        Channel-MLP width multiple (0 disables).
    dropout : float
        Dropout in the blocks.
    """

    def __init__(self, n_rois: int, window: int, patch_len: int, d_model: int,
                 n_layers: int = 2, mask_ratio: float = 0.5, min_span_patches: int = 2,
                 masking: str = "local", n_latents: int = 16, mlp_ratio: float = 2.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if window % patch_len:
            raise ValueError(f"window {window} is not a multiple of patch_len {patch_len}")
        if masking not in MASKING_MODES:
            raise ValueError(f"masking must be one of {MASKING_MODES}, got {masking!r}")
        self.n_rois = n_rois
        self.window = window
        self.patch_len = patch_len
        self.n_patches = window // patch_len
        self.d_model = d_model
        self.mask_ratio = mask_ratio
        self.min_span_patches = min_span_patches
        self.masking = masking
        self.patch_embed = nn.Linear(patch_len, d_model)
        self.roi_embed = nn.Parameter(torch.randn(n_rois, d_model) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(self.n_patches, d_model) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(d_model) * 0.02)
        self.blocks = nn.ModuleList(
            [FactorisedBlock(d_model, self.n_patches, n_latents, mlp_ratio, dropout)
             for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.decoder = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, patch_len))

    def _check(self, x: Tensor, roi_mask: Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.n_rois or x.shape[2] != self.window:
            raise ValueError(f"x must be (batch, {self.n_rois} ROIs, {self.window} time points), "
                             f"got {tuple(x.shape)}")
        if roi_mask.shape != x.shape[:2] or roi_mask.dtype != torch.bool:
            raise ValueError(f"roi_mask must be bool (batch, {self.n_rois}), got "
                             f"{roi_mask.dtype} {tuple(roi_mask.shape)}")

    def make_mask(self, batch: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
        """Draw a pretraining token mask with this module's settings.

        Parameters
        ----------
        batch : int
            Batch size.
        generator : torch.Generator, optional
            Random number generator.
        device : torch.device or str, optional
            Device of the mask.

        Returns
        -------
        Tensor
            Boolean (batch, n_rois, n_patches); True = hidden.
        """
        return make_token_mask(self.masking, batch, self.n_rois, self.n_patches, self.mask_ratio,
                               self.min_span_patches, generator, device)

    def encode(self, x: Tensor, roi_mask: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """Encode tokens, time-major.

        Parameters
        ----------
        x : Tensor
            ROI time series window (batch, N, W), standardised; values of missing ROIs (even NaN)
            are never read.
        roi_mask : Tensor
            Boolean (batch, N); False = ROI missing.
        token_mask : Tensor, optional
            Boolean (batch, N, L); True = token hidden (replaced by the mask token).

        Returns
        -------
        Tensor
            Tokens (batch, L, N, d); those of missing ROIs carry no data and must be masked by the
            caller.
        """
        self._check(x, roi_mask)
        b = x.shape[0]
        x = torch.where(roi_mask[:, :, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        patches = patchify(x, self.patch_len).transpose(1, 2)  # (b, L, N, P)
        emb = self.patch_embed(patches)  # (b, L, N, d)
        hide = ~roi_mask[:, None, :].expand(b, self.n_patches, self.n_rois)
        if token_mask is not None:
            hide = hide | token_mask.transpose(1, 2)
        emb = torch.where(hide[..., None], self.mask_token.to(emb.dtype), emb)
        h = emb + (self.pos_embed[:, None, :] + self.roi_embed[None, :, :])
        for block in self.blocks:
            h = block(h, roi_mask)
        return self.norm(h)

    def forward(self, x: Tensor, roi_mask: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """Encode a window into tokens.

        Parameters
        ----------
        x : Tensor
            (batch, N, W) standardised ROI time series.
        roi_mask : Tensor
            Boolean (batch, N); False = missing ROI.
        token_mask : Tensor, optional
            Boolean (batch, N, L); True = hidden token.

        Returns
        -------
        Tensor
            Tokens (batch, N, L, d) (a transposed view of :meth:`encode`'s output).
        """
        return self.encode(x, roi_mask, token_mask).transpose(1, 2)

    def reconstruct(self, tokens_tm: Tensor) -> Tensor:
        """Predict every token's time points from time-major tokens.

        Parameters
        ----------
        tokens_tm : Tensor
            (batch, L, N, d) from :meth:`encode`.

        Returns
        -------
        Tensor
            Predicted patches (batch, N, L, P).
        """
        return self.decoder(tokens_tm).transpose(1, 2)

    def loss(self, x: Tensor, roi_mask: Tensor, token_mask: Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """Masked reconstruction loss: MSE over hidden tokens of present ROIs only.

        Parameters
        ----------
        x : Tensor
            (batch, N, W) standardised ROI time series.
        roi_mask : Tensor
            Boolean (batch, N); False = missing ROI (no input, no loss).
        token_mask : Tensor, optional
            Boolean (batch, N, L) hidden tokens; drawn with :meth:`make_mask` when omitted.
        generator : torch.Generator, optional
            Random number generator for the mask.

        Returns
        -------
        loss : Tensor
            Scalar mean squared error per time point over the counted tokens (0 when none).
        info : dict of str to float
            ``loss``, ``masked_fraction`` (hidden share of present-ROI tokens) and
            ``n_loss_tokens``.
        """
        self._check(x, roi_mask)
        if token_mask is None:
            token_mask = self.make_mask(x.shape[0], generator=generator, device=x.device)
        pred = self.reconstruct(self.encode(x, roi_mask, token_mask))  # (b, N, L, P)
        target = patchify(x, self.patch_len)
        loss = masked_reconstruction_loss(pred, target, token_mask, roi_mask)
        n = int((token_mask & roi_mask[:, :, None]).sum())
        present = int(roi_mask.sum()) * self.n_patches
        info = {
            "loss": float(loss.detach()),
            "masked_fraction": n / max(present, 1),
            "n_loss_tokens": float(n),
        }
        return loss, info
