"""RG-SAN losses (rgsan-mdin spec §4.5), unweighted; the weights [1, 1, 0.5, 0.5] live in ``model.loss_weights``.

Every term is computed at superpoint level with padded superpoints excluded, for each of the L + 1 predictions
(initialisation + every decoder layer), and the L + 1 values are summed with equal weight:

- ``loss_bce``: BCE-with-logits against ``gt_spmask``, mean over a description's valid superpoints, then mean
  over descriptions;
- ``loss_dice``: ``1 - (2 sum sigma(x) y + 1) / (sum sigma(x) + sum y + 1)`` per description, mean over them;
- ``loss_score``: MSE between the predicted score and the IoU of the binarised mask (sigma >= 0.5) with the GT
  (IoU without gradient), only over descriptions whose IoU > 0.5; 0 when there is none;
- ``loss_position``: L1 between the output word's position and ``gt_center`` (metres), mean over the valid
  coordinates; descriptions with the -1000 sentinel (no target superpoint) are excluded; 0 when none is valid
  or when the model runs without position refinement.

Only when the model has the auxiliary semantic head (``RGSAN(aux_semantic_classes=C)``, not published):

- ``loss_semantic``: cross-entropy of the superpoint class logits against each superpoint's majority ScanNet-20
  label over its points (unlabelled points, -100, do not vote; superpoints without a labelled point are
  ignored); computed once per batch, not per prediction. ``RGSANCriterion(semantic_balance=a)`` weights class
  ``c`` by ``n_c^-a`` (``n_c``: its superpoints in the batch), normalised so the weights average 1 over the
  superpoints: with ``a > 0`` small, rare objects (pictures, doors) are not drowned by walls and floors.

Only with ``RGSAN(aux_instance_offsets=True)`` (not published):

- ``loss_offset``: L1 (summed over the axes, metres) between each superpoint's predicted instance centre and the
  mean point of its majority instance, mean over superpoints that have an annotated majority instance.

Only with ``RGSAN(aux_affinity=True)`` (not published):

- ``loss_affinity``: BCE-with-logits of each superpoint edge's "same object" logit against "both superpoints have
  the same majority instance", mean over edges whose two superpoints both have one.

Only with ``RGSAN(object_context=True)`` (not published):

- ``loss_object_class``: cross-entropy of each object group's class logits against the majority label of the
  group's points (groups without a labelled point are ignored).

Only with ``RGSANCriterion(instance_ranking=True)`` (not published):

- ``loss_instance``: cross-entropy over the scene's annotated instances of the point-weighted mean mask
  probability per instance (:func:`pointcloud.rgsan.instances.instance_ranking_loss`), summed over predictions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.refer3d import NO_CENTER
from pointcloud.rgsan.instances import instance_center_targets, instance_ranking_loss
from pointcloud.rgsan.scene_objects import IGNORE, balanced_class_weights, object_terms, superpoint_majority
from pointcloud.superpoint_pool import superpoint_counts

__all__ = ["IGNORE", "RGSANCriterion", "balanced_class_weights", "superpoint_iou", "superpoint_majority"]

IOU_EPS = 1e-6


def superpoint_iou(logits: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """IoU of ``sigmoid(logits) >= 0.5`` with ``gt`` over valid superpoints: ``inter / (union + 1e-6)``.

    Args:
        logits: (..., S) mask logits; gt: (..., S) bool or {0, 1}; valid: (..., S) bool (broadcastable).

    Returns:
        (...) IoU, no gradient.
    """
    with torch.no_grad():
        pred = (logits >= 0) & valid  # sigmoid(x) >= 0.5  <=>  x >= 0
        target = gt.bool() & valid
        inter = (pred & target).sum(-1).float()
        union = pred.sum(-1).float() + target.sum(-1).float() - inter
        return inter / (union + IOU_EPS)


class RGSANCriterion(nn.Module):
    """``criterion(outputs, batch) -> {"loss_bce", "loss_dice", "loss_score", "loss_position"}`` (unweighted).

    Reads ``outputs.pred_masks`` (L + 1, D, S), ``pred_scores`` (L + 1, D), ``pred_positions`` (L + 1, D, 3),
    ``sp_padding`` (D, S), ``position_supervised``, and ``batch.gt_spmask`` (D, S) and ``batch.gt_center`` (D, 3).

    Args:
        iou_threshold: the score loss only uses descriptions whose mask IoU is strictly above this (0.5).
        instance_ranking: also return ``loss_instance`` (not published).
        semantic_balance: exponent ``a`` of the class weights ``n_c^-a`` of ``loss_semantic`` (0: unweighted).
    """

    def __init__(self, iou_threshold: float = 0.5, instance_ranking: bool = False,
                 semantic_balance: float = 0.0) -> None:
        super().__init__()
        if semantic_balance < 0:
            raise ValueError(f"RGSANCriterion.semantic_balance must be >= 0, got {semantic_balance}")
        self.iou_threshold = iou_threshold
        self.instance_ranking = instance_ranking
        self.semantic_balance = float(semantic_balance)

    def forward(self, outputs: Any, batch: Any) -> dict[str, Tensor]:
        masks, scores, positions = outputs.pred_masks, outputs.pred_scores, outputs.pred_positions
        if batch.gt_spmask is None or batch.gt_center is None:
            raise ValueError("RGSANCriterion needs batch.gt_spmask and batch.gt_center (scenes with superpoints)")
        valid = ~outputs.sp_padding  # (D, S)
        gt = batch.gt_spmask.to(masks.device)[:, :masks.shape[-1]].float()
        validf = valid.float()
        count = validf.sum(-1).clamp_min(1.0)

        # BCE: per description mean over its superpoints, mean over descriptions, summed over predictions.
        bce = F.binary_cross_entropy_with_logits(masks, gt.expand_as(masks), reduction="none")
        loss_bce = ((bce * validf).sum(-1) / count).mean(-1).sum()

        prob = masks.sigmoid() * validf
        dice = 1 - (2 * (prob * gt).sum(-1) + 1) / (prob.sum(-1) + (gt * validf).sum(-1) + 1)
        loss_dice = dice.mean(-1).sum()

        iou = superpoint_iou(masks, gt, valid)  # (L + 1, D)
        keep = (iou > self.iou_threshold).float()
        loss_score = (((scores - iou) ** 2 * keep).sum(-1) / keep.sum(-1).clamp_min(1.0)).sum()

        center = batch.gt_center.to(positions.device)
        has = (center != NO_CENTER).float()  # (D, 3): the sentinel marks all three coordinates
        if outputs.position_supervised and bool(has.any()):
            err = (positions - torch.where(has.bool(), center, positions.detach())).abs()
            loss_position = ((err * has).sum((-1, -2)) / has.sum()).sum()
        else:
            loss_position = positions.new_zeros(())  # the engine still logs (and weights) the term
        terms = {"loss_bce": loss_bce, "loss_dice": loss_dice, "loss_score": loss_score,
                 "loss_position": loss_position}
        terms.update(object_terms(outputs, batch, self.semantic_balance))  # semantic, affinity, object class
        centres = getattr(outputs, "sp_instance_centers", None)
        if centres is not None:
            # L1 (summed over axes) to the centre of the superpoint's majority instance, mean over superpoints
            # that have one.
            dev = centres.device
            target, ok = instance_center_targets(batch.coord.to(dev), batch.instance.to(dev),
                                                 batch.point_scene.to(dev), batch.sp_ins_label.to(dev),
                                                 batch.sp_offsets.to(dev))
            terms["loss_offset"] = ((centres - target).abs().sum(-1)[ok].mean() if bool(ok.any())
                                    else centres.sum() * 0.0)
        if self.instance_ranking:
            sizes = superpoint_counts(batch.superpoint, int(batch.sp_offsets[-1]))
            terms["loss_instance"] = instance_ranking_loss(masks, gt, batch.sp_ins_label, sizes, batch.sp_offsets,
                                                           batch.desc_offsets)
        return terms
