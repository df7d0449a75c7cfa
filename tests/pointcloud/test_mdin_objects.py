"""MDIN's object-level additions: scene-object heads and losses, and answers made of whole predicted objects."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_mdin import RECORDS, WEIGHTS, batch_of, build, overfit

from datasets.transforms import TrainTransform
from grounding.metrics.gres import GeneralizedReferringMaskMetric
from grounding.text import TextEncoder
from pointcloud.mdin import MDINCriterion, MDINPostprocess
from pointcloud.superpoint_graph import superpoint_edges

OBJECT_TERMS = ("loss_semantic", "loss_affinity", "loss_object_class")
# The box points are 7.5 cm apart: a 10 cm adjacency grid joins a box's four superpoints (rooms: 5 cm).
HEADS = dict(aux_semantic_classes=20, aux_affinity=True, object_context=True, affinity_cell=0.1)


def test_object_context_needs_affinity_and_classes(encoder: TextEncoder) -> None:
    with pytest.raises(ValueError, match="aux_affinity=True"):
        build(encoder, object_context=True, aux_semantic_classes=20)
    with pytest.raises(ValueError, match="aux_semantic_classes > 0"):
        build(encoder, object_context=True, aux_affinity=True)


def test_scene_object_heads_forward_losses_and_gradients(scenes: Path, encoder: TextEncoder) -> None:
    batch = batch_of(scenes, RECORDS, TrainTransform())
    model = build(encoder, **HEADS).train()
    out = model(batch)
    num_sp = int(batch.sp_offsets[-1])
    assert out.sp_semantic_logits.shape == (num_sp, 20)
    assert out.sp_edges.shape[1] == 2 and out.sp_edge_logits.shape == (out.sp_edges.shape[0],)
    # training groups are the annotated instances (teacher forcing): one group per instance and scene
    groups = out.object_groups
    for b in range(batch.num_scenes):
        lo, hi = int(batch.sp_offsets[b]), int(batch.sp_offsets[b + 1])
        label = batch.sp_ins_label[lo:hi]
        for inst in label[label >= 0].unique().tolist():
            assert groups[lo:hi][label == inst].unique().numel() == 1
    terms = MDINCriterion(semantic_balance=0.5, affinity_balance=1.0)(out, batch)
    assert set(terms) == set(WEIGHTS) | set(OBJECT_TERMS)
    with pytest.raises(ValueError, match="affinity_balance"):
        MDINCriterion(affinity_balance=-0.5)
    assert all(torch.isfinite(v) and v > 0 for k, v in terms.items() if k in OBJECT_TERMS), terms
    sum(terms.values()).backward()
    # DDP without find_unused_parameters: every trainable parameter, the new heads included, gets a gradient
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    for name in ("semantic_head.weight", "affinity_head.mlp.0.weight", "object_context.classifier.0.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
    # outside training the groups come from the affinity head, and the model runs without instance labels
    model.eval()
    with torch.no_grad():
        evaluated = model(batch)
    assert evaluated.object_groups.shape == (num_sp,) and evaluated.object_logits.shape[1] == 20


def test_vote_objects_by_hand() -> None:
    post = MDINPostprocess(object_answers=True)
    groups = torch.tensor([0, 0, 2, 2, 4, 5])  # superpoints 0-1 are object 0, 2-3 object 2, 4 and 5 alone
    query_sp = torch.tensor([0, 1, 2, 3, 4, 5])
    prob = torch.tensor([0.9, 0.3, 0.6, 0.5, 0.2, 0.7])
    valid = torch.tensor([True, True, True, True, True, False])
    # object 0: mean(0.9, 0.3) = 0.6; object 2: 0.55; object 4: 0.2; superpoint 5's query is padding
    chosen = post.vote_objects(groups, query_sp, prob, valid)
    assert [g for g, _ in chosen] == [0, 2] and chosen[0][1] == pytest.approx(0.6)
    assert MDINPostprocess(object_answers=True, target_threshold=0.58).vote_objects(
        groups, query_sp, prob, valid) == [(0, pytest.approx(0.6))]
    # relative threshold: also at least this share of the best object's mean (0.6): 0.9 x 0.6 = 0.54 keeps object 2
    # (0.55), 0.95 x 0.6 = 0.57 drops it; object 4 (0.2) passes the absolute 0.15 alone, not 0.54
    rel = MDINPostprocess(object_answers=True, target_threshold=0.15, relative_threshold=0.9)
    assert [g for g, _ in rel.vote_objects(groups, query_sp, prob, valid)] == [0, 2]
    rel.relative_threshold = 0.95
    assert [g for g, _ in rel.vote_objects(groups, query_sp, prob, valid)] == [0]
    assert [g for g, _ in MDINPostprocess(object_answers=True, target_threshold=0.15).vote_objects(
        groups, query_sp, prob, valid)] == [0, 2, 4]
    with pytest.raises(ValueError, match="relative_threshold"):
        MDINPostprocess(relative_threshold=1.5)
    res = MDINPostprocess(task_type="res", object_answers=True).vote_objects(groups, query_sp, prob, valid)
    assert res == [(0, pytest.approx(0.9))]  # the most confident query's object, whatever the mean
    assert post.vote_objects(groups, query_sp, prob, torch.zeros(6, dtype=torch.bool)) == []


def test_vote_objects_grammatical_number_by_hand() -> None:
    groups = torch.tensor([0, 0, 2, 2, 4, 5])
    query_sp = torch.tensor([0, 1, 2, 3, 4, 5])
    prob = torch.tensor([0.9, 0.3, 0.6, 0.5, 0.2, 0.7])  # object means: 0 -> 0.6, 2 -> 0.55, 4 -> 0.2
    valid = torch.tensor([True, True, True, True, True, False])
    strict = MDINPostprocess(object_answers=True, target_threshold=0.58, plural_min_objects=2,
                             singular_max_objects=1)
    # plural: the vote passes object 0 alone; the next most probable (object 2) joins it
    assert [g for g, _ in strict.vote_objects(groups, query_sp, prob, valid, plural=True)] == [0, 2]
    # singular or unknown number: unchanged (one object passes)
    assert [g for g, _ in strict.vote_objects(groups, query_sp, prob, valid, plural=False)] == [0]
    loose = MDINPostprocess(object_answers=True, target_threshold=0.15, plural_min_objects=2,
                            singular_max_objects=1)
    assert [g for g, _ in loose.vote_objects(groups, query_sp, prob, valid, plural=False)] == [0]  # capped at 1
    assert [g for g, _ in loose.vote_objects(groups, query_sp, prob, valid, plural=True)] == [0, 2, 4]
    assert [g for g, _ in loose.vote_objects(groups, query_sp, prob, valid, plural=None)] == [0, 2, 4]
    # an empty answer stays empty whatever the number
    none = MDINPostprocess(object_answers=True, target_threshold=0.95, plural_min_objects=2)
    assert none.vote_objects(groups, query_sp, prob, valid, plural=True) == []
    # fewer objects than asked for: all there are
    three = MDINPostprocess(object_answers=True, target_threshold=0.58, plural_min_objects=5)
    assert [g for g, _ in three.vote_objects(groups, query_sp, prob, valid, plural=True)] == [0, 2, 4]
    with pytest.raises(ValueError, match="plural_min_objects"):
        MDINPostprocess(plural_min_objects=-1)


def _object_outputs(batch, query_sp: torch.Tensor, target: torch.Tensor) -> SimpleNamespace:
    """Outputs whose affinities are exactly "same annotated instance" and whose queries sit on ``query_sp``."""
    edges, _ = superpoint_edges(batch.coord, batch.superpoint, batch.point_scene, 0.1)  # box points: 7.5 cm apart
    la, lb = batch.sp_ins_label[edges[:, 0]], batch.sp_ins_label[edges[:, 1]]
    logits = torch.where((la == lb) & (la >= 0), 8.0, -8.0)
    indicator = torch.stack([-target, target], -1).float() * 4  # (D, Q, 2): +-1 -> target / not
    d, q = query_sp.shape
    return SimpleNamespace(pred_indicator=indicator[None], query_valid=torch.ones(d, q, dtype=torch.bool),
                           query_sp=query_sp, sp_edges=edges, sp_edge_logits=logits)


def test_object_answers_are_whole_objects_and_follow_the_empty_rules(scenes: Path) -> None:
    batch = batch_of(scenes, RECORDS[:3])  # scene A: mt (10, 11), st (12), zt
    label = batch.sp_ins_label
    first = {o: int((label == o).nonzero()[0]) for o in (10, 11, 12, 13)}
    last = {o: int((label == o).nonzero()[-1]) for o in (10, 11, 12, 13)}
    # four queries per description, seeded in objects 10, 11, 12 and 13 (two of them on another superpoint)
    query_sp = torch.tensor([[first[10], last[11], first[12], last[13]]] * 3)
    target = torch.tensor([[1, 1, -1, -1], [-1, -1, 1, -1], [-1, -1, -1, -1]])
    preds = MDINPostprocess(object_answers=True)(_object_outputs(batch, query_sp, target), batch)
    gt = batch.eval_gt_masks()
    assert torch.equal(preds[0].pred_mask, gt[0]) and len(preds[0].objects) == 2 and preds[0].num_selected == 2
    assert {int(m.sum()) for m in preds[0].objects} == {int((batch.instance == o).sum()) for o in (10, 11)}
    assert torch.equal(preds[1].pred_mask, gt[1]) and not preds[1].no_target
    assert preds[2].no_target and not preds[2].pred_mask.any() and preds[2].objects == []
    metric = GeneralizedReferringMaskMetric()
    metric.update(preds, batch)
    assert float(metric.compute()["overall/mIoU"]) == pytest.approx(100.0)
    floor = MDINPostprocess(object_answers=True, min_points=int(gt[1].sum()) + 1)(
        _object_outputs(batch, query_sp, target), batch)
    assert floor[1].no_target and not floor[1].pred_mask.any() and not floor[0].no_target
    with pytest.raises(ValueError, match="aux_affinity"):
        MDINPostprocess(object_answers=True)(SimpleNamespace(sp_edge_logits=None), batch)


def test_overfits_one_scene_with_object_answers(scenes: Path, encoder: TextEncoder) -> None:
    batch = batch_of(scenes, RECORDS[:4])  # scene A: multi, single and zero targets
    # The box scenes leave the floor unannotated, so no edge would teach "different objects"; annotate it as one
    # object (as a room's floor is) so that the affinity head sees both answers.
    batch.instance[batch.instance == -1] = 20
    batch.sp_ins_label[batch.sp_ins_label == -1] = 20
    model = build(encoder, seed=1, **HEADS).train()
    criterion = MDINCriterion(eos_coef=1.0)
    weights = dict(WEIGHTS, loss_indicator=1.0, **{k: 1.0 for k in OBJECT_TERMS})
    assert all(criterion(model(batch), batch)[k] > 0 for k in OBJECT_TERMS)
    losses, preds, result = overfit(model, criterion, MDINPostprocess(object_answers=True, min_points=0), batch,
                                    weights)
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    assert [p.no_target for p in preds] == [False, False, True, False]
    assert float(result["overall/mIoU"]) > 90, {k: float(v) for k, v in result.items()}
    assert len(preds[0].objects) == 2 and len(preds[3].objects) == 3


def test_target_classes_by_hand(scenes: Path) -> None:
    from pointcloud.mdin.criterion import target_classes

    batch = batch_of(scenes, RECORDS[:4])  # (10, 11), (12,), (), (10, 11, 13)
    batch.semantic[batch.instance == 12] = 7
    batch.semantic[batch.instance == 13] = 9
    batch.semantic[(batch.instance == 10)] = -100  # unlabelled points do not vote
    # (10, 11, 13): 10 does not vote, 11 says 4 and 13 says 9 with as many points: the tie goes to the smaller label
    assert target_classes(batch, 20).tolist() == [4, 7, -100, 4]


def test_class_match_is_added_to_the_target_logit(scenes: Path, encoder: TextEncoder) -> None:
    with pytest.raises(ValueError, match="object_context=True"):
        build(encoder, class_match=True, aux_semantic_classes=20, aux_affinity=True)
    batch = batch_of(scenes, RECORDS, TrainTransform())
    model = build(encoder, class_match=True, **HEADS).train()
    torch.manual_seed(0)
    out = model(batch)
    d, q = out.query_valid.shape
    assert out.text_class_logits.shape == (d, 20) and out.query_class_match.shape == (d, q)
    assert bool(((out.query_class_match >= 0) & (out.query_class_match <= 1 + 1e-6)).all())
    # the same forward with the scale at 0 differs by exactly logit(m) on the target class and not elsewhere
    with torch.no_grad():
        model.class_match_scale.zero_()
    torch.manual_seed(0)
    plain = model(batch)
    log_odds = torch.logit(out.query_class_match.detach().clamp(1e-4, 1 - 1e-4))
    torch.testing.assert_close(out.pred_indicator[..., 0].detach(), plain.pred_indicator[..., 0])
    torch.testing.assert_close(out.pred_indicator[..., 1].detach() - plain.pred_indicator[..., 1],
                               log_odds[None].expand_as(plain.pred_indicator[..., 1]))
    with torch.no_grad():
        model.class_match_scale.fill_(1.0)
    terms = MDINCriterion()(model(batch), batch)
    assert "loss_text_class" in terms and terms["loss_text_class"] > 0
    sum(terms.values()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.text_class_head.weight.grad.abs().sum() > 0 and model.class_match_scale.grad.abs() > 0
