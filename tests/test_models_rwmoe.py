"""Random-walk mixture of experts: transition matrix, diffusion, routing, load balancing."""

from __future__ import annotations

import pytest
import torch

from brainfm.models.rwmoe import (
    ExpertMLPs,
    RandomWalkDiffusion,
    RoutingGate,
    RWMoE,
    connectivity_graph,
    diffusion_weights,
    load_balancing_loss,
    random_walk_matrix,
)

# small tensors: one intra-op thread avoids OpenMP stalls on a shared, busy machine
pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _conn(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 40, generator=g)
    r = torch.stack([torch.corrcoef(xi) for xi in x])
    z = torch.atanh(r.clamp(-0.999, 0.999))
    return (z + z.transpose(1, 2)) / 2


def test_transition_rows_sum_to_one_and_masked_rois_have_no_edges():
    conn = _conn(2, 10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, [2, 7]] = False
    adj = connectivity_graph(conn, mask, mode="abs", topk=None)
    assert (adj >= 0).all() and torch.equal(adj, adj.transpose(1, 2))
    P = random_walk_matrix(adj, mask)
    rows = P.sum(-1)
    torch.testing.assert_close(rows[mask], torch.ones(int(mask.sum())))
    assert (rows[~mask] == 0).all()
    assert (P[0, :, [2, 7]] == 0).all() and (P[0, [2, 7]] == 0).all()
    assert torch.isfinite(P).all()
    # a present ROI without any edge (no self loop either) also gets a zero row, not NaN
    adj2 = adj.clone()
    adj2[1, 4, :] = 0
    adj2[1, :, 4] = 0
    P2 = random_walk_matrix(adj2)
    assert (P2[1, 4] == 0).all() and torch.isfinite(P2).all()
    torch.testing.assert_close(P2[1, torch.arange(10) != 4].sum(-1), torch.ones(9))


def test_connectivity_graph_modes_topk_and_dirty_input():
    conn = _conn(1, 12, seed=1)
    conn[0, 3, 5] = conn[0, 5, 3] = float("nan")
    conn[0, 0, 0] = float("inf")
    pos = connectivity_graph(conn, mode="pos", self_loops=False)
    assert torch.isfinite(pos).all() and (pos >= 0).all()
    assert (torch.diagonal(pos, dim1=1, dim2=2) == 0).all() and pos[0, 3, 5] == 0
    top = connectivity_graph(conn, topk=3, self_loops=True)
    off = top[0] - torch.eye(12)
    assert torch.equal(top, top.transpose(1, 2))
    assert ((off > 0).sum(-1) >= 3).all()  # each ROI keeps its 3 strongest (plus symmetric)
    assert (torch.diagonal(top, dim1=1, dim2=2) == 1).all()
    with pytest.raises(ValueError, match="mode"):
        connectivity_graph(conn, mode="neg")


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_diffusion_equals_dense_matrix_power_reference(steps):
    torch.manual_seed(0)
    conn = _conn(2, 9, seed=2)
    P = random_walk_matrix(connectivity_graph(conn, topk=4)).double()
    H = torch.randn(2, 9, 5, dtype=torch.float64)
    diff = RandomWalkDiffusion(steps).double()
    with torch.no_grad():
        diff.alpha_logits.copy_(torch.randn(steps + 1))
    alpha = torch.softmax(diff.alpha_logits, 0)
    ref = sum(alpha[k] * torch.stack([torch.linalg.matrix_power(P[b], k) @ H[b]
                                      for b in range(2)]) for k in range(steps + 1))
    torch.testing.assert_close(diff(P, H), ref, rtol=0, atol=1e-12)
    # the ROI average of the diffused features is a weighted average with diffusion_weights
    start = torch.full((2, 9), 1 / 9, dtype=torch.float64)
    w = diffusion_weights(P, alpha, start)
    torch.testing.assert_close(torch.einsum("bn,bnd->bd", w, H), ref.mean(1), rtol=0, atol=1e-12)


def test_hand_set_gate_routes_as_its_weights_say():
    gate = RoutingGate(4, 4, top_k=1)
    with torch.no_grad():
        gate.proj.weight.copy_(torch.eye(4) * 10)
        gate.proj.bias.zero_()
    x = torch.eye(4)[[2, 0, 3, 3, 1]]  # token i should go to expert choice[i]
    weights, probs = gate(x)
    assert torch.equal(weights, torch.eye(4)[[2, 0, 3, 3, 1]])
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    soft = RoutingGate(4, 4, top_k=None)
    soft.load_state_dict(gate.state_dict())
    w_soft, _ = soft(x)
    assert torch.equal(w_soft.argmax(-1), torch.tensor([2, 0, 3, 3, 1]))
    two = RoutingGate(4, 4, top_k=2)
    with torch.no_grad():
        two.proj.weight.copy_(torch.tensor([[3.0, 0, 0, 0], [2, 0, 0, 0], [1, 0, 0, 0],
                                            [0, 0, 0, 0]]))
        two.proj.bias.zero_()
    w2, _ = two(torch.tensor([[1.0, 0, 0, 0]]))
    e = torch.exp(torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(w2, torch.cat([e / e.sum(), torch.zeros(2)])[None])


def test_experts_mix_by_weights():
    torch.manual_seed(0)
    experts = ExpertMLPs(6, 3, 8)
    x = torch.randn(4, 5, 6)
    onehot = torch.zeros(4, 5, 3)
    onehot[..., 1] = 1
    single = torch.nn.functional.gelu(x @ experts.w1[1] + experts.b1[1]) @ experts.w2[1] \
        + experts.b2[1]
    torch.testing.assert_close(experts(x, onehot), single, rtol=1e-5, atol=1e-6)
    half = torch.full((4, 5, 3), 0.0)
    half[..., 0] = half[..., 2] = 0.5
    e0 = experts(x, torch.eye(3)[[0]].expand(4, 5, 3))
    e2 = experts(x, torch.eye(3)[[2]].expand(4, 5, 3))
    torch.testing.assert_close(experts(x, half), 0.5 * (e0 + e2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["switch", "cv2"])
def test_load_balancing_is_minimal_for_uniform_routing(kind):
    E, n = 4, 64
    uniform = torch.full((n, E), 1 / E)
    # balanced hard routing: each expert gets a quarter of the tokens, confidently
    balanced = torch.eye(E).repeat(n // E, 1) * 0.7 + 0.3 / E
    minimum = 1.0 if kind == "switch" else 0.0
    loss_u = load_balancing_loss(uniform, balanced, kind=kind)  # uniform probabilities
    assert float(loss_u) == pytest.approx(minimum, abs=1e-6)
    loss_b = load_balancing_loss(balanced, balanced, kind=kind)
    assert float(loss_b) == pytest.approx(minimum, abs=1e-6)
    skewed = torch.tensor([0.7, 0.1, 0.1, 0.1]).repeat(n, 1)
    assert float(load_balancing_loss(skewed, skewed, kind=kind)) > minimum + 0.5
    if kind == "cv2":  # 0 is the global minimum, reached only by equal importance
        g = torch.Generator().manual_seed(0)
        for _ in range(20):
            p = torch.softmax(torch.randn(n, E, generator=g) * 2, -1)
            assert float(load_balancing_loss(p, p, kind=kind)) > 0
    # masked tokens do not count
    mask = torch.ones(n + 8, dtype=torch.bool)
    mask[n:] = False
    padded = torch.cat([uniform, torch.eye(E)[[0]].repeat(8, 1)])
    assert float(load_balancing_loss(padded, padded.roll(1, 0), mask, kind)) == pytest.approx(
        minimum, abs=1e-6)
    with pytest.raises(ValueError, match="kind"):
        load_balancing_loss(uniform, uniform, kind="entropy")


def test_rwmoe_forward_masks_and_gate_weights():
    torch.manual_seed(0)
    b, n, d, L = 2, 10, 8, 5
    moe = RWMoE(d, n_experts=3, rw_steps=2, top_k=2, token_dim=4, dropout=0.0).eval()
    h = torch.randn(b, n, d)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, :3] = False
    h_dirty = h.clone()
    h_dirty[1, :3] = 1e4
    adj = connectivity_graph(_conn(b, n, seed=3), mask, topk=4)
    tokens = torch.randn(b, n, L, 4)
    out = moe(h_dirty, adj, mask, tokens=tokens)
    assert out.nodes.shape == (b, n, d) and out.gate_weights.shape == (b, n, 3)
    assert out.time.shape == (b, L, d) and out.time_gate_weights.shape == (b, L, 3)
    assert out.aux_loss.dim() == 0 and float(out.aux_loss.detach()) > 0
    assert (out.gate_weights[1, :3] == 0).all() and (out.nodes[1, :3] == 0).all()
    torch.testing.assert_close(out.gate_weights[mask].sum(-1), torch.ones(int(mask.sum())))
    assert ((out.gate_weights > 0).sum(-1)[mask] <= 2).all()  # top-2
    # the values held by missing ROIs change nothing
    out2 = moe(h, adj, mask, tokens=tokens)
    torch.testing.assert_close(out2.nodes, out.nodes)
    torch.testing.assert_close(out2.time, out.time)
    # the gate weights are the gate applied to the normalised diffused features
    z = moe.diffusion(random_walk_matrix(adj, mask), torch.where(mask[..., None], h, 0.0))
    w, _ = moe.gate(moe.norm(z))
    torch.testing.assert_close(out.gate_weights[mask], w[mask])


def test_rwmoe_learned_affinities_when_no_graph():
    torch.manual_seed(1)
    moe = RWMoE(8, n_experts=4, rw_steps=3, top_k=None)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 6] = False
    out = moe(torch.randn(2, 7, 8), None, mask)
    P = out.transition
    torch.testing.assert_close(P.sum(-1)[mask], torch.ones(int(mask.sum())))
    assert (P[0, 6] == 0).all() and (P[0, :, 6] == 0).all()
    (out.nodes.sum() + out.aux_loss).backward()
    assert moe.query.weight.grad is not None and moe.diffusion.alpha_logits.grad is not None
    assert all(torch.isfinite(p.grad).all() for p in moe.parameters() if p.grad is not None)
    none = moe(torch.randn(1, 7, 8), None, torch.zeros(1, 7, dtype=torch.bool))
    assert (none.transition == 0).all() and (none.nodes == 0).all()
    assert out.time is None and out.time_gate_weights is None
