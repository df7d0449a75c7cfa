"""The drawable classes of the generated RefCOCO-format images: geometric shapes and object silhouettes.

Every class is a list of polygons in a unit frame: x right, y down (image convention), centred on the
origin, with a largest extent of about 1. An object is the union of its class's polygons after
:func:`place` scales, stretches, rotates, mirrors and moves them into pixels. Silhouettes are unions
of a few polygons (a car is a body, a cabin and two wheels) designed to enclose no background, as a
COCO polygon list cannot describe holes. At small sizes rasterising can still close a narrow gap (a
cup's handle, about one placement in ten); the layout sampler rejects such masks.

Two kinds mirror RefCOCO's people / other-object partition of testA / testB: ``shape`` (circle,
square, ...) and ``silhouette`` (cup, house, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Polygon = np.ndarray  # (K, 2) float64, x/y in pixels (or unit frame before place())


@dataclass(frozen=True)
class ShapeClass:
    """One category: COCO id, name, kind (``shape`` | ``silhouette``), nouns used in expressions.

    ``upright`` classes are never rotated by more than a few degrees: a square turned by 45 degrees
    is a diamond, and an upside-down house is not a house any more.
    """

    id: int
    name: str
    kind: str
    nouns: tuple[str, ...]
    upright: bool = False


def _ngon(n: int, radius: float, cx: float = 0.0, cy: float = 0.0, start: float = -np.pi / 2) -> Polygon:
    ang = start + 2 * np.pi * np.arange(n) / n
    return np.stack([cx + radius * np.cos(ang), cy + radius * np.sin(ang)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _poly(*xy: float) -> Polygon:
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)


def _star(points: int = 5, outer: float = 0.52, inner: float = 0.22) -> Polygon:
    ang = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    rad = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([rad * np.cos(ang), 0.06 + rad * np.sin(ang)], axis=1)


def _cross(arm: float = 0.17) -> Polygon:
    a, b = arm, 0.5
    return _poly(-a, -b, a, -b, a, -a, b, -a, b, a, a, a, a, b, -a, b, -a, a, -b, a, -b, -a, -a, -a)


def _arc(cx: float, cy: float, inner: float, outer: float, a0: float, a1: float, n: int = 10) -> Polygon:
    """A thick arc (annulus sector) from angle a0 to a1 (radians, clockwise on screen)."""
    ang = np.linspace(a0, a1, n)
    out = np.stack([cx + outer * np.cos(ang), cy + outer * np.sin(ang)], axis=1)
    inn = np.stack([cx + inner * np.cos(ang[::-1]), cy + inner * np.sin(ang[::-1])], axis=1)
    return np.concatenate([out, inn], axis=0)


# Unit-frame polygons of every class. Parts of a silhouette overlap so that their union is one
# connected, hole-free region at every size the generator draws.
UNIT_POLYGONS: dict[str, list[Polygon]] = {
    "circle": [_ngon(40, 0.5)],
    "square": [_rect(-0.45, -0.45, 0.45, 0.45)],
    "triangle": [_poly(0.0, -0.48, 0.55, 0.45, -0.55, 0.45)],
    "star": [_star()],
    "diamond": [_poly(0.0, -0.5, 0.36, 0.0, 0.0, 0.5, -0.36, 0.0)],
    "cross": [_cross()],
    # The handle leaves a gap to the body at its lower end, so it encloses no background.
    "cup": [_poly(-0.32, -0.42, 0.32, -0.42, 0.25, 0.42, -0.25, 0.42), _arc(0.27, -0.08, 0.09, 0.22, -1.7, 0.7),
            _rect(-0.4, 0.38, 0.4, 0.48)],
    "house": [_poly(-0.5, -0.02, 0.0, -0.5, 0.18, -0.327, 0.18, -0.42, 0.3, -0.42, 0.3, -0.212, 0.5, -0.02,
                    0.38, -0.02, 0.38, 0.5, -0.38, 0.5, -0.38, -0.02)],
    "tree": [_poly(0.0, -0.5, 0.22, -0.2, 0.12, -0.2, 0.34, 0.06, 0.2, 0.06, 0.42, 0.3, 0.08, 0.3, 0.08, 0.5,
                   -0.08, 0.5, -0.08, 0.3, -0.42, 0.3, -0.2, 0.06, -0.34, 0.06, -0.12, -0.2, -0.22, -0.2)],
    "car": [_rect(-0.5, -0.04, 0.5, 0.2), _poly(-0.3, 0.0, -0.17, -0.26, 0.2, -0.26, 0.33, 0.0),
            _ngon(16, 0.12, -0.27, 0.22), _ngon(16, 0.12, 0.27, 0.22)],
    "boat": [_poly(-0.5, 0.12, 0.5, 0.12, 0.34, 0.4, -0.34, 0.4), _rect(-0.035, -0.5, 0.035, 0.16),
             _poly(0.0, -0.44, 0.0, 0.06, 0.38, 0.06), _poly(-0.02, -0.3, -0.02, 0.06, -0.3, 0.06)],
}

CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass(1, "circle", "shape", ("circle", "disc")),
    ShapeClass(2, "square", "shape", ("square",), upright=True),
    ShapeClass(3, "triangle", "shape", ("triangle",)),
    ShapeClass(4, "star", "shape", ("star",)),
    ShapeClass(5, "diamond", "shape", ("diamond", "rhombus"), upright=True),
    ShapeClass(6, "cross", "shape", ("cross", "plus sign"), upright=True),
    ShapeClass(7, "cup", "silhouette", ("cup", "mug"), upright=True),
    ShapeClass(8, "house", "silhouette", ("house", "hut"), upright=True),
    ShapeClass(9, "tree", "silhouette", ("tree",), upright=True),
    ShapeClass(10, "car", "silhouette", ("car",), upright=True),
    ShapeClass(11, "boat", "silhouette", ("boat", "ship"), upright=True),
)
BY_NAME: dict[str, ShapeClass] = {c.name: c for c in CLASSES}
KINDS: tuple[str, ...] = ("shape", "silhouette")


def classes_of(kind: str) -> list[str]:
    """Names of the classes of one kind, in catalogue order."""
    return [c.name for c in CLASSES if c.kind == kind]


def coco_categories() -> list[dict[str, object]]:
    """``instances.json`` categories: id, name, supercategory (= the kind)."""
    return [{"id": c.id, "name": c.name, "supercategory": c.kind} for c in CLASSES]


def place(name: str, center: tuple[float, float], extent: float, aspect: float = 1.0, angle: float = 0.0,
          mirror: bool = False) -> list[Polygon]:
    """The class's polygons in pixels.

    Args:
        name: class name (a key of ``UNIT_POLYGONS``).
        center: (x, y) pixel position of the unit frame's origin.
        extent: nominal size in pixels (the unit frame's largest extent maps to about this).
        aspect: width / height stretch; x is scaled by ``sqrt(aspect)`` and y by ``1 / sqrt(aspect)`` so
            the area stays the same.
        angle: rotation in radians (clockwise on screen, as y points down).
        mirror: flip left-right before rotating (a car facing the other way).

    Returns:
        list of (K, 2) float64 polygons, rounded to 1/100 px so that what is stored is what was drawn.
    """
    sx, sy = extent * np.sqrt(aspect), extent / np.sqrt(aspect)
    c, s = np.cos(angle), np.sin(angle)
    out = []
    for unit in UNIT_POLYGONS[name]:
        x = unit[:, 0] * (-sx if mirror else sx)
        y = unit[:, 1] * sy
        xy = np.stack([c * x - s * y + center[0], s * x + c * y + center[1]], axis=1)
        out.append(np.round(xy, 2))
    return out


def polygons_bounds(polys: list[Polygon]) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a union of polygons."""
    pts = np.concatenate(polys, axis=0)
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def rasterize(polys: list[Polygon], width: int, height: int) -> np.ndarray:
    """(H, W) bool mask of the union of the polygons, as PIL fills them (no anti-aliasing).

    The generator colours exactly these pixels, so this mask is the ground truth of what was drawn.
    """
    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    for p in polys:
        draw.polygon([(float(x), float(y)) for x, y in p], fill=255)
    return np.asarray(img) > 0
