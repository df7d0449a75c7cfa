"""QueryPool: pooled values against a per-sample reference, layouts, soft restore, padding, gradients."""

from __future__ import annotations

import pytest
import torch

from grounding.compress import QueryPool, TokenMerge, build_compressor
from grounding.tokens import TokenSet


def reference_pool(comp: QueryPool, x: torch.Tensor) -> torch.Tensor:
    """Plain multi-head cross-attention of the queries over one sample's pooled tokens (n, C) -> (M, C)."""
    h, d = comp.num_heads, comp.dim // comp.num_heads
    kv = comp.norm(x)
    q = comp.q_proj(comp.queries).reshape(-1, h, d).transpose(0, 1)
    k = comp.k_proj(kv).reshape(-1, h, d).transpose(0, 1)
    v = comp.v_proj(kv).reshape(-1, h, d).transpose(0, 1)
    attn = torch.softmax(q @ k.transpose(1, 2) / d**0.5, dim=-1)
    return comp.out_proj((attn @ v).transpose(0, 1).reshape(-1, comp.dim)) + comp.queries


def padded_superpoints(seed: int = 0) -> TokenSet:
    g = torch.Generator().manual_seed(seed)
    valid = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    return TokenSet.from_superpoints(
        torch.randn(2, 9, 8, generator=g), torch.randn(2, 9, 3, generator=g), torch.randint(1, 5, (2, 9)), valid
    )


@pytest.mark.parametrize("mode", ["mask", "gather"])
def test_pooled_values_match_reference_and_ignore_padding(mode: str) -> None:
    torch.manual_seed(0)
    ts = padded_superpoints()
    ts.protect[:, 0] = True
    comp = QueryPool(8, num_queries=3, num_heads=2, mode=mode)
    plan = comp.plan(ts)
    out = comp.apply(plan, ts).check()
    assert out.x.shape[1] == (1 + 3 if mode == "gather" else 9 + 3) and out.num_tokens.tolist() == [4, 4]
    for b in range(2):
        expected = reference_pool(comp, ts.x[b, 1 : int(ts.valid[b].sum())])
        assert torch.allclose(out.x[b, -3:], expected, atol=1e-5)
        assert torch.equal(out.x[b][out.protect[b]], ts.x[b, :1])
    # Padding features are never read.
    noisy = TokenSet.from_superpoints(ts.x.clone(), ts.pos, ts.size, ts.valid)
    noisy.protect[:, 0] = True
    noisy.x[~ts.valid] = 1e4
    assert torch.equal(comp.apply(comp.plan(noisy), noisy).x, out.x)


def test_bookkeeping_and_positions() -> None:
    ts = padded_superpoints(1)
    comp = QueryPool(8, num_queries=2, num_heads=4)
    plan = comp.plan(ts)
    out = comp.apply(plan, ts).check()
    assert torch.allclose(out.size.sum(1), ts.size.sum(1))  # every unit is held by one (hard) query
    mix = plan.mix  # (B, G=1, M, L)
    assert torch.allclose(mix.sum(-1), torch.ones(2, 1, 2))  # softmax over the real tokens
    assert torch.allclose(out.pos[0], mix[0, 0] @ ts.pos[0])  # attention-weighted centroids
    assert torch.allclose(out.pos[1], mix[1, 0, :, :6] @ ts.pos[1, :6])
    assert torch.allclose(plan.scores.sum(1), torch.full((2,), 2.0))  # each query hands out mass 1


@pytest.mark.parametrize("mode", ["mask", "gather"])
def test_restore_is_soft_broadcast_in_original_layout(mode: str) -> None:
    torch.manual_seed(0)
    ts = TokenSet.from_grid(torch.randn(2, 4, 4, 8))
    ts.protect[:, 5] = True
    comp = QueryPool(8, num_queries=4, num_heads=2, mode=mode)
    plan = comp.plan(ts)
    out = comp.apply(plan, ts)
    # Every query outputs the same vector: each token's weights sum to 1, so it gets that vector back.
    const = torch.arange(8.0).expand_as(out.x).clone()
    const[out.protect] = -1.0
    restored = comp.restore(plan, const)
    assert restored.shape == ts.x.shape
    assert torch.allclose(restored[~ts.protect], torch.arange(8.0).expand(30, 8), atol=1e-5)
    assert (restored[ts.protect] == -1.0).all()
    # In general: token n gets Σ_m Ā[m, n] y_m / Σ_m Ā[m, n].
    y = torch.randn_like(out.x)
    restored = comp.restore(plan, y)
    mix = plan.mix[:, 0]  # (B, M, L): L = the 15 unprotected tokens in order
    w = mix / mix.sum(1, keepdim=True)
    expected = torch.einsum("bml,bmc->blc", w, y[:, plan.offset :])
    assert torch.allclose(restored[~ts.protect].reshape(2, 15, 8), expected, atol=1e-6)
    # Integer tensors: grid cells come back exactly with carried, else the hard query's cell.
    assert torch.equal(comp.restore(plan, out.pos, carried=ts.pos), ts.pos)
    assert torch.equal(comp.restore(plan, out.pos), out.dense(out.pos))


def test_window_scope_pools_each_window() -> None:
    torch.manual_seed(0)
    ts = TokenSet.from_grid(torch.randn(1, 6, 6, 8), window_size=3)  # 4 windows of 3x3 (SAP-style regions)
    comp = QueryPool(8, num_queries=1, num_heads=2, scope="window")
    plan = comp.plan(ts)
    out = comp.apply(plan, ts).check()
    assert out.x.shape[1] == 4 and out.size[0].tolist() == [9.0] * 4
    assert torch.equal(out.window_id.gather(1, out.src_index), ts.window_id)  # units stay in their window
    for w in range(4):
        members = ts.window_id[0] == w
        assert torch.allclose(out.x[0, w], reference_pool(comp, ts.x[0, members])[0], atol=1e-5)


def test_gradients_reach_queries_and_projections_in_mask_mode() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 12, 8, requires_grad=True)
    ts = TokenSet.from_grid(x, grid=(3, 4))
    comp = QueryPool(8, num_queries=2, num_heads=2, mode="mask", proportional=True)
    plan = comp.plan(ts)
    out = comp.apply(plan, ts)
    comp.restore(plan, out.x.square()).sum().backward()
    for p in [x, comp.queries, comp.q_proj.weight, comp.k_proj.weight, comp.v_proj.weight, comp.out_proj.weight]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_proportional_attention_reads_merged_tokens_by_size() -> None:
    torch.manual_seed(0)
    ts = TokenSet.from_grid(torch.randn(1, 4, 4, 8))
    merged = TokenMerge(ratio=0.5)(ts)[0]
    comp = QueryPool(8, num_queries=1, num_heads=1, proportional=True)
    plain = QueryPool(8, num_queries=1, num_heads=1)
    plain.load_state_dict(comp.state_dict())
    a, b = comp.plan(merged).mix[0, 0, 0], plain.plan(merged).mix[0, 0, 0]
    ratio = (a / b) / (a / b)[0]
    assert torch.allclose(ratio, merged.size[0] / merged.size[0, 0], atol=1e-5)


def test_empty_sample_and_errors() -> None:
    valid = torch.tensor([[True, True, False], [False, False, False]])
    ts = TokenSet.from_superpoints(torch.randn(2, 3, 4), torch.randn(2, 3, 3), torch.ones(2, 3), valid)
    comp = QueryPool(4, num_queries=2, num_heads=2)
    plan = comp.plan(ts)
    out = comp.apply(plan, ts).check()
    assert out.valid.tolist() == [[True, True], [False, False]] and (out.x[1] == 0).all()
    assert torch.isfinite(comp.restore(plan, out.x)).all()
    with pytest.raises(ValueError, match="divisible"):
        QueryPool(6, num_heads=4)
    with pytest.raises(ValueError, match="dim = 5"):
        QueryPool(5, num_heads=1).plan(ts)
    with pytest.raises(TypeError, match="PoolPlan"):
        comp.restore(build_compressor("tome").plan(ts), out.x)
