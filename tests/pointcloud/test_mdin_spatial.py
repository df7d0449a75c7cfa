"""MDIN's query-query attention with the pairwise offsets of the queries' objects (pointcloud/mdin/spatial.py)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from test_mdin import RECORDS, batch_of, build
from test_mdin_objects import HEADS

from datasets.transforms import TrainTransform
from grounding.text import TextEncoder
from pointcloud.mdin import MDINCriterion
from pointcloud.mdin.spatial import PairEmbedding, SpatialQueryAttention, pair_offsets
from pointcloud.superpoint_pool import pad_by_offsets


def test_pair_offsets_by_hand() -> None:
    pos = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 4.0, 12.0]]])
    pair = pair_offsets(pos)
    assert pair.shape == (1, 2, 2, 5)
    torch.testing.assert_close(pair[0, 0, 1], torch.tensor([3.0, 4.0, 12.0, 5.0, torch.log1p(torch.tensor(13.0))]))
    torch.testing.assert_close(pair[0, 1, 0, :3], torch.tensor([-3.0, -4.0, -12.0]))
    assert (pair[0, 0, 0] == 0).all()


def test_translation_invariant_permutation_equivariant_and_padding_ignored() -> None:
    torch.manual_seed(0)
    embed, attn = PairEmbedding(16), SpatialQueryAttention(32, 4, 16)
    x, pos = torch.randn(2, 6, 32), torch.randn(2, 6, 3)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    out = attn(x, embed(pos), pad)
    torch.testing.assert_close(attn(x, embed(pos + torch.tensor([5.0, -2.0, 1.0])), pad), out)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(attn(x[:, perm], embed(pos[:, perm]), pad[:, perm]), out[:, perm])
    # padding queries are never attended: changing them leaves the real queries' outputs unchanged
    x2, pos2 = x.clone(), pos.clone()
    x2[1, 4:] += 10.0
    pos2[1, 4:] -= 7.0
    torch.testing.assert_close(attn(x2, embed(pos2), pad)[1, :4], out[1, :4])
    # the offsets matter: moving one real query changes what the others gather
    pos3 = pos.clone()
    pos3[0, 2] += 3.0
    assert (attn(x, embed(pos3), pad)[0, [0, 1, 3]] - out[0, [0, 1, 3]]).abs().max() > 1e-3


def test_matches_attention_that_projects_every_pair() -> None:
    """The module averages the pair embeddings before projecting them (values) and projects the queries instead of
    the pairs (relative keys); both are exact rewrites of the per-pair formula."""
    torch.manual_seed(1)
    n, q, d, h = 3, 7, 64, 4
    embed, attn = PairEmbedding(16), SpatialQueryAttention(d, h, 16, relative_keys=True)
    x, e = torch.randn(n, q, d), embed(torch.randn(n, q, 3))
    qs, ks, vs = attn.qkv(x).view(n, q, 3, h, d // h).permute(2, 0, 3, 1, 4)
    keys = attn.pair_key(e).view(n, q, q, h, d // h)
    scores = qs @ ks.transpose(-1, -2) + torch.einsum("nhid,nijhd->nhij", qs, keys)
    a = F.softmax(scores / math.sqrt(d // h) + attn.pair_bias(e).permute(0, 3, 1, 2), -1)
    values = a @ vs + torch.einsum("nhij,nijhc->nhic", a, attn.pair_value(e).view(n, q, q, h, d // h))
    expected = attn.out(values.transpose(1, 2).reshape(n, q, d))
    torch.testing.assert_close(attn.delta(x, e), expected, atol=1e-5, rtol=1e-5)


def _train_near_marked(see_offsets: bool, steps: int = 300) -> tuple[float, float]:
    """Train one spatial attention layer and a linear head on "is this object within 1 m of the marked one?";
    returns (held-out accuracy, base rate). The contents carry only the mark; ``see_offsets=False`` zeroes the
    positions, so only the mark is left."""
    torch.manual_seed(0)
    n, q, d = 64, 8, 32
    embed, attn, head = PairEmbedding(32), SpatialQueryAttention(d, 4, 32), torch.nn.Linear(d, 1)
    mark = torch.nn.Parameter(torch.randn(d))
    opt = torch.optim.Adam([*embed.parameters(), *attn.parameters(), *head.parameters(), mark], lr=3e-3)

    def sample() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = torch.rand(n, q, 3) * torch.tensor([3.0, 3.0, 0.0])
        anchor = torch.randint(q, (n,))
        x = torch.zeros(n, q, d)
        x[torch.arange(n), anchor] = 1.0
        near = (pos - pos[torch.arange(n), anchor][:, None]).norm(dim=-1) < 1.0
        return x, pos * float(see_offsets), near.float()

    def logits(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return head(attn(x * mark, embed(pos))).squeeze(-1)

    x, pos, label = sample()
    for _ in range(steps):
        xb, pb, lb = sample()
        loss = F.binary_cross_entropy_with_logits(logits(xb, pb), lb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = float(((logits(x, pos) > 0) == (label > 0.5)).float().mean())
    return accuracy, max(float(label.mean()), 1 - float(label.mean()))


def test_learns_a_relation_that_needs_positions() -> None:
    accuracy, base = _train_near_marked(see_offsets=True)
    assert accuracy > max(0.9, base + 0.1), (accuracy, base)
    # The same training with the offsets zeroed can only learn "the marked object is near itself" (1 in 8, plus the
    # majority answer elsewhere: 0.74 on this sample).
    blind, _ = _train_near_marked(see_offsets=False)
    assert blind < 0.8 and accuracy > blind + 0.15, (blind, accuracy)


def test_mdin_with_relative_positions(scenes: Path, encoder: TextEncoder) -> None:
    batch = batch_of(scenes, RECORDS, TrainTransform())
    model = build(encoder, relative_positions=True, pair_dim=16, relative_keys=True, class_match=True,
                  **HEADS).train()
    assert all(isinstance(layer.qqa, SpatialQueryAttention) for layer in model.layers)
    out = model(batch)
    # each query sits at the point-weighted centre of its seed's object (the annotated instance in training)
    centres, _ = pad_by_offsets(batch.sp_center, batch.sp_offsets)
    pos = model._query_positions(batch, out.object_groups, centres, batch.desc_scene, out.query_sp)
    for d in range(len(batch.records)):
        b = int(batch.desc_scene[d])
        lo = int(batch.sp_offsets[b])
        points = batch.point_slice(b)
        for q in range(out.query_sp.shape[1]):
            if not out.query_valid[d, q]:
                continue
            group = out.object_groups[lo + int(out.query_sp[d, q])]
            on = out.object_groups[batch.superpoint[points]] == group
            torch.testing.assert_close(pos[d, q], batch.coord[points][on].mean(0), atol=1e-4, rtol=1e-4)
    terms = MDINCriterion(eos_coef=1.0)(out, batch)
    sum(terms.values()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.pair_embedding.mlp[0].weight.grad.abs().sum() > 0
    # outside training the queries sit on the affinity groups
    model.eval()
    with torch.no_grad():
        assert model(batch).pred_masks.isfinite().all()
