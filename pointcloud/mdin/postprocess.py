"""MDIN inference (rgsan-mdin spec §6.8): the final prediction -> a union point mask, several objects, or "no target".

3D-GRES (``task_type="gres"``):

1. queries of the final layer whose indicator argmax is 1 (target) are selected (``target_threshold`` replaces the
   argmax by ``softmax(indicator)[1] >= target_threshold`` when set);
2. none selected -> "no target" (empty mask);
3. otherwise the union = element-wise max of the selected queries' mask logits per superpoint, broadcast to the
   points and binarised with ``sigmoid >= threshold`` (0.5);
4. fewer than ``min_points`` (50) predicted points (counted on the evaluation points) -> "no target".

3D-RES (``task_type="res"``): the single query with the highest target probability; its mask (no empty answer).

Objects: the selected queries' binarised masks are grouped greedily (most confident first) into objects: a query
joins the first object whose mask its own overlaps with IoU > ``object_iou``, else it starts a new one; each
object's mask is the union of its members, restricted to the final union mask. Several queries are trained on
one object (the assignment pairs a nearest query and every in-object query with it), so their masks coincide.
The objects are for rendering and inspection; the evaluated answer is the union.

Object answers (``object_answers=True``; an addition, not published; needs a model with ``aux_affinity``): the
superpoints are grouped into objects by average linkage of the predicted affinities
(:func:`pointcloud.rgsan.affinity.group_superpoints`), and each query speaks for the object its *seed* lies in,
which is the object the assignment trains it on (its own instance for in-object queries). An object is a target
when the mean target probability of the queries seeded in it reaches 0.5 (``target_threshold`` when set); the
answer is the union of the target objects, whole, and the objects are those groups. Objects no query is seeded in
cannot be answered. ``task_type="res"`` answers with the object of the most confident query. The empty rules
(no target object, fewer than ``min_points`` points) are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from datasets.batch3d import ReferBatch3D
from datasets.pointmask import mask_to_rle
from pointcloud.rgsan.affinity import group_superpoints


@dataclass
class MDINPrediction:
    """One description's prediction.

    Attributes:
        sample_id, scene_id, description, eval_type: from the record; gt_object_ids: the record's targets.
        pred_mask: (N_original,) bool over the prepared scene's original point order (all False = no target).
        no_target: the model answered "no target" (no query selected, or fewer than ``min_points`` points).
        objects: per predicted object, (N_original,) bool (empty when ``no_target``).
        num_selected: queries judged targets (objects judged targets with ``object_answers``).
        score: the highest target probability among the queries.
    """

    sample_id: str
    scene_id: str
    description: str
    pred_mask: Tensor
    no_target: bool
    objects: list[Tensor] = field(default_factory=list)
    num_selected: int = 0
    score: float = 0.0
    eval_type: str | None = None
    gt_object_ids: tuple[int, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """JSON-serialisable record (masks as run-length pairs over original points; see pointcloud.render)."""
        return {"sample_id": self.sample_id, "scene_id": self.scene_id, "description": self.description,
                "eval_type": self.eval_type, "num_points": int(self.pred_mask.numel()),
                "num_pred_points": int(self.pred_mask.sum()), "no_target": self.no_target,
                "num_selected": self.num_selected, "score": self.score, "gt_object_ids": list(self.gt_object_ids),
                "pred_mask_rle": mask_to_rle(self.pred_mask),
                "pred_objects_rle": [mask_to_rle(m) for m in self.objects]}


def group_queries(masks: Tensor, order: Tensor, object_iou: float = 0.5) -> list[Tensor]:
    """Greedy grouping of binarised query masks into objects.

    Args:
        masks: (M, S) bool binarised masks of the selected queries; order: (M,) visiting order (most confident first).

    Returns:
        one (S,) bool mask per object (union of its members), in creation order.
    """
    objects: list[Tensor] = []
    for i in order.tolist():
        m = masks[i]
        if not bool(m.any()):
            continue
        for k, obj in enumerate(objects):
            inter = (obj & m).sum()
            union = (obj | m).sum()
            if float(inter) / float(union) > object_iou:
                objects[k] = obj | m
                break
        else:
            objects.append(m.clone())
    return objects


class MDINPostprocess:
    """``postprocess(outputs, batch) -> list[MDINPrediction]`` (one per description, batch order).

    Args:
        task_type: ``"gres"`` or ``"res"`` (module docstring).
        threshold: sigmoid threshold of the mask (0.5, ``>=``).
        min_points: the empty rule's point floor (50; fewer predicted points -> "no target"; 0 disables it).
        target_threshold: None = indicator argmax (published); else ``p(target) >= target_threshold``.
        object_iou: IoU above which two selected queries' masks count as one object.
        object_answers: answer with whole predicted objects chosen by the vote of the queries seeded in them
            (module docstring); affinity_threshold: groups of superpoints merge while their mean affinity is above.
        relative_threshold: object answers only: an object is answered when its mean also reaches this share of
            the best object's mean (0: off), so weak extras beside a strong target are dropped.
        plural_min_objects: object answers only: a description whose target word is grammatically plural ("the
            chairs", ``MDINOutputs.target_plural``) and that has an answer is answered with at least this many
            objects, the next most probable ones added (0: off). A plural names several objects; a vote that
            passed only one has missed one.
        singular_max_objects: object answers only: a singular description is answered with at most this many
            objects, the most probable first (0: off).
        Both are additions (not MDIN's): Multi3DRefer writes its multi-target descriptions in the plural and its
        single-target ones in the singular; they never turn an empty answer into a non-empty one.
    """

    def __init__(self, task_type: str = "gres", threshold: float = 0.5, min_points: int = 50,
                 target_threshold: float | None = None, object_iou: float = 0.5, object_answers: bool = False,
                 affinity_threshold: float = 0.5, relative_threshold: float = 0.0, plural_min_objects: int = 0,
                 singular_max_objects: int = 0) -> None:
        if task_type not in ("gres", "res"):
            raise ValueError(f"MDINPostprocess.task_type must be 'gres' or 'res', got {task_type!r}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"MDINPostprocess.threshold must lie in (0, 1), got {threshold}")
        if min_points < 0:
            raise ValueError(f"MDINPostprocess.min_points must be >= 0, got {min_points}")
        self.task_type, self.threshold, self.min_points = task_type, threshold, min_points
        if not 0.0 <= affinity_threshold < 1.0:
            raise ValueError(f"MDINPostprocess.affinity_threshold must lie in [0, 1), got {affinity_threshold}")
        self.target_threshold, self.object_iou = target_threshold, object_iou
        self.object_answers, self.affinity_threshold = object_answers, affinity_threshold
        if not 0.0 <= relative_threshold <= 1.0:
            raise ValueError(f"MDINPostprocess.relative_threshold must lie in [0, 1], got {relative_threshold}")
        self.relative_threshold = relative_threshold
        if plural_min_objects < 0 or singular_max_objects < 0:
            raise ValueError("MDINPostprocess.plural_min_objects and singular_max_objects must be >= 0, got "
                             f"{plural_min_objects} and {singular_max_objects}")
        self.plural_min_objects, self.singular_max_objects = plural_min_objects, singular_max_objects

    def vote_objects(self, groups: Tensor, query_sp: Tensor, prob: Tensor, valid: Tensor,
                     plural: bool | None = None) -> list[tuple[int, float]]:
        """Target objects of one description by the vote of their seeded queries.

        Args:
            groups: (S,) int64 object of each of the scene's superpoints; query_sp: (Q,) scene-local seed
                superpoint of each query; prob: (Q,) target probabilities; valid: (Q,) bool real queries.
            plural: the description's target is grammatically plural (None: unknown, no number rule).

        Returns:
            ``[(object id, mean probability), ...]`` of the target objects, most probable first (for ``res``: the
            most confident query's object alone).
        """
        if not bool(valid.any()):
            return []
        q_obj, q_prob = groups[query_sp[valid]], prob[valid]
        if self.task_type == "res":
            best = int(q_prob.argmax())
            return [(int(q_obj[best]), float(q_prob[best]))]
        ids, inverse = torch.unique(q_obj, return_inverse=True)
        mean = q_prob.new_zeros(len(ids)).index_add_(0, inverse, q_prob) / torch.bincount(inverse).to(q_prob.dtype)
        th = 0.5 if self.target_threshold is None else self.target_threshold
        th = max(th, self.relative_threshold * float(mean.max()))  # also at least this share of the best object
        order = torch.argsort(mean, descending=True, stable=True)
        ranked = [(int(ids[i]), float(mean[i])) for i in order.tolist()]
        chosen = [r for r in ranked if r[1] >= th]
        if chosen and plural is not None:
            if plural and len(chosen) < self.plural_min_objects:
                chosen = ranked[:self.plural_min_objects]
            elif not plural and self.singular_max_objects:
                chosen = chosen[:self.singular_max_objects]
        return chosen

    def select(self, indicator: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """(D, Q) bool selected queries and (D, Q) target probabilities from (D, Q, 2) logits."""
        prob = indicator.float().softmax(-1)[..., 1] * valid
        if self.task_type == "res":
            sel = torch.zeros_like(valid)
            sel[torch.arange(valid.shape[0]), prob.argmax(-1)] = True
            return sel & valid, prob
        if self.target_threshold is None:
            return (indicator.argmax(-1) == 1) & valid, prob
        return (prob >= self.target_threshold) & valid, prob

    def __call__(self, outputs: Any, batch: ReferBatch3D) -> list[MDINPrediction]:
        if self.object_answers:
            return self._object_answer_predictions(outputs, batch)
        masks = outputs.pred_masks[-1].detach()  # (D, Q, S)
        selected, prob = self.select(outputs.pred_indicator[-1].detach(), outputs.query_valid)
        logit_th = torch.logit(torch.tensor(self.threshold)).item()
        union_logit = masks.masked_fill(~selected[:, :, None], float("-inf")).amax(1)  # (D, S)
        union_sp = (union_logit >= logit_th) & ~outputs.sp_padding & selected.any(1, keepdim=True)
        query_sp = (masks >= logit_th) & ~outputs.sp_padding[:, None, :]
        out: list[MDINPrediction] = []
        desc = batch.desc_offsets.tolist()
        for b in range(batch.num_scenes):
            if desc[b] == desc[b + 1]:
                continue
            local = (batch.superpoint[batch.point_slice(b)] - batch.sp_offsets[b]).to(masks.device)
            for d in range(desc[b], desc[b + 1]):
                rec = batch.records[d]
                point_mask = union_sp[d][local]
                no_target = not bool(selected[d].any()) or int(point_mask.sum()) < self.min_points
                objects: list[Tensor] = []
                if no_target:
                    point_mask = torch.zeros_like(point_mask)
                else:
                    idx = selected[d].nonzero().flatten()
                    order = torch.argsort(prob[d, idx], descending=True, stable=True)
                    for obj in group_queries(query_sp[d, idx] & union_sp[d][None, :], order, self.object_iou):
                        objects.append(batch.to_original_points(obj[local], b, fill=False).cpu())
                out.append(MDINPrediction(
                    sample_id=rec.sample_id, scene_id=rec.scene_id, description=rec.description,
                    pred_mask=batch.to_original_points(point_mask, b, fill=False).cpu(), no_target=no_target,
                    objects=objects, num_selected=int(selected[d].sum()), score=float(prob[d].max()),
                    eval_type=rec.eval_type, gt_object_ids=tuple(rec.object_ids)))
        return out

    def _object_answer_predictions(self, outputs: Any, batch: ReferBatch3D) -> list[MDINPrediction]:
        """``object_answers=True``: whole predicted objects chosen by their seeded queries' vote."""
        if getattr(outputs, "sp_edge_logits", None) is None:
            raise ValueError("MDINPostprocess(object_answers=True) needs a model built with aux_affinity=True (the "
                             "outputs carry no superpoint affinities to group objects with)")
        prob = outputs.pred_indicator[-1].detach().float().softmax(-1)[..., 1] * outputs.query_valid
        groups = group_superpoints(outputs.sp_edges, outputs.sp_edge_logits.detach().sigmoid(), batch.sp_offsets,
                                   self.affinity_threshold).to(prob.device)
        number = getattr(outputs, "target_plural", None)  # outputs without it: no number rule
        out: list[MDINPrediction] = []
        desc, offsets = batch.desc_offsets.tolist(), batch.sp_offsets.tolist()
        for b in range(batch.num_scenes):
            if desc[b] == desc[b + 1]:
                continue
            lo, hi = offsets[b], offsets[b + 1]
            local_groups = groups[lo:hi] - lo  # (S_b,) object of each superpoint, named by its smallest local id
            local = (batch.superpoint[batch.point_slice(b)] - batch.sp_offsets[b]).to(prob.device)
            for d in range(desc[b], desc[b + 1]):
                rec = batch.records[d]
                plural = None if number is None else bool(number[d])
                chosen = self.vote_objects(local_groups, outputs.query_sp[d], prob[d], outputs.query_valid[d], plural)
                point_group = local_groups[local]  # (P_b,) object of each point
                obj_points = [point_group == g for g, _ in chosen]
                point_mask = (torch.stack(obj_points).any(0) if obj_points
                              else torch.zeros_like(point_group, dtype=torch.bool))
                no_target = not chosen or int(point_mask.sum()) < self.min_points
                if no_target:
                    point_mask, obj_points = torch.zeros_like(point_mask), []
                out.append(MDINPrediction(
                    sample_id=rec.sample_id, scene_id=rec.scene_id, description=rec.description,
                    pred_mask=batch.to_original_points(point_mask, b, fill=False).cpu(), no_target=no_target,
                    objects=[batch.to_original_points(m, b, fill=False).cpu() for m in obj_points],
                    num_selected=len(chosen), score=float(prob[d].max()) if prob.shape[1] else 0.0,
                    eval_type=rec.eval_type, gt_object_ids=tuple(rec.object_ids)))
        return out
