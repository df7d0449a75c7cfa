"""The files of ``grounding predict --image`` for one photo and its sentences.

``<out>/`` for a DIT (mask) model::

    NN_<slug>.png          the mask: (H, W) 8-bit grey PNG at the photo's resolution, 255 inside, 0 outside
    NN_<slug>_overlay.png  the photo with the mask filled green and the sentence as caption
    predictions.json       image, model, and per sentence: text, files, pixels, score

``<out>/`` for a box-retrieval model::

    NN_<slug>_overlay.png  the photo with every candidate outlined thin grey, the chosen box thick green
    predictions.json       image, model, the candidates (xyxy pixels, score), and per sentence: text, box (xyxy
                           pixels, null when no box), index into the candidates, score (sigmoid), prob (softmax)

NN is the sentence index (2+ digits), so files sort in sentence order and two sentences never share a name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from datasets.candidates import Candidates
from grounding.predict.predictor2d import Box2D, Mask2D

CANDIDATE_RGB = (150, 150, 150)
CHOSEN_RGB = (0, 200, 0)


def _stems(texts: Sequence[str]) -> list[str]:
    from pointcloud.render import slugify

    width = max(2, len(str(len(texts) - 1)))
    return [f"{i:0{width}d}_{slugify(t)}" for i, t in enumerate(texts)]


def draw_boxes(image: np.ndarray, candidates: np.ndarray, chosen: np.ndarray | None) -> np.ndarray:
    """(H, W, 3) uint8 RGB with ``candidates`` (N, 4) xyxy outlined thin grey and ``chosen`` (4,) thick green."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    width = max(2, round(max(image.shape[:2]) / 150))  # visible on large photos, not a blob on small ones
    for box in candidates:
        draw.rectangle([float(v) for v in box], outline=CANDIDATE_RGB, width=max(1, width // 2))
    if chosen is not None and np.isfinite(chosen).all():
        draw.rectangle([float(v) for v in chosen], outline=CHOSEN_RGB, width=width)
    return np.asarray(picture)


def write_mask_predictions(out_dir: str | Path, image: np.ndarray, masks: Sequence[Mask2D], source: str = "",
                           model: str = "") -> dict[str, Any]:
    """Write mask PNGs, overlays and ``predictions.json`` for a DIT model; returns the summary written there.

    Args:
        image: (H, W, 3) uint8 RGB, the photo the masks are over. masks: the predictor's answers.
        source, model: recorded in the summary (the image path and the model path).
    """
    from segmentation.render import save_overlay

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (stem, m) in enumerate(zip(_stems([m.text for m in masks]), masks)):
        Image.fromarray(m.mask.astype(np.uint8) * 255).save(out / f"{stem}.png")
        save_overlay(out / f"{stem}_overlay.png", image, m.mask, None, m.text)
        entries.append({"index": i, "text": m.text, "mask": f"{stem}.png", "overlay": f"{stem}_overlay.png",
                        "num_pixels": m.num_pixels, "score": m.score})
    summary = {"image": source, "height": int(image.shape[0]), "width": int(image.shape[1]), "model": model,
               "kind": "mask", "predictions": entries}
    (out / "predictions.json").write_text(json.dumps(summary, indent=2))
    return summary


def write_box_predictions(out_dir: str | Path, image: np.ndarray, answers: Sequence[Box2D], candidates: Candidates,
                          source: str = "", model: str = "", candidate_source: str = "") -> dict[str, Any]:
    """Write overlays and ``predictions.json`` for a box-retrieval model; returns the summary written there.

    Args:
        image: (H, W, 3) uint8 RGB. answers: the predictor's answers over ``candidates`` ((N, 4) xyxy pixels).
        candidate_source: how the candidates were made (``"boxes.json"``, ``"sam"``), recorded in the summary.
    """
    from segmentation.render import overlay

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (stem, a) in enumerate(zip(_stems([a.text for a in answers]), answers)):
        drawn = draw_boxes(image, candidates.boxes, None if a.no_target else a.box)
        overlay(drawn, None, None, a.text if not a.no_target else f"{a.text}  (no target)").save(
            out / f"{stem}_overlay.png", format="PNG")
        entries.append({"index": i, "text": a.text, "box": None if a.no_target else [float(v) for v in a.box],
                        "candidate": a.index, "score": a.score, "prob": a.prob, "overlay": f"{stem}_overlay.png"})
    summary = {"image": source, "height": int(image.shape[0]), "width": int(image.shape[1]), "model": model,
               "kind": "box", "box_format": "xyxy", "candidate_source": candidate_source,
               "candidates": [{"box": [float(v) for v in b], "score": float(s)}
                              for b, s in zip(candidates.boxes, candidates.scores)],
               "predictions": entries}
    (out / "predictions.json").write_text(json.dumps(summary, indent=2))
    return summary
