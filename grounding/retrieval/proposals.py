"""Candidate boxes from a SAM checkpoint's automatic masks (box-retrieval spec §4.2: "any detector can supply
proposals; generate them offline once per image and cache").

``segment_anything.SamAutomaticMaskGenerator`` segments everything on a grid of point prompts; every mask record
carries ``bbox`` (XYWH of the mask's *inclusive* pixel bounds, so one pixel short of the mask's extent) and the
model's ``predicted_iou``. :func:`masks_to_proposals` turns the records into proposals with ChatRex's settings:
extent boxes (w + 1, h + 1, clipped to the image), score = ``predicted_iou``, keep score >= 0.3, NMS at IoU 0.8,
at most 100 per image. :func:`propose_split` writes the proposal file that
:class:`datasets.candidates.ProposalBoxes` reads::

    {"proposals": {"<image_id>": [[x, y, w, h, score], ...]}, "source": {...settings...}}

Command line (a GPU makes SAM ViT-H practical; ViT-B runs on CPU slowly)::

    python -m grounding.retrieval.proposals --root data/refcoco --dataset refcoco --split val \\
        --sam-checkpoint models/sam_vit_b_01ec64.pth --model-type vit_b --out data/refcoco/proposals_sam_val.json

Leakage note: SAM was trained on SA-1B, not on COCO, so its proposals have not seen RefCOCO's boxes.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import nms

__all__ = ["build_sam_generator", "masks_to_proposals", "propose_split", "write_proposal_file"]

log = logging.getLogger(__name__)


def masks_to_proposals(records: Sequence[Mapping[str, Any]], height: int, width: int, score_key: str = "predicted_iou",
                       min_score: float = 0.3, nms_iou: float = 0.8, max_boxes: int = 100) -> np.ndarray:
    """SAM mask records -> (K, 5) float64 proposals ``[x, y, w, h, score]`` (original pixels), best first.

    Args:
        records: ``SamAutomaticMaskGenerator.generate`` output (``bbox`` XYWH of inclusive pixel bounds, scores).
        height, width: the image size (boxes are clipped to it).
        score_key: the record field used as the proposal score.
        min_score, nms_iou, max_boxes: ChatRex's settings (0.3, 0.8, 100).
    """
    if not records:
        return np.zeros((0, 5))
    xywh = np.array([r["bbox"] for r in records], np.float64).reshape(-1, 4)
    scores = np.array([float(r[score_key]) for r in records], np.float64)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] + 1.0], 1)  # inclusive bounds -> extent
    xyxy = np.clip(xyxy, 0, [width, height, width, height])
    keep = (scores >= min_score) & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    xyxy, scores = xyxy[keep], scores[keep]
    if len(scores):
        order = nms(torch.from_numpy(xyxy), torch.from_numpy(scores), nms_iou).numpy()[:max_boxes]  # sorted by score
        xyxy, scores = xyxy[order], scores[order]
    return np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2], scores[:, None]], 1)


def build_sam_generator(checkpoint: str | Path, model_type: str = "vit_b", device: str = "cpu",
                        **generator_kwargs: Any) -> Any:
    """``SamAutomaticMaskGenerator`` around an official SAM checkpoint (``vit_h`` / ``vit_l`` / ``vit_b``).

    ``generator_kwargs`` go to the generator (e.g. ``points_per_side=32``, ``pred_iou_thresh=0.88``).
    """
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    if model_type not in sam_model_registry:
        raise ValueError(f"unknown SAM model type {model_type!r}; expected one of {sorted(sam_model_registry)}")
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"SAM checkpoint {checkpoint} does not exist")
    sam = sam_model_registry[model_type](checkpoint=str(checkpoint)).to(device).eval()
    return SamAutomaticMaskGenerator(sam, **generator_kwargs)


def write_proposal_file(path: str | Path, proposals: Mapping[int, np.ndarray], source: Mapping[str, Any]) -> Path:
    """Write ``{image_id: (K, 5) [x, y, w, h, score]}`` in the format :func:`datasets.candidates.read_proposals`
    reads; ``source`` records how they were made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = {str(int(k)): [[round(float(v), 3) for v in row[:4]] + [round(float(row[4]), 6)] for row in rows]
             for k, rows in sorted(proposals.items())}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"proposals": table, "source": dict(source)}))
    tmp.replace(path)
    return path


def propose_split(generator: Any, root: str | Path, dataset: str, split: str, out: str | Path,
                  split_by: str | None = None, images_dir: str | Path | None = None, limit: int | None = None,
                  min_score: float = 0.3, nms_iou: float = 0.8, max_boxes: int = 100,
                  progress: Callable[[int, int], None] | None = None) -> Path:
    """Run ``generator.generate`` (H x W x 3 uint8 RGB -> mask records) on every image of a RefCOCO-format split and
    write the proposal file ``out``.

    Args:
        generator: a ``SamAutomaticMaskGenerator`` (:func:`build_sam_generator`) or anything with ``generate``.
        root, dataset, split, split_by, images_dir: as :func:`datasets.refcoco.load_refer`.
        limit: only the first ``limit`` images (quick runs).
        min_score, nms_iou, max_boxes: of :func:`masks_to_proposals`.
        progress: called with (done, total) after each image.
    """
    from datasets.refcoco import load_refer
    from datasets.refimage import read_rgb

    images: dict[int, Any] = {}
    for r in load_refer(root, dataset, split_by=split_by, splits=split, images_dir=images_dir):
        images.setdefault(r.image_id, r)
    ids = list(images)[:limit] if limit is not None else list(images)
    table = {}
    for n, image_id in enumerate(ids, 1):
        rec = images[image_id]
        rgb = read_rgb(rec.image_file).permute(1, 2, 0).numpy()
        with torch.no_grad():
            masks = generator.generate(rgb)
        table[image_id] = masks_to_proposals(masks, rec.height, rec.width, min_score=min_score, nms_iou=nms_iou,
                                             max_boxes=max_boxes)
        if progress is not None:
            progress(n, len(ids))
    source = {"generator": type(generator).__name__, "dataset": dataset, "split": split, "score": "predicted_iou",
              "min_score": min_score, "nms_iou": nms_iou, "max_boxes": max_boxes, "images": len(ids)}
    return write_proposal_file(out, table, source)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m grounding.retrieval.proposals``: write SAM proposals for one split (see the module docstring)."""
    p = argparse.ArgumentParser(description="Write SAM automatic-mask proposals for a RefCOCO-format split.")
    p.add_argument("--root", required=True)
    p.add_argument("--dataset", default="refcoco")
    p.add_argument("--split", default="val")
    p.add_argument("--split-by", default=None)
    p.add_argument("--images-dir", default=None)
    p.add_argument("--sam-checkpoint", required=True)
    p.add_argument("--model-type", default="vit_b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    generator = build_sam_generator(args.sam_checkpoint, args.model_type, args.device,
                                    points_per_side=args.points_per_side)
    path = propose_split(generator, args.root, args.dataset, args.split, args.out, split_by=args.split_by,
                         images_dir=args.images_dir, limit=args.limit,
                         progress=lambda n, total: log.info("image %d / %d", n, total) if n % 50 == 0 else None)
    print(f"proposals: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
