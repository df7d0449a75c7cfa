"""Image transform of REC by box retrieval: DIT's letterbox (resize, centre pad, SAM normalisation) for an image,
its candidate boxes and the expressions that refer into it.

Same recipe as :class:`datasets.transforms.image2d.Letterbox` (multi-scale long side, colour jitter, horizontal
flip), with two differences:
- boxes instead of a mask: the flip mirrors the boxes in the original frame (x0, x1) -> (W - x1, W - x0), and
  :func:`box_to_canvas` maps original-pixel boxes onto the canvas with the same affine as the image;
- the flip swaps the direction words "left" / "right" *and* "leftmost" / "rightmost" in every expression
  (``image2d.swap_left_right`` keeps "leftmost", which the generated expressions and RefCOCO use).

Frames: input (3, H, W) uint8 RGB; boxes (N, 4) float xyxy in original pixels; outputs on the S x S canvas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from datasets.transforms.image2d import LetterboxBase, swap_left_right

__all__ = ["BoxLetterbox", "box_to_canvas", "flip_boxes", "swap_directions"]

# The image letterbox's word swap: "left" <-> "right" and "leftmost" <-> "rightmost", whole words only.
swap_directions = swap_left_right


def flip_boxes(boxes: np.ndarray | Tensor, width: float) -> np.ndarray | Tensor:
    """Mirror (..., 4) xyxy boxes of an image of width W: (x0, y0, x1, y1) -> (W - x1, y0, W - x0, y1)."""
    out = boxes.copy() if isinstance(boxes, np.ndarray) else boxes.clone()
    out[..., 0] = width - boxes[..., 2]
    out[..., 2] = width - boxes[..., 0]
    return out


def box_to_canvas(boxes: Tensor, original_hw: Tensor, resized_hw: Tensor, pad_tl: Tensor) -> Tensor:
    """Map xyxy boxes from original pixels onto the letterbox canvas.

    Per-axis scale ``resized / original`` (the rounded resize of ``resized_shape``, as SAM's ``apply_boxes``), then
    the centre-padding offset.

    Args:
        boxes: (I, N, 4) xyxy original pixels; original_hw, resized_hw, pad_tl: (I, 2) (row, column) order.

    Returns:
        (I, N, 4) float32 xyxy canvas pixels.
    """
    scale = (resized_hw.float() / original_hw.float()).flip(-1)  # (I, 2) as (sx, sy)
    offset = pad_tl.float().flip(-1)  # (left, top)
    scale4, offset4 = scale.repeat(1, 2)[:, None, :], offset.repeat(1, 2)[:, None, :]
    return boxes.float() * scale4 + offset4


@dataclass
class BoxLetterbox(LetterboxBase):
    """Resize, (augment,) normalise and centre-pad one image; the caller flips its boxes when ``flipped``
    (fields: see :class:`~datasets.transforms.image2d.LetterboxBase`)."""

    def __call__(self, image: Tensor, texts: Sequence[str], rng: np.random.Generator | None = None) -> dict:
        """Returns ``image`` (3, S, S) float32, ``pad_tl`` (top, left), ``resized_hw`` (h, w), ``texts`` (the
        expressions, direction words swapped when flipped) and ``flipped``.

        Args:
            image: (3, H, W) uint8 RGB. texts: the expressions of the image. rng: required when ``train``.
        """
        img, long_side, flipped = self.augment(image, rng)
        texts = [swap_directions(t) for t in texts] if flipped else list(texts)
        canvas, pad_tl, resized_hw = self.place(img, long_side)
        return {"image": canvas, "pad_tl": pad_tl, "resized_hw": resized_hw, "texts": texts, "flipped": flipped}
