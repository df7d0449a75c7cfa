"""The tiny prepared scenes of the RG-SAN and MDIN tests: a floor and four coloured boxes."""

from __future__ import annotations

import numpy as np

from datasets.scannet.scene import PreparedScene

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 40)}
SCENE_A, SCENE_B = "scene0001_00", "scene0002_00"


def make_scene(scene_id: str, seed: int) -> PreparedScene:
    """A 2 m x 2 m floor (4 superpoints, unannotated) and 4 coloured boxes (4 superpoints each, ids 10..13), plus
    object 30: three points inside a floor superpoint, so no superpoint is mostly object 30 (gt_center sentinel)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(0, 2, 0.1), np.arange(0, 2, 0.1)), -1).reshape(-1, 2)
    coord = [np.c_[grid, np.zeros(len(grid))]]
    color = [np.full((len(grid), 3), 128)]
    inst = [np.full(len(grid), -1)]
    inst[0][:3] = 30
    sp = [(grid[:, 0] >= 1).astype(int) * 2 + (grid[:, 1] >= 1)]
    centres = [(0.45, 0.45), (1.5, 0.5), (0.5, 1.5), (1.5, 1.5)]
    for k, rgb in enumerate(COLOURS.values()):
        c = np.array(centres[k]) + rng.uniform(-0.1, 0.1, 2)
        side, height = np.arange(-0.15, 0.15, 0.075), np.arange(0.05, 0.5, 0.075)
        box = np.stack(np.meshgrid(side, side, height), -1).reshape(-1, 3)
        box[:, :2] += c
        coord.append(box)
        color.append(np.tile(rgb, (len(box), 1)))
        inst.append(np.full(len(box), 10 + k))
        sp.append(4 + 4 * k + (box[:, 2] > 0.25) + 2 * (box[:, 0] > c[0]))
    xyz = np.concatenate(coord).astype(np.float32)
    n = len(xyz)
    return PreparedScene(scene_id, xyz - xyz.mean(0), np.concatenate(color).astype(np.uint8), np.concatenate(sp),
                         np.full(n, 4), np.concatenate(inst))
