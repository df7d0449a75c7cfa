"""Superpoint pooling, voxel -> point gathering and per-scene padding (rgsan-mdin spec §1, §2.1)."""

from __future__ import annotations

import math

import pytest
import torch

from pointcloud.superpoint_pool import (
    pad_by_offsets,
    pool_padded,
    superpoint_counts,
    superpoint_pool,
    voxel_to_point,
)


def naive_pool(feats: torch.Tensor, sp: torch.Tensor, s: int, reduce: str = "mean") -> torch.Tensor:
    out = torch.zeros(s, feats.shape[1], dtype=torch.float64)
    for i in range(s):
        rows = feats[sp == i].double()
        if rows.shape[0]:
            out[i] = rows.mean(0) if reduce == "mean" else rows.max(0).values
    return out


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_matches_naive_loop_with_empty_superpoints(reduce: str) -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(500, 7, generator=g) - 3  # all negative-ish: max must not pick up the zero init
    sp = torch.randint(0, 40, (500,), generator=g)
    sp[sp == 7] = 8  # superpoint 7 is empty
    got = superpoint_pool(feats, sp, 42, reduce=reduce)  # 40 and 41 are trailing empties
    assert got.shape == (42, 7) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive_pool(feats, sp, 42, reduce), rtol=1e-6, atol=1e-6)
    assert (got[[7, 40, 41]] == 0).all()
    counts = superpoint_counts(sp, 42)
    assert counts.tolist() == [int((sp == i).sum()) for i in range(42)]


def test_gradient_and_centres_in_metres() -> None:
    feats = torch.randn(100, 4, requires_grad=True)
    sp = torch.arange(100) % 10
    superpoint_pool(feats, sp, 10).sum().backward()
    torch.testing.assert_close(feats.grad, torch.full_like(feats, 0.1))
    xyz = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])  # metres
    centres = superpoint_pool(xyz, torch.tensor([0, 0, 1]), 2)
    torch.testing.assert_close(centres, torch.tensor([[0.5, 1.0, 1.5], [5.0, 5.0, 5.0]]))


def test_half_input_accumulates_in_fp32() -> None:
    # 4000 points of value 30 each: an fp16 running sum would overflow (120000 > 65504).
    feats = torch.full((4000, 2), 30.0, dtype=torch.float16)
    out = superpoint_pool(feats, torch.zeros(4000, dtype=torch.long), 1)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), torch.full((1, 2), 30.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lin = torch.nn.Linear(2, 3)(torch.randn(50, 2))
        pooled = superpoint_pool(lin, torch.arange(50) % 5, 5)
    assert pooled.dtype == lin.dtype and torch.isfinite(pooled).all()


def test_invalid_ids_are_named() -> None:
    feats = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"span \[0, 5\]"):
        superpoint_pool(feats, torch.tensor([0, 1, 2, 3, 5]), 5)
    with pytest.raises(ValueError, match="must be \\(5,\\)"):
        superpoint_pool(feats, torch.arange(4), 5)
    with pytest.raises(ValueError, match="reduce"):
        superpoint_pool(feats, torch.arange(5), 5, reduce="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="p2v"):
        voxel_to_point(feats, torch.tensor([0, 5]))


def test_voxel_to_point_then_pool() -> None:
    voxel_feats = torch.randn(6, 4, requires_grad=True)
    p2v = torch.tensor([0, 0, 1, 2, 2, 2, 5, 3])
    point_feats = voxel_to_point(voxel_feats, p2v)
    assert torch.equal(point_feats, voxel_feats[p2v])
    sp = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    pooled = superpoint_pool(point_feats, sp, 3)
    torch.testing.assert_close(pooled[1], voxel_feats[2])
    pooled.sum().backward()
    assert voxel_feats.grad[4].abs().sum() == 0  # voxel 4 has no point


def test_pad_by_offsets() -> None:
    values = torch.arange(7 * 2, dtype=torch.float32).reshape(7, 2)
    offsets = torch.tensor([0, 3, 3, 7])  # second scene has no superpoint
    padded, valid = pad_by_offsets(values, offsets, pad_value=-1)
    assert padded.shape == (3, 4, 2) and valid.tolist() == [[True] * 3 + [False], [False] * 4, [True] * 4]
    assert torch.equal(padded[0, :3], values[:3]) and torch.equal(padded[2], values[3:])
    assert (padded[~valid] == -1).all()
    with pytest.raises(ValueError, match="rise from 0 to 7"):
        pad_by_offsets(values, torch.tensor([0, 3, 6]))


def test_pool_padded_per_scene() -> None:
    # Scene 0: 3 superpoints over 6 points; scene 1: 2 superpoints (global ids 3, 4) over 3 points.
    feats = torch.arange(9, dtype=torch.float32)[:, None]
    superpoint = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4])
    pooled, counts, valid = pool_padded(feats, superpoint, torch.tensor([0, 3, 5]))
    assert pooled.shape == (2, 3, 1) and valid.tolist() == [[True] * 3, [True, True, False]]
    assert pooled[..., 0].tolist() == [[0.5, 2.0, 4.0], [6.0, 7.5, 0.0]]
    assert counts.tolist() == [[2, 1, 3], [1, 2, 0]]


def test_superpoint_geometry_by_hand_and_rotation_invariant() -> None:
    from pointcloud.superpoint_pool import superpoint_geometry

    # scene 0: floor point at z = -1 and a 2-point superpoint at z 0 and 1; scene 1: one point at z = 5
    xyz = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [1.0, 2.0, 1.0], [3.0, 3.0, 5.0]])
    colour = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5]])
    feat = torch.cat([colour, xyz], 1)
    sp, scene = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 0, 1])
    g = superpoint_geometry(feat, sp, scene, 3)
    assert g.shape == (3, 7)
    torch.testing.assert_close(g[1], torch.tensor([0.5, 0.0, 0.0, 1.5, 2.0, 1.0, 0.5]))
    torch.testing.assert_close(g[2], torch.tensor([0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]))  # its own floor
    c, s = math.cos(0.7), math.sin(0.7)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    g_rot = superpoint_geometry(torch.cat([colour, xyz @ rot.T], 1), sp, scene, 3)
    torch.testing.assert_close(g_rot, g)
