"""Image transforms of the RIS / REC tasks: DIT's letterbox pipeline (refcoco spec §3.1), on tensors.

Training: long side resized to a size drawn from ``{S, S - 32, ..., S - 32 * (steps - 1)}``, colour jitter with
probability 0.8, horizontal flip with probability 0.5 (swapping the WHOLE words "left" and "right" in the
expression: DIT's substring swap turns "bright" into "bleft"), SAM normalisation, centre padding to S.
Evaluation: long side to S, normalisation, centre padding. Masks follow the image: bilinear resize, so the
training target has soft edges (DIT's ``x255 -> bilinear -> [0, 1]``).

Frames: input image (3, H, W) uint8 RGB and mask (H, W) bool at the original resolution; outputs on the S x S
canvas (see :class:`datasets.batch2d.ReferBatch2D`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# SAM's pixel statistics on the 0-255 scale (= ImageNet's mean / std x 255).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
_LEFT_RIGHT = re.compile(r"\b(left|right)(most)?\b")


def swap_left_right(text: str) -> str:
    """Swap the whole words "left"/"right" and "leftmost"/"rightmost" (a mirrored picture swaps them); "bright"
    and "upright" stay as they are."""
    return _LEFT_RIGHT.sub(lambda m: ("right" if m.group(1) == "left" else "left") + (m.group(2) or ""), text)


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """``ResizeLongestSide``'s rounding: scale = L / max(h, w), new size = int(x * scale + 0.5)."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def _jitter(image: Tensor, rng: np.random.Generator, strength: float) -> Tensor:
    """Brightness, contrast and saturation factors in [1 - s, 1 + s], applied in a random order; (3, H, W) in
    [0, 1]."""
    gray_weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype)[:, None, None]
    for op in rng.permutation(3):
        f = float(rng.uniform(1 - strength, 1 + strength))
        if op == 0:
            image = image * f
        elif op == 1:
            mean = (image * gray_weights).sum(0).mean()
            image = (image - mean) * f + mean
        else:
            gray = (image * gray_weights).sum(0, keepdim=True)
            image = (image - gray) * f + gray
        image = image.clamp(0, 1)
    return image


@dataclass
class LetterboxBase:
    """The letterbox shared by the image tasks: augmentation draws and the placement on the canvas.

    Args:
        size: S, the canvas side (DIT: 512; the CPU configs: 128).
        train: draw the training augmentation (multi-scale, jitter, flip) from ``rng``.
        scale_steps: number of long-side sizes ``S - 32 k`` drawn from in training (DIT: 7); sizes below S / 2
            are not used.
        jitter_prob: probability of colour jitter (DIT: 0.8); jitter_strength: its factor range (0.4). Hue never
            changes, so colour words stay true.
        flip_prob: probability of a horizontal flip (DIT: 0.5).
    """

    size: int = 512
    train: bool = False
    scale_steps: int = 7
    jitter_prob: float = 0.8
    jitter_strength: float = 0.4
    flip_prob: float = 0.5

    def augment(self, image: Tensor, rng: np.random.Generator | None) -> tuple[Tensor, int, bool]:
        """(3, H, W) uint8 -> ``(image in [0, 1], long side, flipped)``; the draws come from ``rng`` in training."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) RGB image, got shape {tuple(image.shape)}")
        img, long_side, flipped = image.float() / 255, self.size, False
        if self.train:
            if rng is None:
                raise ValueError(f"{type(self).__name__}(train=True) needs an rng")
            sizes = [s for s in (self.size - 32 * k for k in range(self.scale_steps)) if s >= self.size // 2]
            long_side = int(rng.choice(sizes or [self.size]))
            if rng.random() < self.jitter_prob:
                img = _jitter(img, rng, self.jitter_strength)
            if rng.random() < self.flip_prob:
                img, flipped = img.flip(-1), True
        return img, long_side, flipped

    def place(self, img: Tensor, long_side: int) -> tuple[Tensor, tuple[int, int], tuple[int, int]]:
        """Resize (3, H, W) in [0, 1] to ``long_side``, normalise and centre-pad: ``(canvas (3, S, S), (top,
        left), (h, w))``."""
        h, w = resized_shape(int(img.shape[1]), int(img.shape[2]), long_side)
        img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        img = (img - torch.tensor(PIXEL_MEAN)[:, None, None] / 255) / (torch.tensor(PIXEL_STD)[:, None, None] / 255)
        top, left = (self.size - h) // 2, (self.size - w) // 2
        canvas = torch.zeros(3, self.size, self.size)
        canvas[:, top:top + h, left:left + w] = img
        return canvas, (top, left), (h, w)


@dataclass
class Letterbox(LetterboxBase):
    """Resize, (augment,) normalise and centre-pad one image, its mask and its expression (fields: see
    :class:`LetterboxBase`)."""

    def __call__(self, image: Tensor, mask: Tensor, text: str, rng: np.random.Generator | None = None) -> dict:
        """Returns item fields ``image``, ``valid``, ``gt_mask``, ``pad_tl``, ``resized_hw``, ``text`` and
        ``flipped`` (the caller adds the ids and the original-resolution ground truth).

        Args:
            image: (3, H, W) uint8 RGB; mask: (H, W) bool target; text: the expression.
            rng: required when ``train``.
        """
        if tuple(mask.shape) != tuple(image.shape[1:]):
            raise ValueError(f"mask shape {tuple(mask.shape)} != image shape {tuple(image.shape[1:])}")
        img, long_side, flipped = self.augment(image, rng)
        if flipped:
            mask, text = mask.flip(-1), swap_left_right(text)
        canvas, (top, left), (h, w) = self.place(img, long_side)
        soft = F.interpolate(mask[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        valid = torch.zeros(self.size, self.size, dtype=torch.bool)
        valid[top:top + h, left:left + w] = True
        target = torch.zeros(self.size, self.size)
        target[top:top + h, left:left + w] = soft.clamp(0, 1)
        return {"image": canvas, "valid": valid, "gt_mask": target, "pad_tl": (top, left), "resized_hw": (h, w),
                "text": text, "flipped": flipped}
