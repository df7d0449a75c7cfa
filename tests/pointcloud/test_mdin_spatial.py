"""MDIN's query-query attention with the pairwise offsets of the queries' objects (pointcloud/mdin/spatial.py)."""

from __future__ import annotations

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


def test_learns_a_relation_that_needs_positions() -> None:
    """"Is this object within 1 m of the marked one?": the contents carry only the mark, so without the offsets
    the task is at chance; one spatial attention layer learns it."""
    torch.manual_seed(0)
    n, q, d = 64, 8, 32
    embed, attn, head = PairEmbedding(32), SpatialQueryAttention(d, 4, 32), torch.nn.Linear(d, 1)
    mark = torch.nn.Parameter(torch.randn(d))
    params = [*embed.parameters(), *attn.parameters(), *head.parameters(), mark]
    opt = torch.optim.Adam(params, lr=3e-3)

    def sample() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = torch.rand(n, q, 3) * torch.tensor([3.0, 3.0, 0.0])
        anchor = torch.randint(q, (n,))
        x = torch.zeros(n, q, d)
        x[torch.arange(n), anchor] = 1.0
        near = (pos - pos[torch.arange(n), anchor][:, None]).norm(dim=-1) < 1.0
        return x, pos, near.float()

    def accuracy(x, pos, label) -> float:
        with torch.no_grad():
            logit = head(attn(x * mark, embed(pos))).squeeze(-1)
        return float(((logit > 0) == (label > 0.5)).float().mean())

    x, pos, label = sample()
    base = max(float(label.mean()), 1 - float(label.mean()))
    for _ in range(300):
        xb, pb, lb = sample()
        loss = F.binary_cross_entropy_with_logits(head(attn(xb * mark, embed(pb))).squeeze(-1), lb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy(x, pos, label) > max(0.9, base + 0.1), (accuracy(x, pos, label), base)


def test_mdin_with_relative_positions(scenes: Path, encoder: TextEncoder) -> None:
    batch = batch_of(scenes, RECORDS, TrainTransform())
    model = build(encoder, relative_positions=True, pair_dim=16, class_match=True, **HEADS).train()
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
