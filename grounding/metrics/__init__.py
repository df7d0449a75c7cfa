"""Metrics: pure functions (``masks``) and the torchmetrics evaluators built on them (``evaluators``)."""

from grounding.metrics.masks import (
    intersection_union,
    iou_from_counts,
    mask_iou,
    summarize_ious,
    threshold_hits,
)

__all__ = ["intersection_union", "iou_from_counts", "mask_iou", "summarize_ious", "threshold_hits"]
