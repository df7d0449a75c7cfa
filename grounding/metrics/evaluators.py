"""torchmetrics evaluators around the pure functions of :mod:`grounding.metrics.masks`.

Every state is a sum, so results are exact under DDP: ranks add their counts (never average their
running means), provided each sample is evaluated exactly once (the data module's evaluation
sampler does not pad with duplicates).

The engine talks to an evaluator through three calls: ``update(predictions, batch)``, ``compute()``
and ``definitions()``. An evaluator reads what it needs from the predictions and from the batch
through the small protocols below, so it never names a dataset or a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from torchmetrics import Metric

from grounding.metrics.masks import IOU_EPS, intersection_union, iou_from_counts, threshold_hits


@runtime_checkable
class MaskPrediction(Protocol):
    """One sample's binary prediction over the evaluation units (points or pixels)."""

    pred_mask: Tensor  # (N,) bool


@runtime_checkable
class MaskTargets(Protocol):
    """What a batch exposes to mask evaluators: one ground-truth mask and one group name per sample."""

    def eval_gt_masks(self) -> list[Tensor]:  # each (N_i,) bool, aligned with the predictions
        ...

    def eval_groups(self) -> list[str] | None:  # e.g. "unique" / "multiple"; None: no groups
        ...


@dataclass
class _Mask:
    pred_mask: Tensor


@dataclass
class _Targets:
    gt_masks: list[Tensor]
    groups: Sequence[str] | None

    def eval_gt_masks(self) -> list[Tensor]:
        return self.gt_masks

    def eval_groups(self) -> list[str] | None:
        return None if self.groups is None else list(self.groups)


def group_sums(member: Tensor, values: Tensor) -> Tensor:
    """Per-group sums of integer per-sample values: ``member.T @ values`` computed exactly on any device.

    Args:
        member: ``(S, G)`` integer 0/1 membership of sample s in group g.
        values: ``(S,)`` or ``(S, K)`` integer values per sample.

    Returns:
        ``(G,)`` or ``(G, K)`` sums, same dtype as the inputs.
    """
    # A broadcast sum, not a matmul: CUDA has no integer matmul ("addmm_cuda" not implemented for 'Long'),
    # and a float matmul would round counts above 2^24 (oIoU sums pixels).
    if values.dim() == 1:
        return (member * values[:, None]).sum(0)
    return (member[:, :, None] * values[:, None, :]).sum(0)


class ReferringMaskMetric(Metric):
    """mIoU, oIoU and Acc@X (or Prec@X) over referring-segmentation samples, overall and per group.

    Args:
        thresholds: IoU thresholds X for ``Acc@X``.
        strict: ``IoU > X`` (RG-SAN, MDIN, DIT, CRIS) when True; ``IoU >= X`` when False.
        groups: names of the sample groups reported besides ``overall`` (e.g. ScanRefer's
            ``("unique", "multiple")``); a sample whose group is not listed counts only in overall.
        both_empty_iou: IoU of a sample whose prediction and ground truth are both empty; ``None``
            keeps the 3D formula's value 0, the RIS rule uses 1.
        acc_name: ``"Acc"`` (3D-RES convention) or ``"Prec"`` (RIS convention).
        scale: multiply reported values (100 reports percentages, as the papers do).
        iou_eps: the denominator's additive constant, ``I / (U + iou_eps)``: 1e-6 as RG-SAN and MDIN; 0 (exact
            ``I / U``) for RIS, where ``Prec@X`` uses ``>=`` and an IoU of exactly X must pass.

    ``compute()`` returns ``{"<group>/mIoU", "<group>/oIoU", "<group>/<acc_name>@X", "<group>/count"}``.
    """

    full_state_update = False
    higher_is_better = True
    report_oiou = True  # subclasses whose benchmark has no cumulative IoU turn it off

    def __init__(self, thresholds: Sequence[float] = (0.25, 0.5), strict: bool = True,
                 groups: Sequence[str] = (), both_empty_iou: float | None = None,
                 acc_name: str = "Acc", scale: float = 100.0, iou_eps: float = IOU_EPS) -> None:
        super().__init__()
        self.thresholds = tuple(float(t) for t in thresholds)
        self.strict = strict
        self.group_names = ("overall", *groups)
        self.both_empty_iou = both_empty_iou
        self.acc_name = acc_name
        self.scale = scale
        self.iou_eps = float(iou_eps)
        g, t = len(self.group_names), len(self.thresholds)
        # float64 sums: mIoU over ~10^4 samples must not drift with the reduction order across ranks.
        self.add_state("iou_sum", torch.zeros(g, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(g, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("hits", torch.zeros(g, t, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("inter_sum", torch.zeros(g, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("union_sum", torch.zeros(g, dtype=torch.long), dist_reduce_fx="sum")
        self.last_ious = torch.zeros(0, dtype=torch.float64)  # IoUs of the latest batch (not a state)

    def update(self, predictions: Sequence[MaskPrediction], batch: MaskTargets) -> None:
        """Add one batch: ``predictions[i].pred_mask`` against ``batch.eval_gt_masks()[i]``.

        The per-sample IoUs of the batch are kept in ``last_ious`` ``(S,)`` for per-sample records.
        """
        pred_masks = [p.pred_mask for p in predictions]
        gt_masks = batch.eval_gt_masks()
        groups = batch.eval_groups()
        if len(pred_masks) != len(gt_masks):
            raise ValueError(f"{len(pred_masks)} predictions for {len(gt_masks)} ground-truth masks")
        if groups is not None and len(groups) != len(pred_masks):  # a short list would leave samples out of groups
            raise ValueError(f"{len(groups)} group names for {len(pred_masks)} predictions")
        device = self.iou_sum.device
        if not pred_masks:
            self.last_ious = torch.zeros(0, dtype=torch.float64, device=device)
            return
        counts = [intersection_union(p.to(device), g.to(device)) for p, g in zip(pred_masks, gt_masks)]
        inter = torch.stack([c[0] for c in counts])
        union = torch.stack([c[1] for c in counts])
        iou = iou_from_counts(inter, union, self.both_empty_iou, self.iou_eps)
        hits = threshold_hits(iou, self.thresholds, self.strict).long()
        # membership (S, G): column 0 is "overall", the others are the named groups.
        member = torch.zeros(len(pred_masks), len(self.group_names), dtype=torch.bool, device=device)
        member[:, 0] = True
        if groups is not None:
            index = {name: i for i, name in enumerate(self.group_names)}
            for s, name in enumerate(groups):
                if name in index and name != "overall":
                    member[s, index[name]] = True
        m = member.long()
        self.iou_sum += (member.double() * iou[:, None]).sum(0)
        self.count += m.sum(0)
        self.hits += group_sums(m, hits)
        self.inter_sum += group_sums(m, inter)
        self.union_sum += group_sums(m, union)
        self.last_ious = iou

    def update_masks(self, pred_masks: Sequence[Tensor], gt_masks: Sequence[Tensor],
                     groups: Sequence[str] | None = None) -> Tensor:
        """Add samples given as plain mask lists (offline scoring); returns their ``(S,)`` IoU."""
        self.update([_Mask(p) for p in pred_masks], _Targets(list(gt_masks), groups))
        return self.last_ious

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        count = self.count.clamp_min(1)
        for g, name in enumerate(self.group_names):
            if name != "overall" and int(self.count[g]) == 0:
                continue  # a group that never occurred is not reported as 0
            out[f"{name}/mIoU"] = self.scale * self.iou_sum[g] / count[g]
            if self.report_oiou:
                out[f"{name}/oIoU"] = self.scale * self.inter_sum[g].double() / self.union_sum[g].clamp_min(1)
            for t, x in enumerate(self.thresholds):
                out[f"{name}/{self.acc_name}@{x:g}"] = self.scale * self.hits[g, t].double() / count[g]
            out[f"{name}/count"] = self.count[g].double()
        return out

    def definitions(self) -> dict[str, str]:
        """The exact definition of every reported metric, printed and saved beside the numbers."""
        op = ">" if self.strict else ">="
        empty = ("0" if self.both_empty_iou is None else f"{self.both_empty_iou:g}")
        unit = "percent" if self.scale == 100 else f"x{self.scale:g}"
        d = {
            "mIoU": f"mean over samples of IoU = |P∩G| / (|P∪G|{f' + {self.iou_eps:g}' if self.iou_eps else ''}); "
                    f"empty-vs-empty IoU = {empty}; {unit}",
            "oIoU": f"cumulative IoU = Σ|P∩G| / Σ|P∪G| over samples; {unit}",
            "count": "number of samples evaluated (each exactly once across processes)",
        }
        for x in self.thresholds:
            d[f"{self.acc_name}@{x:g}"] = f"fraction of samples with IoU {op} {x:g}; {unit}"
        return d
