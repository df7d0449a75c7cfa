"""``RetrievalBatch``: the one batch dataclass of REC by box retrieval (box-retrieval spec §4.1).

A batch holds I images, each with its own candidate list (padded to N = the longest list, with a validity mask),
and Q queries (expressions and category names), each pointing at its image. The REC samples are the expression
queries (E of them, ``len(batch) == E``); category queries serve the COCO detection protocol and training.

Frames: ``images`` are canvas pixels of side S (DIT's letterbox: resize, centre padding, ``pad_tl`` +
``resized_hw`` locate the image); ``boxes`` and ``gt_boxes`` are xyxy float32 pixels of the original image, of
the *flipped* image when ``flipped[i]`` (training augmentation), so boxes, pixels and words always agree;
``eval_*`` and :meth:`unflip` return the unflipped original frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from datasets.transforms.boxes2d import box_to_canvas, flip_boxes

__all__ = ["RetrievalBatch"]


@dataclass
class RetrievalBatch:
    """I images with N (padded) candidates each and Q queries.

    Attributes:
        images: (I, 3, S, S) float32, SAM-normalised, zeros in the padding.
        pad_tl, resized_hw, original_hw: (I, 2) int64 (row, column) order.
        flipped: (I,) bool, the image (and its boxes and words) was mirrored.
        boxes: (I, N, 4) float32 candidate boxes, xyxy original pixels (0 in padding).
        box_valid: (I, N) bool, True for real candidates.
        box_scores: (I, N) float32 proposal scores (1 for annotated boxes; 0 in padding).
        texts: Q query texts (expressions as augmented, then category names), image by image.
        query_image: (Q,) int64 index of each query's image in the batch.
        is_expression: (Q,) bool, True for REC expressions, False for category queries.
        targets: (Q,) int64 index of the correct candidate (highest IoU >= 0.5), -1 when there is none
            (always -1 for category queries).
        positives: (Q, N) bool, candidates at IoU >= 0.5 with the query's ground truth.
        gt_boxes: (Q, 4) float32 xyxy ground truth of expressions (NaN rows for category queries).
        category_ids: (Q,) int64, the ref's category or the queried category.
        query_ids: Q ids: an expression's ``"<dataset>/<sent_id>"``, a category query's
            ``"<dataset>/image<id>/category<id>"``.
        image_ids: I COCO image ids; image_keys: I ``"<dataset>/image<id>"``.
    """

    images: Tensor
    pad_tl: Tensor
    resized_hw: Tensor
    original_hw: Tensor
    flipped: Tensor
    boxes: Tensor
    box_valid: Tensor
    box_scores: Tensor
    texts: list[str]
    query_image: Tensor
    is_expression: Tensor
    targets: Tensor
    positives: Tensor
    gt_boxes: Tensor
    category_ids: Tensor
    query_ids: list[str]
    image_ids: list[int]
    image_keys: list[str]

    @classmethod
    def collate(cls, items: Sequence[dict[str, Any]]) -> RetrievalBatch:
        """Stack items of :class:`datasets.refboxes.RefBoxDataset` (see its ``__getitem__`` for the keys)."""
        if not items:
            raise ValueError("cannot collate an empty list of items")
        sizes = {tuple(it["image"].shape) for it in items}
        if len(sizes) != 1:
            raise ValueError(f"items of one batch must share the canvas size, got {sorted(sizes)} "
                             f"(images {[it['image_id'] for it in items]})")
        I, N = len(items), max(1, max(len(it["boxes"]) for it in items))
        boxes, valid, scores = torch.zeros(I, N, 4), torch.zeros(I, N, dtype=torch.bool), torch.zeros(I, N)
        queries = [(i, q) for i, it in enumerate(items) for q in it["queries"]]
        positives = torch.zeros(len(queries), N, dtype=torch.bool)
        for i, it in enumerate(items):
            n = len(it["boxes"])
            boxes[i, :n] = torch.as_tensor(np.asarray(it["boxes"]), dtype=torch.float32).reshape(n, 4)
            scores[i, :n] = torch.as_tensor(np.asarray(it["box_scores"]), dtype=torch.float32)
            valid[i, :n] = True
        for k, (_, q) in enumerate(queries):
            pos = torch.as_tensor(np.asarray(q["positives"], bool))
            positives[k, :pos.numel()] = pos

        def ints(key: str) -> Tensor:
            return torch.stack([torch.as_tensor(it[key], dtype=torch.long) for it in items])

        return cls(
            images=torch.stack([it["image"].float() for it in items]), pad_tl=ints("pad_tl"),
            resized_hw=ints("resized_hw"), original_hw=ints("original_hw"),
            flipped=torch.tensor([bool(it["flipped"]) for it in items]), boxes=boxes, box_valid=valid,
            box_scores=scores, texts=[q["text"] for _, q in queries],
            query_image=torch.tensor([i for i, _ in queries], dtype=torch.long).reshape(-1),
            is_expression=torch.tensor([bool(q["expression"]) for _, q in queries], dtype=torch.bool).reshape(-1),
            targets=torch.tensor([int(q["target"]) for _, q in queries], dtype=torch.long).reshape(-1),
            positives=positives,
            gt_boxes=torch.as_tensor(np.array([q["gt_box"] for _, q in queries], np.float32).reshape(-1, 4)),
            category_ids=torch.tensor([int(q["category_id"]) for _, q in queries], dtype=torch.long).reshape(-1),
            query_ids=[q["query_id"] for _, q in queries], image_ids=[int(it["image_id"]) for it in items],
            image_keys=[it["image_key"] for it in items])

    def _map(self, fn: Any) -> RetrievalBatch:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return RetrievalBatch(**{k: fn(v) if isinstance(v, Tensor) else v for k, v in fields.items()})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RetrievalBatch:
        """A copy with every tensor on ``device`` (strings are shared)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> RetrievalBatch:
        return self._map(lambda t: t.pin_memory())

    def __len__(self) -> int:
        """Number of REC samples = expression queries."""
        return int(self.is_expression.sum())

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def expression_index(self) -> Tensor:
        """(E,) positions of the expression queries among the Q queries."""
        return self.is_expression.nonzero().reshape(-1)

    @property
    def sample_ids(self) -> list[str]:
        """The E expression ids (the REC samples), in query order."""
        return [self.query_ids[int(k)] for k in self.expression_index]

    # ------------------------------------------------------------------ geometry
    def canvas_boxes(self) -> Tensor:
        """(I, N, 4) float32 candidate boxes in canvas pixels (xyxy), the frame of ``images``."""
        return box_to_canvas(self.boxes, self.original_hw, self.resized_hw, self.pad_tl)

    def normalised_boxes(self) -> Tensor:
        """(I, N, 4) float32 (cx, cy, w, h) of the candidates divided by the original (W, H): in [0, 1]."""
        wh = self.original_hw.flip(-1).float()[:, None, :]
        x0y0, x1y1 = self.boxes[..., :2], self.boxes[..., 2:]
        return torch.cat([(x0y0 + x1y1) / 2 / wh, (x1y1 - x0y0) / wh], -1)

    def unflip(self, boxes: Tensor, image_index: Tensor) -> Tensor:
        """(K, 4) xyxy boxes of images ``image_index`` (K,) -> the unflipped original frame."""
        width = self.original_hw[image_index, 1].to(boxes.dtype)[:, None]
        mirrored = flip_boxes(boxes, 0.0)
        mirrored[:, [0, 2]] += width
        return torch.where(self.flipped[image_index][:, None], mirrored, boxes)

    # ------------------------------------------------------------------ evaluator protocol
    def eval_gt_boxes(self) -> Tensor:
        """(E, 4) float64 xyxy ground truth of the expressions, unflipped original pixels."""
        e = self.expression_index
        return self.unflip(self.gt_boxes[e].double(), self.query_image[e])

    def eval_candidate_boxes(self) -> list[Tensor]:
        """E tensors (N_e, 4) float64 xyxy: each expression's candidate list, unflipped original pixels."""
        out = []
        for k in self.expression_index.tolist():
            i = int(self.query_image[k])
            cands = self.boxes[i][self.box_valid[i]].double()
            out.append(self.unflip(cands, torch.full((cands.shape[0],), i, dtype=torch.long)))
        return out
