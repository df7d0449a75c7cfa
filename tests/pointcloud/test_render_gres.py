"""3D-GRES renders (real offscreen Open3D PNGs): several predicted objects in their own colours, "no target" captions,
and RG-SAN lines unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.errors import DataFormatError
from datasets.pointmask import mask_to_rle
from datasets.scannet.scene import PreparedScene
from pointcloud.render import (
    GT_ONLY_RGB,
    OBJECT_RGB,
    OVERLAP_RGB,
    PRED_ONLY_RGB,
    object_colors,
    render_prediction,
    save_colored_ply,
)
from pointcloud.render_caption import BAND_RGB, NOTE_RGB
from pointcloud.render_predictions import render_predictions


def _cube(origin, size: float = 0.5, step: float = 0.04) -> np.ndarray:
    s = np.arange(0, size, step)
    return np.stack(np.meshgrid(s, s, s), -1).reshape(-1, 3) + np.asarray(origin)


@pytest.fixture(scope="module")
def scene() -> PreparedScene:
    """Floor grid (instance -1) and three 0.5 m boxes: instances 7, 8 and 9."""
    g = np.arange(0, 4, 0.05)
    floor = np.c_[np.stack(np.meshgrid(g, g), -1).reshape(-1, 2), np.zeros(len(g) ** 2)]
    cubes = [_cube([0.8, 1.5, 0.0]), _cube([1.8, 1.5, 0.0]), _cube([2.8, 1.5, 0.0])]
    coord = np.concatenate([floor, *cubes]).astype(np.float32)
    inst = np.repeat([-1, 7, 8, 9], [len(floor)] + [len(c) for c in cubes]).astype(np.int64)
    color = np.full((len(coord), 3), 140, np.uint8)
    return PreparedScene("scene0301_00", coord, color, np.zeros(len(coord), np.int64), np.zeros(len(coord), np.int64),
                         inst)


def _near(image: np.ndarray, rgb, tol: int = 8) -> int:
    return int((np.abs(image.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum())


def _split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(render, band) of a PNG: the band is the run of bottom rows whose left pixel is the band colour."""
    image = np.asarray(Image.open(path).convert("RGB"))
    rows = 0
    while rows < len(image) and tuple(image[-1 - rows, 0]) == BAND_RGB:
        rows += 1
    return image[: len(image) - rows], image[len(image) - rows:]


def test_two_predicted_objects_get_their_own_colours(tmp_path: Path, scene: PreparedScene) -> None:
    inst = scene.instance
    objects = [inst == 7, inst == 8]  # predicted: boxes 7 and 8; GT: boxes 7 and 9
    pred, gt = objects[0] | objects[1], (inst == 7) | (inst == 9)
    path = render_prediction(scene.coord, scene.color, pred, gt, tmp_path / "two.png", caption="the two boxes",
                             width=480, height=360, pred_objects=objects, no_target=False)
    render, band = _split(path)
    for k in range(2):
        assert _near(render, OBJECT_RGB[k]) > 200, f"object {k + 1} colour missing"
        assert _near(band, OBJECT_RGB[k]) > 20, f"legend swatch of object {k + 1} missing"
    assert _near(render, GT_ONLY_RGB) > 200  # box 9: GT that no object covers
    assert _near(render, PRED_ONLY_RGB) == 0 and _near(render, OVERLAP_RGB) == 0
    assert _near(band, NOTE_RGB) == 0  # nothing is empty: no status line
    rgb, highlighted = object_colors(scene.color, objects, gt)
    assert (rgb[inst == 8] == OBJECT_RGB[1]).all() and (rgb[inst == 9] == GT_ONLY_RGB).all()
    assert highlighted.sum() == (pred | gt).sum()
    # the same prediction as one mask (RG-SAN colours): orange / green, no object colours
    plain = render_prediction(scene.coord, scene.color, pred, gt, tmp_path / "plain.png", width=480, height=360)
    plain_render, _ = _split(plain)
    assert _near(plain_render, PRED_ONLY_RGB) > 200 and _near(plain_render, OBJECT_RGB[1]) == 0
    # the .ply gets the same colours
    import open3d as o3d

    ply = save_colored_ply(tmp_path / "two.ply", scene.coord, scene.color, pred, gt, pred_objects=objects)
    colors = np.rint(np.asarray(o3d.io.read_point_cloud(str(ply)).colors) * 255).astype(np.uint8)
    np.testing.assert_array_equal(colors, rgb)


def test_empty_prediction_is_captioned(tmp_path: Path, scene: PreparedScene) -> None:
    inst = scene.instance
    gt, empty = inst == 7, np.zeros(len(inst), bool)
    kwargs = dict(caption="the box by the wall", width=480, height=360)
    before = render_prediction(scene.coord, scene.color, empty, gt, tmp_path / "rgsan.png", **kwargs)
    said = render_prediction(scene.coord, scene.color, empty, gt, tmp_path / "gres.png", no_target=True, **kwargs)
    _, band_before = _split(before)
    render, band = _split(said)
    assert _near(band_before, NOTE_RGB) == 0  # RG-SAN: no status line
    assert _near(band, NOTE_RGB) > 20  # "prediction: no target" in yellow
    assert len(band) > len(band_before)  # one more line in the band
    assert _near(render, GT_ONLY_RGB) > 200 and _near(render, PRED_ONLY_RGB) == 0
    # no_target wins over a stray mask (the evaluator scores it as empty): nothing predicted is drawn
    stray = render_prediction(scene.coord, scene.color, inst == 8, gt, tmp_path / "stray.png", no_target=True, **kwargs)
    stray_render, stray_band = _split(stray)
    assert _near(stray_render, PRED_ONLY_RGB) == 0 and len(stray_band) == len(band)
    # zero-target description answered "no target": two status lines (prediction and ground truth)
    both = render_prediction(scene.coord, scene.color, empty, empty, tmp_path / "both.png", no_target=True, **kwargs)
    _, both_band = _split(both)
    line_h = len(band) - len(band_before)
    assert len(both_band) == len(band) + line_h and _near(both_band, NOTE_RGB) > _near(band, NOTE_RGB)
    # an empty mask without the no_target flag counts as empty too, once the 3D-GRES options are given
    objs = render_prediction(scene.coord, scene.color, empty, gt, tmp_path / "objs.png", pred_objects=[], **kwargs)
    assert len(_split(objs)[1]) == len(band)


def test_predictions_jsonl_with_and_without_gres_keys(tmp_path: Path, scene: PreparedScene) -> None:
    scene.save(tmp_path / "scenes")
    inst = torch.from_numpy(scene.instance)
    two = [inst == 7, inst == 8]
    base = {"scene_id": scene.scene_id, "num_points": scene.num_points}
    lines = [
        {**base, "sample_id": f"{scene.scene_id}/0", "description": "rgsan line", "gt_object_ids": [7],
         "pred_mask_rle": mask_to_rle(inst == 7)},
        {**base, "sample_id": f"{scene.scene_id}/1", "description": "two boxes", "gt_object_ids": [7, 8],
         "pred_mask_rle": mask_to_rle(two[0] | two[1]), "no_target": False,
         "pred_objects_rle": [mask_to_rle(m) for m in two]},
        {**base, "sample_id": f"{scene.scene_id}/2", "description": "a bed", "gt_object_ids": [],
         "pred_mask_rle": [], "no_target": True, "pred_objects_rle": []},
    ]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    pngs = render_predictions(path, tmp_path / "scenes", tmp_path / "out", width=400, height=300)
    # the RG-SAN line renders exactly as a direct call without the new options
    direct = render_prediction(scene.coord, scene.color, scene.instance == 7, scene.instance == 7,
                               tmp_path / "direct.png", caption="rgsan line", width=400, height=300)
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[0])), np.asarray(Image.open(direct)))
    render, _ = _split(pngs[1])
    assert _near(render, OBJECT_RGB[0]) > 100 and _near(render, OBJECT_RGB[1]) > 100
    _, band = _split(pngs[2])
    assert _near(band, NOTE_RGB) > 20
    index = json.loads((tmp_path / "out" / scene.scene_id / "index.json").read_text())["items"]
    assert "n_objects" not in index[0] and "no_target" not in index[0]
    assert index[1]["n_objects"] == 2 and index[1]["no_target"] is False
    assert index[2]["n_objects"] == 0 and index[2]["no_target"] is True and index[2]["n_gt"] == 0
    bad = dict(lines[1], pred_objects_rle=[[[scene.num_points - 1, 9]]])
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataFormatError, match="line 1.*'pred_objects_rle'"):
        render_predictions(path, tmp_path / "scenes", tmp_path / "bad")
    path.write_text(json.dumps(dict(lines[1], no_target="yes")) + "\n")
    with pytest.raises(DataFormatError, match="line 1.*'no_target'"):
        render_predictions(path, tmp_path / "scenes", tmp_path / "bad")


def test_object_mask_length_is_checked(tmp_path: Path, scene: PreparedScene) -> None:
    n = scene.num_points
    with pytest.raises(ValueError, match=rf"pred_objects\[1\].*{n} points"):
        render_prediction(scene.coord, scene.color, np.zeros(n, bool), None, tmp_path / "x.png",
                          pred_objects=[np.zeros(n, bool), np.zeros(n - 1, bool)])
