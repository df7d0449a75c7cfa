"""Generated referring-expression images in the real RefCOCO layout (refs pickle, COCO json, JPEGs).

The 2D counterpart of the synthetic rooms: several coloured shapes and object silhouettes per image,
some occluding others, on textured backgrounds, with expressions that single out one object each by
colour, class, size and position. Every expression is checked to pick out exactly one object before it
is written, and its structured meaning is kept in ``scenes.json``. The layout is what RefCOCO readers
expect, so the RIS (SAM + DIT) and box-retrieval tasks read it exactly as they read RefCOCO.

Modules: ``shapes`` (classes as polygons, rasterising), ``contours`` (masks to COCO polygons),
``scene`` (layout with occlusion, painting), ``expressions`` (programs, uniqueness, wording),
``generate`` (presets, splits, writing). Command line: ``grounding prepare synthetic2d --out DIR``.
"""

from datasets.synthetic.images.contours import decode, mask_to_polygons
from datasets.synthetic.images.expressions import Fact, resolve, tokenize
from datasets.synthetic.images.generate import (
    GENERATOR_VERSION,
    PRESETS,
    Preset2D,
    Synthetic2DSummary,
    generate_synthetic2d,
    image_file_name,
)
from datasets.synthetic.images.shapes import CLASSES, rasterize

__all__ = [
    "GENERATOR_VERSION", "PRESETS", "Preset2D", "Synthetic2DSummary", "generate_synthetic2d", "image_file_name",
    "Fact", "resolve", "tokenize", "decode", "mask_to_polygons", "CLASSES", "rasterize",
]
