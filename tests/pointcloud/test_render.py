"""Offscreen Open3D rendering of predicted 3D masks: real PNGs (CPU, headless), coloured .ply, window guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pointcloud.render import (
    GT_ONLY_RGB,
    OVERLAP_RGB,
    PRED_ONLY_RGB,
    prediction_colors,
    render_prediction,
    render_scene_predictions,
    save_colored_ply,
    show_interactive,
    slugify,
)
from pointcloud.render_caption import BAND_RGB
from pointcloud.render_offscreen import compute_camera


def _box_surface(lo, hi, step: float) -> np.ndarray:
    """Points on the six faces of an axis-aligned box (metres)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    axes = [np.arange(lo[i], hi[i] + 1e-9, step) for i in range(3)]
    faces = []
    for fixed in range(3):
        a, b = [i for i in range(3) if i != fixed]
        grid = np.stack(np.meshgrid(axes[a], axes[b], indexing="ij"), -1).reshape(-1, 2)
        for value in (lo[fixed], hi[fixed]):
            pts = np.empty((len(grid), 3))
            pts[:, fixed], pts[:, a], pts[:, b] = value, grid[:, 0], grid[:, 1]
            faces.append(pts)
    return np.concatenate(faces)


@pytest.fixture(scope="module")
def synthetic_scene():
    """A 4 m x 4 m floor and two boxes; GT = box A, prediction = left half of box A plus box B."""
    rng = np.random.default_rng(0)
    floor = np.stack(np.meshgrid(np.arange(0, 4, 0.05), np.arange(0, 4, 0.05)), -1).reshape(-1, 2)
    floor = np.c_[floor, np.zeros(len(floor))]
    box_a = _box_surface([1.0, 1.0, 0.0], [1.6, 1.6, 0.8], 0.03)
    box_b = _box_surface([2.4, 2.2, 0.0], [2.9, 2.7, 0.5], 0.03)
    coord = np.concatenate([floor, box_a, box_b]).astype(np.float32)
    color = np.concatenate([
        np.tile([150, 120, 90], (len(floor), 1)),  # wooden floor
        np.tile([200, 40, 40], (len(box_a), 1)),  # red box: dimmed it must not look like any highlight
        np.tile([60, 60, 200], (len(box_b), 1)),
    ]) + rng.integers(-10, 10, (len(coord), 3))
    color = np.clip(color, 0, 255).astype(np.uint8)
    kind = np.repeat([0, 1, 2], [len(floor), len(box_a), len(box_b)])
    gt = kind == 1
    pred = (gt & (coord[:, 0] < 1.3)) | (kind == 2)
    return coord, color, pred, gt


def _count_near(image: np.ndarray, rgb, tol: int = 8) -> int:
    return int((np.abs(image.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum())


def _band_height(image: np.ndarray) -> int:
    """Rows at the bottom whose left-most pixel is the band colour (the render above is white there)."""
    column = image[::-1, 0]
    rows = 0
    while rows < len(column) and tuple(column[rows]) == BAND_RGB:
        rows += 1
    return rows


def test_render_synthetic_scene(tmp_path: Path, synthetic_scene) -> None:
    coord, color, pred, gt = synthetic_scene
    out = tmp_path / "nested" / "dir" / "synthetic.png"  # missing parents are created
    caption = "the red box near the corner of the room, left of the blue one"
    path = render_prediction(coord, color, pred, gt, out, caption=caption, width=640, height=480)
    assert path == out and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["synthetic.png"]  # temp file renamed, none left over
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (640, 480)
        image = np.asarray(im.convert("RGB"))
    band = _band_height(image)
    render = image[: image.shape[0] - band]
    for name, rgb in (("pred-only", PRED_ONLY_RGB), ("gt-only", GT_ONLY_RGB), ("overlap", OVERLAP_RGB)):
        assert _count_near(render, rgb) > 200, f"{name} colour {rgb} missing from the render"
    # Not blank: the floor (dimmed own colours) covers a good part of the view, with many shades.
    non_white = (render < 250).any(axis=-1).mean()
    assert non_white > 0.15
    assert len(np.unique(render.reshape(-1, 3), axis=0)) > 50
    # Caption band: dark, under the render, with light text; taller than the legend-only band.
    assert band > 0 and (image[-band:] > 200).all(axis=-1).sum() > 100
    plain = render_prediction(coord, color, pred, gt, tmp_path / "plain.png", width=640, height=480)
    with Image.open(plain) as im:
        plain_band = _band_height(np.asarray(im.convert("RGB")))
    assert 0 < plain_band < band


def test_render_without_gt_and_views(tmp_path: Path, synthetic_scene) -> None:
    coord, color, pred, _ = synthetic_scene
    path = render_prediction(coord, color, pred, None, tmp_path / "top.png", width=320, height=240, view="top")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (240, 320, 3)
    assert _count_near(image, PRED_ONLY_RGB) > 50
    assert _count_near(image, GT_ONLY_RGB) == 0 and _count_near(image, OVERLAP_RGB) == 0
    # Empty prediction and GT: the whole scene is framed and still rendered.
    empty = np.zeros(len(coord), bool)
    path = render_prediction(coord, color, empty, empty, tmp_path / "empty.png", width=320, height=240)
    assert (np.asarray(Image.open(path).convert("RGB")) < 250).any(axis=-1).mean() > 0.1
    with pytest.raises(ValueError, match="view"):
        render_prediction(coord, color, pred, None, tmp_path / "x.png", view="side")


def test_camera_is_z_up_and_looks_at_focus(synthetic_scene) -> None:
    coord, _, pred, gt = synthetic_scene
    cam = compute_camera(coord, pred | gt)
    focus = coord[pred | gt]
    np.testing.assert_allclose(cam.center, (focus.min(0) + focus.max(0)) / 2, atol=1e-6)
    assert cam.eye[2] > cam.center[2] and tuple(cam.up) == (0.0, 0.0, 1.0)
    top = compute_camera(coord, pred | gt, view="top")
    np.testing.assert_allclose(top.eye[:2], top.center[:2])


def test_render_real_scannet_scene(tmp_path: Path, realdata: Path) -> None:
    scene = realdata / "pointcept_scannet" / "scene0011_00"
    coord = np.load(scene / "coord.npy")
    color = np.load(scene / "color.npy")
    instance = np.load(scene / "instance.npy")
    # All 237k points are rendered (about 1-2 s on 2 CPU cores with lavapipe): no subsampling needed.
    gt = instance == 25
    pred = (instance == 27) | (gt & (coord[:, 1] < np.median(coord[gt, 1])))  # half of GT + another object
    path = render_prediction(coord, color, pred, gt, tmp_path / "scene0011_00.png",
                             caption="scene0011_00: GT instance 25 vs a prediction", width=800, height=600)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (600, 800, 3)
    for rgb in (PRED_ONLY_RGB, GT_ONLY_RGB, OVERLAP_RGB):
        assert _count_near(image, rgb) > 200, rgb


def test_mask_length_mismatch_names_both_lengths(tmp_path: Path, synthetic_scene) -> None:
    coord, color, pred, gt = synthetic_scene
    n = len(coord)
    with pytest.raises(ValueError, match=rf"pred_mask has length {n - 1}.*{n} points"):
        render_prediction(coord, color, pred[:-1], gt, tmp_path / "x.png")
    with pytest.raises(ValueError, match=rf"gt_mask has length 5.*{n} points"):
        save_colored_ply(tmp_path / "x.ply", coord, color, pred, gt[:5])
    assert not any(tmp_path.iterdir())


def test_save_colored_ply_round_trip(tmp_path: Path, synthetic_scene) -> None:
    import open3d as o3d

    coord, color, pred, gt = synthetic_scene
    path = save_colored_ply(tmp_path / "out" / "scene.ply", coord, color, pred, gt)
    cloud = o3d.io.read_point_cloud(str(path))
    assert len(cloud.points) == len(coord)
    np.testing.assert_allclose(np.asarray(cloud.points), coord, atol=1e-6)
    colors = np.rint(np.asarray(cloud.colors) * 255).astype(np.uint8)
    expected, highlighted = prediction_colors(color, pred, gt)
    np.testing.assert_array_equal(colors, expected)
    assert (colors[pred & gt] == OVERLAP_RGB).all() and (colors[pred & ~gt] == PRED_ONLY_RGB).all()
    assert (colors[gt & ~pred] == GT_ONLY_RGB).all() and highlighted.sum() == (pred | gt).sum()


def test_show_interactive_without_display(monkeypatch: pytest.MonkeyPatch, synthetic_scene) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    coord, color, pred, gt = synthetic_scene
    with pytest.raises(RuntimeError, match="DISPLAY.*render_prediction"):
        show_interactive(coord, color, pred, gt)


def test_render_scene_predictions_names_and_index(tmp_path: Path, synthetic_scene) -> None:
    coord, color, pred, gt = synthetic_scene
    long = "The RED box / near the corner: it's *left* of the blue one " * 4
    items = [
        (np.int64(7), long, pred, gt),
        ("scene0000_00/7", long, pred, gt),
        ("s1", "Cafe\u0301 table", pred & ~gt, gt),  # box B only: IoU 0
        ("s1", "Cafe\u0301 table", pred, None),  # same id and text: made unique
        ("s2", "never rendered", pred, gt),
    ]
    paths = render_scene_predictions(coord, color, items, tmp_path / "renders", max_items=4, width=320, height=240)
    names = [p.name for p in paths]
    assert len(set(names)) == 4 and all(p.is_file() for p in paths)
    assert names[0].startswith("7__the-red-box-near-the-corner-it-s-left")
    assert names[1].startswith("scene0000-00-7__") and names[2] == "s1__cafe-table.png"
    assert names[3] == "s1__cafe-table-2.png"
    assert all(len(n) <= 110 and n.replace("-", "").replace("_", "").replace(".", "").isalnum() for n in names)
    index = json.loads((tmp_path / "renders" / "index.json").read_text())["items"]
    assert [e["file"] for e in index] == names
    assert index[0]["sample_id"] == 7 and index[0]["description"] == long
    assert index[2]["iou"] == 0.0 and index[3]["iou"] is None and index[3]["n_gt"] is None
    assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == sorted([*names, "index.json"])


def test_missing_vulkan_driver_is_a_clear_error_not_an_abort(tmp_path: Path) -> None:
    # Without any Vulkan ICD Filament aborts the process (SIGABRT); the ctypes probe must catch it first.
    nowhere = str(tmp_path / "none.json")
    env = {**os.environ, "VK_ICD_FILENAMES": nowhere, "VK_DRIVER_FILES": nowhere}
    code = (
        "import numpy as np; from pointcloud.render import render_prediction; "
        "c = np.random.rand(100, 3); m = np.zeros(100, bool); m[:10] = True; "
        f"render_prediction(c, np.zeros((100, 3), np.uint8), m, None, {str(tmp_path / 'x.png')!r})"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "RenderBackendError" in proc.stderr and "mesa-vulkan-drivers" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_slugify() -> None:
    assert slugify("  The chair, by the Window!  ") == "the-chair-by-the-window"
    assert slugify("???") == "item"
    assert len(slugify("word " * 50)) <= 60 and not slugify("word " * 50).endswith("-")
