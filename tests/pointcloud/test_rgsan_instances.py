"""Instance-centre offsets, superpoint affinities, grouping, snapped masks and the instance ranking loss
(pointcloud/rgsan/instances.py, affinity.py), by hand."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from test_rgsan import RECORDS, batch_of, build

from datasets.refer3d import NO_MAJORITY
from pointcloud.rgsan import RGSANCriterion, RGSANPostprocess
from pointcloud.rgsan.affinity import (
    PAIR_GEOMETRY_DIM,
    AffinityHead,
    edge_targets,
    group_superpoints,
    pair_geometry,
)
from pointcloud.rgsan.instances import (
    group_by_centres,
    instance_center_targets,
    instance_ranking_loss,
    snap_to_groups,
)
from pointcloud.superpoint_graph import superpoint_edges
from pointcloud.superpoint_pool import superpoint_geometry


def test_instance_center_targets_by_hand() -> None:
    # Scene 0: instance 4 at x = 0 and 2 (centre 1), instance 7 at x = 10; scene 1: instance 4 at x = 5 (same id,
    # other scene: its own centre); one unannotated point.
    coord = torch.tensor([[0.0, 0, 0], [2, 0, 0], [10, 0, 0], [5, 1, 0], [9, 9, 9]])
    instance = torch.tensor([4, 4, 7, 4, -1])
    point_scene = torch.tensor([0, 0, 0, 1, 1])
    sp_ins_label = torch.tensor([4, 7, NO_MAJORITY, 4, -1, 3])  # 3 exists nowhere
    sp_offsets = torch.tensor([0, 3, 6])
    targets, valid = instance_center_targets(coord, instance, point_scene, sp_ins_label, sp_offsets)
    assert valid.tolist() == [True, True, False, True, False, False]
    torch.testing.assert_close(targets[valid], torch.tensor([[1.0, 0, 0], [10, 0, 0], [5, 1, 0]]))
    assert (targets[~valid] == 0).all()


def test_group_by_centres_is_transitive_and_labels_by_smallest_index() -> None:
    # 0 - 2 - 3 chained 0.2 m apart (0 and 3 are 0.6 m apart), 1 far away, 4 alone.
    centres = torch.tensor([[0.0, 0, 0], [5, 5, 5], [0.2, 0, 0], [0.4, 0.0, 0.0], [0, 3, 0]])
    assert group_by_centres(centres, 0.25).tolist() == [0, 1, 0, 0, 4]
    assert group_by_centres(centres, 0.1).tolist() == [0, 1, 2, 3, 4]
    assert group_by_centres(torch.zeros(0, 3), 0.3).shape == (0,)


def test_snap_to_groups_picks_the_best_covered_group() -> None:
    groups = torch.tensor([0, 0, 2, 2, 2])
    weight = torch.tensor([10, 30, 1, 1, 2])
    # Row 0: group 0 mean (0.9*10 + 0.1*30) / 40 = 0.3, group 2 (0.6 + 0.6 + 2*0.6) / 4 = 0.6 -> group 2.
    # Row 1: group 0 = 0.9, group 2 = 0.5 -> group 0, although superpoint 4 alone would pass 0.5.
    prob = torch.tensor([[0.9, 0.1, 0.6, 0.6, 0.6], [0.9, 0.9, 0.0, 0.0, 1.0]])
    assert snap_to_groups(prob, groups, weight).tolist() == [[False, False, True, True, True],
                                                            [True, True, False, False, False]]


def _outputs(batch, logits: torch.Tensor, centres: torch.Tensor | None) -> SimpleNamespace:
    d = len(batch)
    return SimpleNamespace(pred_masks=logits[None].repeat(7, 1, 1), pred_scores=torch.ones(7, d),
                           pred_positions=torch.zeros(7, d, 3), sp_padding=batch.sp_padding_mask()[batch.desc_scene],
                           output_words=["box"] * d, rules=["subject"] * d, sp_instance_centers=centres)


def _neighbour_box(batch) -> torch.Tensor:
    """(D, S_max) float: 1 on the superpoints of one box of the scene that is not the description's target."""
    spill = torch.zeros_like(batch.gt_spmask, dtype=torch.float)
    for j in range(len(batch)):
        b = int(batch.desc_scene[j])
        labels = batch.sp_ins_label[int(batch.sp_offsets[b]):int(batch.sp_offsets[b + 1])]
        other = [o for o in (10, 11, 12, 13) if (o,) != batch.object_ids[j]][0]
        spill[j, :len(labels)] = (labels == other).float()
    return spill


def test_snapped_postprocess_removes_spill_onto_other_instances(scenes: Path) -> None:
    batch = batch_of(scenes, RECORDS)
    targets, valid = instance_center_targets(batch.coord, batch.instance, batch.point_scene, batch.sp_ins_label,
                                             batch.sp_offsets)
    centres = torch.where(valid[:, None], targets, batch.sp_center)  # exact centres; floor stays in place
    gt = batch.gt_spmask.float()
    # Every description's mask spills over one neighbouring box at probability 0.6 (target: 0.9), so the plain
    # postprocess answers with two boxes.
    spill = _neighbour_box(batch)
    logits = torch.logit(torch.clamp(0.9 * gt + 0.6 * spill, 0.01, 0.99))
    plain = RGSANPostprocess()(_outputs(batch, logits, centres), batch)
    snapped = RGSANPostprocess(snap_to_instances=True, cluster_radius=0.05)(_outputs(batch, logits, centres), batch)
    gts = batch.eval_gt_masks()
    for j, (p, s) in enumerate(zip(plain, snapped)):
        if batch.gt_spmask[j].any():
            assert p.pred_mask.sum() > gts[j].sum()            # the spill is in the plain answer
            assert torch.equal(s.pred_mask, gts[j])            # and gone from the snapped one
    with pytest.raises(ValueError, match="aux_instance_offsets"):
        RGSANPostprocess(snap_to_instances=True)(_outputs(batch, logits, None), batch)


def test_offset_head_and_loss(scenes: Path) -> None:
    from grounding.text import TextEncoder

    batch = batch_of(scenes, RECORDS)
    encoder = TextEncoder()
    model = build(encoder, aux_instance_offsets=True).train()
    out = model(batch)
    assert out.sp_instance_centers.shape == (int(batch.sp_offsets[-1]), 3)
    terms = RGSANCriterion()(out, batch)
    targets, valid = instance_center_targets(batch.coord, batch.instance, batch.point_scene, batch.sp_ins_label,
                                             batch.sp_offsets)
    expected = (out.sp_instance_centers - targets).abs().sum(-1)[valid].mean()
    torch.testing.assert_close(terms["loss_offset"], expected)
    terms["loss_offset"].backward()
    assert model.offset_head[0].weight.grad.abs().sum() > 0
    assert model.backbone.input_conv[0].weight.grad.abs().sum() > 0   # the U-Net learns instance-aware features
    assert "loss_offset" not in RGSANCriterion()(build(encoder)(batch), batch)  # the published model


# ---------------------------------------------------------------------------------------------- affinity
def test_edge_targets_by_hand() -> None:
    edges = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4], [0, 4]])
    labels = torch.tensor([5, 5, 7, NO_MAJORITY, -1])
    target, valid = edge_targets(edges, labels)
    assert target.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert valid.tolist() == [True, True, False, False, False]


def test_instance_ranking_loss_by_hand() -> None:
    # One scene, superpoints 0, 1 on instance 5 (1 and 3 points), 2 on instance 7 (2 points), 3 in none.
    # Description 0 targets instance 5; description 1 has no GT superpoint and is left out.
    p = torch.tensor([0.5, 0.5, 0.2, 0.9])
    logits = torch.logit(p)[None, None].repeat(2, 2, 1).requires_grad_(True)  # (L + 1 = 2, D = 2, S = 4)
    gt = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    loss = instance_ranking_loss(logits, gt, torch.tensor([5, 5, 7, -1]), torch.tensor([1, 3, 2, 4]),
                                 torch.tensor([0, 4]), torch.tensor([0, 2]))
    # m_5 = (0.5 * 1 + 0.5 * 3) / 4 = 0.5, m_7 = 0.2; superpoint 3 is no candidate however high it scores.
    per_prediction = math.log(0.7 + 1e-6) - math.log(0.5 + 1e-6)
    assert abs(loss.item() - 2 * per_prediction) < 1e-5
    loss.backward()
    assert (logits.grad[:, 0, :2] < 0).all() and (logits.grad[:, 0, 2] > 0).all()  # up on the target, down elsewhere
    assert (logits.grad[:, 0, 3] == 0).all() and (logits.grad[:, 1] == 0).all()


def test_affinity_head_and_loss(scenes: Path) -> None:
    from grounding.text import TextEncoder

    batch = batch_of(scenes, RECORDS)
    encoder = TextEncoder()
    model = build(encoder, aux_affinity=True, affinity_cell=0.1).train()
    out = model(batch)
    edges, _ = superpoint_edges(batch.coord, batch.superpoint, batch.point_scene, 0.1)
    assert torch.equal(out.sp_edges, edges) and out.sp_edge_logits.shape == (len(edges),)
    terms = RGSANCriterion()(out, batch)
    target, ok = edge_targets(edges, batch.sp_ins_label)
    assert ok.any() and (target[ok] == 1).any() and ok.sum() < len(ok)  # box-box edges; floor edges ignored
    torch.testing.assert_close(terms["loss_affinity"],
                               F.binary_cross_entropy_with_logits(out.sp_edge_logits[ok], target[ok]))
    terms["loss_affinity"].backward()
    assert model.affinity_head.mlp[0].weight.grad.abs().sum() > 0
    assert model.backbone.input_conv[0].weight.grad.abs().sum() > 0  # the U-Net learns to separate objects
    published = build(encoder)(batch)
    assert published.sp_edges is None and "loss_affinity" not in RGSANCriterion()(published, batch)


def test_affinity_head_learns_to_separate_the_boxes(scenes: Path) -> None:
    # The boxes stand about 0.7 m apart; 0.5 m cells make neighbouring boxes' superpoints adjacent.
    batch = batch_of(scenes, RECORDS)
    edges, contact = superpoint_edges(batch.coord, batch.superpoint, batch.point_scene, 0.5)
    num_sp = int(batch.sp_offsets[-1])
    geom = superpoint_geometry(batch.feat, batch.superpoint, batch.point_scene, num_sp)
    pairs = pair_geometry(batch.feat, batch.superpoint, geom, batch.sp_center, edges, contact)
    assert pairs.shape == (len(edges), PAIR_GEOMETRY_DIM) and torch.isfinite(pairs).all()
    target, ok = edge_targets(edges, batch.sp_ins_label)
    assert (target[ok] == 0).any() and (target[ok] == 1).any()
    torch.manual_seed(0)
    head = AffinityHead(channels=4)
    feats = torch.zeros(num_sp, 4)  # no learned features: the pair geometry must do it
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = F.binary_cross_entropy_with_logits(head(feats, edges, pairs)[ok], target[ok])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    assert loss.item() < 0.1 * first
    assert ((head(feats, edges, pairs)[ok] > 0).float() == target[ok]).all()


def test_snapped_postprocess_with_affinity_groups(scenes: Path) -> None:
    batch = batch_of(scenes, RECORDS)
    edges, _ = superpoint_edges(batch.coord, batch.superpoint, batch.point_scene, 0.1)
    target, ok = edge_targets(edges, batch.sp_ins_label)
    edge_logits = torch.where(ok & (target > 0), 6.0, -6.0)  # perfect affinities; floor superpoints stay alone
    gt = batch.gt_spmask.float()
    spill = _neighbour_box(batch)
    # The target is covered at 0.9 except one superpoint at 0.3; a neighbour box at 0.6: plain thresholding
    # loses part of the target and keeps the neighbour, the snapped answer is exactly the target box.
    low = torch.zeros_like(gt)
    for j in range(len(batch)):
        hits = torch.nonzero(gt[j]).flatten()
        if len(hits):
            low[j, hits[0]] = 1.0
    prob = torch.clamp(0.9 * gt - 0.6 * low + 0.6 * spill, 0.01, 0.99)
    outputs = _outputs(batch, torch.logit(prob), None)
    outputs.sp_edges, outputs.sp_edge_logits = edges, edge_logits
    snapped = RGSANPostprocess(snap_to_instances=True)(outputs, batch)
    plain = RGSANPostprocess()(outputs, batch)
    gts = batch.eval_gt_masks()
    for j, (p, s) in enumerate(zip(plain, snapped)):
        if batch.gt_spmask[j].any():
            assert not torch.equal(p.pred_mask, gts[j])
            assert torch.equal(s.pred_mask, gts[j])


def test_group_superpoints_scene_by_scene() -> None:
    # Scene 0 holds superpoints 0..2, scene 1 holds 3..4; ids are global and name each group by its smallest.
    edges = torch.tensor([[0, 1], [1, 2], [3, 4]])
    groups = group_superpoints(edges, torch.tensor([0.9, 0.1, 0.8]), torch.tensor([0, 3, 5]))
    assert groups.tolist() == [0, 0, 2, 3, 3]
    none = torch.zeros(0, 2, dtype=torch.long)
    assert group_superpoints(none, torch.zeros(0), torch.tensor([0, 2])).tolist() == [0, 1]


def test_affinity_balance_weighs_same_and_different_edges_by_hand() -> None:
    from pointcloud.rgsan.scene_objects import object_terms

    # Superpoints 0-2 on object 5, 3 on object 7, 4 unannotated: three "same" edges, one "different", one ignored.
    edges = torch.tensor([[0, 1], [1, 2], [0, 2], [2, 3], [3, 4]])
    logits = torch.tensor([2.0, 1.0, -0.5, 3.0, 0.7], requires_grad=True)
    outputs = SimpleNamespace(sp_edges=edges, sp_edge_logits=logits)
    batch = SimpleNamespace(sp_ins_label=torch.tensor([5, 5, 5, 7, -1]))
    per_edge = F.binary_cross_entropy_with_logits(logits[:4], torch.tensor([1.0, 1.0, 1.0, 0.0]), reduction="none")
    plain = object_terms(outputs, batch)["loss_affinity"]
    torch.testing.assert_close(plain, per_edge.mean())
    # a = 1: each kind of edge is half the loss, whatever the counts.
    balanced = object_terms(outputs, batch, affinity_balance=1.0)["loss_affinity"]
    torch.testing.assert_close(balanced, 0.5 * per_edge[:3].mean() + 0.5 * per_edge[3])
    # a = 0.5: weights n^-0.5 (3^-0.5 and 1), scaled so that they sum to the number of edges.
    w_same, w_diff = 3 ** -0.5, 1.0
    scale = 4 / (3 * w_same + w_diff)
    expected = scale * (w_same * per_edge[:3].sum() + w_diff * per_edge[3]) / 4
    torch.testing.assert_close(object_terms(outputs, batch, affinity_balance=0.5)["loss_affinity"], expected)
    balanced.backward()
    assert logits.grad[4] == 0 and logits.grad[3] > 0  # the ignored edge gets nothing; "different" is pushed down
