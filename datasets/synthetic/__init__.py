"""Synthetic rooms in ScanNet v2's raw formats, with ScanRefer- and Multi3DRefer-format descriptions.

The generated set goes through exactly the same path as real data (raw files -> preparer -> batches)
and is the default for the demo, the tests and the learning benchmarks. Descriptions single out their
targets by colour, size and spatial relations, and every one is verified against the geometry that
the raw files hold. See ``docs/synthetic3d.md``.

Modules: ``primitives`` (meshed boxes, planes, frusta), ``catalog`` (classes, NYU40 ids, words),
``furniture`` (class builders), ``room`` (layout and placement), ``scene`` (meshing, colours, labels),
``segments`` (ScanNet's Felzenszwalb mesh segmentation), ``geometry`` (facts measured from the raw
files), ``semantics`` (meaning of the grammar), ``grammar`` (wording), ``describe`` (ScanRefer),
``multi`` (Multi3DRefer), ``generate`` (presets and orchestration).
"""

from datasets.synthetic.generate import PRESETS, Preset, SyntheticReport, generate_synthetic, multiple_flags
from datasets.synthetic.geometry import SceneGeometry, load_scene_geometry, scene_geometry
from datasets.synthetic.grammar import Chooser, render, tokenize
from datasets.synthetic.segments import segment_mesh, segment_mesh_reference
from datasets.synthetic.semantics import evaluate, verify

__all__ = [
    "PRESETS", "Preset", "SyntheticReport", "generate_synthetic", "multiple_flags", "SceneGeometry",
    "load_scene_geometry", "scene_geometry", "Chooser", "render", "tokenize", "segment_mesh",
    "segment_mesh_reference", "evaluate", "verify",
]
