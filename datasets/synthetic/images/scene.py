"""Layout and painting of one generated image: objects with occlusion, textured backgrounds.

An image holds 3-6 objects drawn in order; a later object hides what it covers of earlier ones. The
ground truth of an object is its *visible* pixels: its own rasterised polygons minus every later
object's pixels. Placement is rejection-sampled so that every visible region

- keeps at least ``MIN_VISIBLE`` of the object's own pixels (a reader can still tell what it is),
- has no holes (COCO polygon lists cannot describe them; see ``contours.py``),

and objects of the same colour never overlap or touch (the edge between them would be invisible).

Sizes come in two classes with a gap between them: the nominal extent of a ``small`` object is at most
``SIZES["small"][1]`` of the image's shorter side and that of a ``large`` one at least
``SIZES["large"][0]``, a ratio of at least 1.5.

Backgrounds are a gradient of two muted random colours under stripes, checks or low-frequency blobs,
sometimes crossed by thin lines in palette colours, with pixel noise over everything; so a colour
threshold alone does not segment the objects. Objects are flat palette colours with a small brightness
change per object and a vertical shading.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from datasets.synthetic.images.contours import has_holes
from datasets.synthetic.images.shapes import BY_NAME, CLASSES, Polygon, place, polygons_bounds, rasterize

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 60),
    "blue": (40, 75, 215),
    "yellow": (240, 215, 30),
    "purple": (135, 55, 185),
    "orange": (245, 135, 20),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SIZES: dict[str, tuple[float, float]] = {"small": (0.14, 0.19), "large": (0.29, 0.38)}
MIN_VISIBLE = 0.6  # fraction of an object's own pixels that must stay visible
MIN_PIXELS = 40  # smallest visible region kept (px)
# Two objects of one colour that touch read as one blob (the occlusion edge is invisible), so their
# bounding boxes must stay this many pixels apart.
SAME_COLOR_MARGIN = 3.0


@dataclass
class SceneObject:
    """One drawn object.

    Attributes:
        cls, color, size: class name, palette colour name, ``small`` | ``large``.
        polygons: the drawn polygons, (K, 2) float pixels, rounded to 1/100 px.
        center: (x, y) centre of the polygons' bounding box in pixels: the object's position for the
            spatial words (its drawn extent, ignoring occlusion).
        extent: nominal size in pixels.
        mask: (H, W) bool, the object's own pixels; ``visible`` is that minus later objects.
    """

    cls: str
    color: str
    size: str
    polygons: list[Polygon]
    center: tuple[float, float]
    extent: float
    mask: np.ndarray
    visible: np.ndarray

    @property
    def kind(self) -> str:
        return BY_NAME[self.cls].kind


def _near(a: tuple[float, float, float, float], b: tuple[float, float, float, float], margin: float) -> bool:
    """True when two (x0, y0, x1, y1) boxes overlap or come closer than ``margin``."""
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def _sample_pools(rng: np.random.Generator, kind_bias: str | None) -> tuple[list[str], list[str]]:
    """Classes and colours an image draws from.

    Most images draw from a few classes and colours, so objects share attributes and expressions need
    more than one word to single out their target. ``kind_bias`` (for testA/testB images) makes sure
    the pool is mostly of that kind.
    """
    names = [c.name for c in CLASSES]
    if rng.random() < 0.75:
        n_cls, n_col = int(rng.integers(2, 4)), int(rng.integers(2, 4))
    else:
        n_cls, n_col = len(names), len(COLORS)
    if kind_bias is not None:
        own = [c.name for c in CLASSES if c.kind == kind_bias]
        pool = [str(x) for x in rng.choice(own, size=min(n_cls, len(own)), replace=False)]
        if rng.random() < 0.5:  # one class of the other kind as a distractor or anchor
            other = [c.name for c in CLASSES if c.kind != kind_bias]
            pool.append(str(rng.choice(other)))
    else:
        pool = [str(x) for x in rng.choice(names, size=n_cls, replace=False)]
    colors = [str(x) for x in rng.choice(COLORS, size=n_col, replace=False)]
    return pool, colors


def sample_layout(rng: np.random.Generator, width: int, height: int, n_objects: int,
                  kind_bias: str | None = None, tries: int = 40) -> list[SceneObject]:
    """Objects in drawing order, each with its visible mask; may return fewer than ``n_objects``.

    Each object gets up to ``tries`` random placements; one is accepted when it fits in the image and
    leaves every earlier object's visible region large enough and hole-free.
    """
    classes, colors = _sample_pools(rng, kind_bias)
    short = min(width, height)
    objects: list[SceneObject] = []
    for _ in range(n_objects):
        cls = str(rng.choice(classes))
        color = str(rng.choice(colors))
        size = "small" if rng.random() < 0.5 else "large"
        extent = float(rng.uniform(*SIZES[size])) * short
        upright = BY_NAME[cls].upright
        aspect = float(rng.uniform(0.85, 1.15))
        angle = float(rng.uniform(-0.08, 0.08) if upright else rng.uniform(-0.5, 0.5))
        mirror = bool(rng.random() < 0.5)
        base = place(cls, (0.0, 0.0), extent, aspect, angle, mirror)
        x0, y0, x1, y1 = polygons_bounds(base)
        for _ in range(tries):
            cx = float(rng.uniform(1 - x0, width - 1 - x1))
            cy = float(rng.uniform(1 - y0, height - 1 - y1))
            polys = [np.round(p + (cx, cy), 2) for p in base]
            bounds = polygons_bounds(polys)
            if any(o.color == color and _near(bounds, polygons_bounds(o.polygons), SAME_COLOR_MARGIN)
                   for o in objects):
                continue
            mask = rasterize(polys, width, height)
            if mask.sum() < MIN_PIXELS or has_holes(mask):
                continue
            ok = True
            for o in objects:
                vis = o.visible & ~mask
                if vis.sum() < max(MIN_VISIBLE * o.mask.sum(), MIN_PIXELS) or (
                        (o.visible & mask).any() and has_holes(vis)):
                    ok = False
                    break
            if not ok:
                continue
            for o in objects:
                o.visible = o.visible & ~mask
            bx0, by0, bx1, by1 = bounds
            objects.append(SceneObject(cls, color, size, polys, ((bx0 + bx1) / 2, (by0 + by1) / 2), extent,
                                       mask, mask.copy()))
            break
    return objects


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 textured background in 0..255.

    Gradient and pattern are computed at half resolution and enlarged bilinearly: the textures are
    smooth anyway, and this is a quarter of the arithmetic (generation time is dominated by pixels).
    """
    hh, ww = (height + 1) // 2, (width + 1) // 2
    yy, xx = (np.mgrid[0:hh, 0:ww] * 2).astype(np.float32)  # full-resolution pixel coordinates
    c1, c2 = rng.uniform(50, 210, size=3), rng.uniform(50, 210, size=3)
    # Muted: halfway between a random colour and its grey, so palette hues appear but are dull.
    c1, c2 = ((c1 + c1.mean()) / 2).astype(np.float32), ((c2 + c2.mean()) / 2).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    t = np.float32(np.cos(theta)) * xx + np.float32(np.sin(theta)) * yy
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c1 + (c2 - c1) * t[..., None]
    pattern = int(rng.integers(4))
    c3 = rng.uniform(40, 220, size=3).astype(np.float32)
    if pattern == 0:  # stripes
        period, phi = np.float32(rng.uniform(6, 22)), rng.uniform(0, np.pi)
        wave = (np.float32(np.cos(phi)) * xx + np.float32(np.sin(phi)) * yy) / period
        alpha = np.float32(rng.uniform(0.15, 0.4)) * ((wave % 1.0) < 0.5)
    elif pattern == 1:  # checks
        cell = np.float32(rng.uniform(8, 24))
        alpha = np.float32(rng.uniform(0.12, 0.3)) * (((xx // cell) + (yy // cell)) % 2)
    elif pattern == 2:  # low-frequency blobs: a coarse random grid, bilinearly enlarged
        grid = Image.fromarray((rng.random((5, 5)) * 255).astype(np.uint8))
        alpha = np.asarray(grid.resize((ww, hh), Image.BILINEAR), dtype=np.float32) / 255 * 0.5
    else:
        alpha = np.zeros_like(xx)
    img = img * (1 - alpha[..., None]) + c3 * alpha[..., None]
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    if rng.random() < 0.4:  # thin palette-coloured lines: colour alone is not the object
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 4))):
            pts = rng.uniform(0, 1, size=4) * [width, height, width, height]
            draw.line([float(v) for v in pts], fill=PALETTE[str(rng.choice(COLORS))], width=1)
    return np.asarray(canvas, dtype=np.float32)


def paint(rng: np.random.Generator, objects: list[SceneObject], width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 image: background, then every object's visible pixels, then pixel noise."""
    img = _background(rng, width, height)
    for o in objects:
        gain = float(rng.uniform(0.88, 1.08))
        rows, cols = np.nonzero(o.visible.any(1))[0], np.nonzero(o.visible.any(0))[0]
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        top = o.center[1] - o.extent / 2
        yy = np.arange(y0, y1, dtype=np.float32)[:, None, None]
        shade = 1.08 - 0.16 * np.clip((yy - top) / max(o.extent, 1.0), 0, 1)  # lit from above
        layer = np.asarray(PALETTE[o.color], dtype=np.float32) * gain * shade
        vis = o.visible[y0:y1, x0:x1, None]
        img[y0:y1, x0:x1] = np.where(vis, layer, img[y0:y1, x0:x1])
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * 5
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
