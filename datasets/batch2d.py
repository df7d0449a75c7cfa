"""``ReferBatch2D``: the one batch dataclass of the image tasks (RIS with DIT, REC by box retrieval).

Every image of a batch is resized (long side to ``resized_hw.max()``) and **centre**-padded with zeros
onto a square canvas of side S (DIT's letterbox, refcoco spec §3.1), so a batch is a plain stack.
One row per expression: an image referred to by k expressions appears k times (DIT batches sentences,
not images).

Frames: ``images``, ``valid`` and ``gt_masks`` are canvas pixels (row, column), origin top-left;
``pad_tl`` + ``resized_hw`` locate the image inside the canvas; ``original_hw`` and ``gt_original``
are pixels of the original JPEG; ``boxes`` are original pixels, ``[x, y, w, h]`` as in COCO.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class ReferBatch2D:
    """B expressions on a canvas of side S.

    Attributes:
        images: (B, 3, S, S) float32, normalised with SAM's pixel mean / std (0-255 scale), zeros in padding.
        valid: (B, S, S) bool, True on pixels of the resized image (False on padding).
        gt_masks: (B, S, S) float32 in [0, 1], the target mask resized bilinearly (soft edges), 0 in padding.
        pad_tl: (B, 2) int64 (top, left) offset of the resized image inside the canvas.
        resized_hw: (B, 2) int64 (height, width) of the resized image.
        original_hw: (B, 2) int64 (height, width) of the original image.
        gt_original: B tensors (H_b, W_b) bool, the target mask at the original resolution (evaluation).
        boxes: (B, 4) float32 target box ``[x, y, w, h]`` in original pixels.
        texts: B expressions (the sentence as it enters the text encoder, after augmentation swaps).
        sample_ids: B unique ids (``"<dataset>/<sent_id>"``).
        image_ids: B COCO image ids.
        records: B reader records (``datasets.refcoco.RefExpression``), for writing predictions.
        attr_maps: (B, K, S, S) int64 per-pixel attribute labels of every object of the picture (0 background,
            -1 padding; ``datasets.object_maps``), an auxiliary training target; None when the items have none.
    """

    images: Tensor
    valid: Tensor
    gt_masks: Tensor
    pad_tl: Tensor
    resized_hw: Tensor
    original_hw: Tensor
    gt_original: list[Tensor]
    boxes: Tensor
    texts: list[str]
    sample_ids: list[str]
    image_ids: list[int]
    records: list[Any]
    attr_maps: Tensor | None = None

    @classmethod
    def collate(cls, items: Sequence[dict[str, Any]]) -> ReferBatch2D:
        """Stack letterboxed items.

        Item keys: ``image`` (3, S, S) float32, ``valid`` (S, S) bool, ``gt_mask`` (S, S) float32,
        ``pad_tl`` (2,), ``resized_hw`` (2,), ``original_hw`` (2,), ``gt_original`` (H, W) bool,
        ``box`` (4,), ``text`` str, ``sample_id`` str, ``image_id`` int, ``record``; optional ``attr_maps``
        (K, S, S) int64, on every item or on none.
        """
        if not items:
            raise ValueError("cannot collate an empty list of items")
        sizes = {tuple(it["image"].shape) for it in items}
        if len(sizes) != 1:
            raise ValueError(f"items of one batch must share the canvas size, got {sorted(sizes)} "
                             f"(samples {[it['sample_id'] for it in items]})")

        with_maps = sum("attr_maps" in it for it in items)
        if with_maps not in (0, len(items)):
            raise ValueError(f"attr_maps on {with_maps} of {len(items)} items: a batch needs them on all or none")

        def ints(key: str) -> Tensor:
            return torch.stack([torch.as_tensor(it[key], dtype=torch.long) for it in items])

        return cls(
            images=torch.stack([it["image"].float() for it in items]),
            valid=torch.stack([it["valid"].bool() for it in items]),
            gt_masks=torch.stack([it["gt_mask"].float() for it in items]),
            pad_tl=ints("pad_tl"), resized_hw=ints("resized_hw"), original_hw=ints("original_hw"),
            gt_original=[it["gt_original"].bool() for it in items],
            boxes=torch.stack([torch.as_tensor(it["box"], dtype=torch.float32) for it in items]),
            texts=[it["text"] for it in items], sample_ids=[it["sample_id"] for it in items],
            image_ids=[int(it["image_id"]) for it in items], records=[it["record"] for it in items],
            attr_maps=torch.stack([it["attr_maps"].long() for it in items]) if with_maps else None)

    def _map(self, fn: Any) -> ReferBatch2D:
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = fn(value)
            elif name == "gt_original":
                moved[name] = [fn(v) for v in value]
        return ReferBatch2D(**moved)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ReferBatch2D:
        """A copy with every tensor on ``device`` (strings and records are shared)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> ReferBatch2D:
        """A copy with every tensor in pinned memory (``DataLoader(pin_memory=True)``)."""
        return self._map(lambda t: t.pin_memory())

    def __len__(self) -> int:
        """Number of samples = expressions."""
        return len(self.texts)

    @property
    def canvas_size(self) -> int:
        """S, the side of the square canvas."""
        return int(self.images.shape[-1])

    # ------------------------------------------------------------------ evaluator protocol
    def eval_gt_masks(self) -> list[Tensor]:
        """Ground truth at the original resolution, flattened to (H_b * W_b,) bool (row-major), which is
        how predictions' ``pred_mask`` is flattened too."""
        return [m.reshape(-1) for m in self.gt_original]

    def eval_groups(self) -> list[str] | None:
        """RIS reports one split at a time: no groups."""
        return None
