"""2D overlays (segmentation/render.py): a real PNG with both mask colours and the caption strip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmentation.render import GT_RGB, PRED_RGB, _outline, overlay, save_overlay


def test_outline_by_hand() -> None:
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    ring = _outline(mask, width=1)
    assert ring.sum() == 16 and not ring[3, 3] and ring[1, 1] and ring[5, 3]


def test_overlay_png_has_both_colours_and_caption(tmp_path: Path) -> None:
    image = np.full((60, 80, 3), 128, dtype=np.uint8)
    pred = np.zeros((60, 80), dtype=bool)
    pred[10:30, 10:40] = True
    gt = np.zeros((60, 80), dtype=bool)
    gt[20:50, 30:70] = True
    path = save_overlay(tmp_path / "a" / "x.png", image, pred, gt, "the small red one left of the green square", 0.31)
    with Image.open(path) as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[1] == 320 and arr.shape[0] > 240          # upscaled x4, plus the caption strip
    pixels = arr.reshape(-1, 3)
    blend = (np.array([128, 128, 128]) + np.array(PRED_RGB)) // 2
    assert (np.abs(pixels.astype(int) - blend).sum(1) <= 2).any()  # the prediction's fill
    assert (pixels == np.array(GT_RGB)).all(1).any()             # the ground truth's outline
    strip = arr[240:]
    assert (strip < 50).all(-1).any() and (strip == 255).all(-1).any()  # black text on white


def test_overlay_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="pred mask shape"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((3, 4), bool), None, "x")
