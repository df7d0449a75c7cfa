"""`grounding render` on a predictions.jsonl: PNGs with both colours, .ply, index, and clear input errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.errors import DataFormatError
from datasets.pointmask import mask_to_rle
from datasets.scannet.scene import PreparedScene
from pointcloud.render import GT_ONLY_RGB, OVERLAP_RGB, PRED_ONLY_RGB
from pointcloud.render_predictions import read_predictions, render_predictions, select_predictions

GROUNDING = str(Path(sys.executable).with_name("grounding"))


def _scene(scene_id: str) -> PreparedScene:
    """Floor grid plus two 0.5 m boxes: instance 7 (x < 2) and instance 8 (x > 2)."""
    g = np.arange(0, 4, 0.05)
    floor = np.c_[np.stack(np.meshgrid(g, g), -1).reshape(-1, 2), np.zeros(len(g) ** 2)]
    s = np.arange(0, 0.5, 0.04)
    cube = np.stack(np.meshgrid(s, s, s), -1).reshape(-1, 3)
    coord = np.concatenate([floor, cube + [1.0, 1.5, 0.0], cube + [2.6, 1.5, 0.0]]).astype(np.float32)
    inst = np.repeat([-1, 7, 8], [len(floor), len(cube), len(cube)])
    color = np.full((len(coord), 3), 140, np.uint8)
    return PreparedScene(scene_id, coord, color, np.zeros(len(coord), np.int64), np.zeros(len(coord), np.int64), inst)


@pytest.fixture(scope="module")
def predictions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("render_preds")
    scenes = root / "scenes"
    lines = []
    for k, scene_id in enumerate(["scene0201_00", "scene0202_00"]):
        scene = _scene(scene_id)
        scene.save(scenes)
        inst = torch.from_numpy(scene.instance)
        # first: predicts box 8 for GT box 7 (a miss); second: predicts both boxes for GT box 8
        pred = inst == 8 if k == 0 else (inst == 7) | (inst == 8)
        lines.append({"sample_id": f"{scene_id}/{7 + k}/0", "scene_id": scene_id, "description": f"the box {k}",
                      "num_points": scene.num_points, "gt_object_ids": [7 + k], "pred_mask_rle": mask_to_rle(pred),
                      "iou": 0.0 if k == 0 else 0.5})
    path = root / "predictions.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path, scenes


def _near(image: np.ndarray, rgb, tol: int = 8) -> int:
    return int((np.abs(image.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum())


def test_cli_renders_png_and_ply_per_scene(predictions: tuple[Path, Path], tmp_path: Path) -> None:
    path, scenes = predictions
    out = tmp_path / "renders"
    proc = subprocess.run([GROUNDING, "render", str(path), "--scenes", str(scenes), "--out", str(out), "--ply",
                           "--size", "480x360"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(out.glob("*/*.png"))
    assert [p.parent.name for p in pngs] == ["scene0201_00", "scene0202_00"]
    miss = np.asarray(Image.open(pngs[0]).convert("RGB"))
    assert miss.shape == (360, 480, 3)
    assert _near(miss, PRED_ONLY_RGB) > 50 and _near(miss, GT_ONLY_RGB) > 50  # both colours, no overlap
    both = np.asarray(Image.open(pngs[1]).convert("RGB"))
    assert _near(both, OVERLAP_RGB) > 50 and _near(both, PRED_ONLY_RGB) > 50
    assert all(p.with_suffix(".ply").is_file() for p in pngs)
    index = json.loads((out / "scene0202_00" / "index.json").read_text())["items"]
    assert index[0]["iou"] == pytest.approx(0.5) and index[0]["n_gt"] == 13 ** 3


def test_selection(predictions: tuple[Path, Path], tmp_path: Path) -> None:
    path, scenes = predictions
    preds = read_predictions(path)
    assert [p.record["scene_id"] for p in select_predictions(preds, scene_ids=["scene0202_00"])] == ["scene0202_00"]
    assert len(select_predictions(preds, limit=1)) == 1
    with pytest.raises(KeyError, match="nope"):
        select_predictions(preds, sample_ids=["nope"])
    pngs = render_predictions(path, scenes, tmp_path, preds=select_predictions(preds, sample_ids=["scene0201_00/7/0"]),
                              width=200, height=160)
    assert len(pngs) == 1 and pngs[0].is_file()
    # paths come back in the order of the selection, whatever order the scenes are rendered in
    backwards = list(reversed(preds))
    pngs = render_predictions(path, scenes, tmp_path / "back", preds=backwards, width=200, height=160)
    assert [p.parent.name for p in pngs] == [p.record["scene_id"] for p in backwards]


def test_bad_lines_name_file_line_and_field(predictions: tuple[Path, Path], tmp_path: Path) -> None:
    path, scenes = predictions
    good = path.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good[0] + "\n" + json.dumps({"sample_id": "x", "scene_id": "scene0201_00"}) + "\n")
    with pytest.raises(DataFormatError, match=r"bad.jsonl.*line 2 \(sample x\).*missing.*description"):
        read_predictions(bad)
    rec = json.loads(good[0])
    rec["num_points"] += 1
    bad.write_text(json.dumps(rec) + "\n")
    with pytest.raises(DataFormatError, match="line 1.*'num_points'"):
        render_predictions(bad, scenes, tmp_path / "out")
    rec = json.loads(good[0])
    rec["pred_mask_rle"] = [[rec["num_points"] - 1, 5]]
    bad.write_text(json.dumps(rec) + "\n")
    with pytest.raises(DataFormatError, match="line 1.*'pred_mask_rle'"):
        render_predictions(bad, scenes, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.png"))
    proc = subprocess.run([GROUNDING, "render", str(tmp_path / "missing.jsonl"), "--scenes", str(scenes)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "missing.jsonl" in proc.stderr
