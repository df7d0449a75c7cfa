"""Invariants every compressor must pass (spec token-compression §4.3), parametrised over COMPRESSORS.

To cover a new plugin, add a factory ``(mode, ratio) -> Compressor`` to COMPRESSORS; every compressor
receives the same context (text features and mask) and ignores what it does not use.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from grounding.compress import CompressContext, CompressionSchedule, Compressor, Identity, TextGuidedTopK
from grounding.tokens import TokenSet, batched_gather

COMPRESSORS: dict[str, Callable[[str, float], Compressor]] = {
    "identity": lambda mode, ratio: Identity(mode=mode),
    "text_select": lambda mode, ratio: TextGuidedTopK(ratio=ratio, mode=mode),
    "text_select_fused": lambda mode, ratio: TextGuidedTopK(ratio=ratio, mode=mode, fuse=True),
}
NAMES = sorted(COMPRESSORS)
MODES = ("mask", "gather")


def make_tokens(kind: str, b: int, n: int, c: int, seed: int = 0, n_protect: int = 0) -> TokenSet:
    """Grid tokens (no padding, first ``n_protect`` protected) or padded superpoints (valid counts differ)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "grid":
        h = next(d for d in range(int(n**0.5), 0, -1) if n % d == 0)
        ts = TokenSet.from_grid(torch.randn(b, n, c, generator=g), grid=(h, n // h), window_size=2)
    else:
        n_valid = torch.tensor([max(1, n - 3 * i) for i in range(b)])
        valid = torch.arange(n).unsqueeze(0) < n_valid.unsqueeze(1)
        counts = torch.randint(1, 20, (b, n), generator=g)
        ts = TokenSet.from_superpoints(
            torch.randn(b, n, c, generator=g), torch.randn(b, n, 3, generator=g), counts, valid
        )
    ts.protect[:, :n_protect] = ts.valid[:, :n_protect]
    return ts


def make_ctx(b: int, c: int, seed: int = 1) -> CompressContext:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 3, dtype=torch.bool)
    mask[0, 2] = False
    return CompressContext(text=torch.randn(b, 3, c, generator=g), text_mask=mask)


def token_fn(c: int) -> nn.Module:
    """A per-token function standing in for a transformer block's MLP."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(c, c), nn.GELU())


def run(comp: Compressor, ts: TokenSet, ctx: CompressContext, f: nn.Module, carried: bool):
    plan = comp.plan(ts, ctx)
    out = comp.apply(plan, ts).check()
    y = comp.restore(plan, f(out.x), carried=f(ts.x) if carried else None)
    return plan, out, y


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["grid", "superpoints"])
def test_keep_ratio_one_is_identity(name: str, mode: str, kind: str) -> None:
    ts = make_tokens(kind, 3, 12, 5)
    comp = COMPRESSORS[name](mode, 1.0)
    plan = comp.plan(ts, make_ctx(3, 5))
    out = comp.apply(plan, ts).check()
    assert torch.equal(plan.keep_mask, ts.valid)
    restored = comp.restore(plan, out.x)
    assert torch.equal(restored[ts.valid], ts.x[ts.valid])
    assert torch.equal(comp.restore(plan, out.x, carried=ts.x), ts.x)
    assert torch.equal(out.dense(), ts.dense())
    assert torch.equal(comp.restore(plan, out.pos, carried=ts.pos), ts.pos)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_size_and_src_index_bookkeeping(name: str, mode: str, ratio: float) -> None:
    for kind in ("grid", "superpoints"):
        ts = make_tokens(kind, 3, 16, 4)
        out = COMPRESSORS[name](mode, ratio)(ts, make_ctx(3, 4))[0]
        src = out.src_index
        assert ((src == -1) | ((src >= 0) & (src < out.x.shape[1]))).all()
        assert out.valid.gather(1, src.clamp(min=0))[src >= 0].all()
        kept = torch.where(out.valid, out.size, 0).sum(1)
        dropped = torch.where(src >= 0, 0, out.unit_size).sum(1)
        assert torch.allclose(kept + dropped, ts.unit_size.sum(1))
        if kind == "grid":  # unit masses are 1: Σ size + #dropped == N0 exactly
            assert ((kept + (src == -1).sum(1)) == ts.n0).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", MODES)
def test_protected_tokens_kept_and_untouched(name: str, mode: str) -> None:
    ts = make_tokens("grid", 2, 16, 4, n_protect=3)
    comp = COMPRESSORS[name](mode, 0.25)
    plan = comp.plan(ts, make_ctx(2, 4))
    out = comp.apply(plan, ts)
    assert plan.keep_mask[ts.protect].all()
    assert out.protect.sum() == ts.protect.sum()
    assert torch.equal(out.x[out.protect], ts.x[ts.protect])
    assert torch.equal(out.pos[out.protect], ts.pos[ts.protect])
    restored = comp.restore(plan, out.x)
    assert torch.equal(restored[ts.protect], ts.x[ts.protect])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["grid", "superpoints"])
@pytest.mark.parametrize("carried", [True, False])
def test_mask_and_gather_agree(name: str, kind: str, carried: bool) -> None:
    ts = make_tokens(kind, 3, 20, 6, n_protect=1)
    ctx, f = make_ctx(3, 6), token_fn(6)
    pm, om, ym = run(COMPRESSORS[name]("mask", 0.4), ts, ctx, f, carried)
    pg, og, yg = run(COMPRESSORS[name]("gather", 0.4), ts, ctx, f, carried)
    assert torch.equal(pm.keep_mask, pg.keep_mask)
    assert om.x.shape[1] >= og.x.shape[1]  # gather really removes tokens
    # Kept rows match; dropped rows follow the same restore rule in both modes (carried, fused or fill).
    assert torch.allclose(ym[ts.valid], yg[ts.valid], atol=1e-6)
    assert torch.equal(om.num_tokens, og.num_tokens)
    assert torch.allclose(om.dense(f(om.x)), og.dense(f(og.x)), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", MODES)
def test_restore_gives_back_layout(name: str, mode: str) -> None:
    ts = make_tokens("superpoints", 2, 14, 3)
    comp = COMPRESSORS[name](mode, 0.5)
    plan = comp.plan(ts, make_ctx(2, 3))
    out = comp.apply(plan, ts)
    assert torch.equal(comp.restore(plan, out.pos, carried=ts.pos), ts.pos)
    y = out.x * 2
    restored = comp.restore(plan, y, carried=ts.x)
    keep = plan.keep_mask
    assert torch.allclose(restored[keep], 2 * ts.x[keep])
    assert torch.equal(restored[~keep], ts.x[~keep])
    assert restored.shape == ts.x.shape
    # Without a carried tensor, kept rows are still exact and padding rows get the fill value.
    bare = comp.restore(plan, y, fill=-7.0)
    assert torch.equal(bare[keep], restored[keep]) and (bare[~ts.valid] == -7.0).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", MODES)
def test_schedule_restores_in_reverse(name: str, mode: str) -> None:
    ts = make_tokens("grid", 2, 36, 4)
    f = token_fn(4)
    sched = CompressionSchedule({1: COMPRESSORS[name](mode, 0.5), "3": COMPRESSORS[name](mode, 0.5)})
    tokens, before = ts, {}
    for block in range(5):
        before[block] = tokens.x
        tokens = sched.step(tokens, block, make_ctx(2, 4))
        tokens = tokens.with_x(f(tokens.x))
    tokens.check()
    p1, p3 = sched.plans
    assert p1.block == 1 and p3.block == 3
    restored = sched.restore(tokens.x)
    assert restored.shape == ts.x.shape and sched.stack == []
    # Dropped at stage 1: the features entering block 1 (carried). Kept at 1 but dropped at 3: the
    # features entering block 3 at their stage-1 slot. Kept at both: the final features.
    j = p1.assign.clamp(min=0)
    kept3 = p1.keep_mask & p3.keep_mask.gather(1, j)
    final = batched_gather(tokens.x, p3.assign.gather(1, j).clamp(min=0))
    expected = torch.where(
        kept3.unsqueeze(-1),
        final,
        torch.where(p1.keep_mask.unsqueeze(-1), batched_gather(before[3], j), before[1]),
    )
    assert torch.equal(restored, expected)
    # src_index composed over both stages points every surviving unit at the same final token.
    assert torch.equal(restored[kept3], tokens.dense()[kept3])


def test_module_apply_still_recurses() -> None:
    comp = TextGuidedTopK(ratio=0.5, text_dim=3, token_dim=4)
    seen: list[type] = []
    nn.Sequential(comp).apply(lambda m: seen.append(type(m)))
    assert nn.Linear in seen and TextGuidedTopK in seen


@settings(max_examples=60, deadline=None, database=None)
@given(
    name=st.sampled_from(NAMES),
    kind=st.sampled_from(["grid", "superpoints"]),
    b=st.integers(1, 3),
    n=st.integers(1, 24),
    c=st.integers(1, 5),
    ratio=st.floats(0.01, 1.0),
    n_protect=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_invariants_hold_on_random_inputs(
    name: str, kind: str, b: int, n: int, c: int, ratio: float, n_protect: int, seed: int
) -> None:
    ts = make_tokens(kind, b, n, c, seed=seed, n_protect=n_protect)
    ctx, f = make_ctx(b, c, seed=seed + 1), token_fn(c)
    pm, om, ym = run(COMPRESSORS[name]("mask", ratio), ts, ctx, f, carried=True)
    pg, og, yg = run(COMPRESSORS[name]("gather", ratio), ts, ctx, f, carried=True)
    assert torch.equal(pm.keep_mask, pg.keep_mask)
    assert not (pm.keep_mask & ~ts.valid).any()
    assert pm.keep_mask[ts.protect].all()
    assert torch.equal(og.x[og.protect], ts.x[ts.protect])
    assert torch.allclose(ym[ts.valid], yg[ts.valid], atol=1e-5)
    # Dropped rows take the carried tensor exactly, in both modes.
    fx = f(ts.x)
    assert torch.equal(yg[~pg.keep_mask], fx[~pg.keep_mask])
    assert torch.allclose(yg[pg.keep_mask], fx[pg.keep_mask], atol=1e-6)
    assert (og.num_tokens >= pg.num_kept).all() and (pg.num_kept >= (ts.valid.sum(1) > 0).long()).all()
