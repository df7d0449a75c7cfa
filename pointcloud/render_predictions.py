"""Render the 3D predictions of ``grounding eval`` (``predictions.jsonl``) over their prepared scenes.

Each line of ``predictions.jsonl`` holds ``sample_id``, ``scene_id``, ``description``, ``num_points``,
``pred_mask_rle`` (run-length pairs over the prepared scene's original point order) and, from RG-SAN and MDIN,
``gt_object_ids`` (the GT mask is the union of those instances) and ``iou``. 3D-GRES lines (MDIN) may add
``no_target`` (bool) and ``pred_objects_rle`` (one run-length mask per predicted object): each object is then
drawn in its own colour and an empty answer is captioned "prediction: no target"
(:func:`pointcloud.render.render_prediction`); lines without these keys render as before. Output, per scene:
``<out>/<scene_id>/<sample>__<description>.png`` (+ ``.ply`` on request) and an ``index.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datasets.errors import DataFormatError
from datasets.pointmask import rle_to_mask
from datasets.scannet.scene import PreparedScene
from pointcloud.render import render_scene_predictions, save_colored_ply

REQUIRED = ("sample_id", "scene_id", "description", "num_points", "pred_mask_rle")


@dataclass(frozen=True)
class PredictionLine:
    """One checked line of ``predictions.jsonl``."""

    line: int
    record: dict[str, Any]


def read_predictions(path: str | Path) -> list[PredictionLine]:
    """Read and check ``predictions.jsonl``; errors name the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file (written by `grounding eval`)")
    out = []
    with path.open(encoding="utf-8") as f:
        for k, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, f"line {k}: not valid JSON ({e})") from e
            missing = [f for f in REQUIRED if f not in rec]
            if missing:
                raise DataFormatError(path, f"line {k} (sample {rec.get('sample_id', '?')}): missing field(s) "
                                      f"{missing}; expected a 3D prediction with {list(REQUIRED)}")
            out.append(PredictionLine(k, rec))
    return out


def select_predictions(lines: Sequence[PredictionLine], sample_ids: Sequence[str] | None = None,
                       scene_ids: Sequence[str] | None = None, limit: int | None = None) -> list[PredictionLine]:
    """Filter by sample and scene ids (in file order), then keep the first ``limit``."""
    keep = [p for p in lines
            if (not sample_ids or p.record["sample_id"] in sample_ids)
            and (not scene_ids or p.record["scene_id"] in scene_ids)]
    if sample_ids:
        found = {p.record["sample_id"] for p in keep}
        unknown = [s for s in sample_ids if s not in found]
        if unknown:
            raise KeyError(f"sample ids not in the predictions: {unknown[:5]}")
    return keep[:limit] if limit is not None else keep


def prediction_masks(pred: PredictionLine, scene: PreparedScene,
                     path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(N,) bool predicted mask and (N,) bool GT mask (None without ``gt_object_ids``) of one line over its scene;
    errors name ``path``, the line and the field."""
    rec = pred.record
    if int(rec["num_points"]) != scene.num_points:
        raise DataFormatError(path, f"line {pred.line} (sample {rec['sample_id']}): field 'num_points' is "
                              f"{rec['num_points']} but the prepared scene {scene.scene_id} has {scene.num_points} "
                              "points (predictions from another preparation of the scene?)")
    try:
        mask = rle_to_mask(rec["pred_mask_rle"], scene.num_points).numpy()
    except (ValueError, TypeError) as e:
        raise DataFormatError(path, f"line {pred.line} (sample {rec['sample_id']}): field 'pred_mask_rle': {e}") \
            from e
    ids = rec.get("gt_object_ids")
    gt = np.isin(scene.instance, np.asarray(ids, dtype=np.int64)) if ids is not None else None
    return mask, gt


def prediction_objects(pred: PredictionLine, scene: PreparedScene, path: str | Path) -> dict[str, Any]:
    """The 3D-GRES render options of one line: ``{"pred_objects": [(N,) bool, ...], "no_target": bool}``, holding
    only the keys the line has (``{}`` for an RG-SAN line); errors name ``path``, the line and the field."""
    rec = pred.record
    options: dict[str, Any] = {}
    where = f"line {pred.line} (sample {rec['sample_id']})"
    if "no_target" in rec:
        if not isinstance(rec["no_target"], bool):
            raise DataFormatError(path, f"{where}: field 'no_target' must be true or false, got {rec['no_target']!r}")
        options["no_target"] = rec["no_target"]
    if "pred_objects_rle" in rec:
        runs = rec["pred_objects_rle"]
        if not isinstance(runs, list):
            raise DataFormatError(path, f"{where}: field 'pred_objects_rle' must be a list of run-length masks")
        try:
            options["pred_objects"] = [rle_to_mask(r, scene.num_points).numpy() for r in runs]
        except (ValueError, TypeError) as e:
            raise DataFormatError(path, f"{where}: field 'pred_objects_rle': {e}") from e
    return options


def _by_scene(preds: Sequence[PredictionLine]) -> Iterator[tuple[str, list[PredictionLine]]]:
    order: dict[str, list[PredictionLine]] = {}
    for p in preds:
        order.setdefault(p.record["scene_id"], []).append(p)
    yield from order.items()


def render_predictions(predictions: str | Path, scenes_dir: str | Path, out_dir: str | Path,
                       preds: Sequence[PredictionLine] | None = None, ply: bool = False,
                       progress: Callable[[int, int], None] | None = None, **render_kwargs: Any) -> list[Path]:
    """Render predictions (all lines of ``predictions``, or ``preds``) to PNGs, one folder per scene.

    Args:
        predictions: ``predictions.jsonl`` of ``grounding eval``.
        scenes_dir: the prepared scene folders the predictions were made on.
        out_dir: output folder; ``<out>/<scene_id>/`` per scene, each with ``index.json``.
        preds: a selection (:func:`select_predictions`); None renders every line.
        ply: also write a coloured binary ``.ply`` next to every PNG (same colours).
        progress: called as ``progress(done, total)`` after each scene.
        render_kwargs: :func:`pointcloud.render.render_prediction` options (width, height, view, point_size).

    Returns:
        the PNG path of every prediction, in the order of ``preds`` (scenes are rendered one after another).
    """
    path = Path(predictions)
    preds = read_predictions(path) if preds is None else list(preds)
    total, done = len(preds), 0
    png_of: dict[int, Path] = {}
    for scene_id, group in _by_scene(preds):
        scene = PreparedScene.load(Path(scenes_dir) / scene_id, require_superpoints=False)
        items = []
        for p in group:
            mask, gt = prediction_masks(p, scene, path)
            options = prediction_objects(p, scene, path)
            item = (p.record["sample_id"], p.record["description"], mask, gt)
            items.append((*item, options) if options else item)
        pngs = render_scene_predictions(scene.coord, scene.color, items, Path(out_dir) / scene_id, **render_kwargs)
        if ply:
            for png, (_, _, mask, gt, *options) in zip(pngs, items):
                save_colored_ply(png.with_suffix(".ply"), scene.coord, scene.color, mask, gt,
                                 **(options[0] if options else {}))
        png_of.update((id(p), png) for p, png in zip(group, pngs))
        done += len(items)
        if progress is not None:
            progress(done, total)
    return [png_of[id(p)] for p in preds]

