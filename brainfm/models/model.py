"""BrainFM: LMAE encoder, random-walk mixture of experts, selective SSM and Gaussian heads.

Forward pass for a window ``x`` (batch, N, W), its ROI mask and the subject's whole-run Fisher-z
connectivity ``conn`` (batch, N, N):

1. :class:`~brainfm.models.lmae.LMAE` encodes the (ROI, time-patch) tokens (batch, L, N, e).
2. Node features: each ROI's tokens averaged over time, concatenated with the ROI's row of the
   connectivity matrix (as the Brain Network Transformer does) and projected to ``d_model``.
3. :class:`~brainfm.models.rwmoe.RWMoE` diffuses them over the random walk on the connectivity graph
   and routes every ROI (spatial gate) and every time patch (temporal gate) to experts.
   Ablation ``use_rwmoe=False``: a residual MLP on the node features and a plain ROI average of the
   tokens per time patch.
4. :class:`~brainfm.models.ssm.SSMEncoder` runs over the time-patch sequence (batch, L, d) and is
   averaged over time. Ablation ``use_ssm=False``: the average over time alone. (The SSM runs on
   the ROI-pooled sequence, not per ROI: per-ROI sequences would hold
   batch x N x 2 d_model x d_state x L, about 2e8 states per layer at the defaults, roughly 0.8 GB
   in float32 and far beyond a 2-core CPU budget.)
5. Readout: a per-ROI projection flattened over ROIs (an ROI-specific, low-rank bilinear readout of
   the connectivity), the mean over present ROIs, and the time summary feed an MLP that outputs a
   mean and a log-variance per target (in standardised target units).

When ``conn`` is None the connectivity of the window itself is used (:func:`fisher_z_connectivity`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .lmae import LMAE, MASKING_MODES
from .rwmoe import BALANCE_KINDS, RWMoE, connectivity_graph
from .ssm import SSMEncoder

__all__ = [
    "BrainFM",
    "BrainFMConfig",
    "ModelOutput",
    "fisher_z_connectivity",
    "gaussian_nll",
]

GRAPH_KINDS = ("conn", "learned")
#: Connectivity values are clipped to this absolute Fisher z (r = 0.9999).
CONN_CLIP = 5.0


@dataclass
class BrainFMConfig:
    """Hyper-parameters of :class:`BrainFM` (defaults sized for 2 CPU cores).

    Attributes
    ----------
    n_rois : int
        Number of ROIs ``N``.
    window : int
        Time points per window ``W`` (at the common sampling rate).
    patch_len : int
        Time points per patch ``P``; ``W`` must be a multiple.
    d_model : int
        Width of node features, experts, SSM and heads.
    n_experts : int
        Number of experts ``E``.
    rw_steps : int
        Random-walk diffusion steps ``K``.
    ssm_layers : int
        Mamba blocks over the time-patch sequence.
    d_state : int
        SSM state size.
    targets : list of str
        Names of the ``K`` predicted targets (order of the heads' outputs).
    mask_ratio : float
        Share of patches hidden per ROI in pretraining.
    min_span_patches : int
        Minimum hidden span (patches) for local masking.
    masking : {"local", "random"}
        Pretraining masking mode.
    use_rwmoe : bool
        False: residual MLP on node features instead of the RWMoE (ablation).
    use_ssm : bool
        False: mean over time instead of the SSM (ablation).
    dropout : float
        Dropout rate.
    enc_dim : int
        Token width of the LMAE encoder (tokens are many: N x L per window).
    enc_layers : int
        Factorised encoder blocks.
    enc_mlp_ratio : float
        Channel-MLP width multiple in the encoder blocks (0 disables).
    enc_dropout : float
        Dropout inside the encoder blocks (costly on the token grid; 0 by default).
    n_latents : int
        Soft ROI clusters in the encoder's spatial mixing.
    moe_top_k : int
        Experts per token; 0 routes softly to all.
    expert_hidden : int
        Hidden width of each expert; 0 means ``d_model``.
    graph : {"conn", "learned"}
        Random-walk graph from the connectivity or learned affinities.
    graph_mode : {"abs", "pos"}
        Edge weights ``|z|`` or ``max(z, 0)``.
    graph_topk : int
        Strongest edges kept per ROI before symmetrising; 0 keeps all.
    balance : {"switch", "cv2"}
        Load-balancing loss of the routers.
    aux_weight : float
        Weight already applied to ``ModelOutput.aux_loss``.
    use_conn_features : bool
        Concatenate connectivity rows to the node features.
    readout_dim : int
        Per-ROI features of the flattened readout (0 disables it).
    d_conv : int
        SSM convolution width.
    ssm_expand : int
        SSM inner width multiple.
    logvar_bound : float
        Log-variances are squashed smoothly into ``(-bound, bound)``.
    """

    n_rois: int = 200
    window: int = 64
    patch_len: int = 4
    d_model: int = 64
    n_experts: int = 4
    rw_steps: int = 3
    ssm_layers: int = 2
    d_state: int = 16
    targets: list[str] = field(default_factory=lambda: ["age"])
    mask_ratio: float = 0.5
    min_span_patches: int = 2
    masking: str = "local"
    use_rwmoe: bool = True
    use_ssm: bool = True
    dropout: float = 0.1
    enc_dim: int = 32
    enc_layers: int = 2
    enc_mlp_ratio: float = 1.0
    enc_dropout: float = 0.0
    n_latents: int = 16
    moe_top_k: int = 2
    expert_hidden: int = 32
    graph: str = "conn"
    graph_mode: str = "abs"
    graph_topk: int = 20
    balance: str = "switch"
    aux_weight: float = 0.01
    use_conn_features: bool = True
    readout_dim: int = 8
    d_conv: int = 4
    ssm_expand: int = 2
    logvar_bound: float = 7.0

    def __post_init__(self) -> None:
        self.targets = [str(t) for t in self.targets]
        problems = []
        if self.n_rois < 1:
            problems.append(f"n_rois must be >= 1 (got {self.n_rois})")
        if self.patch_len < 1 or self.window < self.patch_len or self.window % self.patch_len:
            problems.append(f"window ({self.window}) must be a positive multiple of patch_len "
                            f"({self.patch_len})")
        if not self.targets:
            problems.append("targets must name at least one target")
        if len(set(self.targets)) != len(self.targets):
            problems.append(f"targets must be unique (got {self.targets})")
        if self.masking not in MASKING_MODES:
            problems.append(f"masking must be one of {MASKING_MODES} (got {self.masking!r})")
        if self.graph not in GRAPH_KINDS:
            problems.append(f"graph must be one of {GRAPH_KINDS} (got {self.graph!r})")
        if self.graph_mode not in ("abs", "pos"):
            problems.append(f"graph_mode must be 'abs' or 'pos' (got {self.graph_mode!r})")
        if self.balance not in BALANCE_KINDS:
            problems.append(f"balance must be one of {BALANCE_KINDS} (got {self.balance!r})")
        if not 0.0 < self.mask_ratio < 1.0:
            problems.append(f"mask_ratio must be in (0, 1) (got {self.mask_ratio})")
        n_patches = self.window // self.patch_len if self.patch_len > 0 else 0
        hidden = int(round(self.mask_ratio * n_patches))
        span_too_long = self.masking == "local" and self.min_span_patches > hidden
        if self.min_span_patches < 1 or span_too_long:
            problems.append(f"min_span_patches ({self.min_span_patches}) must be between 1 and the "
                            f"{hidden} patches hidden per ROI")
        for name in ("dropout", "enc_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1) (got {getattr(self, name)})")
        for name in ("d_model", "n_experts", "enc_dim", "d_state", "n_latents"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("rw_steps", "ssm_layers", "enc_layers", "moe_top_k", "expert_hidden",
                     "graph_topk", "readout_dim"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if problems:
            raise ValueError("invalid BrainFMConfig: " + "; ".join(problems))

    @property
    def n_patches(self) -> int:
        """Number of time patches ``L = window / patch_len``."""
        return self.window // self.patch_len

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary of every field.

        Returns
        -------
        dict
            Field name to value (``targets`` as a list).
        """
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BrainFMConfig:
        """Build a config from :meth:`to_dict` output.

        Parameters
        ----------
        d : dict
            Field values; missing fields take their defaults.

        Returns
        -------
        BrainFMConfig
            The config.

        Raises
        ------
        ValueError
            Unknown keys or invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown BrainFMConfig fields: {unknown}")
        return cls(**d)


@dataclass
class ModelOutput:
    """Output of :meth:`BrainFM.forward`.

    Attributes
    ----------
    mean : Tensor
        Predicted means (batch, K), standardised target units.
    logvar : Tensor
        Predicted log-variances (batch, K).
    aux_loss : Tensor
        Scalar load-balancing loss, already multiplied by ``config.aux_weight``; add it to the
        training loss.
    gate_weights : Tensor
        Per-ROI expert weights (batch, N, E); zero at missing ROIs; uniform ``1/E`` at present ROIs
        when ``use_rwmoe`` is False.
    time_gate_weights : Tensor or None
        Per-time-patch expert weights (batch, L, E), None when ``use_rwmoe`` is False.
    embedding : Tensor
        Pooled representation fed to the heads (batch, 3 d_model).
    """

    mean: Tensor
    logvar: Tensor
    aux_loss: Tensor
    gate_weights: Tensor
    time_gate_weights: Tensor | None
    embedding: Tensor


def fisher_z_connectivity(x: Tensor, roi_mask: Tensor | None = None,
                          clip: float = CONN_CLIP) -> Tensor:
    """Fisher-z Pearson connectivity of ROI time series.

    Parameters
    ----------
    x : Tensor
        (batch, N, T) time series.
    roi_mask : Tensor, optional
        Boolean (batch, N); rows and columns of False ROIs are 0.
    clip : float
        Largest absolute z.

    Returns
    -------
    Tensor
        (batch, N, N) ``arctanh(r)`` clipped to ``[-clip, clip]``, diagonal 0.
    """
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    if roi_mask is not None:
        x = torch.where(roi_mask[:, :, None], x, zero)
    x = torch.nan_to_num(x)
    xc = x - x.mean(dim=-1, keepdim=True)
    norm = xc.pow(2).sum(dim=-1, keepdim=True).sqrt().clamp(min=1e-8)
    xn = xc / norm
    r = torch.bmm(xn, xn.transpose(1, 2)).clamp(-1.0, 1.0)
    z = torch.atanh(r.clamp(-math.tanh(clip), math.tanh(clip)))
    n = x.shape[1]
    z = z.masked_fill(torch.eye(n, dtype=torch.bool, device=x.device), 0.0)
    if roi_mask is not None:
        pair = roi_mask[:, :, None] & roi_mask[:, None, :]
        z = torch.where(pair, z, zero)
    return z


def _clean_conn(conn: Tensor, roi_mask: Tensor) -> Tensor:
    """Finite, clipped connectivity with zero diagonal and zero rows/columns at missing ROIs."""
    zero = torch.zeros((), dtype=conn.dtype, device=conn.device)
    c = torch.nan_to_num(conn, nan=0.0, posinf=CONN_CLIP, neginf=-CONN_CLIP)
    c = c.clamp(-CONN_CLIP, CONN_CLIP)
    c = c.masked_fill(torch.eye(c.shape[1], dtype=torch.bool, device=c.device), 0.0)
    pair = roi_mask[:, :, None] & roi_mask[:, None, :]
    return torch.where(pair, c, zero)


def gaussian_nll(mean: Tensor, logvar: Tensor, target: Tensor, target_mask: Tensor | None = None,
                 beta: float = 0.0) -> Tensor:
    """Gaussian negative log-likelihood averaged over the observed labels.

    Parameters
    ----------
    mean, logvar : Tensor
        Predictions (batch, K).
    target : Tensor
        Labels (batch, K); entries may be NaN where missing.
    target_mask : Tensor, optional
        Boolean (batch, K); False (and non-finite targets) contribute nothing, not even NaN
        gradients.
    beta : float
        beta-NLL weighting (Seitzer et al., 2022): each term is multiplied by the detached
        ``var ** beta``; 0 gives the plain NLL.

    Returns
    -------
    Tensor
        Scalar ``mean(0.5 * (log(2 pi) + logvar + (target - mean)^2 / exp(logvar)))`` over the
        counted entries; 0 (with a gradient graph) when none is counted.
    """
    if mean.shape != target.shape or logvar.shape != target.shape:
        raise ValueError(f"mean {tuple(mean.shape)}, logvar {tuple(logvar.shape)} and target "
                         f"{tuple(target.shape)} must have the same shape")
    ok = torch.isfinite(target)
    if target_mask is not None:
        ok = ok & target_mask.to(torch.bool)
    zero = torch.zeros((), dtype=mean.dtype, device=mean.device)
    t = torch.where(ok, target.to(mean.dtype), zero)
    mu = torch.where(ok, mean, zero)
    lv = torch.where(ok, logvar, zero)
    nll = 0.5 * (math.log(2 * math.pi) + lv + (t - mu).pow(2) * torch.exp(-lv))
    if beta:
        nll = nll * torch.exp(lv.detach() * beta)
    nll = torch.where(ok, nll, zero)
    return nll.sum() / ok.sum().clamp(min=1).to(nll.dtype)


class BrainFM(nn.Module):
    """LMAE encoder, RWMoE over the ROI graph, SSM over time and Gaussian heads.

    Parameters
    ----------
    config : BrainFMConfig
        Hyper-parameters.
    """

    def __init__(self, config: BrainFMConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        d = c.d_model
        self.encoder = LMAE(
            n_rois=c.n_rois, window=c.window, patch_len=c.patch_len, d_model=c.enc_dim,
            n_layers=c.enc_layers, mask_ratio=c.mask_ratio, min_span_patches=c.min_span_patches,
            masking=c.masking, n_latents=c.n_latents, mlp_ratio=c.enc_mlp_ratio,
            dropout=c.enc_dropout)
        node_in = c.enc_dim + (c.n_rois if c.use_conn_features else 0)
        self.node_proj = nn.Linear(node_in, d)
        self.node_norm = nn.LayerNorm(d)
        if c.use_rwmoe:
            self.rwmoe: RWMoE | None = RWMoE(
                d, n_experts=c.n_experts, rw_steps=c.rw_steps, top_k=c.moe_top_k or None,
                expert_hidden=c.expert_hidden or d, token_dim=c.enc_dim, balance=c.balance,
                dropout=c.dropout)
            self.node_mlp: nn.Module | None = None
            self.time_proj: nn.Module | None = None
        else:
            self.rwmoe = None
            self.node_mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(),
                                          nn.Dropout(c.dropout), nn.Linear(d, d))
            self.time_proj = nn.Linear(c.enc_dim, d)
        if c.use_ssm and c.ssm_layers > 0:
            self.ssm: SSMEncoder | None = SSMEncoder(d, c.ssm_layers, d_state=c.d_state,
                                                     d_conv=c.d_conv, expand=c.ssm_expand,
                                                     dropout=c.dropout)
        else:
            self.ssm = None
        self.time_norm = nn.LayerNorm(d)
        self.readout_norm = nn.LayerNorm(d)
        if c.readout_dim > 0:
            self.roi_readout: nn.Module | None = nn.Linear(d, c.readout_dim)
            self.flat_readout: nn.Module | None = nn.Linear(c.n_rois * c.readout_dim, d)
        else:
            self.roi_readout = None
            self.flat_readout = None
        k = len(c.targets)
        self.head = nn.Sequential(nn.LayerNorm(3 * d), nn.Linear(3 * d, d), nn.GELU(),
                                  nn.Dropout(c.dropout), nn.Linear(d, 2 * k))
        with torch.no_grad():  # start at mean 0, log-variance 0 (standardised targets)
            last = self.head[-1]
            assert isinstance(last, nn.Linear)
            last.weight.mul_(0.1)
            last.bias.zero_()

    def _check(self, x: Tensor, roi_mask: Tensor, conn: Tensor | None) -> None:
        c = self.config
        if x.dim() != 3 or x.shape[1:] != (c.n_rois, c.window):
            raise ValueError(f"x must be (batch, {c.n_rois} ROIs, {c.window} time points), got "
                             f"{tuple(x.shape)}")
        if roi_mask.shape != x.shape[:2] or roi_mask.dtype != torch.bool:
            raise ValueError(f"roi_mask must be bool (batch, {c.n_rois}), got {roi_mask.dtype} "
                             f"{tuple(roi_mask.shape)}")
        if conn is not None and conn.shape != (x.shape[0], c.n_rois, c.n_rois):
            raise ValueError(f"conn must be (batch, {c.n_rois}, {c.n_rois}), got "
                             f"{tuple(conn.shape)}")

    def forward(self, x: Tensor, roi_mask: Tensor, conn: Tensor | None = None) -> ModelOutput:
        """Predict the targets of a batch of windows.

        Parameters
        ----------
        x : Tensor
            (batch, N, W) float32 standardised ROI time series; missing ROIs are ignored.
        roi_mask : Tensor
            Boolean (batch, N); False = missing ROI.
        conn : Tensor, optional
            (batch, N, N) whole-run Fisher-z connectivity (0 for missing ROIs); the window's own
            connectivity when None.

        Returns
        -------
        ModelOutput
            Means, log-variances, weighted auxiliary loss and gate weights.
        """
        c = self.config
        self._check(x, roi_mask, conn)
        b = x.shape[0]
        dtype = x.dtype
        zero = torch.zeros((), dtype=dtype, device=x.device)
        mask3 = roi_mask[:, :, None]
        count = roi_mask.sum(dim=1, keepdim=True).clamp(min=1).to(dtype)  # (b, 1)
        conn = fisher_z_connectivity(x, roi_mask) if conn is None else _clean_conn(
            conn.to(dtype), roi_mask)

        tokens = self.encoder.encode(x, roi_mask)  # (b, L, N, e)
        node_ts = tokens.mean(dim=1)  # (b, N, e)
        feats = torch.cat([node_ts, conn], dim=-1) if c.use_conn_features else node_ts
        node = torch.where(mask3, self.node_norm(self.node_proj(feats)), zero)

        if self.rwmoe is not None:
            adj = None
            if c.graph == "conn":
                adj = connectivity_graph(conn, roi_mask, mode=c.graph_mode,
                                         topk=c.graph_topk or None)
            r = self.rwmoe(node, adj, roi_mask, tokens=tokens.transpose(1, 2))
            nodes, gate, aux = r.nodes, r.gate_weights, r.aux_loss * c.aux_weight
            time, time_gate = r.time, r.time_gate_weights
        else:
            assert self.node_mlp is not None and self.time_proj is not None
            nodes = torch.where(mask3, node + self.node_mlp(node), zero)
            gate = roi_mask[:, :, None].to(dtype).expand(b, c.n_rois, c.n_experts) / c.n_experts
            aux = nodes.sum() * 0.0
            w = roi_mask.to(dtype) / count  # (b, N)
            time = self.time_proj(torch.matmul(w[:, None, None, :], tokens).squeeze(2))
            time_gate = None
        assert time is not None
        if self.ssm is not None:
            time = self.ssm(time)
        time_summary = self.time_norm(time.mean(dim=1))  # (b, d)

        normed = torch.where(mask3, self.readout_norm(nodes), zero)
        node_mean = normed.sum(dim=1) / count
        if self.roi_readout is not None and self.flat_readout is not None:
            per_roi = torch.where(mask3, self.roi_readout(normed), zero)  # (b, N, r)
            flat = self.flat_readout(per_roi.reshape(b, -1))
        else:
            flat = torch.zeros_like(node_mean)
        embedding = torch.cat([flat, node_mean, time_summary], dim=-1)
        out = self.head(embedding)
        k = len(c.targets)
        mean = out[:, :k]
        bound = c.logvar_bound
        logvar = bound * torch.tanh(out[:, k:] / bound)
        return ModelOutput(mean=mean, logvar=logvar, aux_loss=aux, gate_weights=gate,
                           time_gate_weights=time_gate, embedding=embedding)

    def pretrain_loss(self, x: Tensor, roi_mask: Tensor, conn: Tensor | None = None,
                      generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """LMAE masked-reconstruction loss of the encoder.

        Parameters
        ----------
        x : Tensor
            (batch, N, W) standardised ROI time series.
        roi_mask : Tensor
            Boolean (batch, N); missing ROIs are neither input nor counted.
        conn : Tensor, optional
            Accepted for a uniform call signature; the encoder does not use it.
        generator : torch.Generator, optional
            Random number generator for the token mask.

        Returns
        -------
        loss : Tensor
            Scalar MSE over hidden tokens of present ROIs.
        info : dict of str to float
            ``loss``, ``masked_fraction``, ``n_loss_tokens``.
        """
        self._check(x, roi_mask, conn)
        return self.encoder.loss(x, roi_mask, generator=generator)

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The pretrained part of the weights: the ``encoder.*`` entries of ``state_dict()``.

        Returns
        -------
        dict of str to Tensor
            Keys keep their ``encoder.`` prefix.
        """
        return {k: v for k, v in self.state_dict().items() if k.startswith("encoder.")}

    def load_encoder_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load pretrained encoder weights (keys with or without the ``encoder.`` prefix).

        Parameters
        ----------
        state : dict of str to Tensor
            Encoder weights, e.g. from :meth:`encoder_state_dict` of a pretrained model, or a
            whole model's ``state_dict()`` (only its ``encoder.*`` entries are used).
        """
        prefix = "encoder."
        if any(k.startswith(prefix) for k in state):
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        else:
            own = dict(state)
        self.encoder.load_state_dict(own, strict=True)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters.

    Parameters
    ----------
    module : nn.Module
        Any module.

    Returns
    -------
    int
        Sum of ``numel`` over parameters that require gradients.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
