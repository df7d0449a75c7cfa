"""``grounding predict`` / ``grounding export`` end to end on a tiny exported model, and the scene routes.

Routes compared: one generated mesh written as (a) a ``.ply`` with faces (superpoints computed by
``mesh_superpoints``), (b) an (N, 6) ``.npy`` given those same superpoints with ``--superpoints`` and (c) a ScanNet
raw scan folder whose ``segs.json`` holds them. Same points, colours and superpoints, so the normalised scenes are
equal and the written masks must be identical. (Without the shared superpoints the ``.npy`` route would compute kNN
superpoints, a different partition, and could legitimately answer differently.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from datasets.scannet.raw import MESH_SUFFIX, SEGS_SUFFIX, Mesh, write_mesh, write_segs
from grounding.cli.main import main
from grounding.predict import load_scene
from pointcloud.superpoints import mesh_superpoints

if TYPE_CHECKING:  # the session fixtures' type (tests/predict/conftest.py)
    from conftest import Run

TEXTS = ["the red box", "the blue box next to the green box"]


def test_scene_routes_give_identical_masks(mdin_run: Run, mesh_scene, tmp_path: Path) -> None:
    xyz, rgb, faces = mesh_scene
    sp = mesh_superpoints(xyz, faces)
    write_mesh(tmp_path / "scan.ply", Mesh(xyz, rgb, faces))
    np.save(tmp_path / "scan.npy", np.c_[xyz.astype(np.float64), rgb])
    np.save(tmp_path / "sp.npy", sp)
    raw = tmp_path / "scene0000_00"
    write_mesh(raw / f"scene0000_00{MESH_SUFFIX}", Mesh(xyz, rgb, faces))
    write_segs(raw / f"scene0000_00{SEGS_SUFFIX}", "scene0000_00", sp)

    scenes = [load_scene(tmp_path / "scan.ply"), load_scene(tmp_path / "scan.npy", superpoint=sp), load_scene(raw)]
    assert scenes[0].superpoint_source == "mesh_superpoints" and scenes[2].superpoint_source == "input"
    for s in scenes[1:]:
        assert np.array_equal(s.coord, scenes[0].coord) and np.array_equal(s.color, scenes[0].color)
        assert np.array_equal(s.superpoint, scenes[0].superpoint)
    np.testing.assert_allclose(scenes[0].coord.mean(0), 0, atol=1e-5)  # centred like the preparer
    np.testing.assert_allclose(scenes[0].input_coordinates(), xyz, atol=1e-5)

    masks = []
    routes = [["--scene", str(tmp_path / "scan.ply")],
              ["--scene", str(tmp_path / "scan.npy"), "--superpoints", str(tmp_path / "sp.npy")],
              ["--scene", str(raw)]]
    for k, route in enumerate(routes):
        out = tmp_path / f"out{k}"
        assert main(["predict", "--model", str(mdin_run.ckpt), *route, *TEXTS, "--out", str(out), "--no-png",
                     "--no-ply"]) == 0
        summary = json.loads((out / "predictions.json").read_text())
        assert [e["text"] for e in summary["predictions"]] == TEXTS
        masks.append([np.load(out / e["mask"]) for e in summary["predictions"]])
    for other in masks[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(masks[0], other))


def test_export_then_predict_cli(rgsan_run: Run, mesh_scene, tmp_path: Path, capsys) -> None:
    xyz, rgb, faces = mesh_scene
    write_mesh(tmp_path / "scan.ply", Mesh(xyz, rgb, faces))
    export = tmp_path / "export"
    assert main(["export", str(rgsan_run.ckpt), "--out", str(export)]) == 0
    assert (export / "model.safetensors").is_file() and (export / "config.yaml").is_file()
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(export), "--scene", str(tmp_path / "scan.ply"), *TEXTS,
                 "--out", str(out)]) == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["num_points"] == len(xyz) and summary["superpoint_source"] == "mesh_superpoints"
    for i, entry in enumerate(summary["predictions"]):
        assert entry["mask"].startswith(f"{i:02d}_") and entry["mask"].endswith(".npy")
        mask = np.load(out / entry["mask"])
        assert mask.dtype == bool and mask.shape == (len(xyz),) and int(mask.sum()) == entry["num_points"]
        assert (out / entry["ply"]).is_file()
        assert entry.get("png") is None or (out / entry["png"]).is_file()  # None: no Vulkan, warned
    assert "predictions.json" in capsys.readouterr().out


def test_predict_cli_refuses_an_unsafe_checkpoint(rgsan_run: Run, tmp_path: Path, capsys) -> None:
    import os
    import pickle

    marker = tmp_path / "pwned_xyz"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "evil.ckpt"
    (tmp_path / "config.yaml").write_text((rgsan_run.run_dir / "config.yaml").read_text())
    ckpt.write_bytes(pickle.dumps({"state_dict": {}, "x": Evil()}))
    np.save(tmp_path / "scan.npy", np.zeros((10, 6)))
    assert main(["predict", "--model", str(ckpt), "--scene", str(tmp_path / "scan.npy"), "x", "--out",
                 str(tmp_path / "o")]) == 2
    assert "grounding export" in capsys.readouterr().err and not marker.exists()
