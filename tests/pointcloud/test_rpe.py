"""Contextual relative position encoding (rgsan-mdin §4.3): bins, and the pure-PyTorch terms against a naive loop."""

from __future__ import annotations

import pytest
import torch

from pointcloud.rgsan.rpe import ContextualRPE, reference_rpe, relative_bins
from pointcloud.rgsan.tlm import ConditionalCrossAttention


def test_bins_by_hand() -> None:
    key = torch.zeros(1, 1, 3)
    query = torch.tensor([[[0.05, -0.05, 0.1], [2.5, -3.0, 2.35], [-2.4, 0.0, -0.1]]])
    idx = relative_bins(query, key)
    assert idx.shape == (3, 1, 3, 1)
    # floor(r / 0.1) + 24, clamped to [-24, 23] first: 0.05 -> 0 -> 24; -0.05 -> -1 -> 23; 0.1 -> 25;
    # 2.5 -> 25 clamped to 23 -> 47; -3.0 -> -30 clamped to -24 -> 0; 2.35 -> 23 -> 47; -2.4 -> -24 -> 0;
    # -0.1 -> -1 -> 23.
    assert idx[:, 0, :, 0].T.tolist() == [[24, 23, 25], [47, 0, 47], [0, 24, 23]]


def test_bins_use_query_minus_key() -> None:
    idx = relative_bins(torch.zeros(1, 1, 3), torch.tensor([[[0.25, 0.0, 0.0]]]))
    assert idx[:, 0, 0, 0].tolist() == [24 - 3, 24, 24]  # r = -0.25 -> floor(-2.5) = -3


def _inputs(seed: int, b: int = 2, h: int = 3, t: int = 4, s: int = 6, c: int = 5, half: int = 4):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, c, generator=g, dtype=torch.float64)
    k = torch.randn(b, h, s, c, generator=g, dtype=torch.float64)
    attn = torch.randn(b, h, t, s, generator=g, dtype=torch.float64).softmax(-1)
    attn[0, 0, 0, :2] = 0.0  # masked entries contribute nothing
    idx = relative_bins(torch.randn(b, t, 3, generator=g) * 0.4, torch.randn(b, s, 3, generator=g) * 0.4, half=half)
    return q, k, attn, idx


@pytest.mark.parametrize(("query", "key", "value"), [(True, True, True), (True, False, True), (False, True, False)])
def test_fast_terms_equal_naive_loop(query: bool, key: bool, value: bool) -> None:
    torch.manual_seed(0)
    rpe = ContextualRPE(num_heads=3, head_dim=5, half=4, query=query, key=key, value=value).double()
    q, k, attn, idx = _inputs(1)
    assert set(idx.unique().tolist()) - set(range(8)) == set()
    bias_ref, value_ref = reference_rpe(rpe, q, k, attn, idx)
    bias = rpe.logit_bias(q, k, idx)
    torch.testing.assert_close(torch.as_tensor(bias, dtype=torch.float64).expand_as(bias_ref), bias_ref,
                               rtol=0, atol=1e-5)
    got_value = rpe.value_term(attn, idx)
    torch.testing.assert_close(torch.as_tensor(got_value, dtype=torch.float64).expand_as(value_ref), value_ref,
                               rtol=0, atol=1e-5)
    assert bias_ref.abs().sum() > 0 or not (query or key)
    assert value_ref.abs().sum() > 0 or not value


def test_gradients_equal_naive_loop() -> None:
    torch.manual_seed(0)
    rpe = ContextualRPE(num_heads=2, head_dim=3, half=3).double()
    q, k, attn, idx = _inputs(2, b=2, h=2, t=3, s=4, c=3, half=3)
    w_bias = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    w_value = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    grads = []
    for fn in ("fast", "naive"):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, attn)]
        rpe.zero_grad()
        if fn == "fast":
            bias, value = rpe.logit_bias(leaves[0], leaves[1], idx), rpe.value_term(leaves[2], idx)
        else:
            bias, value = reference_rpe(rpe, leaves[0], leaves[1], leaves[2], idx)
        ((bias * w_bias).sum() + (value * w_value).sum()).backward()
        grads.append([x.grad for x in leaves] + [p.grad.clone() for p in rpe.parameters()])
    for fast, naive in zip(*grads):
        torch.testing.assert_close(fast, naive, rtol=0, atol=1e-10)


def test_cross_attention_rpe_changes_logits_only_through_relative_offsets() -> None:
    # Shifting queries and keys by the same offset leaves every bin (hence the attention) unchanged.
    torch.manual_seed(0)
    attn = ConditionalCrossAttention(dim=16, num_heads=2, use_rpe=True)
    x, sine = torch.randn(1, 3, 16), torch.randn(1, 3, 16)
    mem, kpos = torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    qp, kp = torch.rand(1, 3, 3), torch.rand(1, 5, 3)
    out = attn(x, sine, mem, kpos, None, relative_bins(qp, kp))
    shift = torch.tensor([[[1.0, -2.0, 0.5]]])
    out_shifted = attn(x, sine, mem, kpos, None, relative_bins(qp + shift, kp + shift))
    torch.testing.assert_close(out, out_shifted)
    far = attn(x, sine, mem, kpos, None, relative_bins(qp + 1.0, kp))
    assert not torch.allclose(out, far)
