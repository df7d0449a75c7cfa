"""PNG overlays of 2D referring masks: the prediction filled, the ground truth outlined, the expression as caption.

Colours: prediction green (alpha 0.5 fill), ground truth red (2-pixel outline), so both stay visible where they
overlap; the caption strip below the picture carries the expression and, when given, the IoU.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PRED_RGB = (0, 200, 0)
GT_RGB = (230, 0, 0)


def _outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """(H, W) bool pixels of ``mask`` within ``width`` pixels of its border (4-neighbourhood erosion)."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        shrunk[[0, -1], :] = False
        shrunk[:, [0, -1]] = False
        inner = shrunk
    return mask & ~inner


def overlay(image: np.ndarray, pred: np.ndarray | None, gt: np.ndarray | None, caption: str,
            iou: float | None = None, min_width: int = 320) -> Image.Image:
    """Compose the overlay.

    Args:
        image: (H, W, 3) uint8 RGB at the original resolution.
        pred: (H, W) bool predicted mask, or None; gt: (H, W) bool ground-truth mask, or None.
        caption: the expression; iou: appended to the caption when given.
        min_width: small pictures are upscaled (nearest) to at least this width so the caption stays legible.

    Returns:
        An RGB PIL image: the picture, then a white caption strip.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    for name, m in (("pred", pred), ("gt", gt)):
        if m is not None and m.shape != image.shape[:2]:
            raise ValueError(f"{name} mask shape {m.shape} != image shape {image.shape[:2]}")
    out = image.astype(np.float32)
    if pred is not None and pred.any():
        out[pred] = 0.5 * out[pred] + 0.5 * np.array(PRED_RGB, dtype=np.float32)
    if gt is not None and gt.any():
        out[_outline(gt.astype(bool))] = GT_RGB
    picture = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    if picture.width < min_width:
        factor = -(-min_width // picture.width)
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    font = ImageFont.load_default()
    text = caption if iou is None else f"{caption}  (IoU {iou:.2f})"
    chars = max(20, picture.width // 7)
    lines = textwrap.wrap(text, chars) or [""]
    strip = 6 + 14 * len(lines)
    canvas = Image.new("RGB", (picture.width, picture.height + strip), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((4, picture.height + 3 + 14 * k), line, fill=(0, 0, 0), font=font)
    return canvas


def save_overlay(path: str | Path, image: np.ndarray, pred: np.ndarray | None, gt: np.ndarray | None,
                 caption: str, iou: float | None = None) -> Path:
    """Write :func:`overlay` as a PNG (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay(image, pred, gt, caption, iou).save(path, format="PNG")
    return path


def render_ris_predictions(predictions: str | Path, root: str | Path, dataset: str, out: str | Path,
                           split_by: str | None = None, images_dir: str | Path | None = None,
                           samples: list[str] | None = None, limit: int | None = None) -> list[Path]:
    """Overlay every prediction of ``predictions.jsonl`` (``grounding eval`` of a RIS model) on its image.

    Args:
        predictions: JSON lines with ``sample_id``, ``mask_rle`` (COCO RLE at the original resolution) and,
            when written by ``grounding eval``, ``iou``.
        root, dataset, split_by, images_dir: the refer layout the predictions came from (for images and
            ground truth; see :func:`datasets.refcoco.load_refer`).
        out: folder of the PNGs, named ``<sent_id>.png``.
        samples: render only these sample ids; limit: at most this many.

    Returns:
        The written paths.
    """
    from datasets.coco_masks import decode_segmentation
    from datasets.refcoco import load_refer
    from datasets.refimage import read_rgb
    from grounding.engine.records import read_jsonl

    rows = read_jsonl(Path(predictions))
    if samples:
        wanted = set(samples)
        rows = [r for r in rows if r.get("sample_id") in wanted]
    rows = rows[:limit] if limit is not None else rows
    records = {r.sample_id: r for r in load_refer(root, dataset, split_by=split_by, images_dir=images_dir)}
    paths = []
    for k, row in enumerate(rows):
        rec = records.get(row.get("sample_id"))
        if rec is None:
            raise ValueError(f"{predictions}: line {k + 1}: sample_id {row.get('sample_id')!r} is not a sentence "
                             f"of {dataset} under {root}")
        image = read_rgb(rec.image_file).permute(1, 2, 0).numpy()
        pred = decode_segmentation(row["mask_rle"], rec.height, rec.width, path=predictions,
                                   record=f"line {k + 1}", field="mask_rle")
        name = f"{rec.sent_id}.png"
        paths.append(save_overlay(Path(out) / name, image, pred, rec.mask(), rec.sentence, row.get("iou")))
    return paths
