"""The files of ``grounding predict`` for one scene and its sentences.

``<out>/``::

    NN_<slug>.npy       (N,) bool mask over the input points, input order (NN = sentence index, 2+ digits)
    NN_<slug>.ply       the scene (input frame, metres) coloured as pointcloud.render colours a prediction
    NN_<slug>.png       offscreen render of the same (skipped with a warning when rendering is unavailable)
    predictions.json    scene, model, and per sentence: text, files, points, score, no_target, objects
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grounding.predict.predictor3d import Mask3D
from grounding.predict.scene import Scene3D

log = logging.getLogger(__name__)


def _render_png(scene_xyz: np.ndarray, scene: Scene3D, m: Mask3D, path: Path) -> str | None:
    """Render one PNG; None (with a warning, once per reason) when the offscreen renderer cannot run."""
    from pointcloud.render import render_prediction
    from pointcloud.render_offscreen import RenderBackendError

    try:
        render_prediction(scene_xyz, scene.color, m.mask, None, path, caption=m.text,
                          pred_objects=m.objects if m.no_target is not None else None, no_target=m.no_target)
    except (RenderBackendError, RuntimeError, OSError) as e:
        log.warning("PNG not written (%s): %s", path.name, e)
        return None
    return path.name


def write_predictions(out_dir: str | Path, scene: Scene3D, masks: Sequence[Mask3D], model: str = "",
                      png: bool = True, ply: bool = True) -> dict[str, Any]:
    """Write the per-sentence files and ``predictions.json``; returns the summary written there."""
    from pointcloud.render import save_colored_ply, slugify

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    xyz = scene.input_coordinates()
    width = max(2, len(str(len(masks) - 1)))
    entries = []
    for i, m in enumerate(masks):
        stem = f"{i:0{width}d}_{slugify(m.text)}"
        np.save(out / f"{stem}.npy", m.mask.astype(bool))
        entry: dict[str, Any] = {"index": i, "text": m.text, "mask": f"{stem}.npy",
                                 "num_points": m.num_points, "score": m.score}
        if m.no_target is not None:  # MDIN
            entry.update(no_target=m.no_target, num_objects=len(m.objects))
        if m.target_word is not None:
            entry["target_word"] = m.target_word
        gres = m.no_target is not None
        if ply:
            save_colored_ply(out / f"{stem}.ply", xyz, scene.color, m.mask, None,
                             pred_objects=m.objects if gres else None, no_target=m.no_target)
            entry["ply"] = f"{stem}.ply"
        if png:
            entry["png"] = _render_png(xyz, scene, m, out / f"{stem}.png")
            if entry["png"] is None:
                png = False  # the backend will not appear between two sentences: warn once
        entries.append(entry)
    summary = {"scene": scene.source or scene.scene_id, "scene_id": scene.scene_id, "num_points": scene.num_points,
               "superpoints": int(scene.superpoint.max(initial=-1) + 1), "superpoint_source": scene.superpoint_source,
               "model": model, "predictions": entries}
    (out / "predictions.json").write_text(json.dumps(summary, indent=2))
    return summary
