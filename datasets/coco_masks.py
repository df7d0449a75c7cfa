"""COCO ``segmentation`` objects to binary masks and back (RefCOCO spec §1.3, §1.6).

A COCO annotation's ``segmentation`` is one of:
- polygons: a list of flat ``[x1, y1, x2, y2, ...]`` lists in pixel coordinates (origin at the top-left
  corner of the image, x to the right, y down); RefCOCO, RefCOCO+ and RefCOCOg use this;
- uncompressed RLE: ``{"size": [H, W], "counts": [int, ...]}``, run lengths over the column-major
  (Fortran-order) flattened mask, starting with a run of zeros;
- compressed RLE: ``{"size": [H, W], "counts": str | bytes}``, the same runs in COCO's string code
  (RefCLEF uses RLE).

Decoding follows the toolkit rule of spec §1.6: ``frPyObjects`` -> ``merge`` -> ``decode``, i.e. the
union of the parts, which equals ``refer.getMask``'s "sum of parts > 0" without its values above 1.

Everything is validated before pycocotools sees it: its C decoder writes runs without bounds checks, so a
run-length list that does not add up to H*W could corrupt memory instead of raising.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from datasets.errors import DataFormatError

# A polygon needs three points to enclose pixels. pycocotools would read a 4-number "polygon" as a box
# (and fail), so shorter parts are dropped as degenerate rather than passed on.
MIN_POLYGON_COORDS = 6


def _rle_size(seg: dict, height: int, width: int, path: str | Path, record: str | None, field: str) -> None:
    size = seg.get("size")
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise DataFormatError(path, f"RLE 'size' must be [height, width] integers, got {size!r}",
                              record=record, field=field)
    if list(size) != [height, width]:
        raise DataFormatError(path, f"RLE size {list(size)} differs from the image size [{height}, {width}]",
                              record=record, field=field)


def rle_string_counts(counts: str | bytes) -> list[int]:
    """Decode COCO's compressed RLE string into run lengths (pycocotools ``rleFrString`` in Python).

    Each run is a variable-length signed number in 5-bit groups (characters ``'0'`` + 0..63, bit 0x20 =
    more groups follow, bit 0x10 of the last group = sign); from the fourth run on, the stored number is
    the difference to the run two places back.

    Raises:
        ValueError: on a character outside the code, a truncated number or a negative run.
    """
    data = counts.encode("ascii", errors="replace") if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("the string ends inside a number")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {chr(data[p])!r} at {p} is not part of the RLE code")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)  # sign-extend; Python ints make this the negative number directly
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise ValueError(f"run {len(runs)} has negative length {x}")
        runs.append(x)
    return runs


def check_segmentation(seg: Any, height: int, width: int, path: str | Path = "<segmentation>",
                       record: str | None = None, field: str = "segmentation") -> None:
    """Validate a COCO segmentation for an image of ``height`` x ``width`` pixels without decoding it.

    Raises:
        DataFormatError: naming ``path``, ``record`` and ``field``, for anything that is not a list of
            numeric polygons (even length, finite numbers) or an RLE dict whose size equals the image
            and whose runs add up to ``height * width``.
    """
    if isinstance(seg, list):
        if not seg:
            raise DataFormatError(path, "empty polygon list", record=record, field=field)
        for i, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in poly):
                raise DataFormatError(path, f"polygon {i} must be a flat list of finite numbers [x1, y1, x2, ...]",
                                      record=record, field=field)
            if len(poly) % 2:
                raise DataFormatError(path, f"polygon {i} has an odd number of coordinates ({len(poly)})",
                                      record=record, field=field)
        return
    if isinstance(seg, dict):
        _rle_size(seg, height, width, path, record, field)
        counts = seg.get("counts")
        if isinstance(counts, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
                raise DataFormatError(path, "uncompressed RLE 'counts' must be non-negative integers",
                                      record=record, field=field)
            total = sum(counts)
        elif isinstance(counts, (str, bytes)):
            try:
                total = sum(rle_string_counts(counts))
            except ValueError as e:
                raise DataFormatError(path, f"compressed RLE 'counts' is malformed: {e}", record=record,
                                      field=field) from e
        else:
            raise DataFormatError(path, f"RLE 'counts' must be a list of ints or a string, got "
                                  f"{type(counts).__name__}", record=record, field=field)
        if total != height * width:
            raise DataFormatError(path, f"RLE runs add up to {total} pixels, expected {height}*{width}="
                                  f"{height * width}", record=record, field=field)
        return
    raise DataFormatError(path, f"expected a list of polygons or an RLE dict, got {type(seg).__name__}",
                          record=record, field=field)


def decode_segmentation(seg: Any, height: int, width: int, path: str | Path = "<segmentation>",
                        record: str | None = None, field: str = "segmentation") -> np.ndarray:
    """Decode a COCO segmentation to a binary mask.

    Args:
        seg: polygons, uncompressed RLE or compressed RLE (module docstring).
        height, width: the image size in pixels.
        path, record, field: named by errors (the annotation file, e.g. ``ann 42``, the field).

    Returns:
        ``(height, width)`` bool array, C-contiguous; True inside the union of all parts. Integer polygon
        corners (x0, y0)-(x1, y1) of an axis-aligned rectangle cover rows y0..y1-1 and columns x0..x1-1.
        A segmentation made only of degenerate polygons (fewer than 3 points) gives an all-False mask.

    Raises:
        DataFormatError: as ``check_segmentation``.
    """
    check_segmentation(seg, height, width, path, record, field)
    if isinstance(seg, list):
        polygons = [[float(v) for v in poly] for poly in seg if len(poly) >= MIN_POLYGON_COORDS]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    elif isinstance(seg["counts"], list):
        rle = coco_mask.frPyObjects({"size": [height, width], "counts": seg["counts"]}, height, width)
    else:
        counts = seg["counts"]
        rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    # decode returns a Fortran-ordered uint8 array; callers index rows, so hand back C order.
    return np.ascontiguousarray(coco_mask.decode(rle).astype(bool))


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Encode a binary mask as compressed COCO RLE.

    Args:
        mask: ``(H, W)`` array; non-zero means inside.

    Returns:
        ``{"size": [H, W], "counts": str}``: JSON-serialisable; ``decode_segmentation`` reverses it.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
