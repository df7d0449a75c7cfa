"""Object context (pointcloud/rgsan/objects.py): groups, their geometry, the classifier, and the model flag."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_rgsan import RECORDS, batch_of, build

from grounding.text import TextEncoder
from pointcloud.rgsan import RGSANCriterion
from pointcloud.rgsan.affinity import group_superpoints
from pointcloud.rgsan.objects import OBJECT_GEOMETRY_DIM, ObjectContext, instance_groups, object_geometry


def test_instance_groups_by_hand() -> None:
    # Scene 0: superpoints 0..2 (instances 4, 4, none); scene 1: 3..4 (instance 4 again: another object, none).
    labels = torch.tensor([4, 4, -1, 4, -1])
    groups = instance_groups(labels, torch.tensor([0, 3, 5]))
    assert groups[0] == groups[1]
    assert len({int(groups[i]) for i in (0, 2, 3, 4)}) == 4  # the unannotated ones and scene 1's 4 stand alone
    assert sorted(groups.unique().tolist()) == [0, 1, 2, 3]


def _box(lo: list[float], hi: list[float], n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.tensor(lo) + torch.rand(n, 3, generator=gen) * (torch.tensor(hi) - torch.tensor(lo))


def test_object_geometry_by_hand() -> None:
    # Group 0: four points at the corners of a 2 m x 1 m rectangle, 1 m above the floor point; group 1: the floor.
    xyz = torch.tensor([[0.0, 0, 1], [2, 0, 1], [0, 1, 1], [2, 1, 1], [5, 5, 0]])
    colour = torch.tensor([[1.0, 0, 0]] * 4 + [[0.0, 0, 1]])
    group = torch.tensor([0, 0, 0, 0, 1])
    geo = object_geometry(torch.cat([colour, xyz], 1), group, torch.zeros(5, dtype=torch.long), 2)
    assert geo.shape == (2, OBJECT_GEOMETRY_DIM)
    torch.testing.assert_close(geo[0, :3], torch.tensor([1.0, 0, 0]))
    torch.testing.assert_close(geo[0, 3:5], torch.tensor([1.0, 1.0]))   # bottom and top above the floor
    torch.testing.assert_close(geo[0, 5:7], torch.tensor([1.0, 0.5]))   # sqrt of the covariance eigenvalues
    assert float(geo[0, 7]) == 0.0                                      # flat: no vertical spread
    assert abs(float(geo[0, 8]) - math.log(4) / 10) < 1e-6 and float(geo[1, 8]) == 0.0


def test_object_geometry_is_invariant_to_rotation_about_z() -> None:
    gen = torch.Generator().manual_seed(0)
    xyz = torch.cat([_box([0, 0, 0], [1.6, 0.7, 0.75], 300, gen), _box([2, 2, 0], [2.5, 2.5, 1.0], 200, gen)])
    colour = torch.rand(500, 3, generator=gen) * 2 - 1
    group = torch.cat([torch.zeros(300, dtype=torch.long), torch.ones(200, dtype=torch.long)])
    scene = torch.zeros(500, dtype=torch.long)
    a = 0.7
    rot = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    before = object_geometry(torch.cat([colour, xyz], 1), group, scene, 2)
    after = object_geometry(torch.cat([colour, xyz @ rot.T + torch.tensor([3.0, -1, 0.2])], 1), group, scene, 2)
    torch.testing.assert_close(before, after, atol=1e-4, rtol=1e-4)
    assert float(before[0, 5]) > float(before[0, 6])                    # the table is longer than it is wide


def test_object_context_rows_and_learning() -> None:
    # Flat wide objects are class 0, tall narrow ones class 1: the head learns them from the geometry alone
    # (features are noise), and every superpoint of a group gets the same context row.
    gen = torch.Generator().manual_seed(1)
    pts, group_of_point, labels = [], [], []
    for k in range(16):
        tall = k % 2
        size = [0.5, 0.5, 1.8] if tall else [1.8, 0.9, 0.4]
        pts.append(_box([3.0 * k, 0, 0], [3.0 * k + size[0], size[1], size[2]], 60, gen))
        group_of_point.append(torch.full((60,), k))
        labels.append(tall)
    xyz = torch.cat(pts)
    feat = torch.cat([torch.zeros(len(xyz), 3), xyz], 1)
    superpoint = torch.arange(len(xyz)) // 20                   # 3 superpoints per object
    groups = torch.arange(48) // 3
    sp_feats = torch.randn(48, 8, generator=gen)
    torch.manual_seed(0)
    head = ObjectContext(8, 2, hidden=32)
    context, logits = head(sp_feats, groups, feat, superpoint, torch.zeros(len(xyz), dtype=torch.long))
    assert context.shape == (48, 2 + OBJECT_GEOMETRY_DIM) and logits.shape == (16, 2)
    torch.testing.assert_close(context[0], context[2])
    torch.testing.assert_close(context[:, :2].sum(-1), torch.ones(48))
    target = torch.tensor(labels)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        _, logits = head(sp_feats, groups, feat, superpoint, torch.zeros(len(xyz), dtype=torch.long))
        loss = torch.nn.functional.cross_entropy(logits, target)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.1 * first
    assert (logits.argmax(-1) == target).all()


def test_model_object_context(scenes: Path) -> None:
    encoder = TextEncoder()
    with pytest.raises(ValueError, match="aux_affinity"):
        build(encoder, object_context=True, aux_semantic_classes=20)
    with pytest.raises(ValueError, match="aux_semantic_classes"):
        build(encoder, object_context=True, aux_affinity=True)
    batch = batch_of(scenes, RECORDS)
    model = build(encoder, aux_affinity=True, aux_semantic_classes=20, object_context=True, affinity_cell=0.1)
    out = model.train()(batch)
    # Training: the annotated instances are the groups.
    assert torch.equal(out.object_groups, instance_groups(batch.sp_ins_label, batch.sp_offsets))
    assert out.object_logits.shape == (int(out.object_groups.max()) + 1, 20)
    terms = RGSANCriterion(instance_ranking=True)(out, batch)
    assert torch.isfinite(terms["loss_object_class"]) and float(terms["loss_object_class"]) > 0
    (terms["loss_bce"] + terms["loss_object_class"]).backward()
    assert model.backbone.input_conv[0].weight.grad.abs().sum() > 0
    assert model.object_context.classifier[0].weight.grad.abs().sum() > 0
    # Evaluation: the affinity head's groups (relabelled 0..G-1), whatever the annotations say.
    with torch.no_grad():
        out = model.eval()(batch)
    expected = group_superpoints(out.sp_edges, out.sp_edge_logits.sigmoid(), batch.sp_offsets)
    assert torch.equal(out.object_groups, torch.unique(expected, return_inverse=True)[1])
