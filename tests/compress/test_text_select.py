"""TextGuidedTopK: which tokens it keeps, budgets, fused token, errors, gradients, configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from grounding.compress import Budget, CompressContext, Identity, TextGuidedTopK
from grounding.tokens import TokenSet

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "compress"


def tokens_with_cosines(cosines: list[list[float]]) -> tuple[TokenSet, torch.Tensor]:
    """Tokens whose cosine to the text direction e0 is ``cosines`` (vectors in the e0-e1 plane)."""
    cos = torch.tensor(cosines)
    x = torch.stack([cos, torch.sqrt(1 - cos**2), torch.zeros_like(cos)], dim=-1)
    b, n = cos.shape
    text = torch.zeros(b, 3)
    text[:, 0] = 2.5  # length must not matter
    return TokenSet.from_grid(x * 3.0, grid=(1, n)), text


def test_keeps_the_most_similar_tokens() -> None:
    ts, text = tokens_with_cosines([[0.1, 0.9, -0.5, 0.8, 0.3, 0.95], [0.7, -0.2, 0.6, 0.0, 0.65, -0.9]])
    comp = TextGuidedTopK(k=3, mode="gather")
    plan = comp.plan(ts, CompressContext(text=text))
    assert plan.kept_index.tolist() == [[1, 3, 5], [0, 2, 4]]  # ascending original order
    out = comp.apply(plan, ts).check()
    assert torch.equal(out.x[0], ts.x[0, [1, 3, 5]]) and torch.equal(out.pos[1], ts.pos[1, [0, 2, 4]])
    assert out.src_index[0].tolist() == [-1, 0, -1, 1, -1, 2]
    assert torch.allclose(
        plan.scores, torch.tensor([[0.1, 0.9, -0.5, 0.8, 0.3, 0.95], [0.7, -0.2, 0.6, 0.0, 0.65, -0.9]])
    )


def test_word_features_take_the_max_over_real_words_only() -> None:
    r = 0.5**0.5
    x = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, r, r]]])
    ts = TokenSet.from_grid(x, grid=(2, 2))
    words = torch.tensor([[[2.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]])  # e0, e2 real; e1 is padding
    ctx = CompressContext(text=words, text_mask=torch.tensor([[True, True, False]]))
    plan = TextGuidedTopK(k=2).plan(ts, ctx)
    assert torch.allclose(plan.scores, torch.tensor([[1.0, 0.0, 1.0, r]]))
    # Counting the padding word would score token 1 at 1.0 and keep [0, 1] by the index tie-break.
    assert plan.kept_index.tolist() == [[0, 2]]
    with pytest.raises(ValueError, match="no real text token"):
        no_words = torch.zeros(1, 3, dtype=torch.bool)
        TextGuidedTopK(k=2).plan(ts, CompressContext(text=words, text_mask=no_words))


def test_ties_keep_the_lower_index() -> None:
    ts = TokenSet.from_grid(torch.ones(1, 2, 4, 3))
    plan = TextGuidedTopK(k=3).plan(ts, CompressContext(text=torch.ones(1, 3)))
    assert plan.kept_index.tolist() == [[0, 1, 2]]


@pytest.mark.parametrize(
    "ratio,k,n,expected",
    [
        (0.29, None, 100, 29),
        (0.5, None, 7, 3),
        (0.01, None, 10, 1),
        (1.0, None, 9, 9),
        (0.5, 4, 10, 4),
        (0.5, 40, 10, 10),
    ],
)
def test_budget_counts(ratio: float, k: int | None, n: int, expected: int) -> None:
    comp = TextGuidedTopK(ratio=ratio, k=k)
    assert comp.budget.keep_counts(torch.tensor([n, 0])).tolist() == [expected, 0]
    assert expected == (min(k, n) if k else max(1, math.floor(ratio * n + 1e-9)))


def test_budget_rejects_bad_values() -> None:
    for kwargs in ({"ratio": 0.0}, {"ratio": 1.5}, {"k": 0}, {}):
        with pytest.raises(ValueError, match="Budget"):
            Budget(**kwargs)


def test_protected_tokens_do_not_count_against_the_budget() -> None:
    text = torch.randn(1, 4)
    x = torch.randn(1, 10, 4)
    x[0, :2] = text  # protected tokens also score highest: counting them would keep only 5
    ts = TokenSet.from_grid(x, grid=(2, 5))
    ts.protect[0, :2] = True
    plan = TextGuidedTopK(ratio=0.5).plan(ts, CompressContext(text=text))
    assert plan.num_kept.tolist() == [2 + 4] and plan.keep_mask[0, :2].all()


def test_padding_never_kept_even_when_it_matches_best() -> None:
    feats = torch.randn(2, 6, 3)
    text = torch.randn(2, 3)
    feats[:, 4:] = text.unsqueeze(1)  # padding slots align perfectly with the text
    valid = torch.tensor([[True] * 6, [True, True, True, True, False, False]])
    ts = TokenSet.from_superpoints(feats, torch.randn(2, 6, 3), torch.full((2, 6), 5), valid)
    plan = TextGuidedTopK(k=5, mode="gather").plan(ts, CompressContext(text=text))
    assert plan.num_kept.tolist() == [5, 4] and not (plan.keep_mask & ~valid).any()
    assert plan.kept_valid.tolist() == [[True] * 5, [True] * 4 + [False]]


def test_fused_token_is_size_weighted_mean_of_dropped() -> None:
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.5, 0.5]]])
    cents = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [4.0, 0, 0], [9.0, 9, 9]]])
    counts = torch.tensor([[2, 1, 3, 7]])
    valid = torch.tensor([[True, True, True, False]])
    ts = TokenSet.from_superpoints(feats, cents, counts, valid)
    for mode in ("gather", "mask"):
        comp = TextGuidedTopK(k=1, mode=mode, fuse=True)
        plan = comp.plan(ts, CompressContext(text=torch.tensor([[1.0, 0.0]])))
        out = comp.apply(plan, ts).check()
        fused = out.x[0, -1]
        assert out.valid[0, -1] and out.size[0, -1] == 4.0
        assert torch.allclose(fused, torch.tensor([0.0, (1 * 1 + 3 * 3) / 4]))
        assert torch.allclose(out.pos[0, -1], torch.tensor([(1 + 12) / 4, 0.0, 0.0]))
        assert out.src_index[0, 1] == out.src_index[0, 2] == out.x.shape[1] - 1 and out.src_index[0, 3] == -1
        # Restore without carried broadcasts the fused output to the tokens it absorbed.
        restored = comp.restore(plan, out.x * 10)
        assert torch.allclose(restored[0, 1], fused * 10) and torch.equal(restored[0, 3], torch.zeros(2))
    plan = TextGuidedTopK(ratio=1.0, fuse=True).plan(ts, CompressContext(text=torch.tensor([[1.0, 0.0]])))
    assert not plan.slot_valid[0, -1]  # nothing dropped: the fused slot stays empty


def test_dimension_mismatch_names_shapes_and_projection() -> None:
    ts = TokenSet.from_grid(torch.randn(2, 2, 3, 8))
    with pytest.raises(ValueError, match=r"\(2, 6, 8\).*C=8.*\(2, 5\).*C=5"):
        TextGuidedTopK().plan(ts, CompressContext(text=torch.randn(2, 5)))
    comp = TextGuidedTopK(k=2, text_dim=5, token_dim=8)
    assert comp.plan(ts, CompressContext(text=torch.randn(2, 4, 5))).num_kept.tolist() == [2, 2]
    with pytest.raises(ValueError, match="text_dim=5"):
        comp.plan(ts, CompressContext(text=torch.randn(2, 6)))
    with pytest.raises(ValueError, match="both"):
        TextGuidedTopK(text_dim=5)
    with pytest.raises(ValueError, match="CompressContext.text"):
        TextGuidedTopK().plan(ts, CompressContext())


def test_context_overrides_budget_and_mode() -> None:
    ts = TokenSet.from_grid(torch.randn(1, 4, 4, 3))
    comp = TextGuidedTopK(ratio=0.5, mode="gather")
    plan = comp.plan(ts, CompressContext(text=torch.randn(1, 3), budget=Budget(k=2), mode="mask", block=7))
    assert plan.mode == "mask" and plan.n_slots == 16 and plan.num_kept.tolist() == [2] and plan.block == 7


def test_gradient_reaches_scores_in_mask_mode() -> None:
    torch.manual_seed(0)
    ts = TokenSet.from_grid(torch.randn(2, 4, 4, 6, requires_grad=True))
    comp = TextGuidedTopK(ratio=0.5, mode="mask", text_dim=5, token_dim=6)
    text = torch.randn(2, 5, requires_grad=True)
    f = nn.Sequential(nn.Linear(6, 6), nn.GELU())
    plan = comp.plan(ts, CompressContext(text=text))
    out = comp.apply(plan, ts)
    assert torch.equal(out.x[out.valid], ts.x[plan.keep_mask])  # straight-through weight is exactly 1 forward
    comp.restore(plan, f(out.x), carried=ts.x).square().sum().backward()
    for g in (text.grad, comp.proj.weight.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    with torch.no_grad():
        assert comp.plan(ts, CompressContext(text=text)).slot_weight is None
    # Keep ratio 1 keeps everything: the keep weights saturate and no gradient reaches the scores.
    text6 = torch.randn(2, 6, requires_grad=True)
    full = TextGuidedTopK(ratio=1.0, mode="mask")
    plan = full.plan(ts, CompressContext(text=text6))
    full.restore(plan, f(full.apply(plan, ts).x)).sum().backward()
    assert text6.grad is not None and torch.equal(text6.grad, torch.zeros_like(text6))


def test_configs_instantiate() -> None:
    comp = instantiate(OmegaConf.load(CONFIGS / "text_select.yaml"))
    assert isinstance(comp, TextGuidedTopK) and comp.budget == Budget(ratio=0.5) and comp.mode == "gather"
    assert comp.fuse and comp.proj is None
    assert isinstance(instantiate(OmegaConf.load(CONFIGS / "none.yaml")), Identity)
    cfg = OmegaConf.merge(OmegaConf.load(CONFIGS / "text_select.yaml"), {"k": 64})
    assert instantiate(cfg).budget == Budget(k=64)
