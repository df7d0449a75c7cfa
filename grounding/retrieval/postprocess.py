"""Inference of the retrieval head (box-retrieval spec §4.7): logits -> answers in original image pixels.

For every expression query: the REC answer is the argmax candidate (no box when the "no target" logit wins);
every candidate gets a real probability ``sigmoid(logit)`` (trained by ``loss_box``), and the multi-box answer is
every candidate whose probability reaches ``threshold`` (expressions that name several objects).
For every image with category queries (the COCO protocol): score_{i,c} = sigmoid(s_{i,c}) x proposal_score_i^beta
for every candidate i and category c, keeping the ``max_dets_per_image`` best triples across categories (spec
§6.2 toolkit rule: 100 per image, as a conventional detector).

``postprocess(outputs, batch)`` returns the E :class:`BoxPrediction` (expression order) followed by one
:class:`ImageDetections` per image that had category queries; both carry ``sample_id`` and ``to_record()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from datasets.batch_boxes import RetrievalBatch
from grounding.metrics.boxes import paired_iou, xyxy_to_xywh
from grounding.retrieval.model import RetrievalOutputs

__all__ = ["BoxPrediction", "ImageDetections", "RetrievalPostprocess"]


def _xywh(box: Tensor) -> list[float] | None:
    return None if not bool(torch.isfinite(box).all()) else [round(float(v), 3) for v in xyxy_to_xywh(box)]


@dataclass
class BoxPrediction:
    """One expression's answer.

    Attributes:
        sample_id: ``"<dataset>/<sent_id>"``; image_id: COCO image id; text: the expression (as the model read it).
        pred_box: (4,) float64 xyxy original pixels of the chosen candidate (NaN: no box).
        score: sigmoid probability of the chosen box; prob: its softmax probability among the candidates.
        index: the chosen candidate's index in the (shuffled) list, -1 for no box.
        multi_boxes: (K, 4) xyxy original pixels with probability >= threshold; multi_scores: (K,).
        gt_box: (4,) xyxy ground truth (for the record); iou: IoU of pred_box with it.
    """

    sample_id: str
    image_id: int
    text: str
    pred_box: Tensor
    score: float
    prob: float
    index: int
    multi_boxes: Tensor
    multi_scores: Tensor
    gt_box: Tensor
    iou: float

    def to_record(self) -> dict[str, Any]:
        """JSON record; boxes as COCO ``[x, y, w, h]`` original pixels (None for no box)."""
        return {"sample_id": self.sample_id, "image_id": int(self.image_id), "text": self.text,
                "bbox": _xywh(self.pred_box), "score": round(self.score, 6), "prob": round(self.prob, 6),
                "index": self.index, "gt_bbox": _xywh(self.gt_box), "iou": round(self.iou, 6),
                "multi": [{"bbox": _xywh(b), "score": round(float(s), 6)}
                          for b, s in zip(self.multi_boxes, self.multi_scores)]}


@dataclass
class ImageDetections:
    """Detections of one image for the COCO protocol.

    Attributes:
        sample_id: ``"<dataset>/image<id>"``; image_id: COCO image id.
        boxes: (K, 4) float64 COCO xywh original pixels; scores: (K,); category_ids: (K,) int64.
    """

    sample_id: str
    image_id: int
    boxes: Tensor
    scores: Tensor
    category_ids: Tensor

    def to_record(self) -> dict[str, Any]:
        return {"sample_id": self.sample_id, "image_id": int(self.image_id),
                "detections": [{"category_id": int(c), "bbox": [round(float(v), 3) for v in b],
                                "score": round(float(s), 6)}
                               for b, s, c in zip(self.boxes, self.scores, self.category_ids)]}


class RetrievalPostprocess:
    """``postprocess(outputs, batch) -> list[BoxPrediction | ImageDetections]``.

    Args:
        threshold: probability a candidate needs to join the multi-box answer (>=).
        max_dets_per_image: detections kept per image across categories (COCO protocol).
        score_power: beta of ``sigmoid x proposal_score^beta`` for detections (0: the head's probability alone).
    """

    def __init__(self, threshold: float = 0.5, max_dets_per_image: int = 100, score_power: float = 0.0) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"RetrievalPostprocess.threshold must lie in (0, 1), got {threshold}")
        self.threshold, self.max_dets_per_image, self.score_power = threshold, max_dets_per_image, score_power

    @torch.no_grad()
    def __call__(self, outputs: RetrievalOutputs, batch: RetrievalBatch) -> list[Any]:
        logits = outputs.logits.float().cpu()
        valid = outputs.valid.cpu()
        if logits.shape[0] != len(batch.texts):
            raise ValueError(f"RetrievalPostprocess: {logits.shape[0]} logit rows for {len(batch.texts)} queries")
        probs = logits.sigmoid().masked_fill(~valid, 0.0)
        softmax = logits.softmax(1).nan_to_num(0.0)
        no_target = None if outputs.no_target_logits is None else outputs.no_target_logits.float().cpu()
        boxes, q_image = batch.boxes.cpu().double(), batch.query_image.cpu()
        gt = batch.eval_gt_boxes().cpu()
        predictions: list[Any] = []
        for e, k in enumerate(batch.expression_index.tolist()):
            i = int(q_image[k])
            idx = torch.full((1,), i, dtype=torch.long)
            has_box = bool(valid[k].any()) and (no_target is None or bool(logits[k].max() >= no_target[k]))
            j = int(logits[k].argmax()) if has_box else -1
            box = batch.unflip(boxes[i, j][None], idx)[0] if j >= 0 else torch.full((4,), math.nan, dtype=torch.float64)
            multi = (probs[k] >= self.threshold) & valid[k]
            multi_boxes = batch.unflip(boxes[i][multi], idx.expand(int(multi.sum())))
            predictions.append(BoxPrediction(
                sample_id=batch.query_ids[k], image_id=batch.image_ids[i], text=batch.texts[k], pred_box=box,
                score=float(probs[k, j]) if j >= 0 else 0.0, prob=float(softmax[k, j]) if j >= 0 else 0.0, index=j,
                multi_boxes=multi_boxes, multi_scores=probs[k][multi], gt_box=gt[e],
                iou=float(paired_iou(box[None], gt[e][None])[0])))
        categories = (~batch.is_expression).cpu()
        for i in range(batch.num_images):
            rows = (categories & (q_image == i)).nonzero().reshape(-1)
            if rows.numel() == 0:
                continue
            n = int(valid[rows[0]].sum()) if rows.numel() else 0
            score = probs[rows][:, :n]  # (C, n): valid candidates come first in the padded list
            if self.score_power:
                score = score * batch.box_scores[i, :n].cpu().clamp_min(0).pow(self.score_power)[None]
            flat = score.reshape(-1)
            top = torch.argsort(flat, descending=True, stable=True)[:self.max_dets_per_image]
            cand = top % max(n, 1)
            cat = batch.category_ids.cpu()[rows][top // max(n, 1)]
            xyxy = batch.unflip(boxes[i, cand], torch.full((cand.numel(),), i, dtype=torch.long))
            predictions.append(ImageDetections(sample_id=batch.image_keys[i], image_id=batch.image_ids[i],
                                               boxes=xyxy_to_xywh(xyxy), scores=flat[top].double(),
                                               category_ids=cat))
        return predictions
