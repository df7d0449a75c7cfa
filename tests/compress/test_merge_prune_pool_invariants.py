"""Invariants of the ToMe, pruning and pooling compressors (spec §4.3), on grids and padded superpoints.

Every factory takes (mode, strength in [0, 1]): 0 means no compression where the compressor has one
(merge ratio 0, keep ratio 1); pooling always pools.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grounding.compress import CompressContext, Compressor, QueryPool, ScorePrune, TokenMerge
from grounding.tokens import TokenSet

C = 6
FACTORIES: dict[str, Callable[[str, float], Compressor]] = {
    "tome": lambda mode, s: TokenMerge(ratio=0.5 * s, mode=mode, knn=4),
    "tome_global": lambda mode, s: TokenMerge(ratio=0.5 * s, scope="global", mode=mode, knn=None),
    "prune_learned": lambda mode, s: ScorePrune(ratio=1 - 0.9 * s, dim=C, mode=mode),
    "prune_keynorm": lambda mode, s: ScorePrune(ratio=1 - 0.9 * s, scorer="keynorm", mode=mode),
    "pool": lambda mode, s: QueryPool(C, num_queries=3, num_heads=2, mode=mode),
    "pool_window": lambda mode, s: QueryPool(C, num_queries=2, num_heads=3, scope="auto", mode=mode),
}
NAMES = sorted(FACTORIES)


def make_tokens(kind: str, b: int, n: int, seed: int = 0, n_protect: int = 0) -> TokenSet:
    """Grid tokens with 2x2 windows, or padded superpoints (valid counts differ per sample)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "grid":
        h = next(d for d in range(int(n**0.5), 0, -1) if n % d == 0)
        ts = TokenSet.from_grid(torch.randn(b, n, C, generator=g), grid=(h, n // h), window_size=2)
    else:
        n_valid = torch.tensor([max(1, n - 3 * i) for i in range(b)])
        valid = torch.arange(n).unsqueeze(0) < n_valid.unsqueeze(1)
        counts = torch.randint(1, 20, (b, n), generator=g)
        ts = TokenSet.from_superpoints(
            torch.randn(b, n, C, generator=g), 3 * torch.rand(b, n, 3, generator=g), counts, valid
        )
    ts.protect[:, :n_protect] = ts.valid[:, :n_protect]
    return ts


def build(name: str, mode: str, strength: float) -> Compressor:
    torch.manual_seed(7)  # same parameters in both modes
    return FACTORIES[name](mode, strength)


def f(x: torch.Tensor) -> torch.Tensor:
    """A per-token, elementwise stand-in for a block (bit-exact whatever the row layout)."""
    return torch.tanh(x) * 2 + 0.5


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["grid", "superpoints"])
@pytest.mark.parametrize("mode", ["mask", "gather"])
def test_bookkeeping_protect_padding(name: str, kind: str, mode: str) -> None:
    ts = make_tokens(kind, 3, 16, n_protect=2)
    comp = build(name, mode, 0.8)
    plan = comp.plan(ts, CompressContext())
    out = comp.apply(plan, ts).check()  # Σ size + dropped mass == total mass, src_index valid
    kept = torch.where(out.valid, out.size, 0).sum(1)
    dropped = torch.where(out.src_index >= 0, 0, out.unit_size).sum(1)
    assert torch.allclose(kept + dropped, ts.unit_size.sum(1))
    if not name.startswith("prune"):  # merging and pooling lose no unit
        assert torch.allclose(kept, ts.size.sum(1))
    assert (plan.assign[~ts.valid] == -1).all()  # padding is never kept, merged or pooled
    assert torch.equal(out.x[out.protect], ts.x[ts.protect]) and torch.equal(out.size[out.protect], ts.size[ts.protect])
    assert (out.num_tokens < ts.num_tokens).all()
    y = comp.restore(plan, f(out.x), carried=f(ts.x))
    assert y.shape == ts.x.shape and torch.equal(y[ts.protect], f(ts.x)[ts.protect])
    assert torch.equal(y[~ts.valid], f(ts.x)[~ts.valid])  # padding takes the carried rows


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["grid", "superpoints"])
def test_mask_and_gather_agree(name: str, kind: str) -> None:
    ts = make_tokens(kind, 3, 20, seed=4, n_protect=1)
    res = {}
    for mode in ("mask", "gather"):
        comp = build(name, mode, 0.6)
        plan = comp.plan(ts, CompressContext())
        out = comp.apply(plan, ts)
        res[mode] = plan, out, comp.restore(plan, f(out.x), carried=f(ts.x))
    (pm, om, ym), (pg, og, yg) = res["mask"], res["gather"]
    assert torch.equal(pm.keep_mask, pg.keep_mask)
    assert om.x.shape[1] > og.x.shape[1]  # gather really removes tokens
    assert torch.equal(om.num_tokens, og.num_tokens)
    # The valid tokens, in slot order, are the same tokens with the same values in both layouts.
    for b in range(ts.batch_size):
        assert torch.allclose(om.x[b][om.valid[b]], og.x[b][og.valid[b]], atol=1e-6)
        assert torch.allclose(om.size[b][om.valid[b]], og.size[b][og.valid[b]])
        assert torch.equal(om.pos[b][om.valid[b]], og.pos[b][og.valid[b]]) or kind == "superpoints"
    assert torch.allclose(ym, yg, atol=1e-6)
    assert torch.allclose(om.dense(f(om.x)), og.dense(f(og.x)), atol=1e-6)


@pytest.mark.parametrize("name", [n for n in NAMES if not n.startswith("pool")])
@pytest.mark.parametrize("kind", ["grid", "superpoints"])
@pytest.mark.parametrize("mode", ["mask", "gather"])
def test_no_compression_is_bit_exact_identity(name: str, kind: str, mode: str) -> None:
    ts = make_tokens(kind, 2, 12, n_protect=1)
    comp = build(name, mode, 0.0)
    plan = comp.plan(ts, CompressContext())
    out = comp.apply(plan, ts).check()
    assert torch.equal(plan.keep_mask, ts.valid)
    assert torch.equal(comp.restore(plan, out.x, carried=ts.x), ts.x)
    assert torch.equal(comp.restore(plan, f(out.x), carried=f(ts.x)), f(ts.x))
    assert torch.equal(comp.restore(plan, out.pos, carried=ts.pos), ts.pos)
    assert torch.equal(out.dense(), ts.dense()) and torch.equal(out.size[out.valid], ts.size[ts.valid])


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name: str) -> None:
    ts = make_tokens("superpoints", 2, 18, seed=2)
    outs = []
    for _ in range(2):
        comp = build(name, "gather", 0.7)
        plan = comp.plan(ts, CompressContext())
        outs.append((plan.assign, comp.apply(plan, ts).x))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@settings(max_examples=40, deadline=None, database=None)
@given(
    name=st.sampled_from(NAMES),
    kind=st.sampled_from(["grid", "superpoints"]),
    b=st.integers(1, 3),
    n=st.integers(1, 24),
    strength=st.floats(0.0, 1.0),
    n_protect=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_invariants_on_random_inputs(
    name: str, kind: str, b: int, n: int, strength: float, n_protect: int, seed: int
) -> None:
    ts = make_tokens(kind, b, n, seed=seed, n_protect=n_protect)
    ys = []
    for mode in ("mask", "gather"):
        comp = build(name, mode, strength)
        plan = comp.plan(ts, CompressContext())
        out = comp.apply(plan, ts).check()
        assert not (plan.keep_mask & ~ts.valid).any() and plan.keep_mask[ts.protect].all()
        assert torch.equal(out.x[out.protect], ts.x[ts.protect])
        ys.append(comp.restore(plan, f(out.x), carried=f(ts.x)))
    assert torch.allclose(ys[0], ys[1], atol=1e-5)
