"""Candidate boxes of REC by box retrieval (box-retrieval spec §4.2, §4.6): where the boxes come from and how
their order is hidden.

Sources (each a callable ``source(image, referred, rng, train) -> Candidates``):
- :class:`AnnotatedBoxes`: every (non-crowd) annotated box of the image, the standard RefCOCO REC setting
  ("oracle candidates"); in training optionally plus jittered and random *negatives* (IoU < 0.5 with every
  annotated box, so none of them is a correct answer) that teach the head to prefer well-placed boxes;
- :class:`ProposalBoxes`: boxes of a proposal file (e.g. written by :mod:`grounding.retrieval.proposals` from a SAM
  checkpoint's automatic masks), filtered by score and capped; in training the referred boxes are inserted with
  probability ``p_gt`` (spec §4.6), each with the score of its best-matching proposal so the score does not
  reveal it.

Order: the dataset shuffles every candidate list with the item's seeded generator (:func:`shuffle_candidates`),
so the index of the answer carries no information (tests/retrieval: an order-only predictor stays at chance).
Quantisation: generated boxes are rounded like the annotated ones (whole pixels when all annotated boxes of the
image are whole, else 0.01 px), so rounding cannot tell an annotated box from a generated one.

Frames: boxes are (N, 4) float64 xyxy in original image pixels, top-left origin.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from datasets.errors import DataFormatError
from datasets.refcoco import CocoInstances, _box
from grounding.metrics.boxes import box_iou

__all__ = ["AnnotatedBoxes", "CandidateSource", "Candidates", "ImageBoxes", "ProposalBoxes", "index_image_boxes",
           "iou_matrix", "read_proposals", "shuffle_candidates"]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) float64 IoU (:func:`grounding.metrics.boxes.box_iou`)."""
    return box_iou(torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(b, np.float64))).numpy()


@dataclass(frozen=True)
class ImageBoxes:
    """The annotated objects of one image.

    Attributes:
        image_id, height, width: from ``instances.json``.
        boxes: (K, 4) float64 xyxy original pixels, file order; category_ids, ann_ids: (K,) int64.
    """

    image_id: int
    height: int
    width: int
    boxes: np.ndarray
    category_ids: np.ndarray
    ann_ids: np.ndarray


def index_image_boxes(instances: CocoInstances, include_crowd: bool = False) -> dict[int, ImageBoxes]:
    """Annotated boxes per image id, from an indexed ``instances.json``; crowd regions are left out by default
    (RefCOCO never refers to them). Raises :class:`DataFormatError` naming the annotation and field."""
    rows: dict[int, list[tuple[int, int, tuple[float, float, float, float]]]] = {i: [] for i in instances.images}
    p = instances.path
    for ann_id, (pos, rec) in instances.annotations.items():
        where = f"annotation {pos} (id {ann_id})"
        image_id, category_id = rec.get("image_id"), rec.get("category_id")
        if image_id not in rows:
            raise DataFormatError(p, f"image_id {image_id!r} is not in 'images'", record=where, field="image_id")
        if not isinstance(category_id, int) or category_id not in instances.categories:
            raise DataFormatError(p, f"category_id {category_id!r} is not in 'categories'", record=where,
                                  field="category_id")
        if rec.get("iscrowd", 0) and not include_crowd:
            continue
        x, y, w, h = _box(p, rec.get("bbox"), where, "bbox")
        rows[image_id].append((ann_id, category_id, (x, y, x + w, y + h)))
    out = {}
    for image_id, items in rows.items():
        info = instances.images[image_id]
        items.sort(key=lambda r: instances.annotations[r[0]][0])  # file order
        out[image_id] = ImageBoxes(image_id, info.height, info.width,
                                   np.array([r[2] for r in items], np.float64).reshape(-1, 4),
                                   np.array([r[1] for r in items], np.int64), np.array([r[0] for r in items], np.int64))
    return out


@dataclass
class Candidates:
    """Candidate boxes of one image: ``boxes`` (N, 4) float64 xyxy original pixels, ``scores`` (N,) float32
    (the proposal score; 1 for annotated and generated boxes)."""

    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def take(self, order: np.ndarray) -> Candidates:
        return Candidates(self.boxes[order], self.scores[order])


def shuffle_candidates(candidates: Candidates, rng: np.random.Generator) -> tuple[Candidates, np.ndarray]:
    """A random permutation of the candidates: returns (shuffled, perm) with ``shuffled[i] = candidates[perm[i]]``."""
    perm = rng.permutation(len(candidates))
    return candidates.take(perm), perm


class CandidateSource(Protocol):
    """``source(image, referred, rng, train) -> Candidates``; ``referred`` (R, 4) xyxy: the boxes the image's
    expressions refer to (for training-time insertion)."""

    def __call__(self, image: ImageBoxes, referred: np.ndarray, rng: np.random.Generator,
                 train: bool) -> Candidates: ...


def _quantiser(reference: np.ndarray) -> float:
    """1.0 when every reference coordinate is a whole number, else 0.01 (COCO's two decimals)."""
    return 1.0 if reference.size == 0 or np.all(reference == np.round(reference)) else 0.01


def _negatives(image: ImageBoxes, rng: np.random.Generator, jitter: int, random: int, max_iou: float,
               attempts: int = 20) -> np.ndarray:
    """Up to ``jitter + random`` boxes with IoU < ``max_iou`` to every annotated box: (K, 4) xyxy."""
    W, H, gt = float(image.width), float(image.height), image.boxes
    q = _quantiser(gt)
    out: list[np.ndarray] = []
    for kind, n in (("jitter", jitter if len(gt) else 0), ("random", random)):
        for _ in range(n):
            for _ in range(attempts):
                if kind == "jitter":  # a shifted and rescaled copy of an annotated box: a near miss
                    x0, y0, x1, y1 = gt[int(rng.integers(len(gt)))]
                    w, h = (x1 - x0) * np.exp(rng.uniform(-0.7, 0.7)), (y1 - y0) * np.exp(rng.uniform(-0.7, 0.7))
                    cx = (x0 + x1) / 2 + rng.uniform(-0.6, 0.6) * (x1 - x0)
                    cy = (y0 + y1) / 2 + rng.uniform(-0.6, 0.6) * (y1 - y0)
                else:  # anywhere, 5-50 % of each side
                    w, h = rng.uniform(0.05, 0.5) * W, rng.uniform(0.05, 0.5) * H
                    cx, cy = rng.uniform(w / 2, W - w / 2), rng.uniform(h / 2, H - h / 2)
                box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                box = np.clip(np.round(box / q) * q, 0, [W, H, W, H])
                if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                    continue
                if len(gt) == 0 or iou_matrix(box[None], gt).max() < max_iou:
                    out.append(box)
                    break
    return np.array(out, np.float64).reshape(-1, 4)


@dataclass
class AnnotatedBoxes:
    """Every annotated box of the image (the RefCOCO REC setting); in training plus negatives.

    Args:
        jitter_negatives: per image, shifted / rescaled copies of annotated boxes (training only).
        random_negatives: per image, boxes drawn anywhere (training only).
        negative_max_iou: negatives keep IoU below this with every annotated box (0.5: never a correct answer).
    """

    jitter_negatives: int = 0
    random_negatives: int = 0
    negative_max_iou: float = 0.5

    def __call__(self, image: ImageBoxes, referred: np.ndarray, rng: np.random.Generator,
                 train: bool) -> Candidates:
        boxes = image.boxes
        if train and (self.jitter_negatives or self.random_negatives):
            neg = _negatives(image, rng, self.jitter_negatives, self.random_negatives, self.negative_max_iou)
            boxes = np.concatenate([boxes, neg])
        return Candidates(boxes.copy(), np.ones(len(boxes), np.float32))


def read_proposals(path: str | Path) -> dict[int, np.ndarray]:
    """A proposal file: ``{"proposals": {"<image_id>": [[x, y, w, h, score], ...]}, ...}`` (COCO xywh, original
    pixels) -> ``{image_id: (K, 5) float64 [x0, y0, x1, y1, score]}`` sorted by descending score."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "proposal file is missing (write one with grounding.retrieval.proposals)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"not valid JSON ({e})") from e
    table = data.get("proposals") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise DataFormatError(path, "expected a dict with a 'proposals' dict", field="proposals")
    out = {}
    for key, rows in table.items():
        arr = np.asarray(rows, np.float64).reshape(-1, 5) if rows else np.zeros((0, 5))
        if not key.isdigit() or not np.all(np.isfinite(arr)) or np.any(arr[:, 2:4] < 0):
            raise DataFormatError(path, "expected [[x, y, w, h, score], ...] with finite values, w, h >= 0",
                                  record=f"image {key}", field="proposals")
        arr[:, 2:4] += arr[:, 0:2]
        out[int(key)] = arr[np.argsort(-arr[:, 4], kind="stable")]
    return out


class ProposalBoxes:
    """Boxes of a proposal file (spec §4.2 ChatRex settings: score >= 0.3, at most 100; NMS is applied when the
    file is written).

    Args:
        path: the proposal file (:func:`read_proposals`).
        min_score: drop proposals below this score.
        max_candidates: keep the best ones up to this many.
        p_gt: training only, probability of inserting the referred boxes (spec §4.6; ChatRex parity 1.0).
        gt_drop_iou: proposals above this IoU with an inserted box are dropped first.
    """

    def __init__(self, path: str | Path, min_score: float = 0.3, max_candidates: int = 100, p_gt: float = 0.5,
                 gt_drop_iou: float = 0.9) -> None:
        self.path, self.min_score, self.max_candidates = Path(path), min_score, max_candidates
        self.p_gt, self.gt_drop_iou = p_gt, gt_drop_iou
        self._table: Mapping[int, np.ndarray] | None = None

    def table(self) -> Mapping[int, np.ndarray]:
        if self._table is None:
            self._table = read_proposals(self.path)
        return self._table

    def __call__(self, image: ImageBoxes, referred: np.ndarray, rng: np.random.Generator,
                 train: bool) -> Candidates:
        rows = self.table().get(image.image_id)
        if rows is None:
            raise DataFormatError(self.path, "no proposals for this image", record=f"image {image.image_id}")
        rows = rows[rows[:, 4] >= self.min_score]
        if train and len(referred) and rng.random() < self.p_gt:
            iou = iou_matrix(rows[:, :4], referred) if len(rows) else np.zeros((0, len(referred)))
            # the inserted box takes the score of its best-matching proposal (else the lowest kept score)
            floor = float(rows[:, 4].min()) if len(rows) else 1.0
            gt_scores = [float(rows[iou[:, r].argmax(), 4]) if len(rows) and iou[:, r].max() > 0 else floor
                         for r in range(len(referred))]
            rows = rows[iou.max(1) <= self.gt_drop_iou] if len(rows) else rows
            rows = rows[:max(self.max_candidates - len(referred), 0)]
            q = _quantiser(rows[:, :4])
            inserted = np.concatenate([np.round(referred / q) * q, np.array(gt_scores)[:, None]], 1)
            rows = np.concatenate([rows, inserted])
        rows = rows[:self.max_candidates]
        return Candidates(rows[:, :4].copy(), rows[:, 4].astype(np.float32))

