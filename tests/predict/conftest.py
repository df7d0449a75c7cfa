"""Tiny RG-SAN / MDIN runs and a small generated mesh scene for the prediction tests.

A "run" is what ``grounding train`` leaves behind: ``<run>/config.yaml`` (the resolved config) and
``<run>/checkpoints/last.ckpt`` (a GroundingTask checkpoint, frozen text-encoder weights left out by
``on_save_checkpoint``). The weights are untrained: identical predictions, not accuracy, is the property tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from run_helpers import save_run
from tiny_overrides import TINY

from grounding.engine.config import load_config


@dataclass
class Run:
    cfg: DictConfig
    model: torch.nn.Module
    postprocess: object
    run_dir: Path
    ckpt: Path


def make_run(kind: str, run_dir: Path, seed: int = 0) -> Run:
    cfg = load_config("train", [*TINY[kind], f"run_dir={run_dir}"])
    torch.manual_seed(seed)
    model = instantiate(cfg.model.net)
    postprocess = instantiate(cfg.model.postprocess)
    ckpt = save_run(cfg, model, postprocess, run_dir)
    return Run(cfg, model.eval(), postprocess, run_dir, ckpt)


@pytest.fixture(scope="session")
def rgsan_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return make_run("rgsan", tmp_path_factory.mktemp("rgsan_run"))


@pytest.fixture(scope="session")
def mdin_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return make_run("mdin", tmp_path_factory.mktemp("mdin_run"), seed=1)


def _box(lo: tuple[float, float, float], hi: tuple[float, float, float], steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Closed box surface: 6 faces, each a (steps+1)^2 vertex grid, triangles wound outwards."""
    lo_a, hi_a = np.asarray(lo, float), np.asarray(hi, float)
    verts, faces = [], []
    t = np.linspace(0.0, 1.0, steps + 1)
    u, v = np.meshgrid(t, t, indexing="ij")
    quads = np.array([[i * (steps + 1) + j, (i + 1) * (steps + 1) + j, (i + 1) * (steps + 1) + j + 1,
                       i * (steps + 1) + j + 1] for i in range(steps) for j in range(steps)])
    for axis in range(3):
        for side in (0, 1):
            a, b = [k for k in range(3) if k != axis]
            p = np.zeros((u.size, 3))
            p[:, axis] = hi_a[axis] if side else lo_a[axis]
            p[:, a] = lo_a[a] + u.reshape(-1) * (hi_a[a] - lo_a[a])
            p[:, b] = lo_a[b] + v.reshape(-1) * (hi_a[b] - lo_a[b])
            tri = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
            # (a, b, axis) right-handed when axis follows b cyclically; flip so the normal points outwards
            outward = 1 if side else -1
            handed = 1 if (axis - b) % 3 == 1 else -1
            if outward * handed < 0:
                tri = tri[:, ::-1]
            faces.append(tri + sum(len(x) for x in verts))
            verts.append(p)
    return np.concatenate(verts), np.concatenate(faces)


@pytest.fixture(scope="session")
def mesh_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyz (N, 3) float32 metres z-up, rgb (N, 3) uint8, faces (F, 3) int64): a floor slab and three boxes."""
    parts = [((0, 0, -0.05), (3, 2, 0), 12, (128, 128, 128)), ((0.3, 0.3, 0), (0.8, 0.8, 0.6), 6, (220, 30, 30)),
             ((1.5, 0.5, 0), (2.0, 1.2, 0.4), 6, (30, 30, 220)), ((2.3, 1.3, 0), (2.8, 1.8, 0.9), 6, (30, 200, 30))]
    xyz, rgb, faces, n = [], [], [], 0
    for lo, hi, steps, colour in parts:
        v, f = _box(lo, hi, steps)
        xyz.append(v + np.array([5.0, -2.0, 1.0]))  # off-centre: centring must matter
        rgb.append(np.tile(colour, (len(v), 1)))
        faces.append(f + n)
        n += len(v)
    return (np.concatenate(xyz).astype(np.float32), np.concatenate(rgb).astype(np.uint8),
            np.concatenate(faces).astype(np.int64))
