"""torchmetrics evaluator of REC by box retrieval around the pure functions of :mod:`grounding.metrics.boxes`.

One evaluator reports both protocols of the box-retrieval spec:
- REC (§5): Acc@X with ``>=`` (primary) and ``>`` (strict) beside it, the number of exact ties, the proposal upper
  bound, the selection accuracy (Acc / upper bound), the mean number of candidates, and the precision / recall of
  the multi-box answers (all boxes whose probability passes the postprocess threshold);
- detection (§6): every image queried with every category name; the detections are gathered over the split,
  written in COCO's results format and scored by ``pycocotools``' ``COCOeval`` (bbox).

States are sums (REC) and concatenated rows (detections), so the values are exact under DDP when each sample is
evaluated once. The engine talks to it through ``update(predictions, batch)``, ``compute()`` and ``definitions()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from grounding.metrics.boxes import (
    COCO_STAT_NAMES,
    box_iou,
    coco_box_eval,
    iou_hits,
    load_coco_gt,
    paired_iou,
    upper_bound_hits,
    write_coco_results,
)

__all__ = ["BoxRetrievalMetric"]


@runtime_checkable
class BoxAnswer(Protocol):
    """One expression's answer: ``pred_box`` (4,) xyxy original pixels (NaN = no box), ``multi_boxes`` (K, 4)."""

    pred_box: Tensor
    multi_boxes: Tensor


@runtime_checkable
class Detections(Protocol):
    """One image's detections for the COCO protocol: ``boxes`` (K, 4) COCO xywh, ``scores`` (K,),
    ``category_ids`` (K,), ``image_id``."""

    image_id: int
    boxes: Tensor
    scores: Tensor
    category_ids: Tensor


class BoxTargets(Protocol):
    """What a batch exposes: the expressions' ground truth and candidate lists, in the answers' order."""

    def eval_gt_boxes(self) -> Tensor:  # (E, 4) xyxy original pixels
        ...

    def eval_candidate_boxes(self) -> list[Tensor]:  # E tensors (N_e, 4) xyxy original pixels
        ...


def _is_rank_zero() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0


class BoxRetrievalMetric(Metric):
    """REC Acc@X with its upper bound, and COCO box AP from the per-image detections.

    Args:
        threshold: X of Acc@X and of the upper bound (0.5).
        strict: report ``IoU > X`` as the primary ``Acc@X`` (False: ``>=``, the toolkit rule); the other
            convention is always reported beside it.
        instances: COCO instances json holding the ground truth of the evaluated images (for AP); None skips AP.
        results_file: where ``compute()`` writes the gathered detections in COCO's results format (None: not
            written); AP is computed from exactly these records.
        scale: multiply reported fractions (100 = percent, as the papers).

    ``compute()`` returns ``overall/<name>``: ``Acc@X``, ``Acc@X_strict``, ``ties``, ``UpperBound@X``,
    ``SelectAcc@X``, ``MultiP@X``, ``MultiR@X``, ``candidates``, ``count``, and with ``instances`` the COCO stats
    (``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``, ``AR10``, ``AR100``, ...) and ``images``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, threshold: float = 0.5, strict: bool = False, instances: str | Path | None = None,
                 results_file: str | Path | None = None, scale: float = 100.0) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.strict = strict
        self.instances = None if instances is None else str(instances)
        self.results_file = None if results_file is None else str(results_file)
        self.scale = scale
        self._coco_gt: Any = None  # loaded once, on the first compute() that needs it
        for name in ("count", "hits_ge", "hits_gt", "ties", "ub_ge", "ub_gt", "candidates", "multi_tp",
                     "multi_pred"):
            self.add_state(name, torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        # (D, 7) float64 rows (image_id, category_id, x, y, w, h, score) and the queried image ids.
        self.add_state("det_rows", [], dist_reduce_fx="cat")
        self.add_state("det_images", [], dist_reduce_fx="cat")
        self.last_ious = torch.zeros(0, dtype=torch.float64)  # per-expression IoUs of the latest batch

    def update(self, predictions: Sequence[Any], batch: BoxTargets) -> None:
        """Add one batch: answers are matched in order with ``batch.eval_gt_boxes()``; detections are stored."""
        answers = [p for p in predictions if isinstance(p, BoxAnswer)]
        detections = [p for p in predictions if isinstance(p, Detections)]
        device = self.count.device
        gt = batch.eval_gt_boxes().to(device)
        if len(answers) != gt.shape[0]:
            raise ValueError(f"{len(answers)} box answers for {gt.shape[0]} expressions in the batch")
        if answers:
            pred = torch.stack([a.pred_box.to(device, torch.float64) for a in answers])
            iou = paired_iou(pred, gt)
            cands = batch.eval_candidate_boxes()
            self.count += len(answers)
            self.hits_ge += int(iou_hits(iou, self.threshold).sum())
            self.hits_gt += int(iou_hits(iou, self.threshold, strict=True).sum())
            self.ties += int(((iou - self.threshold).abs() < 1e-9).sum())
            self.ub_ge += int(upper_bound_hits(cands, gt.cpu(), self.threshold).sum())
            self.ub_gt += int(upper_bound_hits(cands, gt.cpu(), self.threshold, strict=True).sum())
            self.candidates += sum(int(c.shape[0]) for c in cands)
            for a, g in zip(answers, gt):
                multi = a.multi_boxes.reshape(-1, 4)
                self.multi_pred += int(multi.shape[0])
                if multi.shape[0]:
                    # one ground truth per expression: one-to-one matching gives at most one true positive
                    self.multi_tp += int(bool(iou_hits(box_iou(multi.to(device), g[None]).max(), self.threshold,
                                                       self.strict)))
            self.last_ious = iou
        else:
            self.last_ious = torch.zeros(0, dtype=torch.float64, device=device)
        for d in detections:
            k = int(d.scores.numel())
            rows = torch.empty(k, 7, dtype=torch.float64, device=device)
            if k:
                rows[:, 0] = float(d.image_id)
                rows[:, 1] = d.category_ids.to(device, torch.float64)
                rows[:, 2:6] = d.boxes.to(device, torch.float64).reshape(k, 4)
                rows[:, 6] = d.scores.to(device, torch.float64)
            self.det_rows.append(rows)
            self.det_images.append(torch.tensor([int(d.image_id)], dtype=torch.long, device=device))

    # ------------------------------------------------------------------ results
    def detection_results(self) -> tuple[list[dict[str, Any]], list[int]]:
        """The gathered detections as COCO results records and the queried image ids (sorted, unique)."""
        rows = dim_zero_cat(self.det_rows) if len(self.det_rows) else torch.zeros(0, 7, dtype=torch.float64)
        images = dim_zero_cat(self.det_images) if len(self.det_images) else torch.zeros(0, dtype=torch.long)
        records = [{"image_id": int(r[0]), "category_id": int(r[1]), "bbox": [float(v) for v in r[2:6]],
                    "score": float(r[6])} for r in rows.reshape(-1, 7).cpu().tolist()]
        return records, sorted({int(i) for i in images.reshape(-1).tolist()})

    def compute(self) -> dict[str, Tensor]:
        s, x = self.scale, f"{self.threshold:g}"
        count = max(int(self.count), 1)
        primary, other = (self.hits_gt, self.hits_ge) if self.strict else (self.hits_ge, self.hits_gt)
        ub = self.ub_gt if self.strict else self.ub_ge
        f = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
        out = {
            f"overall/Acc@{x}": f(s * int(primary) / count),
            f"overall/Acc@{x}_{'ge' if self.strict else 'strict'}": f(s * int(other) / count),
            "overall/ties": f(int(self.ties)),
            f"overall/UpperBound@{x}": f(s * int(ub) / count),
            f"overall/SelectAcc@{x}": f(s * int(primary) / max(int(ub), 1)),
            f"overall/MultiP@{x}": f(s * int(self.multi_tp) / max(int(self.multi_pred), 1)),
            f"overall/MultiR@{x}": f(s * int(self.multi_tp) / count),
            "overall/candidates": f(int(self.candidates) / count),
            "overall/count": f(int(self.count)),
        }
        if self.instances is not None:
            records, images = self.detection_results()
            if self.results_file is not None and _is_rank_zero():
                write_coco_results(self.results_file, records)
            if self._coco_gt is None:
                self._coco_gt = load_coco_gt(self.instances)
            stats = coco_box_eval(self._coco_gt, records, img_ids=images) if images else \
                {n: 0.0 for n in COCO_STAT_NAMES}
            for name, value in stats.items():
                out[f"overall/{name}"] = f(s * value if value >= 0 else value)
            out["overall/images"] = f(len(images))
        return out

    def definitions(self) -> dict[str, str]:
        """The exact definition of every reported metric (printed and saved beside the numbers)."""
        x = f"{self.threshold:g}"
        op, other_op = (">", ">=") if self.strict else (">=", ">")
        unit = "percent" if self.scale == 100 else f"x{self.scale:g}"
        d = {
            f"Acc@{x}": f"fraction of expressions whose top-1 box has IoU {op} {x} with the ref's box (continuous "
                        f"xyxy, no +1, float64); no box = wrong; {unit}",
            f"Acc@{x}_{'ge' if self.strict else 'strict'}": f"the same with IoU {other_op} {x}; {unit}",
            "ties": f"number of expressions with |IoU - {x}| < 1e-9 (where the two conventions differ)",
            f"UpperBound@{x}": f"fraction of expressions with some candidate at IoU {op} {x} (proposal upper bound); "
                               f"{unit}",
            f"SelectAcc@{x}": f"Acc@{x} / UpperBound@{x}; {unit}",
            f"MultiP@{x}": f"multi-box answers (probability >= postprocess threshold): matched boxes / answered "
                           f"boxes, one-to-one at IoU {op} {x}; {unit}",
            f"MultiR@{x}": f"multi-box answers: fraction of expressions whose box is matched; {unit}",
            "candidates": "mean number of candidate boxes per expression",
            "count": "number of expressions evaluated (each exactly once across processes)",
        }
        if self.instances is not None:
            cap = "maxDets 100 per image and category after keeping the top 100 per image across categories"
            d.update({
                "AP": f"COCOeval bbox AP@[.50:.05:.95], area all, {cap}; every category queried on every image; "
                      f"{unit}",
                "AP50": f"COCOeval bbox AP at IoU 0.50 ({cap}); {unit}",
                "AP75": f"COCOeval bbox AP at IoU 0.75 ({cap}); {unit}",
                "AR100": f"COCOeval bbox AR@100 over IoU .50:.95; {unit}",
                "images": "number of images queried for the COCO protocol",
            })
        return d
