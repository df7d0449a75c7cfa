"""3D-GRES evaluator (rgsan-mdin spec §9.2): one union-mask IoU per description, zero targets allowed.

Per description d, with P the predicted union mask and G the ground-truth union mask over the scene's points:

- ``IoU_d = |P ∩ G| / (|P ∪ G| + 1e-6)`` (the §9.1 formula);
- a prediction is **empty** when its mask has no point or it says ``no_target`` (MDIN §6.8: no query
  selected, or fewer than 50 points); a "no target" prediction is scored as an empty mask, so on a
  description with targets it scores 0;
- a **zero-target** description (G empty) scores 1 when the prediction is empty, else 0.

``mIoU`` is the mean of ``IoU_d`` over all descriptions (zero-target ones included as 0 / 1); ``Acc@X`` the
fraction with ``IoU_d > X`` (``>=`` when ``strict=False``). Both are reported overall and per Multi3DRefer
``eval_type`` (``zt_w_d``, ``zt_wo_d``, ``st_w_d``, ``st_wo_d``, ``mt``, and ``zt`` of the newer release as
its own group, spec D21). There is no per-instance matching (that is Multi3DRefer's box F1, not MDIN's metric).

Zero-target is decided by the ground truth (G empty), not by the ``eval_type`` string. On a Multi3DRefer
file whose records are consistent (``zt*`` ⇔ no ``object_ids``, counted by the loader's report) the two are
the same; on an inconsistent record the ground truth is what the prediction is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from grounding.metrics.evaluators import MaskPrediction, MaskTargets, ReferringMaskMetric, group_sums
from grounding.metrics.masks import IOU_EPS, intersection_union, iou_from_counts, threshold_hits

GRES_GROUPS = ("zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt", "zt")
ZERO_TARGET = "zero_target"  # key prefix of the zero-target extras
TARGETED = "targeted"  # key prefix of the extras over descriptions with >= 1 target


def prediction_is_empty(prediction: MaskPrediction) -> bool:
    """True when the prediction says "no target" (``no_target`` attribute) or its mask has no point."""
    return bool(getattr(prediction, "no_target", False)) or not bool(prediction.pred_mask.any())


def gres_ious(pred_masks: Sequence[Tensor], gt_masks: Sequence[Tensor], pred_empty: Sequence[bool] | None = None,
              eps: float = IOU_EPS) -> tuple[Tensor, Tensor, Tensor]:
    """Per-description 3D-GRES IoU (module docstring) of S descriptions.

    Args:
        pred_masks: S masks, each ``(N_s,)`` bool over the description's scene points.
        gt_masks: S masks, each ``(N_s,)`` bool, aligned with ``pred_masks`` (the union of all targets).
        pred_empty: S flags, True where the prediction is "no target" whatever its mask holds; None: a
            prediction is empty exactly when its mask is.
        eps: the denominator's additive constant.

    Returns:
        ``(iou, pred_empty, gt_empty)``: ``(S,)`` float64 IoU_d, ``(S,)`` bool and ``(S,)`` bool.
    """
    if len(pred_masks) != len(gt_masks):
        raise ValueError(f"{len(pred_masks)} predictions for {len(gt_masks)} ground-truth masks")
    if not pred_masks:
        empty = torch.zeros(0, dtype=torch.bool)
        return torch.zeros(0, dtype=torch.float64), empty, empty
    device = gt_masks[0].device
    counts = [intersection_union(p.to(device), g) for p, g in zip(pred_masks, gt_masks)]
    inter = torch.stack([c[0] for c in counts])
    union = torch.stack([c[1] for c in counts])
    gt_empty = torch.stack([~g.bool().any() for g in gt_masks])
    flags = (torch.tensor([bool(e) for e in pred_empty], dtype=torch.bool, device=device) if pred_empty is not None
             else torch.zeros_like(gt_empty))
    empty = flags | torch.stack([~p.bool().any() for p in pred_masks]).to(device)
    iou = iou_from_counts(inter, union, None, eps)
    iou = torch.where(empty, torch.zeros_like(iou), iou)  # "no target" on a described object scores 0
    iou = torch.where(gt_empty, empty.double(), iou)  # zero-target: 1 iff the prediction is empty
    return iou, empty, gt_empty


class GeneralizedReferringMaskMetric(ReferringMaskMetric):
    """mIoU and Acc@X of 3D-GRES (spec §9.2), overall and per ``eval_type``, with no-target diagnostics.

    Args:
        thresholds: IoU thresholds X of ``Acc@X``.
        strict: ``IoU_d > X`` (MDIN, the default) when True; ``IoU_d >= X`` when False.
        groups: group names reported besides ``overall`` (default: the Multi3DRefer eval types, ``zt``
            included); a description whose group is not listed counts only in ``overall``.
        scale: multiply reported values (100: percentages, as the papers report).
        iou_eps: the denominator's additive constant (1e-6 as MDIN).

    Groups come from ``batch.eval_groups()`` (a Multi3DRefer record's group is its ``eval_type``);
    ``predictions[i].pred_mask`` is compared with ``batch.eval_gt_masks()[i]``, and a prediction with a true
    ``no_target`` attribute is empty whatever its mask. Every state is a sum (exact under DDP).

    ``compute()`` keys:
        ``<group>/mIoU``, ``<group>/Acc@X``, ``<group>/count`` for ``overall`` and every group that occurred;
        ``zero_target/empty_acc`` and ``zero_target/count`` (descriptions without targets);
        ``targeted/no_target_rate`` and ``targeted/count`` (descriptions with at least one target).
    ``last_ious`` holds the ``(S,)`` IoU_d of the latest batch (what the engine stores per sample).
    """

    report_oiou = False

    def __init__(self, thresholds: Sequence[float] = (0.25, 0.5), strict: bool = True,
                 groups: Sequence[str] = GRES_GROUPS, scale: float = 100.0, iou_eps: float = IOU_EPS) -> None:
        super().__init__(thresholds=thresholds, strict=strict, groups=groups, both_empty_iou=None, acc_name="Acc",
                         scale=scale, iou_eps=iou_eps)
        g = len(self.group_names)
        # Per group (column 0 = overall), so the extras could be broken down later without a state change.
        self.add_state("zt_count", torch.zeros(g, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("zt_pred_empty", torch.zeros(g, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("tg_count", torch.zeros(g, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("tg_pred_empty", torch.zeros(g, dtype=torch.long), dist_reduce_fx="sum")

    def _membership(self, groups: Sequence[str] | None, n: int, device: torch.device) -> Tensor:
        """(S, G) bool: column 0 ("overall") always True, column k True for the k-th named group."""
        member = torch.zeros(n, len(self.group_names), dtype=torch.bool, device=device)
        member[:, 0] = True
        if groups is not None:
            if len(groups) != n:
                raise ValueError(f"{len(groups)} group names for {n} descriptions")
            index = {name: i for i, name in enumerate(self.group_names)}
            for s, name in enumerate(groups):
                if name in index and name != "overall":
                    member[s, index[name]] = True
        return member

    def update(self, predictions: Sequence[MaskPrediction], batch: MaskTargets) -> None:
        """Add one batch of S descriptions (see the class docstring); sets ``last_ious`` ``(S,)``."""
        gt_masks = batch.eval_gt_masks()
        device = self.iou_sum.device
        iou, empty, gt_empty = gres_ious([p.pred_mask for p in predictions], [g.to(device) for g in gt_masks],
                                         [getattr(p, "no_target", False) for p in predictions], self.iou_eps)
        iou, empty, gt_empty = iou.to(device), empty.to(device), gt_empty.to(device)
        if not len(predictions):
            self.last_ious = iou
            return
        member = self._membership(batch.eval_groups(), len(predictions), device)
        m = member.long()
        hits = threshold_hits(iou, self.thresholds, self.strict).long()
        self.iou_sum += (member.double() * iou[:, None]).sum(0)
        self.count += m.sum(0)
        self.hits += group_sums(m, hits)
        self.zt_count += group_sums(m, gt_empty.long())
        self.zt_pred_empty += group_sums(m, (gt_empty & empty).long())
        self.tg_count += group_sums(m, (~gt_empty).long())
        self.tg_pred_empty += group_sums(m, (~gt_empty & empty).long())
        self.last_ious = iou

    def compute(self) -> dict[str, Tensor]:
        out = super().compute()  # mIoU, Acc@X and count per group (no oIoU: MDIN does not report it)
        # Extras over all descriptions (column 0); a rate over no description is reported as 0 with count 0.
        out[f"{ZERO_TARGET}/empty_acc"] = self.scale * self.zt_pred_empty[0].double() / self.zt_count[0].clamp_min(1)
        out[f"{ZERO_TARGET}/count"] = self.zt_count[0].double()
        out[f"{TARGETED}/no_target_rate"] = (self.scale * self.tg_pred_empty[0].double()
                                             / self.tg_count[0].clamp_min(1))
        out[f"{TARGETED}/count"] = self.tg_count[0].double()
        return out

    def definitions(self) -> dict[str, str]:
        """The exact definition of every reported number (keys: the metric names, lower-cased in metrics.json)."""
        op = ">" if self.strict else ">="
        unit = "percent" if self.scale == 100 else f"x{self.scale:g}"
        eps = f" + {self.iou_eps:g}" if self.iou_eps else ""
        iou = (f"IoU_d = |P∩G| / (|P∪G|{eps}) between the predicted and the ground-truth union masks over the "
               "scene's points; a prediction is empty when its mask has no point or it says no_target, and an empty "
               "prediction scores 0 on a description with targets; a zero-target description (empty ground truth) "
               "scores 1 if the prediction is empty, else 0")
        d = {
            "mIoU": f"mean over all descriptions (zero-target included) of {iou}; {unit}",
            "count": "number of descriptions evaluated (each exactly once across processes); per group: eval_type",
            "empty_acc": f"zero_target: fraction of zero-target descriptions (empty ground truth) whose prediction is "
                         f"empty; {unit}",
            "no_target_rate": f"targeted: fraction of descriptions with at least one target whose prediction is empty "
                              f"(no_target or no point); {unit}",
        }
        for x in self.thresholds:
            d[f"{self.acc_name}@{x:g}"] = f"fraction of descriptions with IoU_d {op} {x:g} (IoU_d as in mIoU); {unit}"
        return d
