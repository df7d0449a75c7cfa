"""RG-SAN inference (rgsan-mdin spec §4.6): final prediction's superpoint mask -> point mask in original order.

The last prediction (layer 6) of the output query is binarised per superpoint (sigmoid >= 0.5) and broadcast to
the points of its scene through the superpoint ids, then scattered to the prepared scene's original point order
(:meth:`datasets.batch3d.ReferBatch3D.to_original_points`; the identity with the validation transform, which
keeps every point in order, so ``pred_mask`` lines up with the evaluator's ground truth). The score is reported
but not used, as in the original.

``snap_to_instances=True`` (an addition, for models with ``aux_affinity`` or ``aux_instance_offsets``) replaces
each binarised mask by the group of superpoints that the mask's probabilities cover best
(:func:`pointcloud.rgsan.instances.snap_to_groups`): the answer is then always whole objects. Groups come from
average linkage of the predicted superpoint affinities (:mod:`pointcloud.rgsan.affinity`) when the model has
them, else from predicted instance centres within ``cluster_radius``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from datasets.batch3d import ReferBatch3D
from datasets.pointmask import mask_to_rle
from pointcloud.rgsan.affinity import group_superpoints
from pointcloud.rgsan.instances import group_by_centres, snap_to_groups
from pointcloud.superpoint_pool import superpoint_counts


@dataclass
class RGSANPrediction:
    """One description's prediction.

    Attributes:
        sample_id, scene_id, description: from the record.
        gt_object_ids: the record's target object ids (ScanNet instance ids; the GT mask is their union), so
            that ``grounding render`` can draw the ground truth from ``predictions.jsonl`` alone.
        target_word: the output query's word (the RTS target, or the root word without rule guidance).
        rule: the target-word rule that fired (``root_word`` without rule guidance).
        pred_mask: (N_original,) bool over the scene's points in the prepared scene's original order.
        score: predicted IoU of the final mask.
        position: the output word's predicted position, metres (batch ``xyz_middle`` frame), 3 floats.
    """

    sample_id: str
    scene_id: str
    description: str
    target_word: str
    rule: str
    pred_mask: Tensor
    score: float
    position: list[float]
    gt_object_ids: tuple[int, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """JSON-serialisable record; the mask as run-length pairs over original points."""
        return {"sample_id": self.sample_id, "scene_id": self.scene_id, "description": self.description,
                "target_word": self.target_word, "rule": self.rule, "num_points": int(self.pred_mask.numel()),
                "num_pred_points": int(self.pred_mask.sum()), "score": self.score, "position": self.position,
                "gt_object_ids": list(self.gt_object_ids), "pred_mask_rle": mask_to_rle(self.pred_mask)}


class RGSANPostprocess:
    """``postprocess(outputs, batch) -> list[RGSANPrediction]`` (one per description, batch order).

    Args:
        threshold: sigmoid threshold of the superpoint mask (0.5).
        snap_to_instances: answer with the best-covered group of superpoints instead (needs a model with
            ``aux_affinity`` or ``aux_instance_offsets``).
        cluster_radius: metres; superpoints whose predicted instance centres are this close are grouped.
        affinity_threshold: adjacent groups of superpoints merge while their mean affinity is above it.
    """

    def __init__(self, threshold: float = 0.5, snap_to_instances: bool = False, cluster_radius: float = 0.3,
                 affinity_threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"RGSANPostprocess.threshold must lie in (0, 1), got {threshold}")
        if cluster_radius <= 0:
            raise ValueError(f"RGSANPostprocess.cluster_radius must be > 0 metres, got {cluster_radius}")
        self.threshold = threshold
        self.snap_to_instances = snap_to_instances
        self.cluster_radius = cluster_radius
        if not 0.0 <= affinity_threshold < 1.0:
            raise ValueError(f"RGSANPostprocess.affinity_threshold must lie in [0, 1), got {affinity_threshold}")
        self.affinity_threshold = affinity_threshold

    def _snapped(self, outputs: Any, batch: ReferBatch3D) -> Tensor:
        """(D, S_max) bool masks made of whole superpoint groups (see :mod:`pointcloud.rgsan.instances`)."""
        centres = getattr(outputs, "sp_instance_centers", None)
        edge_logits = getattr(outputs, "sp_edge_logits", None)
        if centres is None and edge_logits is None:
            raise ValueError("RGSANPostprocess(snap_to_instances=True) needs a model built with aux_affinity=True "
                             "or aux_instance_offsets=True (the outputs carry neither edge scores nor centres)")
        prob = outputs.pred_masks[-1].detach().sigmoid()
        out = torch.zeros_like(prob, dtype=torch.bool)
        sizes = superpoint_counts(batch.superpoint, int(batch.sp_offsets[-1])).to(prob.device)
        offsets, desc = batch.sp_offsets.tolist(), batch.desc_offsets.tolist()
        if edge_logits is not None:
            affinity_groups = group_superpoints(outputs.sp_edges, edge_logits.detach().sigmoid(), batch.sp_offsets,
                                                self.affinity_threshold).to(prob.device)
        for b in range(batch.num_scenes):
            if desc[b] == desc[b + 1]:
                continue
            lo, hi = offsets[b], offsets[b + 1]
            if edge_logits is not None:  # affinity first: it groups better (docs/rgsan.md)
                groups = affinity_groups[lo:hi] - lo
            else:
                groups = group_by_centres(centres[lo:hi].detach(), self.cluster_radius)
            out[desc[b]:desc[b + 1], :hi - lo] = snap_to_groups(prob[desc[b]:desc[b + 1], :hi - lo], groups,
                                                                sizes[lo:hi])
        return out

    def __call__(self, outputs: Any, batch: ReferBatch3D) -> list[RGSANPrediction]:
        if self.snap_to_instances:
            sp_mask = self._snapped(outputs, batch) & ~outputs.sp_padding
        else:
            sp_mask = (outputs.pred_masks[-1].detach().sigmoid() >= self.threshold) & ~outputs.sp_padding  # (D, S)
        scores = outputs.pred_scores[-1].detach().float().cpu().tolist()
        positions = outputs.pred_positions[-1].detach().float().cpu().tolist()
        desc_offsets = batch.desc_offsets.tolist()
        predictions: list[RGSANPrediction] = []
        for b in range(batch.num_scenes):
            first, last = desc_offsets[b], desc_offsets[b + 1]
            if first == last:
                continue
            local_sp = batch.superpoint[batch.point_slice(b)] - batch.sp_offsets[b]  # (P_b,) ids in 0..S_b-1
            point_masks = sp_mask[first:last][:, local_sp.to(sp_mask.device)]  # (D_b, P_b), batch point order
            for j in range(first, last):
                rec = batch.records[j]
                predictions.append(RGSANPrediction(
                    sample_id=rec.sample_id, scene_id=rec.scene_id, description=rec.description,
                    target_word=outputs.output_words[j], rule=outputs.rules[j],
                    pred_mask=batch.to_original_points(point_masks[j - first], b, fill=False).cpu(),
                    score=scores[j], position=positions[j], gt_object_ids=tuple(rec.object_ids)))
        return predictions
