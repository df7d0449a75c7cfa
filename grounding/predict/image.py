"""Image inputs of the 2D predictor: a photo as the models' datasets read it, and candidate boxes.

Images (:func:`load_image`): a ``.jpg`` / ``.png`` path (decoded by :func:`datasets.refimage.read_rgb`, the
datasets' own reader, so a file gives the same pixels here as in ``grounding eval``), an (H, W, 3) uint8 RGB array
or a PIL image. The result is (3, H, W) uint8 RGB, original pixels, origin top-left.

Candidate boxes for box-retrieval models (:func:`check_boxes`, :func:`read_boxes_file`): (N, 4) xyxy in original
pixels. ``boxes.json`` holds ``[[x0, y0, x1, y1], ...]`` or ``{"boxes": [...], "format": "xyxy" | "xywh"}``
(``xywh``: COCO's ``[x, y, w, h]``). :func:`sam_candidates` makes them from SAM's automatic masks with the
proposal settings of :mod:`grounding.retrieval.proposals` (the ones ``ProposalBoxes`` evaluates with).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets.candidates import Candidates
from datasets.errors import DataFormatError

ImageSource = str | Path | np.ndarray | Any  # Any: a PIL image
BOX_FORMATS = ("xyxy", "xywh")


def load_image(source: ImageSource) -> torch.Tensor:
    """(3, H, W) uint8 RGB tensor of a path, an (H, W, 3) uint8 array or a PIL image.

    Raises:
        FileNotFoundError: the path does not exist.
        DataFormatError: the file is not a readable image.
        ValueError: an array that is not (H, W, 3) uint8.
    """
    from datasets.refimage import read_rgb

    if isinstance(source, str | Path):
        if not Path(source).is_file():
            raise FileNotFoundError(f"image {source} does not exist")
        return read_rgb(source)
    if not isinstance(source, np.ndarray) and hasattr(source, "convert"):  # PIL.Image.Image
        source = np.asarray(source.convert("RGB"))
    if not isinstance(source, np.ndarray):
        raise TypeError(f"expected an image path, an (H, W, 3) uint8 array or a PIL image, got {type(source)}")
    if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got shape {source.shape} dtype {source.dtype}")
    if source.shape[0] < 1 or source.shape[1] < 1:
        raise ValueError(f"the image is empty (shape {source.shape})")
    # a copy: the caller's array may be a view (non-contiguous, read-only) and must not be touched
    return torch.from_numpy(np.array(source, copy=True)).permute(2, 0, 1).contiguous()


def check_boxes(boxes: Any, height: int, width: int, source: str = "boxes") -> np.ndarray:
    """Validate candidate boxes: (N, 4) float64 xyxy original pixels, finite, ``x1 > x0`` and ``y1 > y0``.

    Boxes may extend past the image (RoI-align samples zeros there, as for any box); an empty list is refused.

    Args:
        boxes: anything ``np.asarray`` turns into (N, 4) (a list of lists, an array, a tensor).
        height, width: the image size, named in the error of a box entirely outside it.
    """
    arr = np.asarray(boxes.cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{source}: expected (N, 4) xyxy boxes, got shape {arr.shape}")
    if len(arr) == 0:
        raise ValueError(f"{source}: no candidate boxes")
    for i, (x0, y0, x1, y1) in enumerate(arr):
        if not np.isfinite([x0, y0, x1, y1]).all() or x1 <= x0 or y1 <= y0:
            raise ValueError(f"{source}: box {i} {[x0, y0, x1, y1]} is not a finite xyxy box with x1 > x0, y1 > y0")
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise ValueError(f"{source}: box {i} {[x0, y0, x1, y1]} lies outside the {width} x {height} image "
                             "(boxes are xyxy in original pixels)")
    return arr


def read_boxes_file(path: str | Path) -> np.ndarray:
    """(N, 4) float64 xyxy boxes of a ``boxes.json`` (module docstring); not yet checked against an image."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"not valid JSON ({e})") from e
    fmt = "xyxy"
    if isinstance(data, dict):
        fmt = str(data.get("format", "xyxy"))
        data = data.get("boxes")
    if fmt not in BOX_FORMATS:
        raise DataFormatError(path, f"format must be one of {BOX_FORMATS}, got {fmt!r}", field="format")
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataFormatError(path, f"boxes must be a list of 4 numbers each ({e})", field="boxes") from e
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DataFormatError(path, f"expected [[x0, y0, x1, y1], ...], got an array of shape {arr.shape}",
                              field="boxes")
    if fmt == "xywh":
        arr = np.concatenate([arr[:, :2], arr[:, :2] + arr[:, 2:]], 1)
    return arr


def sam_candidates(generator: Any, image: torch.Tensor, min_score: float = 0.3, nms_iou: float = 0.8,
                   max_boxes: int = 100) -> Candidates:
    """Candidates from SAM's automatic masks on one image (ChatRex settings, as the proposal files use).

    Args:
        generator: a ``SamAutomaticMaskGenerator`` (:func:`grounding.retrieval.proposals.build_sam_generator`) or
            anything whose ``generate`` maps an (H, W, 3) uint8 RGB array to SAM's mask records.
        image: (3, H, W) uint8 RGB.

    Returns:
        Boxes (K, 4) xyxy original pixels and their ``predicted_iou`` scores, best first.
    """
    from grounding.retrieval.proposals import masks_to_proposals

    rgb = image.permute(1, 2, 0).numpy()
    with torch.no_grad():
        records = generator.generate(rgb)
    rows = masks_to_proposals(records, int(image.shape[1]), int(image.shape[2]), min_score=min_score,
                              nms_iou=nms_iou, max_boxes=max_boxes)
    boxes = np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:4]], 1)
    return Candidates(boxes, rows[:, 4].astype(np.float32))
