"""Box metrics of REC by box retrieval (box-retrieval spec §5, §6): IoU, Acc@0.5 with both tie conventions,
the proposal upper bound, and COCO box AP through ``pycocotools``.

Frames: every box is in pixels of the **original** image, top-left origin, continuous corners:
``xyxy`` = (x0, y0, x1, y1) with area (x1 - x0) * (y1 - y0) (no +1 pixel), ``xywh`` = COCO's (x, y, w, h).
IoU is computed in float64, as ``torchvision.ops.box_iou``. A missing prediction is a box of non-finite
values and has IoU 0 with everything ([IVL] substitutes (0, 0, 0, 0), which also scores 0).

Pure functions only: no model, no dataset (layer 1 of ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "COCO_STAT_NAMES",
    "RecScores",
    "box_iou",
    "coco_box_eval",
    "iou_hits",
    "keep_top_per_image",
    "load_coco_gt",
    "paired_iou",
    "rec_scores",
    "upper_bound_hits",
    "write_coco_results",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]

# |IoU - threshold| below this counts as an exact tie (spec §5.1: log ties, report the strict value beside).
TIE_EPS = 1e-9
# COCOeval.summarize() fills stats in this order (spec §6.1).
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) COCO (x, y, w, h) -> (..., 4) (x0, y0, x1, y1) = (x, y, x + w, y + h); same dtype."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], -1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(..., 4) (x0, y0, x1, y1) -> (..., 4) COCO (x, y, w, h); same dtype."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], -1)


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp_min(0) * (boxes[..., 3] - boxes[..., 1]).clamp_min(0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M) float64.

    Degenerate pairs (union 0) and boxes with non-finite coordinates score 0.
    """
    a, b = a.to(torch.float64).reshape(-1, 4), b.to(torch.float64).reshape(-1, 4)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1e-300), torch.zeros_like(inter))
    finite = torch.isfinite(a).all(-1)[:, None] & torch.isfinite(b).all(-1)[None, :]
    return torch.where(finite, iou, torch.zeros_like(iou))


def paired_iou(pred: Tensor, gt: Tensor) -> Tensor:
    """IoU of matching rows: (N, 4) and (N, 4) xyxy -> (N,) float64 (non-finite prediction -> 0)."""
    if pred.shape != gt.shape or pred.shape[-1] != 4:
        raise ValueError(f"paired_iou needs two (N, 4) tensors, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    a, b = pred.to(torch.float64), gt.to(torch.float64)
    inter = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp_min(0).prod(-1)
    union = _area(a) + _area(b) - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1e-300), torch.zeros_like(inter))
    finite = torch.isfinite(a).all(-1) & torch.isfinite(b).all(-1)
    return torch.where(finite, iou, torch.zeros_like(iou))


def iou_hits(iou: Tensor, threshold: float = 0.5, strict: bool = False) -> Tensor:
    """(N,) bool: ``IoU >= threshold`` (default, most REC papers and pycocotools) or ``IoU > threshold`` (strict,
    the ChatRex paper's wording)."""
    return iou > threshold if strict else iou >= threshold


@dataclass(frozen=True)
class RecScores:
    """REC accuracy of a set of expressions (spec §5.1); ``acc`` in [0, 1] (not percent).

    Attributes:
        count: M, the number of expressions.
        hits: expressions with IoU >= threshold; hits_strict: with IoU > threshold.
        ties: expressions with |IoU - threshold| < 1e-9 (the two conventions differ by exactly these).
        acc: hits / M (the toolkit's primary value, ``>=``); acc_strict: hits_strict / M.
    """

    count: int
    hits: int
    hits_strict: int
    ties: int

    @property
    def acc(self) -> float:
        return self.hits / self.count if self.count else 0.0

    @property
    def acc_strict(self) -> float:
        return self.hits_strict / self.count if self.count else 0.0


def rec_scores(pred: Tensor, gt: Tensor, threshold: float = 0.5) -> RecScores:
    """Acc@threshold of one predicted box per expression against its ground-truth box.

    Args:
        pred: (M, 4) xyxy predictions (a row of NaN = no answer, counted wrong).
        gt: (M, 4) xyxy ground truth (the ref's COCO box converted with :func:`xywh_to_xyxy`).
    """
    iou = paired_iou(pred, gt)
    return RecScores(count=int(iou.numel()), hits=int(iou_hits(iou, threshold).sum()),
                     hits_strict=int(iou_hits(iou, threshold, strict=True).sum()),
                     ties=int(((iou - threshold).abs() < TIE_EPS).sum()))


def upper_bound_hits(candidates: Sequence[Tensor], gt: Tensor, threshold: float = 0.5,
                     strict: bool = False) -> Tensor:
    """Proposal upper bound per expression (spec §5.2): (M,) bool, whether any of the candidates given to the head
    reaches the threshold with the ground truth (same convention as the main metric).

    Args:
        candidates: M tensors (N_m, 4) xyxy, the candidate list of each expression (N_m may be 0).
        gt: (M, 4) xyxy ground truth.
    """
    if len(candidates) != gt.shape[0]:
        raise ValueError(f"{len(candidates)} candidate lists for {gt.shape[0]} ground-truth boxes")
    sizes = torch.tensor([int(c.reshape(-1, 4).shape[0]) for c in candidates], dtype=torch.long)
    if int(sizes.sum()) == 0:
        return torch.zeros(len(candidates), dtype=torch.bool)
    owner = torch.repeat_interleave(torch.arange(len(candidates)), sizes)
    flat = torch.cat([c.reshape(-1, 4).to(torch.float64).cpu() for c in candidates])
    iou = paired_iou(flat, gt.to(torch.float64).cpu()[owner])
    best = torch.full((len(candidates),), -1.0, dtype=torch.float64).scatter_reduce(0, owner, iou, "amax")
    return iou_hits(best, threshold, strict) & (sizes > 0)


# ---------------------------------------------------------------------------------------------- COCO AP
def keep_top_per_image(results: Iterable[Mapping[str, Any]], k: int = 100) -> list[dict[str, Any]]:
    """The ``k`` highest-scoring detections of every image, across categories (spec §6.2 toolkit rule: a
    conventional detector's 100 per image, not pycocotools' 100 per image *and* category). Stable: equal scores
    keep their input order."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_image.setdefault(int(r["image_id"]), []).append(dict(r))
    out: list[dict[str, Any]] = []
    for image_id in sorted(by_image):
        dets = sorted(by_image[image_id], key=lambda r: -float(r["score"]))
        out.extend(dets[:k])
    return out


def write_coco_results(path: str | Path, results: Iterable[Mapping[str, Any]]) -> Path:
    """Write detections in COCO's results format: a JSON list of ``{"image_id": int, "category_id": int,
    "bbox": [x, y, w, h], "score": float}`` (original pixels). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = [{"image_id": int(r["image_id"]), "category_id": int(r["category_id"]),
              "bbox": [round(float(v), 3) for v in r["bbox"]], "score": round(float(r["score"]), 6)}
             for r in results]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(clean))
    tmp.replace(path)
    return path


def load_coco_gt(source: Any) -> Any:
    """A ``pycocotools.coco.COCO`` from a path to an instances json, a COCO-format dict, or a COCO (returned)."""
    from pycocotools.coco import COCO

    if isinstance(source, COCO):
        return source
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress lines
        if isinstance(source, (str, Path)):
            return COCO(str(source))
        gt = COCO()
        gt.dataset = copy.deepcopy(dict(source))
        gt.createIndex()
    return gt


def coco_box_eval(gt: Any, results: Sequence[Mapping[str, Any]] | str | Path, img_ids: Iterable[int] | None = None,
                  use_cats: bool = True) -> dict[str, float]:
    """COCO box AP / AR with ``pycocotools.cocoeval.COCOeval(iouType="bbox")`` (spec §6.1), values in [0, 1].

    Args:
        gt: instances json path, COCO-format dict or ``COCO`` object (ground truth, all categories).
        results: detections in COCO's results format (list, or a path to such a JSON file).
        img_ids: the evaluated images; None = every ground-truth image. Set it to the images that were
            queried, otherwise the others count as misses.
        use_cats: False = class-agnostic (proposal recall: read ``AR100``).

    Returns:
        ``{name: value}`` for :data:`COCO_STAT_NAMES` (AP@[.5:.95], AP50, AP75, AP small/medium/large, AR@1/10/100,
        AR small/medium/large); maxDets (1, 10, 100) per image and category, COCO's defaults. No detections at all
        gives 0 for every value (``loadRes`` cannot load an empty list). -1 marks a value with no ground truth.
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = load_coco_gt(gt)
    if isinstance(results, (str, Path)):
        results = json.loads(Path(results).read_text())
    dets = [dict(r, bbox=[float(v) for v in r["bbox"]]) for r in results]  # loadRes edits its records
    if not dets:
        return {name: 0.0 for name in COCO_STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if img_ids is not None:
            ev.params.imgIds = sorted({int(i) for i in img_ids})
        ev.params.useCats = int(use_cats)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(COCO_STAT_NAMES, np.asarray(ev.stats).tolist())}
