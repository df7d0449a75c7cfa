"""ScorePrune: which tokens it keeps, per-window budgets, carried restore, learned-scorer gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grounding.compress import Budget, CompressContext, CompressionSchedule, ScorePrune
from grounding.tokens import TokenSet


def test_keynorm_keeps_the_largest_norms() -> None:
    norms = torch.tensor([[1.0, 5.0, 2.0, 4.0, 3.0, 0.5]])
    x = norms.unsqueeze(-1) * torch.tensor([0.6, 0.8])
    ts = TokenSet.from_grid(x, grid=(2, 3))
    plan = ScorePrune(k=3, scorer="keynorm").plan(ts)
    assert plan.kept_index.tolist() == [[1, 3, 4]] and torch.allclose(plan.scores, norms)
    assert ScorePrune(k=2, scorer="keynorm", largest=False).plan(ts).kept_index.tolist() == [[0, 5]]
    keys = torch.zeros(1, 2, 6, 2)  # (B, H, N, D): head-averaged norm
    keys[0, :, 0] = 9.0
    plan = ScorePrune(k=1, scorer="keynorm").plan(ts, CompressContext(extras={"keys": keys}))
    assert plan.kept_index.tolist() == [[0]]


def test_extras_scores_and_ties() -> None:
    ts = TokenSet.from_grid(torch.randn(1, 2, 3, 4))
    scores = torch.tensor([[0.2, 0.9, 0.9, 0.1, 0.9, 0.0]])
    plan = ScorePrune(k=2, scorer="extras").plan(ts, CompressContext(extras={"scores": scores}))
    assert plan.kept_index.tolist() == [[1, 2]]  # equal scores keep the lower index
    with pytest.raises(ValueError, match="extras\\['scores'\\]"):
        ScorePrune(scorer="extras").plan(ts)
    with pytest.raises(ValueError, match="needs dim"):
        ScorePrune(scorer="learned")
    with pytest.raises(ValueError, match="scorer"):
        ScorePrune(scorer="random")


@pytest.mark.parametrize("mode", ["mask", "gather"])
def test_per_window_budget_never_empties_a_window(mode: str) -> None:
    torch.manual_seed(0)
    ts = TokenSet.from_grid(torch.randn(2, 10, 10, 4), window_size=4)  # windows of 16, 8 and 4 tokens
    ts.protect[:, :3] = True
    out, plan = ScorePrune(ratio=0.2, scorer="keynorm", mode=mode)(ts)
    out.check()
    per_window = torch.zeros(2, 9, dtype=torch.long).scatter_add_(1, out.window_id, out.valid.long())
    # floor(0.2 * n) with a floor of 1 per window; window 0 has 13 candidates + 3 protected.
    assert per_window[0].tolist() == [2 + 3, 3, 1, 3, 3, 1, 1, 1, 1]
    glob = ScorePrune(ratio=0.2, scorer="keynorm", scope="global", mode=mode)(ts)[0]
    assert glob.num_tokens.tolist() == [3 + 19, 3 + 19]  # floor(0.2 * 97) + protected


def test_carried_restore_scatters_kept_outputs_into_pre_plan_features() -> None:
    torch.manual_seed(1)
    valid = torch.tensor([[True] * 8, [True] * 5 + [False] * 3])
    ts = TokenSet.from_superpoints(torch.randn(2, 8, 3), torch.randn(2, 8, 3), torch.full((2, 8), 4), valid)
    for mode in ("mask", "gather"):
        comp = ScorePrune(ratio=0.5, scorer="keynorm", mode=mode)
        plan = comp.plan(ts)
        out = comp.apply(plan, ts)
        restored = comp.restore(plan, out.x * 10, carried=ts.x)
        keep = plan.keep_mask
        assert plan.num_kept.tolist() == [4, 2]
        assert torch.equal(restored[keep], ts.x[keep] * 10) and torch.equal(restored[~keep], ts.x[~keep])
        assert (comp.restore(plan, out.x * 10, fill=-1.0)[~keep] == -1.0).all()


def test_schedule_carries_dropped_tokens_from_their_stage() -> None:
    torch.manual_seed(2)
    ts = TokenSet.from_grid(torch.randn(1, 4, 4, 3))
    sched = CompressionSchedule({1: ScorePrune(ratio=0.5, scorer="keynorm")})
    tokens = ts
    for block in range(3):
        tokens = sched.step(tokens, block)
        tokens = tokens.with_x(tokens.x + 1.0)
    (plan,) = sched.plans
    restored = sched.restore(tokens.x)
    keep = plan.keep_mask
    assert torch.equal(restored[~keep], ts.x[~keep] + 1.0)  # dropped entering block 1: one +1 so far
    assert torch.equal(restored[keep], ts.x[keep] + 1.0 + 1.0 + 1.0)


@pytest.mark.parametrize("mode", ["mask", "gather"])
def test_learned_scorer_gets_gradients(mode: str) -> None:
    torch.manual_seed(0)
    ts = TokenSet.from_grid(torch.randn(2, 4, 4, 6), window_size=2)
    comp = ScorePrune(ratio=0.5, dim=6, mode=mode)
    f = nn.Linear(6, 6)
    plan = comp.plan(ts)
    out = comp.apply(plan, ts)
    assert torch.equal(out.x[out.valid], ts.x[plan.keep_mask])  # the keep weight is exactly 1 forward
    comp.restore(plan, f(out.x), carried=ts.x).square().sum().backward()
    grads = [p.grad for p in comp.mlp.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    with torch.no_grad():
        assert comp.plan(ts).slot_weight is None


def test_keep_ratio_one_and_budget_override() -> None:
    ts = TokenSet.from_grid(torch.randn(2, 3, 4, 5))
    comp = ScorePrune(ratio=1.0, dim=5, mode="mask")
    plan = comp.plan(ts)
    assert torch.equal(plan.keep_mask, ts.valid)
    comp.restore(plan, comp.apply(plan, ts).x).sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in comp.mlp.parameters())  # saturated: no gradient
    plan = ScorePrune(ratio=1.0, scorer="keynorm").plan(ts, CompressContext(budget=Budget(k=4), mode="mask"))
    assert plan.num_kept.tolist() == [4, 4] and plan.mode == "mask"


def test_fused_token_option() -> None:
    ts = TokenSet.from_grid(torch.randn(1, 2, 4, 3))
    out, plan = ScorePrune(k=3, scorer="keynorm", fuse=True)(ts)
    out.check()
    assert out.x.shape[1] == 4 and out.size[0].tolist() == [1.0, 1.0, 1.0, 5.0]
    dropped = ~plan.keep_mask[0]
    assert torch.allclose(out.x[0, 3], ts.x[0][dropped].mean(0))
