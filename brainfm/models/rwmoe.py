"""Random-walk mixture of experts (RWMoE) over a graph of ROIs.

Given node features ``H`` (batch, N, d) and a non-negative ROI graph ``A`` (batch, N, N), the
random-walk transition matrix is ``P = D^-1 A`` (rows sum to 1; missing ROIs have no edges and an
all-zero row and column). Multi-step diffusion ``Z = sum_k alpha_k P^k H`` (``k = 0 .. K``,
``alpha`` learned and softmax-normalised) carries indirect interactions. A gate then routes every
ROI (spatial gating) and, when tokens (batch, N, L, d_tok) are given, every time patch (temporal
gating) to ``E`` experts (small MLPs), with soft or top-k routing and a load-balancing loss. The
per-ROI gate weights (batch, N, E) form an interpretable ROI-by-expert map.

The time-patch features are the ROI average of the *diffused* tokens. Because averaging over ROIs is
linear, ``mean_i (P^k T_l)_i = (1^T P^k / n) T_l``: it is a weighted ROI average whose weights are
propagated through ``P`` as a row vector, which is exact and costs ``O(N^2 K + N L d)`` instead of
diffusing every token.

Without a graph the affinities are learned from the node features (``A_ij = exp(q_i . k_j /
sqrt(r))``, so ``P`` is a row softmax over present ROIs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ExpertMLPs",
    "RWMoE",
    "RWMoEOutput",
    "RandomWalkDiffusion",
    "RoutingGate",
    "connectivity_graph",
    "diffusion_weights",
    "load_balancing_loss",
    "random_walk_matrix",
]

BALANCE_KINDS = ("switch", "cv2")


def connectivity_graph(conn: Tensor, node_mask: Tensor | None = None, mode: str = "abs",
                       topk: int | None = None, self_loops: bool = True) -> Tensor:
    """Non-negative ROI graph from a (Fisher-z) connectivity matrix.

    Parameters
    ----------
    conn : Tensor
        Connectivity (batch, N, N); NaN/inf entries and the diagonal are ignored.
    node_mask : Tensor, optional
        Boolean (batch, N); False ROIs get no edges (zero row and column, no self loop).
    mode : {"abs", "pos"}
        Edge weight ``|z|`` or the positive part ``max(z, 0)``.
    topk : int, optional
        Keep each ROI's ``topk`` strongest edges, then symmetrise (an edge stays when either end
        keeps it). None or 0 keeps the dense graph.
    self_loops : bool
        Add weight-1 self loops on present ROIs.

    Returns
    -------
    Tensor
        Adjacency (batch, N, N), non-negative.
    """
    if conn.dim() != 3 or conn.shape[1] != conn.shape[2]:
        raise ValueError(f"conn must be (batch, N, N), got {tuple(conn.shape)}")
    b, n, _ = conn.shape
    w = torch.nan_to_num(conn, nan=0.0, posinf=0.0, neginf=0.0)
    if mode == "abs":
        w = w.abs()
    elif mode == "pos":
        w = w.clamp(min=0.0)
    else:
        raise ValueError(f"mode must be 'abs' or 'pos', got {mode!r}")
    eye = torch.eye(n, dtype=torch.bool, device=conn.device)
    w = w.masked_fill(eye, 0.0)
    if node_mask is not None:
        pair = node_mask[:, :, None] & node_mask[:, None, :]
        w = torch.where(pair, w, torch.zeros((), dtype=w.dtype, device=w.device))
    if topk is not None and 0 < topk < n - 1:
        idx = torch.topk(w, topk, dim=-1).indices
        keep = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, idx, True)
        keep = keep | keep.transpose(1, 2)
        w = torch.where(keep, w, torch.zeros((), dtype=w.dtype, device=w.device))
    if self_loops:
        loops = eye.expand(b, n, n)
        if node_mask is not None:
            loops = loops & node_mask[:, :, None]
        w = w + loops.to(w.dtype)
    return w


def random_walk_matrix(adj: Tensor, node_mask: Tensor | None = None) -> Tensor:
    """Random-walk transition matrix ``P = D^-1 A``.

    Parameters
    ----------
    adj : Tensor
        Non-negative adjacency (batch, N, N).
    node_mask : Tensor, optional
        Boolean (batch, N); edges from or to False ROIs are removed first.

    Returns
    -------
    Tensor
        ``P`` (batch, N, N): every row with at least one edge sums to 1; rows without edges
        (missing or isolated ROIs) are all zero.
    """
    if node_mask is not None:
        pair = node_mask[:, :, None] & node_mask[:, None, :]
        adj = torch.where(pair, adj, torch.zeros((), dtype=adj.dtype, device=adj.device))
    deg = adj.sum(dim=-1, keepdim=True)
    inv = torch.where(deg > 0, 1.0 / deg.clamp(min=torch.finfo(adj.dtype).tiny),
                      torch.zeros((), dtype=adj.dtype, device=adj.device))
    return adj * inv


def diffusion_weights(P: Tensor, alpha: Tensor, start: Tensor) -> Tensor:
    """Row vector ``sum_k alpha_k start^T P^k`` (ROI weights of the average of diffused features).

    Parameters
    ----------
    P : Tensor
        Transition matrices (batch, N, N).
    alpha : Tensor
        Step weights (K + 1,).
    start : Tensor
        Starting weights (batch, N), e.g. the uniform average over present ROIs.

    Returns
    -------
    Tensor
        Weights (batch, N).
    """
    v = start
    out = alpha[0] * v
    for k in range(1, alpha.shape[0]):
        v = torch.bmm(v.unsqueeze(1), P).squeeze(1)
        out = out + alpha[k] * v
    return out


class RandomWalkDiffusion(nn.Module):
    """Multi-step diffusion ``sum_{k=0..K} alpha_k P^k H`` with learned softmax weights.

    Parameters
    ----------
    steps : int
        ``K``, the largest power of ``P``.
    """

    def __init__(self, steps: int) -> None:
        super().__init__()
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.steps = steps
        # start close to the identity (alpha_0 ~ 0.5) so that node identity survives early on
        logits = torch.zeros(steps + 1)
        if steps:
            logits[0] = math.log(steps)
        self.alpha_logits = nn.Parameter(logits)

    def alpha(self) -> Tensor:
        """Softmax-normalised step weights (K + 1,)."""
        return torch.softmax(self.alpha_logits, dim=0)

    def forward(self, P: Tensor, H: Tensor) -> Tensor:
        """Diffuse node features.

        Parameters
        ----------
        P : Tensor
            Transition matrices (batch, N, N).
        H : Tensor
            Node features (batch, N, d).

        Returns
        -------
        Tensor
            ``sum_k alpha_k P^k H`` (batch, N, d).
        """
        alpha = self.alpha().to(H.dtype)
        out = alpha[0] * H
        hk = H
        for k in range(1, self.steps + 1):
            hk = torch.bmm(P, hk)
            out = out + alpha[k] * hk
        return out


class RoutingGate(nn.Module):
    """Linear gate over experts, soft (softmax) or top-k (softmax over the k best logits).

    Parameters
    ----------
    d_model : int
        Input feature size.
    n_experts : int
        Number of experts ``E``.
    top_k : int, optional
        Experts per token; None or ``>= E`` routes softly to all.
    """

    def __init__(self, d_model: int, n_experts: int, top_k: int | None = None) -> None:
        super().__init__()
        self.n_experts = n_experts
        self.top_k = top_k if top_k and top_k < n_experts else None
        self.proj = nn.Linear(d_model, n_experts)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Route tokens.

        Parameters
        ----------
        x : Tensor
            Features (..., d_model).

        Returns
        -------
        weights : Tensor
            Routing weights (..., E): non-negative, summing to 1, zero outside the top-k.
        probs : Tensor
            Full softmax over experts (..., E), for the load-balancing loss.
        """
        logits = self.proj(x)
        probs = torch.softmax(logits, dim=-1)
        if self.top_k is None:
            return probs, probs
        top = torch.topk(logits, self.top_k, dim=-1).indices
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top, True)
        masked = logits.masked_fill(~keep, float("-inf"))
        return torch.softmax(masked, dim=-1), probs


class ExpertMLPs(nn.Module):
    """``E`` independent two-layer MLPs evaluated together (batched weights).

    Parameters
    ----------
    d_model : int
        Input and output size.
    n_experts : int
        Number of experts.
    hidden : int
        Hidden size of each expert.
    """

    def __init__(self, d_model: int, n_experts: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.b1 = nn.Parameter(torch.zeros(n_experts, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.b2 = nn.Parameter(torch.zeros(n_experts, 1, d_model))
        for w, fan_in in ((self.w1, d_model), (self.w2, hidden)):
            nn.init.uniform_(w, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        """Weighted sum of the experts' outputs.

        Parameters
        ----------
        x : Tensor
            Features (..., d_model).
        weights : Tensor
            Routing weights (..., E).

        Returns
        -------
        Tensor
            ``sum_e weights_e * expert_e(x)``, shape (..., d_model).
        """
        shape = x.shape
        flat = x.reshape(1, -1, shape[-1])  # (1, M, d)
        hid = F.gelu(torch.baddbmm(self.b1, flat.expand(self.w1.shape[0], -1, -1), self.w1))
        out = torch.baddbmm(self.b2, hid, self.w2)  # (E, M, d)
        w = weights.reshape(-1, weights.shape[-1]).t().unsqueeze(-1)  # (E, M, 1)
        return (out * w).sum(0).view(shape)


def load_balancing_loss(probs: Tensor, weights: Tensor, mask: Tensor | None = None,
                        kind: str = "switch") -> Tensor:
    """Load-balancing loss of a router.

    Parameters
    ----------
    probs : Tensor
        Full softmax gate probabilities (..., E).
    weights : Tensor
        Routing weights actually used (..., E); their argmax is each token's expert.
    mask : Tensor, optional
        Boolean (...); False tokens (missing ROIs) are not counted.
    kind : {"switch", "cv2"}
        ``"switch"``: ``E * sum_e f_e * p_e`` with ``f_e`` the share of tokens whose first
        choice is ``e`` and ``p_e`` the mean probability of ``e`` (Switch Transformer; 1 when
        routing is uniform). ``"cv2"``: squared coefficient of variation of the experts'
        importance ``sum_tokens p_e`` (0 when uniform).

    Returns
    -------
    Tensor
        Scalar loss (0 when no token is counted).
    """
    E = probs.shape[-1]
    p = probs.reshape(-1, E)
    if mask is None:
        m = torch.ones(p.shape[0], dtype=p.dtype, device=p.device)
    else:
        m = mask.reshape(-1).to(p.dtype)
    n = m.sum().clamp(min=1.0)  # no counted token: every sum below is 0, and so is the loss
    if kind == "switch":
        top1 = F.one_hot(weights.reshape(-1, E).argmax(-1), E).to(p.dtype)
        f = (top1 * m[:, None]).sum(0) / n
        pm = (p * m[:, None]).sum(0) / n
        return E * (f * pm).sum()
    if kind == "cv2":
        imp = (p * m[:, None]).sum(0)
        return imp.var(unbiased=False) / imp.mean().pow(2).clamp(min=1e-12)
    raise ValueError(f"kind must be one of {BALANCE_KINDS}, got {kind!r}")


@dataclass
class RWMoEOutput:
    """Result of :class:`RWMoE`.

    Attributes
    ----------
    nodes : Tensor
        Node features after diffusion and experts (batch, N, d); zero at missing ROIs.
    gate_weights : Tensor
        Per-ROI routing weights (batch, N, E); zero at missing ROIs.
    aux_loss : Tensor
        Scalar load-balancing loss (spatial plus temporal), unweighted.
    transition : Tensor
        Random-walk matrix ``P`` (batch, N, N).
    time : Tensor or None
        Time-patch features after experts (batch, L, d) when tokens were given.
    time_gate_weights : Tensor or None
        Per-patch routing weights (batch, L, E) when tokens were given.
    """

    nodes: Tensor
    gate_weights: Tensor
    aux_loss: Tensor
    transition: Tensor
    time: Tensor | None = None
    time_gate_weights: Tensor | None = None


class RWMoE(nn.Module):
    """Random-walk diffusion followed by spatially and temporally gated experts.

    Parameters
    ----------
    d_model : int
        Node feature size.
    n_experts : int
        Number of experts ``E`` (shared by the spatial and the temporal gate).
    rw_steps : int
        Diffusion steps ``K``.
    top_k : int, optional
        Experts per token (None: soft routing over all).
    expert_hidden : int, optional
        Hidden size of each expert (default ``d_model``).
    token_dim : int, optional
        Size of the tokens given to :meth:`forward` (default ``d_model``); pooled tokens are
        projected to ``d_model`` when it differs.
    balance : {"switch", "cv2"}
        Load-balancing loss.
    graph_dim : int
        Size of the query/key projections of learned affinities (used when no graph is given).
    dropout : float
        Dropout on the experts' mixed output (before the residual sum).
    """

    def __init__(self, d_model: int, n_experts: int = 4, rw_steps: int = 3,
                 top_k: int | None = None, expert_hidden: int | None = None,
                 token_dim: int | None = None, balance: str = "switch", graph_dim: int = 16,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if balance not in BALANCE_KINDS:
            raise ValueError(f"balance must be one of {BALANCE_KINDS}, got {balance!r}")
        self.d_model = d_model
        self.n_experts = n_experts
        self.balance = balance
        self.diffusion = RandomWalkDiffusion(rw_steps)
        self.query = nn.Linear(d_model, graph_dim, bias=False)
        self.key = nn.Linear(d_model, graph_dim, bias=False)
        self.norm = nn.LayerNorm(d_model)
        self.gate = RoutingGate(d_model, n_experts, top_k)
        self.experts = ExpertMLPs(d_model, n_experts, expert_hidden or d_model)
        tdim = token_dim or d_model
        self.token_proj: nn.Module = nn.Linear(tdim, d_model) if tdim != d_model else nn.Identity()
        self.time_norm = nn.LayerNorm(d_model)
        self.time_gate = RoutingGate(d_model, n_experts, top_k)
        self.dropout = nn.Dropout(dropout)

    def learned_transition(self, h: Tensor, node_mask: Tensor) -> Tensor:
        """Transition matrix from learned affinities: a row softmax over present ROIs.

        Parameters
        ----------
        h : Tensor
            Node features (batch, N, d).
        node_mask : Tensor
            Boolean (batch, N).

        Returns
        -------
        Tensor
            ``P`` (batch, N, N) with zero rows and columns at missing ROIs.
        """
        q, k = self.query(h), self.key(h)
        s = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(q.shape[-1])
        # mask columns only (every row keeps a finite entry, so no NaN even in the backward pass;
        # a sample without any present ROI keeps all columns and is zeroed below)
        keep = node_mask | ~node_mask.any(dim=1, keepdim=True)
        s = s.masked_fill(~keep[:, None, :], float("-inf"))
        p = torch.softmax(s, dim=-1)
        pair = node_mask[:, :, None] & node_mask[:, None, :]
        return torch.where(pair, p, torch.zeros((), dtype=p.dtype, device=p.device))

    def forward(self, h: Tensor, adj: Tensor | None = None, node_mask: Tensor | None = None,
                tokens: Tensor | None = None) -> RWMoEOutput:
        """Diffuse, route and mix.

        Parameters
        ----------
        h : Tensor
            Node features (batch, N, d).
        adj : Tensor, optional
            Non-negative adjacency (batch, N, N) (e.g. :func:`connectivity_graph`); learned
            affinities when None.
        node_mask : Tensor, optional
            Boolean (batch, N); False = missing ROI.
        tokens : Tensor, optional
            Tokens (batch, N, L, token_dim) for temporal gating.

        Returns
        -------
        RWMoEOutput
            Node features, gate weights, auxiliary loss, ``P`` and the temporal outputs.
        """
        b, n, _ = h.shape
        if node_mask is None:
            node_mask = torch.ones(b, n, dtype=torch.bool, device=h.device)
        zero = torch.zeros((), dtype=h.dtype, device=h.device)
        mask3 = node_mask[:, :, None]
        h = torch.where(mask3, h, zero)
        if adj is None:
            P = self.learned_transition(h, node_mask)
        else:
            P = random_walk_matrix(adj.to(h.dtype), node_mask)
        z = self.diffusion(P, h)
        weights, probs = self.gate(self.norm(z))
        weights = torch.where(mask3, weights, zero)
        nodes = z + self.dropout(self.experts(self.norm(z), weights))
        nodes = torch.where(mask3, nodes, zero)
        aux = load_balancing_loss(probs, weights, node_mask, self.balance)
        time = time_w = None
        if tokens is not None:
            count = node_mask.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)
            start = node_mask.to(h.dtype) / count
            w = diffusion_weights(P, self.diffusion.alpha().to(h.dtype), start)  # (b, N)
            # (b, 1, 1, N) @ (b, L, N, e): no copy when tokens is a view of time-major tokens
            pooled = torch.matmul(w.to(tokens.dtype)[:, None, None, :],
                                  tokens.transpose(1, 2)).squeeze(2)
            t = self.token_proj(pooled)  # (b, L, d)
            time_w, tprobs = self.time_gate(self.time_norm(t))
            time = t + self.dropout(self.experts(self.time_norm(t), time_w))
            aux = aux + load_balancing_loss(tprobs, time_w, None, self.balance)
        return RWMoEOutput(nodes=nodes, gate_weights=weights, aux_loss=aux, transition=P,
                           time=time, time_gate_weights=time_w)
