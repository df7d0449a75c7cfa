"""DIT's letterbox pipeline (datasets/transforms/image2d.py) by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.transforms.image2d import PIXEL_MEAN, PIXEL_STD, Letterbox, resized_shape, swap_left_right


def test_swap_left_right_whole_words_only() -> None:
    assert swap_left_right("the left cup, right of the bright upright lamp") == \
        "the right cup, left of the bright upright lamp"
    assert swap_left_right("the leftmost cup, not the rightmost") == "the rightmost cup, not the leftmost"
    assert swap_left_right("lefty righteous") == "lefty righteous"


def test_resized_shape_rounding() -> None:
    assert resized_shape(480, 640, 512) == (384, 512)
    assert resized_shape(427, 640, 512) == (342, 512)   # 341.6 + 0.5 -> 342 (ResizeLongestSide's rounding)
    assert resized_shape(100, 50, 128) == (128, 64)


def test_eval_letterbox_centre_pads_and_normalises() -> None:
    image = torch.zeros(3, 50, 100, dtype=torch.uint8)
    image[0] = 255
    mask = torch.zeros(50, 100, dtype=torch.bool)
    mask[:, :50] = True                                  # left half
    item = Letterbox(size=128)(image, mask, "the left one")
    assert item["resized_hw"] == (64, 128) and item["pad_tl"] == (32, 0)
    assert item["valid"].sum() == 64 * 128 and item["valid"][32:96].all() and not item["valid"][:32].any()
    red = (255 - PIXEL_MEAN[0]) / PIXEL_STD[0]
    assert torch.allclose(item["image"][0, 32:96], torch.full((64, 128), red))
    assert (item["image"][:, :32] == 0).all()            # padding is zero after normalisation
    gt = item["gt_mask"]
    assert gt[40, 10] == 1 and gt[40, 120] == 0 and gt[10, 10] == 0
    assert item["text"] == "the left one" and not item["flipped"]


def test_train_letterbox_is_reproducible_and_flips_words_with_pixels() -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 60), generator=gen, dtype=torch.uint8)
    mask = torch.zeros(40, 60, dtype=torch.bool)
    mask[:, :10] = True
    t = Letterbox(size=128, train=True, flip_prob=1.0, jitter_prob=0.0)
    a = t(image, mask, "the cup on the left", np.random.default_rng(5))
    b = t(image, mask, "the cup on the left", np.random.default_rng(5))
    assert torch.equal(a["image"], b["image"]) and a["resized_hw"] == b["resized_hw"]
    assert a["flipped"] and a["text"] == "the cup on the right"
    top, left = a["pad_tl"]
    h, w = a["resized_hw"]
    assert a["gt_mask"][top + h // 2, left + w - 2] > 0.9 and a["gt_mask"][top + h // 2, left + 2] < 0.1
    sizes = {Letterbox(size=128, train=True)(image, mask, "x", np.random.default_rng(s))["resized_hw"][1]
             for s in range(40)}
    assert sizes <= {128, 96, 64} and len(sizes) > 1     # multi-scale: S - 32 k, never below S / 2
    with pytest.raises(ValueError, match="rng"):
        t(image, mask, "x")
