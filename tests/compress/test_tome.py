"""TokenMerge (ToMe bipartite soft matching): hand-built merges, windows, superpoint neighbours, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from grounding.compress import (
    Budget,
    CompressContext,
    CompressionSchedule,
    TokenMerge,
    proportional_attention_bias,
)
from grounding.compress.tome import knn_graph
from grounding.tokens import TokenSet

E = torch.eye(4)


def test_identical_pair_is_merged_first_with_exact_average() -> None:
    # A = tokens 0, 2; B = tokens 1, 3. Tokens 0 and 1 are identical: the best edge.
    x = torch.stack([E[0], E[0], E[1] + 0.1 * E[2], E[3]]).unsqueeze(0)
    ts = TokenSet.from_grid(x, grid=(1, 4))
    for mode in ("gather", "mask"):
        comp = TokenMerge(r=1, mode=mode)
        plan = comp.plan(ts)
        out = comp.apply(plan, ts).check()
        assert plan.keep_mask.tolist() == [[False, True, True, True]]
        dest = out.src_index[0, 1]
        assert out.src_index[0, 0] == dest and out.size[0, dest] == 2.0
        assert torch.equal(out.x[0, dest], E[0])  # (x + x) / 2 is exact
        assert out.pos[0, dest].tolist() == [0, 1]  # the destination's grid cell
        assert out.size[out.valid].sum() == 4 and int(out.num_tokens) == 3
        y = comp.restore(plan, out.x * 3)
        assert torch.equal(y[0, 0], y[0, 1]) and torch.equal(y[0, 0], 3 * E[0])  # unmerge copies
        assert plan.scores[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])


def test_size_weighted_average_of_features_and_centroids() -> None:
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [-1.0, 0.3]]])
    cents = torch.tensor([[[0.0, 0, 0], [0.4, 0, 0], [5.0, 0, 0], [9.0, 0, 0]]])
    counts = torch.tensor([[3, 1, 5, 2]])
    ts = TokenSet.from_superpoints(x, cents, counts, torch.ones(1, 4, dtype=torch.bool))
    comp = TokenMerge(r=1, knn=None, mode="gather")
    plan = comp.plan(ts)
    out = comp.apply(plan, ts).check()
    # Edges: 0->1 (cos 0.98) beats 2->3; token 0 (size 3) is averaged into token 1 (size 1).
    assert plan.keep_mask.tolist() == [[False, True, True, True]]
    assert torch.allclose(out.x[0, 0], (3 * x[0, 0] + 1 * x[0, 1]) / 4)
    assert torch.allclose(out.pos[0, 0], torch.tensor([0.1, 0.0, 0.0]))
    assert out.size[0].tolist() == [4.0, 5.0, 2.0]


def test_several_sources_join_one_destination() -> None:
    x = torch.stack([E[0], E[0], E[0] * 2, E[1], E[0] * 0.5]).unsqueeze(0)  # A = 0, 2, 4; B = 1, 3
    ts = TokenSet.from_grid(x, grid=(1, 5))
    comp = TokenMerge(r=2, mode="gather")
    out = comp(ts)[0].check()
    assert out.src_index[0].tolist() == [0, 0, 0, 1, 2]  # 0 and 2 both merge into 1; 4 stays (r = 2)
    assert out.size[0].tolist() == [3.0, 1.0, 1.0]
    assert torch.allclose(out.x[0, 0], (E[0] + E[0] + 2 * E[0]) / 3)


def test_merges_at_most_half_and_budget_overrides() -> None:
    ts = TokenSet.from_grid(torch.randn(2, 4, 4, 3))
    assert TokenMerge(r=100)(ts)[0].num_tokens.tolist() == [8, 8]
    assert TokenMerge(ratio=0.25)(ts)[0].num_tokens.tolist() == [12, 12]
    ctx = CompressContext(budget=Budget(k=13))  # keep 13 -> 3 merges
    assert TokenMerge(ratio=0.5)(ts, ctx)[0].num_tokens.tolist() == [13, 13]
    with pytest.raises(ValueError, match="at most half"):
        TokenMerge(ratio=0.6)
    with pytest.raises(ValueError, match="scope"):
        TokenMerge(scope="windows")
    with pytest.raises(ValueError, match="window_id"):
        TokenMerge(scope="window")(ts)


@pytest.mark.parametrize("mode", ["mask", "gather"])
def test_window_scope_never_crosses_windows(mode: str) -> None:
    torch.manual_seed(0)
    ts = TokenSet.from_grid(torch.randn(2, 10, 10, 4), window_size=4)  # 3x3 windows, border ones ragged
    out, plan = TokenMerge(ratio=0.5, mode=mode)(ts)
    out.check()
    wid = ts.window_id
    dest_window = out.window_id.gather(1, out.src_index)
    assert torch.equal(dest_window, wid)  # every unit sits in a token of its own window
    # Per window: floor(0.5 * n_w) merges (16 -> 8, 8 -> 4, 4 -> 2 tokens).
    per_window = torch.zeros(2, 9, dtype=torch.long).scatter_add_(1, out.window_id, out.valid.long())
    assert per_window[0].tolist() == [8, 8, 4, 8, 8, 4, 4, 4, 2]
    # The same data merged globally does cross windows, so the check above is not vacuous.
    glob = TokenMerge(ratio=0.5, scope="global", mode=mode)(ts)[0]
    assert not torch.equal(glob.window_id.gather(1, glob.src_index), wid)


@pytest.mark.parametrize("mode", ["mask", "gather"])
def test_superpoint_radius_and_knn_rules(mode: str) -> None:
    g = torch.Generator().manual_seed(3)
    b, n = 2, 40
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, 30:] = False
    feats = torch.randn(b, n, 5, generator=g)
    cents = 10 * torch.rand(b, n, 3, generator=g)
    ts = TokenSet.from_superpoints(feats, cents, torch.randint(1, 9, (b, n), generator=g), valid)

    def merged_pairs(comp: TokenMerge) -> tuple[torch.Tensor, torch.Tensor]:
        plan = comp.plan(ts)
        comp.apply(plan, ts).check()
        dest = plan.rep_index.gather(1, plan.assign.clamp(min=0))  # the token each unit now lives in
        src = valid & ~plan.keep_mask
        return src, dest

    radius = 2.5
    src, dest = merged_pairs(TokenMerge(ratio=0.5, knn=None, radius=radius, mode=mode))
    d = (cents - torch.stack([cents[i, dest[i]] for i in range(b)])).norm(dim=-1)
    assert src.any() and (d[src] <= radius).all()
    src_free, dest_free = merged_pairs(TokenMerge(ratio=0.5, knn=None, mode=mode))
    d_free = (cents - torch.stack([cents[i, dest_free[i]] for i in range(b)])).norm(dim=-1)
    assert (d_free[src_free] > radius).any()  # without the rule, far pairs do merge
    src, dest = merged_pairs(TokenMerge(ratio=0.5, knn=3, mode=mode))
    adj = knn_graph(cents, valid, 3)
    assert src.any() and all(adj[i, src[i], dest[i][src[i]]].all() for i in range(b))


def test_knn_graph_is_symmetric_and_ignores_padding() -> None:
    pos = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [0.1, 0, 0]]])
    member = torch.tensor([[True, True, True, False]])
    adj = knn_graph(pos, member, 1)
    assert adj[0].tolist() == [
        [False, True, False, False],
        [True, False, True, False],  # 2's nearest member is 1: made symmetric
        [False, True, False, False],
        [False, False, False, False],
    ]


def test_protected_and_padding_never_merged() -> None:
    x = torch.ones(1, 6, 3)  # all identical: every edge is a perfect match
    valid = torch.tensor([[True, True, True, True, True, False]])
    ts = TokenSet.from_superpoints(x, torch.zeros(1, 6, 3), torch.ones(1, 6), valid)
    ts.protect[0, :2] = True
    comp = TokenMerge(ratio=0.5, knn=None)
    plan = comp.plan(ts)
    out = comp.apply(plan, ts).check()
    assert plan.keep_mask[0].tolist() == [True, True, False, True, True, False]  # 2 -> 3 only
    assert out.size[0].tolist() == [1.0, 1.0, 2.0, 1.0] and plan.assign[0, 5] == -1


def test_keys_from_context_drive_the_matching() -> None:
    x = torch.stack([E[0], E[1], E[2], E[2]]).unsqueeze(0)  # by features, 2 -> 3 would merge
    keys = torch.stack([E[0], E[0], E[1], E[2]]).reshape(1, 4, 2, 2).permute(0, 2, 1, 3) * 2  # (B, H, N, D)
    ts = TokenSet.from_grid(x, grid=(2, 2))
    plan = TokenMerge(r=1).plan(ts, CompressContext(extras={"keys": keys}))
    assert plan.keep_mask.tolist() == [[False, True, True, True]]
    plan = TokenMerge(r=1).plan(ts, CompressContext(extras={"metric": x}))
    assert plan.keep_mask.tolist() == [[True, True, False, True]]
    with pytest.raises(ValueError, match="extras\\['metric'\\]"):
        TokenMerge(r=1).plan(ts, CompressContext(extras={"metric": torch.randn(1, 3, 2)}))


def test_proportional_attention_bias() -> None:
    x = torch.stack([E[0], E[0], E[0], E[1]]).unsqueeze(0)
    ts = TokenSet.from_grid(torch.cat([x, E[2:3].unsqueeze(0)], dim=1), grid=(1, 5))
    ts.protect[0, 4] = True
    ts.size[0, 4] = 0.0  # a text slot: stands for nothing
    ts.unit_size[0, 4] = 0.0
    out = TokenMerge(r=2, mode="mask")(ts)[0]
    bias = proportional_attention_bias(out)
    assert bias.shape == (1, 1, 1, 5)
    assert bias[0, 0, 0].tolist() == pytest.approx([float("-inf"), math.log(3), float("-inf"), 0.0, 0.0])
    assert proportional_attention_bias(out, mask_invalid=False)[0, 0, 0, 0] == 0.0
    sp = TokenSet.from_superpoints(x, torch.zeros(1, 4, 3), torch.tensor([[4, 2, 2, 7]]), torch.ones(1, 4).bool())
    merged = TokenMerge(r=2, knn=None)(sp)[0]
    assert torch.allclose(proportional_attention_bias(merged, units=True)[0, 0, 0], torch.tensor([math.log(3), 0.0]))
    assert torch.allclose(proportional_attention_bias(merged)[0, 0, 0], torch.tensor([math.log(8), math.log(7)]))


def test_gradients_flow_in_mask_mode() -> None:
    x = torch.randn(2, 16, 4, requires_grad=True)
    ts = TokenSet.from_grid(x, grid=(4, 4))
    comp = TokenMerge(ratio=0.5, mode="mask")
    plan = comp.plan(ts)
    out = comp.apply(plan, ts)
    w = torch.randn(4)
    (comp.restore(plan, out.x) * w).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # A merged pair (size 1 + 1) restores the average to both: each member's gradient is w.
    assert torch.allclose(x.grad, w.expand_as(x.grad))


def test_schedule_restores_two_merge_stages() -> None:
    torch.manual_seed(1)
    ts = TokenSet.from_grid(torch.randn(2, 6, 6, 4), window_size=3)
    sched = CompressionSchedule({0: TokenMerge(ratio=0.5), 2: TokenMerge(ratio=0.5, scope="global")})
    tokens = ts
    for block in range(3):
        tokens = sched.step(tokens, block)
        tokens = tokens.with_x(torch.tanh(tokens.x) + block)
    tokens.check()
    assert tokens.num_tokens.tolist() == [10, 10]  # 4 windows of 9 -> 4 x 5 -> global half -> 10
    restored = sched.restore(tokens.x)
    # Every unit ends up with the output of the final token that holds it.
    assert torch.equal(restored, tokens.dense())
