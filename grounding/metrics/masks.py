"""Pure mask metrics shared by every referring-segmentation task (3D points and 2D pixels).

Definitions (the ones printed next to every number):
- ``I_n = |P_n ∩ G_n|`` and ``U_n = |P_n ∪ G_n|`` per sample n (one description / expression).
- ``IoU_n = I_n / (U_n + eps)``: the RG-SAN / 3D-STMN / MDIN formula with ``eps = 1e-6``, so an
  empty prediction against an empty ground truth scores 0 unless ``both_empty_iou`` says otherwise
  (the RIS rule of the refcoco spec §5.3 sets it to 1).
- ``mIoU = mean_n IoU_n`` (a mean over samples, not over classes, not cumulative).
- ``oIoU = Σ_n I_n / Σ_n U_n`` (a.k.a. cIoU, cumulative IoU).
- ``Acc@X`` (3D) / ``Prec@X`` (2D) = fraction of samples with ``IoU_n > X`` when ``strict`` (RG-SAN,
  MDIN, DIT, CRIS) or ``IoU_n >= X`` otherwise (LAVT, ScanRefer's box benchmark).

All functions take boolean masks over the evaluation units (points or pixels) and work on any
device; none of them reduce across processes: the torchmetrics wrappers in ``evaluators.py`` do that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

IOU_EPS = 1e-6


def intersection_union(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union sizes of two boolean masks.

    Args:
        pred: ``(..., N)`` bool (or 0/1) predicted mask over N units.
        gt: ``(..., N)`` bool (or 0/1) ground-truth mask, same shape.

    Returns:
        ``(I, U)``: two ``(...)`` int64 tensors.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction mask shape {tuple(pred.shape)} != ground-truth shape {tuple(gt.shape)}")
    pred = pred.bool()
    gt = gt.bool()
    inter = (pred & gt).sum(-1)
    union = (pred | gt).sum(-1)
    return inter.long(), union.long()


def iou_from_counts(inter: Tensor, union: Tensor, both_empty_iou: float | None = None,
                    eps: float = IOU_EPS) -> Tensor:
    """``IoU = I / (U + eps)`` as float64; samples with ``U == 0`` get ``both_empty_iou`` when given.

    Args:
        inter: ``(S,)`` intersection sizes.
        union: ``(S,)`` union sizes.
        both_empty_iou: value for samples whose prediction and ground truth are both empty; ``None``
            keeps the formula's value (0).
        eps: the additive constant of the denominator (1e-6: RG-SAN, MDIN, CRIS; 0: exact ``I / U`` as LAVT, so
            that an IoU of exactly X passes ``IoU >= X``).

    Returns:
        ``(S,)`` float64 IoU values in [0, 1].
    """
    # U == 0 (both masks empty): the formula's 0 (eps > 0), never 0 / 0, unless both_empty_iou says otherwise.
    iou = inter.double() / (union.double() + eps).clamp_min(eps if eps > 0 else 1.0)
    if both_empty_iou is not None:
        iou = torch.where(union == 0, torch.full_like(iou, float(both_empty_iou)), iou)
    return iou


def mask_iou(pred: Tensor, gt: Tensor, both_empty_iou: float | None = None, eps: float = IOU_EPS) -> Tensor:
    """Per-sample IoU of boolean masks ``(..., N)``; returns ``(...)`` float64 (see module docstring)."""
    inter, union = intersection_union(pred, gt)
    return iou_from_counts(inter, union, both_empty_iou, eps)


def threshold_hits(iou: Tensor, thresholds: Sequence[float], strict: bool = True) -> Tensor:
    """Which samples pass each IoU threshold.

    Args:
        iou: ``(S,)`` per-sample IoU.
        thresholds: T thresholds, e.g. ``(0.25, 0.5)``.
        strict: ``IoU > X`` when True, ``IoU >= X`` when False.

    Returns:
        ``(S, T)`` bool.
    """
    th = torch.as_tensor(list(thresholds), dtype=iou.dtype, device=iou.device)
    return iou[:, None] > th if strict else iou[:, None] >= th


def summarize_ious(iou: Tensor, thresholds: Sequence[float] = (0.25, 0.5), strict: bool = True,
                   inter: Tensor | None = None, union: Tensor | None = None,
                   acc_name: str = "Acc") -> dict[str, float]:
    """mIoU, Acc@X (and oIoU when counts are given) of a set of samples, as fractions in [0, 1].

    A reference implementation for tests and for offline scoring of saved predictions; training and
    evaluation use :class:`grounding.metrics.evaluators.ReferringMaskMetric`, which sums the same
    quantities across batches and processes.
    """
    if iou.numel() == 0:
        raise ValueError("cannot summarize an empty set of samples")
    out = {"mIoU": float(iou.double().mean())}
    hits = threshold_hits(iou, thresholds, strict).double().mean(0)
    for x, h in zip(thresholds, hits.tolist()):
        out[f"{acc_name}@{x:g}"] = h
    if inter is not None and union is not None:
        out["oIoU"] = float(inter.sum().double() / union.sum().clamp_min(1).double())
    return out
