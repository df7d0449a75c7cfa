"""Binary masks to COCO polygons: exact pixel-edge tracing, simplification checked by decoding.

RefCOCO stores an object's segmentation as a list of polygons, and readers decode them with
``pycocotools`` (``frPyObjects`` -> ``merge`` -> ``decode``). A polygon whose vertices lie on pixel
corners decodes to exactly the pixels it encloses, so tracing the boundary of an 8-connected,
hole-free region along pixel edges gives a lossless polygon. Those staircases are long, so they are
simplified (Douglas-Peucker over the corner vertices) and the simplified list is kept only if it still
decodes to the region with high IoU; otherwise the exact staircase is stored.

Holes cannot be written as COCO polygons (decoding takes the union), so regions with holes are
rejected here; the layout sampler avoids them (see ``scene.py``).
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

# IoU that a simplified polygon list must keep against the traced pixels; below it the exact
# staircase is stored instead.
MIN_SIMPLIFIED_IOU = 0.98
SIMPLIFY_TOLERANCE = 0.75  # px; a staircase's corners lie within ~0.71 px of the edge they follow


class HoleError(ValueError):
    """A region whose background is enclosed: not representable as a COCO polygon list."""


def has_holes(mask: np.ndarray) -> bool:
    """True when some background pixels are not 4-connected to the image border."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if len(rows) == 0:
        return False
    # Only the bounding box (plus a background border) can hold a hole; far fewer pixels to fill.
    crop = np.pad(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], 1)
    return bool((ndimage.binary_fill_holes(crop) & ~crop).any())


def trace(component: np.ndarray) -> np.ndarray:
    """Boundary of one 8-connected, hole-free region as (K, 2) int64 pixel-corner vertices.

    Each foreground pixel edge that faces background becomes a directed edge with the region on its
    right (clockwise on screen). Where two pixels of the region touch only at a corner, that corner has
    two outgoing edges; taking the left turn there walks on to the diagonal neighbour, so the region
    stays one ring (touching itself at that corner, which decodes to exactly the same pixels). Without
    holes the edges then form one cycle; anything else raises ``HoleError``. Collinear vertices are
    dropped, so the result holds the corners only.
    """
    h, w = component.shape
    pad = np.pad(component, 1)
    fg = pad[1:-1, 1:-1]
    stride = w + 1
    starts, ends = [], []
    # (neighbour slice, start corner, end corner) for top, right, bottom and left edges
    for nb, (sx, sy), (ex, ey) in (
        (pad[:-2, 1:-1], (0, 0), (1, 0)),
        (pad[1:-1, 2:], (1, 0), (1, 1)),
        (pad[2:, 1:-1], (1, 1), (0, 1)),
        (pad[1:-1, :-2], (0, 1), (0, 0)),
    ):
        r, c = np.nonzero(fg & ~nb)
        starts.append((r + sy) * stride + c + sx)
        ends.append((r + ey) * stride + c + ex)
    start, end = np.concatenate(starts), np.concatenate(ends)
    # Successor of every edge: the edge leaving its end corner; where two leave (a diagonal touch),
    # the left turn, i.e. a negative cross product of the two directions (y points down).
    order = np.argsort(start, kind="stable")
    lo = np.searchsorted(start[order], end, side="left")
    hi = np.searchsorted(start[order], end, side="right")
    if (hi - lo < 1).any() or (hi - lo > 2).any():
        raise HoleError("broken boundary: a corner without exactly one or two outgoing edges")
    first = order[lo]
    second = order[np.minimum(lo + 1, len(order) - 1)]
    dx0, dy0 = end % stride - start % stride, end // stride - start // stride
    dx1, dy1 = end[first] % stride - end % stride, end[first] // stride - end // stride
    left = dx0 * dy1 - dy0 * dx1 < 0
    succ = np.where((hi - lo == 2) & ~left, second, first).tolist()
    n_edges = len(succ)
    e0 = int(np.argmin(start))
    path = [e0]
    e = succ[e0]
    while e != e0 and len(path) <= n_edges:
        path.append(e)
        e = succ[e]
    if len(path) != n_edges:
        raise HoleError("the boundary is more than one cycle: the region has a hole or is not 8-connected")
    cycle = start[np.array(path)]
    pts = np.stack([cycle % stride, cycle // stride], axis=1)
    d0 = pts - np.roll(pts, 1, axis=0)
    d1 = np.roll(pts, -1, axis=0) - pts
    corner = (d0[:, 0] * d1[:, 1] - d0[:, 1] * d1[:, 0]) != 0
    return pts[corner]


def simplify(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on a closed ring of (K, 2) vertices; keeps a subset of the input vertices.

    Short chains run in plain Python, where per-call numpy overhead would cost more than the arithmetic.
    """
    n = len(ring)
    if n <= 4:
        return ring
    arr = ring.astype(np.float64)
    xs, ys = arr[:, 0].tolist(), arr[:, 1].tolist()
    # Split the ring at vertex 0 and the vertex farthest from it, then simplify both open chains.
    far = max(range(n), key=lambda i: (xs[i] - xs[0]) ** 2 + (ys[i] - ys[0]) ** 2)
    keep = [False] * n
    keep[0] = keep[far] = True
    stack = [(0, far), (far, n)]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        ax, ay = xs[i], ys[i]
        bx, by = xs[j % n], ys[j % n]
        dx, dy = bx - ax, by - ay
        norm = (dx * dx + dy * dy) ** 0.5
        if j - i > 64:  # long chains: numpy pays off
            px, py = arr[i + 1:j, 0] - ax, arr[i + 1:j, 1] - ay
            dist = np.abs(dx * py - dy * px) / norm if norm > 0 else np.hypot(px, py)
            k = int(np.argmax(dist))
            best, arg = float(dist[k]), i + 1 + k
        else:
            best, arg = -1.0, i + 1
            for m in range(i + 1, j):
                px, py = xs[m] - ax, ys[m] - ay
                d = abs(dx * py - dy * px) / norm if norm > 0 else (px * px + py * py) ** 0.5
                if d > best:
                    best, arg = d, m
        if best > tolerance:
            keep[arg] = True
            stack += [(i, arg), (arg, j)]
    out = ring[np.array(keep)]
    return out if len(out) >= 3 else ring


def decode(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a COCO polygon list, decoded the way RefCOCO readers do."""
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return mask_utils.decode(rle).astype(bool)


def _flat(rings: list[np.ndarray]) -> list[list[float]]:
    return [[float(v) for v in ring.reshape(-1)] for ring in rings]


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygon list (flat [x1, y1, x2, y2, ...] lists, float pixels) of a hole-free binary mask.

    One polygon per 8-connected component, largest first. Raises ``HoleError`` for masks with holes
    and ``ValueError`` for an empty mask.
    """
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if len(rows) == 0:
        raise ValueError("empty mask")
    # Work on the bounding box plus a one-pixel background border: the same answer, far fewer pixels.
    y0, x0 = int(rows[0]) - 1, int(cols[0]) - 1
    crop = np.pad(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], 1)  # a hole makes trace() raise
    labels, n = ndimage.label(crop, structure=np.ones((3, 3), dtype=bool))
    sizes = ndimage.sum_labels(crop, labels, index=np.arange(1, n + 1))
    offset = np.array([x0, y0], dtype=np.int64)
    exact = [trace(labels == k + 1) + offset for k in np.argsort(-sizes, kind="stable")]
    simple = [simplify(ring, SIMPLIFY_TOLERANCE) for ring in exact]
    got = decode(_flat([ring - offset for ring in simple]), *crop.shape)  # checked in the crop: same pixels
    iou = (got & crop).sum() / max((got | crop).sum(), 1)
    return _flat(simple if iou >= MIN_SIMPLIFIED_IOU else exact)


def coco_fields(polygons: list[list[float]], height: int, width: int) -> tuple[list[float], float]:
    """(bbox xywh, area) of a polygon list as pycocotools computes them from the decoded mask."""
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return [float(v) for v in mask_utils.toBbox(rle)], float(mask_utils.area(rle))
