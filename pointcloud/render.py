"""Visualisation of predicted 3D referring masks: offscreen PNG (Open3D), coloured .ply, interactive window.

Colours (Okabe-Ito palette, distinguishable with the common colour-vision deficiencies):

========================  ===============  ======================================
points                    RGB              constant
========================  ===============  ======================================
predicted, not in GT      (230, 159, 0)    ``PRED_ONLY_RGB`` orange (false positive)
in GT, not predicted      (0, 114, 178)    ``GT_ONLY_RGB`` blue (false negative)
predicted and in GT       (0, 158, 115)    ``OVERLAP_RGB`` bluish green (true positive)
everything else           own colour,      :func:`dim_colors`: half desaturated, then blended 45 %
                          dimmed           toward light grey, so the highlights stand out
========================  ===============  ======================================

Without a ground-truth mask every predicted point is orange.

3D-GRES predictions (MDIN: zero, one or several objects) pass ``pred_objects`` and / or ``no_target``. With two or
more predicted objects, each object's points take their own colour of ``OBJECT_RGB`` (legend "object 1",
"object 2", ...; none of them is the GT-only blue, orange or green above) and ground-truth points that no object
covers stay GT-only blue. An empty prediction (``no_target`` or no point) adds the yellow status line
"prediction: no target" to the caption band, and an empty ground truth "ground truth: no target". Without these
two arguments a render is exactly the RG-SAN one. Points are in the scene frame:
``(N, 3)`` float metres, z-up (ScanNet / Pointcept convention); colours ``(N, 3)`` uint8 RGB.

Offscreen rendering needs Vulkan (loader + Mesa's CPU driver on GPU-less machines, see
:mod:`pointcloud.render_offscreen`); no display and no environment variable are needed.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pointcloud.render_caption import LegendEntry, compose_with_band
from pointcloud.render_offscreen import VIEWS, check_render_backend, compute_camera, render_point_layers

PRED_ONLY_RGB = (230, 159, 0)
GT_ONLY_RGB = (0, 114, 178)
OVERLAP_RGB = (0, 158, 115)
BACKGROUND_RGB = (255, 255, 255)
"""Empty space of the render (white)."""
OBJECT_RGB: tuple[tuple[int, int, int], ...] = (
    (213, 94, 0), (204, 121, 167), (240, 228, 66), (110, 50, 160),
    (0, 0, 0), (150, 90, 30), (230, 30, 120), (128, 128, 0),
)
"""Colours of predicted objects 1, 2, ... (cycled beyond 8): Okabe-Ito vermillion, reddish purple and yellow,
then violet, black, brown, magenta, olive; all far from the GT-only blue and from orange and green."""
NO_TARGET_PRED = "prediction: no target"
NO_TARGET_GT = "ground truth: no target"
_MAX_OBJECT_LEGEND = 12  # legend entries beyond this are summarised as "+k more objects"

__all__ = [
    "PRED_ONLY_RGB", "GT_ONLY_RGB", "OVERLAP_RGB", "BACKGROUND_RGB", "OBJECT_RGB", "NO_TARGET_PRED",
    "NO_TARGET_GT", "VIEWS", "check_render_backend", "dim_colors", "prediction_colors", "object_colors",
    "render_prediction", "save_colored_ply", "show_interactive", "render_scene_predictions", "slugify",
]

# Highlighted points are drawn this much larger than the scene so that a thin object stays visible.
_HIGHLIGHT_SCALE = 1.6


def _check_inputs(
    coord: np.ndarray, color: np.ndarray, pred_mask: np.ndarray, gt_mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    coord = np.asarray(coord)
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise ValueError(f"coord must have shape (N, 3), got {coord.shape}")
    n = coord.shape[0]
    color = np.asarray(color)
    if color.shape != (n, 3):
        raise ValueError(f"color must have shape (N, 3) = ({n}, 3) like coord, got {color.shape}")
    if np.issubdtype(color.dtype, np.floating):
        # Accept Open3D-style float colours in [0, 1] too; uint8 is the documented input.
        scale = 255.0 if color.size == 0 or float(np.nanmax(color)) <= 1.0 else 1.0
        color = np.clip(np.rint(color * scale), 0, 255)
    color = color.astype(np.uint8, copy=False)
    masks = []
    for name, mask in (("pred_mask", pred_mask), ("gt_mask", gt_mask)):
        if mask is None:
            masks.append(None)
            continue
        mask = np.asarray(mask)
        if mask.ndim != 1 or mask.shape[0] != n:
            raise ValueError(
                f"{name} has length {mask.shape[0] if mask.ndim else 'scalar'} (shape {mask.shape}) "
                f"but coord has {n} points: masks must be (N,) bool over the same points"
            )
        masks.append(mask.astype(bool, copy=False))
    return coord.astype(np.float64, copy=False), color, masks[0], masks[1]


def dim_colors(color: np.ndarray) -> np.ndarray:
    """Grey-ish, lighter version of the scene's own colours: (N, 3) uint8 -> (N, 3) uint8.

    Half-desaturated (keeps wood vs. wall vs. floor readable) and blended 45 % toward light grey (235),
    so that the saturated highlight colours are the only vivid pixels in the render.
    """
    c = np.asarray(color, dtype=np.float64)
    luma = c @ np.array([0.299, 0.587, 0.114])
    desat = 0.5 * c + 0.5 * luma[:, None]
    return np.clip(np.rint(0.55 * desat + 0.45 * 235.0), 0, 255).astype(np.uint8)


def prediction_colors(
    color: np.ndarray, pred_mask: np.ndarray, gt_mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-point display colours and highlight flags.

    Args:
        color: (N, 3) uint8 RGB, the scene's own colours.
        pred_mask: (N,) bool, predicted points.
        gt_mask: (N,) bool or None, ground-truth points.

    Returns:
        ``(rgb, highlighted)``: (N, 3) uint8 colours (see the module table) and (N,) bool, True where a
        point is predicted or in the ground truth.
    """
    pred = np.asarray(pred_mask, dtype=bool)
    gt = np.zeros_like(pred) if gt_mask is None else np.asarray(gt_mask, dtype=bool)
    rgb = dim_colors(color)
    rgb[pred & ~gt] = PRED_ONLY_RGB
    rgb[gt & ~pred] = GT_ONLY_RGB
    rgb[pred & gt] = OVERLAP_RGB
    return rgb, pred | gt


def _legend(pred: np.ndarray, gt: np.ndarray | None) -> list[LegendEntry]:
    if gt is None:
        return [LegendEntry(PRED_ONLY_RGB, f"prediction ({int(pred.sum())} pts)")]
    tp, fp, fn = int((pred & gt).sum()), int((pred & ~gt).sum()), int((gt & ~pred).sum())
    union = tp + fp + fn
    iou = f"IoU {tp / union:.2f}" if union else "IoU n/a (both empty)"
    return [
        LegendEntry(OVERLAP_RGB, f"overlap/TP {tp}"),
        LegendEntry(PRED_ONLY_RGB, f"pred only/FP {fp}"),
        LegendEntry(GT_ONLY_RGB, f"GT only/FN {fn}"),
        LegendEntry(None, iou),
    ]


def object_colors(
    color: np.ndarray, pred_objects: Sequence[np.ndarray], gt_mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-point display colours of several predicted objects and highlight flags.

    Args:
        color: (N, 3) uint8 RGB, the scene's own colours.
        pred_objects: K masks, each (N,) bool, one per predicted object; object k is drawn in
            ``OBJECT_RGB[k % 8]`` (a later object wins where two overlap).
        gt_mask: (N,) bool or None; ground-truth points outside every object are GT-only blue.

    Returns:
        ``(rgb, highlighted)``: (N, 3) uint8 and (N,) bool, True on object and ground-truth points.
    """
    rgb = dim_colors(color)
    covered = np.zeros(len(rgb), dtype=bool)
    for k, obj in enumerate(pred_objects):
        obj = np.asarray(obj, dtype=bool)
        rgb[obj] = OBJECT_RGB[k % len(OBJECT_RGB)]
        covered |= obj
    gt = np.zeros_like(covered) if gt_mask is None else np.asarray(gt_mask, dtype=bool)
    rgb[gt & ~covered] = GT_ONLY_RGB
    return rgb, covered | gt


def _object_legend(objects: Sequence[np.ndarray], gt: np.ndarray | None) -> list[LegendEntry]:
    """"object k (n pts)" per object, then GT-only points and the IoU of the union with the ground truth."""
    entries = [LegendEntry(OBJECT_RGB[k % len(OBJECT_RGB)], f"object {k + 1} ({int(obj.sum())} pts)")
               for k, obj in enumerate(objects[:_MAX_OBJECT_LEGEND])]
    if len(objects) > _MAX_OBJECT_LEGEND:
        entries.append(LegendEntry(None, f"+{len(objects) - _MAX_OBJECT_LEGEND} more objects"))
    if gt is not None:
        union_pred = np.logical_or.reduce(list(objects))
        fn, union = int((gt & ~union_pred).sum()), int((gt | union_pred).sum())
        entries.append(LegendEntry(GT_ONLY_RGB, f"GT only/FN {fn}"))
        entries.append(LegendEntry(None, f"IoU {int((gt & union_pred).sum()) / union:.2f}" if union
                                   else "IoU n/a (both empty)"))
    return entries


def _check_objects(pred_objects: Sequence[np.ndarray] | None, n: int) -> list[np.ndarray]:
    out = []
    for k, obj in enumerate(pred_objects or ()):
        obj = np.asarray(obj)
        if obj.ndim != 1 or obj.shape[0] != n:
            raise ValueError(f"pred_objects[{k}] has shape {obj.shape} but coord has {n} points: object masks "
                             "must be (N,) bool over the same points")
        out.append(obj.astype(bool, copy=False))
    return out


def _gres_view(
    color: np.ndarray, pred: np.ndarray, gt: np.ndarray | None, pred_objects: Sequence[np.ndarray] | None,
    no_target: bool | None,
) -> tuple[np.ndarray, np.ndarray, list[LegendEntry], list[str]]:
    """Colours, highlight flags, legend and status lines of one render (RG-SAN's when both options are None)."""
    if pred_objects is None and no_target is None:
        rgb, highlighted = prediction_colors(color, pred, gt)
        return rgb, highlighted, _legend(pred, gt), []
    objects = _check_objects(pred_objects, len(pred))
    if no_target:  # the evaluator scores a "no target" answer as an empty mask: draw it as one
        pred, objects = np.zeros_like(pred), []
    if len(objects) >= 2:
        rgb, highlighted = object_colors(color, objects, gt)
        legend = _object_legend(objects, gt)
    else:
        rgb, highlighted = prediction_colors(color, pred, gt)
        legend = _legend(pred, gt)
    pred_empty = not pred.any() and not any(o.any() for o in objects)
    notes = [NO_TARGET_PRED] if pred_empty else []
    if gt is not None and not gt.any():
        notes.append(NO_TARGET_GT)
        if pred_empty:  # 3D-GRES scores a correct "no target" 1 (grounding.metrics.gres), not "n/a"
            legend[-1] = LegendEntry(None, "IoU 1.00 (no target, correct)")
    return rgb, highlighted, legend, notes


def _atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Write through a temporary file in the same directory, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def render_prediction(
    coord: np.ndarray,
    color: np.ndarray,
    pred_mask: np.ndarray,
    gt_mask: np.ndarray | None,
    out_png: Path,
    caption: str | None = None,
    width: int = 960,
    height: int = 720,
    view: str = "auto",
    point_size: float = 3.0,
    pred_objects: Sequence[np.ndarray] | None = None,
    no_target: bool | None = None,
) -> Path:
    """Render a predicted referring mask (and its ground truth) over the scene to a PNG, offscreen.

    Args:
        coord: (N, 3) float, metres, scene frame, z-up.
        color: (N, 3) uint8 RGB (float in [0, 1] accepted).
        pred_mask: (N,) bool, predicted points.
        gt_mask: (N,) bool or None, ground-truth points.
        out_png: destination; parent directories are created, the file is written atomically.
        caption: text (e.g. the referring description) drawn into a dark band at the bottom of the image,
            above a colour legend with point counts and IoU. The legend band is always present.
        width, height: size of the whole PNG in pixels (render + band).
        view: ``"auto"`` oblique top-down view of the union of prediction and GT (whole scene when both are
            empty), ``"top"`` straight down on it, ``"overview"`` whole scene. See
            :func:`pointcloud.render_offscreen.compute_camera`.
        point_size: scene point size in pixels; highlighted points are drawn 1.6x larger.
        pred_objects: 3D-GRES, K masks (N,) bool, one per predicted object (their union is ``pred_mask``); with
            K >= 2 every object gets its own colour of ``OBJECT_RGB`` and a legend entry "object k".
        no_target: 3D-GRES, the model's "no target" answer (drawn as an empty prediction). Giving either 3D-GRES
            option adds the status lines "prediction: no target" (empty prediction) and "ground truth: no target"
            (empty ``gt_mask``) to the band; with both None the render is the RG-SAN one.

    Returns:
        ``out_png`` as a Path.

    Raises:
        ValueError: bad shapes (a mask length differing from N names both lengths) or view.
        pointcloud.render_offscreen.RenderBackendError: no usable Vulkan (says which packages to install).
    """
    coord, color, pred, gt = _check_inputs(coord, color, pred_mask, gt_mask)
    if width < 64 or height < 64:
        raise ValueError(f"width and height must be at least 64 pixels, got {width}x{height}")
    rgb, highlighted, legend, notes = _gres_view(color, pred, gt, pred_objects, no_target)

    def draw(render_height: int) -> np.ndarray:
        camera = compute_camera(coord, highlighted, view=view, aspect=width / render_height)
        layers = [
            (coord[~highlighted], rgb[~highlighted] / 255.0, point_size),
            (coord[highlighted], rgb[highlighted] / 255.0, point_size * _HIGHLIGHT_SCALE),
        ]
        bg = tuple(v / 255.0 for v in BACKGROUND_RGB)
        return render_point_layers(layers, camera, width, render_height, background=bg)

    image = compose_with_band(draw, width, height, caption, legend, notes)
    return _atomic_write(Path(out_png), lambda tmp: image.save(tmp, format="PNG"))


def save_colored_ply(
    path: Path, coord: np.ndarray, color: np.ndarray, pred_mask: np.ndarray, gt_mask: np.ndarray | None = None,
    pred_objects: Sequence[np.ndarray] | None = None, no_target: bool | None = None,
) -> Path:
    """Write the scene as a binary .ply with the same colouring as :func:`render_prediction` (via Open3D).

    Args:
        path: destination ``.ply``; parent directories are created, written atomically.
        coord: (N, 3) float, metres, z-up. color: (N, 3) uint8. pred_mask, gt_mask: (N,) bool.
        pred_objects, no_target: the 3D-GRES options of :func:`render_prediction`.

    Open3D stores colours as uint8 in the file, so ``o3d.io.read_point_cloud(path).colors * 255``
    rounds back to exactly :func:`prediction_colors`.
    """
    import open3d as o3d

    coord, color, pred, gt = _check_inputs(coord, color, pred_mask, gt_mask)
    rgb, _, _, _ = _gres_view(color, pred, gt, pred_objects, no_target)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(coord))
    cloud.colors = o3d.utility.Vector3dVector(rgb / 255.0)

    def write(tmp: Path) -> None:
        if not o3d.io.write_point_cloud(str(tmp), cloud, write_ascii=False):
            raise OSError(f"Open3D could not write the point cloud to {tmp}")

    return _atomic_write(Path(path), write)


def show_interactive(
    coord: np.ndarray,
    color: np.ndarray,
    pred_mask: np.ndarray,
    gt_mask: np.ndarray | None = None,
    title: str = "prediction",
    width: int = 1280,
    height: int = 960,
) -> None:
    """Open an Open3D window (``draw_geometries``) on the coloured scene; blocks until it is closed.

    Shapes as :func:`render_prediction`. Raises RuntimeError when no display exists (neither ``DISPLAY``
    nor ``WAYLAND_DISPLAY`` set), pointing to the PNG path instead.
    """
    coord, color, pred, gt = _check_inputs(coord, color, pred_mask, gt_mask)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise RuntimeError(
            "show_interactive needs a display, but neither DISPLAY nor WAYLAND_DISPLAY is set. On a headless "
            "machine render to a PNG instead with pointcloud.render.render_prediction(...) (offscreen, no "
            "display needed) or write a coloured .ply with save_colored_ply(...) and open it elsewhere."
        )
    import open3d as o3d

    rgb, highlighted = prediction_colors(color, pred, gt)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(coord))
    cloud.colors = o3d.utility.Vector3dVector(rgb / 255.0)
    # Start from the same z-up oblique view as the PNG (Open3D's default looks down -z with +y up).
    camera = compute_camera(coord, highlighted, view="auto", aspect=width / height)
    front = (camera.eye - camera.center) / np.linalg.norm(camera.eye - camera.center)
    o3d.visualization.draw_geometries(
        [cloud], window_name=title, width=width, height=height,
        lookat=camera.center, front=front, up=camera.up, zoom=0.6,
    )


_SLUG_MAX = 60


def slugify(text: str, max_len: int = _SLUG_MAX) -> str:
    """File-name-safe slug: ASCII lower case, ``[a-z0-9-]`` only, at most ``max_len`` chars, never empty."""
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    slug = slug[:max_len].rstrip("-")
    return slug or "item"


def render_scene_predictions(
    scene_coord: np.ndarray,
    scene_color: np.ndarray,
    items: Sequence[tuple[str | int, str, np.ndarray, np.ndarray | None]
                    | tuple[str | int, str, np.ndarray, np.ndarray | None, Mapping[str, Any]]],
    out_dir: Path,
    max_items: int | None = None,
    **render_kwargs: Any,
) -> list[Path]:
    """Render several predictions on one scene, one PNG each, plus ``index.json``.

    Args:
        scene_coord: (N, 3) float, metres, z-up. scene_color: (N, 3) uint8.
        items: ``(sample_id, description, pred_mask (N,) bool, gt_mask (N,) bool or None)``, optionally with a
            fifth element: per-item :func:`render_prediction` options, the 3D-GRES ``pred_objects`` and
            ``no_target``.
        out_dir: created when missing.
        max_items: render only the first ``max_items`` items.
        render_kwargs: passed to :func:`render_prediction` (width, height, view, point_size).

    Files are ``<sample id slug>__<description slug>.png``; the sample id keeps names unique, and a
    ``-2``, ``-3``... suffix is added if two items still collide. ``index.json`` holds
    ``{"items": [{"file", "sample_id", "description", "n_pred", "n_gt", "iou"}]}``; items with 3D-GRES options
    also record ``n_objects`` and ``no_target`` (``iou`` stays the plain mask IoU, None when both are empty).

    Returns:
        the PNG paths in item order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    selected = list(items)[: max_items if max_items is not None else None]
    used: set[str] = set()
    paths: list[Path] = []
    index = []
    for sample_id, description, pred_mask, gt_mask, *rest in selected:
        options = dict(rest[0]) if rest else {}
        stem = f"{slugify(str(sample_id), 40)}__{slugify(description)}"
        name, k = f"{stem}.png", 1
        while name in used:
            k += 1
            name = f"{stem}-{k}.png"
        used.add(name)
        path = render_prediction(
            scene_coord, scene_color, pred_mask, gt_mask, out_dir / name, caption=description,
            **render_kwargs, **options,
        )
        pred = np.asarray(pred_mask, dtype=bool)
        if options.get("no_target"):
            pred = np.zeros_like(pred)
        if isinstance(sample_id, np.generic):  # numpy ids (e.g. from an id array) are not JSON-serialisable
            sample_id = sample_id.item()
        entry = {"file": name, "sample_id": sample_id, "description": description, "n_pred": int(pred.sum())}
        if gt_mask is not None:
            gt = np.asarray(gt_mask, dtype=bool)
            union = int((pred | gt).sum())
            entry.update(n_gt=int(gt.sum()), iou=(int((pred & gt).sum()) / union) if union else None)
        else:
            entry.update(n_gt=None, iou=None)
        if "pred_objects" in options or "no_target" in options:
            entry.update(n_objects=len(options.get("pred_objects") or ()), no_target=not pred.any())
        index.append(entry)
        paths.append(path)
    text = json.dumps({"items": index}, indent=2, ensure_ascii=False)
    _atomic_write(out_dir / "index.json", lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    return paths
