"""MDIN losses (rgsan-mdin spec §6.7), unweighted; the weights [1, 1, 1, 5, 0.1, 0.1] live in ``model.loss_weights``.

Pairs come from the geometric assignment (:mod:`.assign`), computed once per description and reused at every
depth; each pair is supervised with its **own** target's mask (spec §6.6). ``n_pairs`` is the number of pairs in
the batch, clamped at 1 (an all-zero-target batch would otherwise divide by 0: D5). In data-parallel training it is
the global batch's count (summed over the W processes) divided by W: every process divides its sum by it and DDP
averages the gradients, so the step follows the global batch's sum / its pairs, whatever W (without the division
the pair terms would shrink by 1 / W against ``loss_sampler``). Outside training each process counts its own pairs:
evaluation splits need not give every process as many batches, and a collective per batch would then deadlock.

Terms (per prediction p = 0..L, weighted (p + 1) / (L + 1) and summed: deep supervision, final prediction 1):

- ``loss_bce``: BCE-with-logits over a pair's valid superpoints. Default: mean per pair, summed over pairs,
  / n_pairs. ``parity_normalisation=True``: mean over all (pair, superpoint) entries of a description, summed over
  descriptions, / n_pairs (the original, which under-weights descriptions with many pairs).
- ``loss_dice``: ``1 - (2 sum sigma(x) t + 1) / (sum sigma(x) + sum t + 1)`` per pair; summed / n_pairs (default)
  or per-description mean, summed / n_pairs (parity).
- ``loss_score``: MSE of the score against the IoU of the binarised mask, pairs with IoU > 0.5 only; mean per
  description, summed over descriptions, / n_pairs.
- ``loss_indicator``: 2-way cross-entropy per valid query: paired -> class 1 (weight 1), others -> class 0 (weight
  ``eos_coef`` 0.1); summed / n_pairs.
- ``loss_contrastive``: :func:`.contrastive.semantic_consistency_loss` / n_pairs.

Once per batch, only for the scene-object heads of a model built with them (not published):
``loss_semantic``, ``loss_affinity``, ``loss_object_class`` (:func:`pointcloud.rgsan.scene_objects.object_terms`; class
weights ``n_c^-semantic_balance`` in ``loss_semantic``); with ``MDIN(class_match=True)`` also ``loss_text_class``:
cross-entropy of the text class logits against the majority semantic label of the description's target points
(descriptions without targets, or whose targets have no labelled point, are ignored).

Final prediction only (the sampler runs before the decoder):

- ``loss_sampler``: sigmoid focal loss (alpha 0.25, gamma 2) of the seed logits against soft targets:
  0.5 x ``sp_ref_mask`` of the seed's superpoint; overwritten by ``exp(-d^2 / 2)`` (d in metres to the target
  centre) for the seed-level pairs; 1 for each target's nearest seed. Each seed weighted 1 / #valid seeds, summed
  over seeds, mean over descriptions. The logit is a real one (spec D2, see ``TextGuidedTopK.score_terms``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.batch3d import ReferBatch3D
from grounding.tokens import batched_gather
from pointcloud.mdin.assign import Assignment, assign_targets, object_centres, pair_gt_masks
from pointcloud.mdin.contrastive import semantic_consistency_loss
from pointcloud.rgsan.scene_objects import IGNORE, object_terms, point_classes
from pointcloud.superpoint_pool import pad_by_offsets

log = logging.getLogger(__name__)
NO_LABEL = -2  # sp_ins_label padding: never an object id (-1 is "mostly unannotated", 199 "no majority")


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss with soft targets in [0, 1] (same shape as ``logits``)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * ce * (1 - p_t) ** gamma


def target_classes(batch: ReferBatch3D, num_classes: int, semantic_field: str = "semantic") -> Tensor:
    """(D,) int64 majority label (``batch.<semantic_field>``) in [0, C) of each description's target points;
    ``IGNORE`` without any."""
    out = torch.full((len(batch.records),), IGNORE, dtype=torch.long)
    point_labels = point_classes(batch, semantic_field)
    for d, ids in enumerate(batch.object_ids):
        if not ids:
            continue
        pts = batch.point_slice(int(batch.desc_scene[d]))
        inst, sem = batch.instance[pts], point_labels[pts]
        on = torch.isin(inst, torch.as_tensor(list(ids), dtype=inst.dtype)) & (sem >= 0) & (sem < num_classes)
        if bool(on.any()):
            out[d] = int(torch.bincount(sem[on], minlength=num_classes).argmax())
    return out


def total_pairs(count: int, device: torch.device, synchronise: bool = True) -> Tensor:
    """``n_pairs`` (float scalar, >= 1): ``count``, or with ``synchronise`` in a data-parallel run the mean count
    per process (the sum over processes / W; module docstring)."""
    n = torch.tensor(float(count), device=device)
    if synchronise and dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return n.clamp_min(1.0)


def _zero_anchor(*tensors: Tensor) -> Tensor:
    """0 x the sum of ``tensors``: keeps outputs in the autograd graph when a batch gives them nothing to fit.

    Data-parallel training without ``find_unused_parameters`` needs a gradient (a zero one will do) for every
    parameter on every process at every step; without the anchor a batch of zero-target descriptions leaves the
    mask head out of the graph, and one without a pair above the IoU threshold the score head.
    """
    return sum((0.0 * t.float().sum() for t in tensors), torch.zeros((), device=tensors[0].device))


class MDINCriterion(nn.Module):
    """``criterion(outputs, batch) -> {loss_bce, loss_dice, loss_score, loss_sampler, loss_indicator,
    loss_contrastive}`` (unweighted; see the module docstring).

    Args:
        iou_threshold: the score loss uses pairs whose IoU is strictly above it (0.5).
        eos_coef: weight of the non-target class in the indicator loss (0.1).
        temperature: contrastive temperature (0.07).
        focal_alpha, focal_gamma: sampler focal loss (0.25, 2).
        parity_normalisation: the original's per-description BCE / Dice normalisation.
        replicate_mdin_gt_index_bug: reproduce defect D1 (every pair of target j >= 1 mostly reads target 0's
            mask). Off by default; state it when comparing to the published 47.5 mIoU.
        deep_supervision: weight prediction p by (p + 1) / (L + 1); False supervises the final prediction only.
        global_pair_count: in data-parallel training normalise by the global batch's pairs (True, spec §6.7; see
            the module docstring). False: each process by its own, which is what gradient accumulation does, so a
            W-process run equals one process accumulating W batches (tests/engine/test_ddp_experiments.py).
        semantic_balance: exponent of the class weights of ``loss_semantic`` (models with a semantic head only).
        semantic_field: the point labels of the class heads: ``"semantic"`` (ScanNet-20) or ``"semantic_fine"``
            (NYU40 - 1; the dataset needs a ``label_map``). The model's ``aux_semantic_classes`` must match (20 / 40).
        affinity_balance: exponent of the class weights of ``loss_affinity`` ("same object" / "different
            objects" edges, ``n^-a`` of their batch counts; 0: unweighted).
    """

    def __init__(self, iou_threshold: float = 0.5, eos_coef: float = 0.1, temperature: float = 0.07,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, parity_normalisation: bool = False,
                 replicate_mdin_gt_index_bug: bool = False, deep_supervision: bool = True,
                 global_pair_count: bool = True, semantic_balance: float = 0.0,
                 semantic_field: str = "semantic", affinity_balance: float = 0.0) -> None:
        super().__init__()
        if affinity_balance < 0:
            raise ValueError(f"MDINCriterion.affinity_balance must be >= 0, got {affinity_balance}")
        self.affinity_balance = float(affinity_balance)
        if semantic_field not in ("semantic", "semantic_fine"):
            raise ValueError(f"MDINCriterion.semantic_field must be 'semantic' or 'semantic_fine', got "
                             f"{semantic_field!r}")
        self.semantic_field = semantic_field
        if semantic_balance < 0:
            raise ValueError(f"MDINCriterion.semantic_balance must be >= 0, got {semantic_balance}")
        self.semantic_balance = float(semantic_balance)
        self.iou_threshold = iou_threshold
        self.eos_coef = eos_coef
        self.temperature = temperature
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.parity_normalisation = parity_normalisation
        self.replicate_mdin_gt_index_bug = replicate_mdin_gt_index_bug
        self.deep_supervision = deep_supervision
        self.global_pair_count = global_pair_count

    # ------------------------------------------------------------------ assignment
    def assign(self, outputs: Any, batch: ReferBatch3D) -> tuple[list[Assignment], list[Assignment], Tensor, Tensor]:
        """Query-level and seed-level assignments of every description, the padded scene labels (D, S) and the
        seed centres (D, K, 3) in metres."""
        dev = outputs.pred_masks.device
        labels_b, _ = pad_by_offsets(batch.sp_ins_label.to(dev), batch.sp_offsets, pad_value=NO_LABEL)
        centres_b, _ = pad_by_offsets(batch.sp_center.to(dev).float(), batch.sp_offsets)
        scene = batch.desc_scene.to(dev)
        labels, centres = labels_b[scene], centres_b[scene]  # (D, S), (D, S, 3)
        q_lab = batched_gather(labels, outputs.query_sp)
        q_ctr = batched_gather(centres, outputs.query_sp)
        s_lab = batched_gather(labels, outputs.seed_sp)
        s_ctr = batched_gather(centres, outputs.seed_sp)
        queries, seeds = [], []
        for d, ids in enumerate(batch.object_ids):
            b = int(batch.desc_scene[d])
            lo, hi = int(batch.sp_offsets[b]), int(batch.sp_offsets[b + 1])
            pts = batch.point_slice(b)
            ctr, kept, dropped = object_centres(ids, labels_b[b, :hi - lo], centres_b[b, :hi - lo],
                                                batch.instance[pts].to(dev), batch.coord[pts].to(dev))
            if dropped:
                log.warning("MDIN: target object(s) %s of %s have no point in the scene: left out of the assignment",
                            dropped, batch.records[d].sample_id)
            queries.append(assign_targets(q_ctr[d], q_lab[d], outputs.query_valid[d], kept, ctr, dropped))
            seeds.append(assign_targets(s_ctr[d], s_lab[d], outputs.seed_valid[d], kept, ctr, dropped))
        return queries, seeds, labels, s_ctr

    # ------------------------------------------------------------------ terms
    def _mask_terms(self, masks: Tensor, scores: Tensor, assigns: list[Assignment], labels: Tensor,
                    sp_valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """BCE, Dice and score sums (before / n_pairs) of one prediction: masks (D, Q, S), scores (D, Q)."""
        bce = dice = score = masks.new_zeros(())
        for d, a in enumerate(assigns):
            if a.num_pairs == 0:
                continue
            valid = sp_valid[d]
            x = masks[d, a.query][:, valid]  # (M, S_d)
            t = pair_gt_masks(a, labels[d], self.replicate_mdin_gt_index_bug)[:, valid].float()
            entry = F.binary_cross_entropy_with_logits(x, t, reduction="none")
            prob = x.sigmoid()
            per_dice = 1 - (2 * (prob * t).sum(-1) + 1) / (prob.sum(-1) + t.sum(-1) + 1)
            if self.parity_normalisation:
                bce = bce + entry.mean()
                dice = dice + per_dice.mean()
            else:
                bce = bce + entry.mean(-1).sum()
                dice = dice + per_dice.sum()
            with torch.no_grad():
                pred = x >= 0
                inter = (pred & t.bool()).sum(-1).float()
                iou = inter / (pred.sum(-1) + t.sum(-1) - inter + 1e-6)
            keep = iou > self.iou_threshold
            if bool(keep.any()):
                score = score + ((scores[d, a.query][keep] - iou[keep]) ** 2).mean()
        return bce, dice, score

    def _indicator(self, logits: Tensor, paired: Tensor, valid: Tensor) -> Tensor:
        """Sum of the weighted 2-way cross-entropy over valid queries: logits (D, Q, 2)."""
        ce = F.cross_entropy(logits.reshape(-1, 2), paired.reshape(-1).long(), reduction="none").view(paired.shape)
        weight = torch.where(paired, 1.0, self.eos_coef) * valid
        return (ce * weight).sum()

    def _sampler(self, outputs: Any, batch: ReferBatch3D, seeds: list[Assignment], seed_ctr: Tensor) -> Tensor:
        """Focal loss of the seed logits against the soft targets (module docstring); mean over descriptions."""
        logits, valid = outputs.seed_logits, outputs.seed_valid
        ref = batch.sp_ref_mask.to(logits.device)
        target = 0.5 * ref.gather(1, outputs.seed_sp.clamp(max=ref.shape[1] - 1))
        dev = logits.device
        for d, a in enumerate(seeds):
            if a.num_pairs:
                dist2 = ((seed_ctr[d, a.query] - a.centres[a.target].to(dev)) ** 2).sum(-1)
                target[d, a.query] = torch.exp(-dist2 / 2)
                target[d, a.nearest] = 1.0
        loss = sigmoid_focal_loss(logits, target.detach(), self.focal_alpha, self.focal_gamma) * valid
        per_desc = loss.sum(-1) / valid.sum(-1).clamp_min(1)
        return per_desc.mean()

    def forward(self, outputs: Any, batch: ReferBatch3D) -> dict[str, Tensor]:
        if batch.sp_ins_label is None or batch.sp_ref_mask is None:
            raise ValueError("MDINCriterion needs batch.sp_ins_label and batch.sp_ref_mask (scenes with superpoints)")
        assigns, seeds, labels, seed_ctr = self.assign(outputs, batch)
        dev = outputs.pred_masks.device
        n_pairs = total_pairs(sum(a.num_pairs for a in assigns), dev, self.global_pair_count and self.training)
        paired = torch.zeros_like(outputs.query_valid)
        for d, a in enumerate(assigns):
            paired[d, a.query] = True
        sp_valid = ~outputs.sp_padding
        num_pred = outputs.pred_masks.shape[0]
        terms = {k: outputs.pred_masks.new_zeros(()) for k in
                 ("loss_bce", "loss_dice", "loss_score", "loss_indicator", "loss_contrastive")}
        for p in range(num_pred):
            w = (p + 1) / num_pred if self.deep_supervision else float(p == num_pred - 1)
            if w == 0:
                continue
            bce, dice, score = self._mask_terms(outputs.pred_masks[p], outputs.pred_scores[p], assigns, labels,
                                                sp_valid)
            terms["loss_bce"] = terms["loss_bce"] + w * bce / n_pairs
            terms["loss_dice"] = terms["loss_dice"] + w * dice / n_pairs
            terms["loss_score"] = terms["loss_score"] + w * score / n_pairs
            terms["loss_indicator"] = terms["loss_indicator"] + w * self._indicator(
                outputs.pred_indicator[p], paired, outputs.query_valid) / n_pairs
            terms["loss_contrastive"] = terms["loss_contrastive"] + w * semantic_consistency_loss(
                outputs.query_proj[p], outputs.token_proj, outputs.query_valid, outputs.word_valid, paired,
                outputs.word_sets, self.temperature) / n_pairs
        terms["loss_sampler"] = self._sampler(outputs, batch, seeds, seed_ctr)
        terms["loss_bce"] = terms["loss_bce"] + _zero_anchor(outputs.pred_masks)
        terms["loss_score"] = terms["loss_score"] + _zero_anchor(outputs.pred_scores)
        terms.update(object_terms(outputs, batch, self.semantic_balance, self.semantic_field, self.affinity_balance))
        text_class = getattr(outputs, "text_class_logits", None)
        if text_class is not None:
            labels = target_classes(batch, text_class.shape[1], self.semantic_field).to(text_class.device)
            terms["loss_text_class"] = (F.cross_entropy(text_class, labels, ignore_index=IGNORE)
                                        if bool((labels >= 0).any()) else text_class.sum() * 0.0)
        return terms
