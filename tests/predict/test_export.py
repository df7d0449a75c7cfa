"""Export and safe loading: an export folder and a weights-only checkpoint predict exactly what the in-memory
model predicts (and what the eval path on the prepared scene predicts); pickles that would run code are refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from datasets.records import ReferRecord
from datasets.refer3d import Refer3DDataset
from datasets.scannet.scene import PreparedScene
from datasets.transforms import ValTransform
from grounding.export import export_checkpoint, load_export
from grounding.predict import Predictor3D, UnsafeCheckpointError, load_scene

if TYPE_CHECKING:  # the session fixtures' type (tests/predict/conftest.py)
    from conftest import Run

TEXTS = ["the red box on the floor", "a blue box next to the green one", "the tall green box", "the floor"]


def _prepared(mesh_scene, folder: Path) -> Path:
    xyz, rgb, faces = mesh_scene
    scene = load_scene(np.c_[xyz, rgb], superpoint=None, scene_id="scene0000_00")  # kNN superpoints, no faces
    n = scene.num_points
    PreparedScene("scene0000_00", scene.coord, scene.color, scene.superpoint, np.full(n, -100), np.full(n, -1),
                  meta={}).save(folder)
    return folder / "scene0000_00"


def _eval_path(run: Run, scenes_dir: Path) -> list[torch.Tensor]:
    """Masks of the engine's evaluation path: Refer3DDataset + ValTransform(run scale) + model + postprocess."""
    records = [ReferRecord("scene0000_00", i, (), "", t, "multi3drefer") for i, t in enumerate(TEXTS)]
    ds = Refer3DDataset(scenes_dir, records, ValTransform(float(run.cfg.data.val.transform.scale)), max_descriptions=64)
    batch = ds.collate([ds[0]])
    with torch.no_grad():
        return [p.pred_mask for p in run.postprocess(run.model(batch), batch)]


@pytest.mark.parametrize("kind", ["rgsan", "mdin"])
def test_export_and_checkpoint_predict_like_the_in_memory_model(kind: str, request: pytest.FixtureRequest,
                                                                 mesh_scene, tmp_path: Path) -> None:
    run: Run = request.getfixturevalue(f"{kind}_run")
    folder = _prepared(mesh_scene, tmp_path / "scenes")
    reference = _eval_path(run, tmp_path / "scenes")
    in_memory = Predictor3D(run.model, run.postprocess, scale=float(run.cfg.data.val.transform.scale))(folder, TEXTS)

    out = export_checkpoint(run.ckpt, tmp_path / "export")
    state, cfg, exempt = load_export(out)
    assert exempt == ["text_encoder."] and not any(k.startswith("text_encoder.") for k in state)
    for source in (out, run.ckpt):
        loaded = Predictor3D.from_pretrained(source)(folder, TEXTS)
        for ref, mem, got in zip(reference, in_memory, loaded):
            assert torch.equal(torch.from_numpy(got.mask), ref) and torch.equal(torch.from_numpy(mem.mask), ref)
            assert got.score == mem.score and got.no_target == mem.no_target
            assert all(np.array_equal(a, b) for a, b in zip(got.objects, mem.objects))
            assert got.mask.dtype == bool and got.mask.shape == (len(mesh_scene[0]),)
    if kind == "mdin":
        assert all(m.no_target is not None for m in in_memory)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_checkpoint_that_runs_code_is_refused(writer: str, rgsan_run: Run, tmp_path: Path) -> None:
    marker = tmp_path / "pwned_xyz"
    ckpt = tmp_path / "run" / "checkpoints" / "evil.ckpt"
    ckpt.parent.mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text((rgsan_run.run_dir / "config.yaml").read_text())
    payload = {"state_dict": {"model.x": torch.zeros(1)}, "callbacks": _RunsCode(marker)}
    if writer == "torch":
        torch.save(payload, ckpt)
    else:
        with open(ckpt, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(UnsafeCheckpointError) as err:
        Predictor3D.from_pretrained(ckpt)
    message = str(err.value)
    assert str(ckpt) in message and "pickled" in message and "grounding export" in message
    with pytest.raises(UnsafeCheckpointError):
        export_checkpoint(ckpt, tmp_path / "export")
    assert not marker.exists()


def test_config_naming_code_outside_the_toolkit_is_refused(rgsan_run: Run, tmp_path: Path) -> None:
    marker = tmp_path / "pwned_cfg"
    out = export_checkpoint(rgsan_run.ckpt, tmp_path / "export")
    cfg_path = tmp_path / "evil.yaml"
    cfg_path.write_text(f"model:\n  net:\n    _target_: os.system\n    _args_: ['touch {marker}']\n"
                        "  postprocess: {_target_: pointcloud.rgsan.RGSANPostprocess}\n")
    with pytest.raises(ValueError, match="os.system"):
        Predictor3D.from_pretrained(out, config=cfg_path)
    assert not marker.exists()
