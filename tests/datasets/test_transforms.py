"""Training and validation scene transforms (data spec §9.1, §9.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datasets.scannet.scene import PreparedScene
from datasets.transforms import TrainTransform, ValTransform, affine_matrix, color_offset, map_colors, voxelize
from datasets.transforms.augment import (
    elastic_displacement,
    elastic_distortion,
    elastic_grid_shape,
    elastic_noise,
    smooth_noise,
    subsample_index,
)


def make_scene(n: int = 4000, seed: int = 0, extent: float = 3.0) -> PreparedScene:
    """A room-sized random cloud where every point carries its own id in ``instance``."""
    rng = np.random.default_rng(seed)
    coord = (rng.uniform(-extent, extent, (n, 3)) * [1.0, 0.8, 0.4]).astype(np.float32)
    color = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    superpoint = rng.integers(0, n // 10, n).astype(np.int64)
    semantic = rng.integers(-1, 20, n).astype(np.int64)
    instance = np.arange(n, dtype=np.int64)  # a unique id per point: follows the point through any index
    return PreparedScene("scene9999_00", coord, color, superpoint, semantic, instance)


def test_color_mapping_exact() -> None:
    color = np.array([[0, 255, 51], [127, 128, 1]], dtype=np.uint8)
    out = map_colors(color)
    assert out.dtype == np.float32
    assert out[0, 0] == -1.0 and out[0, 1] == 1.0
    expected = np.array([[0, 255, 51], [127, 128, 1]], dtype=np.float32) / np.float32(127.5) - np.float32(1)
    assert np.array_equal(out, expected)
    assert np.allclose(out[0, 2], 51 / 127.5 - 1, atol=1e-7)


def test_val_transform_exact_and_deterministic() -> None:
    scene = make_scene(500)
    out = ValTransform(scale=50)(scene, np.random.default_rng(1))
    again = ValTransform(scale=50)(scene, np.random.default_rng(2))
    for key in out:
        assert np.array_equal(out[key], again[key]), key
    assert np.array_equal(out["xyz_middle"], scene.coord)
    expected_xyz = scene.coord.astype(np.float64) * 50
    expected_xyz = (expected_xyz - expected_xyz.min(0)).astype(np.float32)
    assert np.array_equal(out["xyz"], expected_xyz)
    assert np.array_equal(out["xyz"].min(0), np.zeros(3, dtype=np.float32))
    assert np.array_equal(out["color"], map_colors(scene.color))
    for key in ("superpoint", "semantic", "instance"):
        assert np.array_equal(out[key], getattr(scene, key))
    assert np.array_equal(out["point_index"], np.arange(500))


def test_train_transform_keeps_every_array_aligned() -> None:
    scene = make_scene(4000)
    transform = TrainTransform(max_npoint=1500)
    out = transform(scene, np.random.default_rng(11))
    assert {len(v) for v in out.values()} == {1500}
    p = out["point_index"]
    assert len(np.unique(p)) == 1500 and np.all(np.diff(p) > 0)
    assert np.array_equal(out["instance"], scene.instance[p])  # instance ids are never renumbered
    assert np.array_equal(out["semantic"], scene.semantic[p])
    assert np.array_equal(out["superpoint"], np.unique(scene.superpoint[p], return_inverse=True)[1])
    assert out["superpoint"].max() + 1 == len(np.unique(scene.superpoint[p]))
    # Replay the generator: the affine matrix is drawn first, then the colour offset.
    replay = np.random.default_rng(11)
    m = affine_matrix(replay)
    offset = color_offset(replay)
    assert np.allclose(out["xyz_middle"], (scene.coord.astype(np.float64) @ m)[p], atol=1e-5)
    assert np.allclose(out["color"], map_colors(scene.color)[p] + offset, atol=1e-6)


def test_train_without_elastic_is_scaled_affine() -> None:
    scene = make_scene(800)
    out = TrainTransform(elastic=False, max_npoint=None)(scene, np.random.default_rng(5))
    expected = out["xyz_middle"].astype(np.float64) * 50
    expected -= expected.min(0)
    assert np.allclose(out["xyz"], expected, atol=1e-3)


def test_elastic_distorts_only_voxel_coordinates() -> None:
    scene = make_scene(2000)
    with_el = TrainTransform(max_npoint=None)(scene, np.random.default_rng(3))
    without = TrainTransform(elastic=False, max_npoint=None)(scene, np.random.default_rng(3))
    assert np.array_equal(with_el["xyz_middle"], without["xyz_middle"])
    assert np.array_equal(with_el["color"], without["color"])
    disp = np.abs(with_el["xyz"] - without["xyz"])
    assert disp.mean() > 1.0  # voxel units: the two stages move points by several voxels on average


def test_same_seed_same_output_different_seed_differs() -> None:
    scene = make_scene(3000)
    t = TrainTransform(max_npoint=2000)
    a, b, c = (t(scene, np.random.default_rng(s)) for s in (7, 7, 8))
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert not np.array_equal(a["xyz_middle"], c["xyz_middle"])
    assert not np.array_equal(a["point_index"], c["point_index"])


def test_affine_jitter_statistics() -> None:
    rng = np.random.default_rng(0)
    e = np.stack([affine_matrix(rng, flip=False, rotate=False) for _ in range(4000)]) - np.eye(3)
    assert np.abs(e.mean(0)).max() < 0.01
    assert np.all(np.abs(e.std(0) - 0.1) < 0.01)


def test_rotation_is_about_z_and_uniform() -> None:
    rng = np.random.default_rng(1)
    mats = np.stack([affine_matrix(rng, jitter_std=0.0, flip=False) for _ in range(4000)])
    for m in mats[:20]:
        assert np.allclose(m @ m.T, np.eye(3)) and math.isclose(np.linalg.det(m), 1.0)
        assert np.allclose(m[2], [0, 0, 1]) and np.allclose(m[:, 2], [0, 0, 1])
    theta = np.arctan2(mats[:, 0, 1], mats[:, 0, 0])  # row 0 is (cos, sin, 0)
    quadrant = np.floor((theta % (2 * np.pi)) / (np.pi / 2)).astype(int)
    assert np.all(np.abs(np.bincount(quadrant, minlength=4) / 4000 - 0.25) < 0.03)


def test_flip_parity_and_clean_flip() -> None:
    signs = [affine_matrix(np.random.default_rng(s), jitter_std=0.0, rotate=False)[0, 0] for s in range(2000)]
    assert set(signs) == {-1.0, 1.0}
    assert abs(np.mean(np.array(signs) < 0) - 0.5) < 0.04
    flipped = 0
    for s in range(50):
        ref = affine_matrix(np.random.default_rng(s), flip=False, rotate=False)
        par = affine_matrix(np.random.default_rng(s), flip=True, rotate=False)
        clean = affine_matrix(np.random.default_rng(s), flip=True, rotate=False, clean_flip=True)
        if par[0, 0] != ref[0, 0]:
            flipped += 1
            # Parity: only the x->x entry changes sign; clean: the whole x column.
            assert par[0, 0] == -ref[0, 0] and np.array_equal(np.delete(par.ravel(), 0), np.delete(ref.ravel(), 0))
            assert np.array_equal(clean[:, 0], -ref[:, 0]) and np.array_equal(clean[:, 1:], ref[:, 1:])
        else:
            assert np.array_equal(par, ref) and np.array_equal(clean, ref)
    assert 10 < flipped < 40


def test_smooth_noise_kernel() -> None:
    grid = np.zeros((9, 9, 9), dtype=np.float32)
    grid[4, 4, 4] = 1.0
    out = smooth_noise(grid)
    k = np.array([1, 2, 3, 2, 1], dtype=np.float64) / 9  # a length-3 box applied twice per axis
    expected = np.zeros((9, 9, 9))
    expected[2:7, 2:7, 2:7] = np.einsum("i,j,k->ijk", k, k, k)
    assert out.dtype == np.float32
    assert np.allclose(out, expected, atol=1e-7)
    # Zero padding, pass by pass: a corner delta becomes (1/3, 1/3) then (2/9, 2/9, 1/9) along each axis.
    corner = np.zeros((5, 5, 5), dtype=np.float32)
    corner[0, 0, 0] = 1.0
    edge = np.array([2, 2, 1], dtype=np.float64) / 9
    expected = np.zeros((5, 5, 5))
    expected[:3, :3, :3] = np.einsum("i,j,k->ijk", edge, edge, edge)
    assert np.allclose(smooth_noise(corner), expected, atol=1e-7)


def test_elastic_grid_shape_and_interpolation() -> None:
    xyz = np.array([[13.0, -25.9, 0.0], [-5.0, 3.0, 2.0]])
    assert elastic_grid_shape(xyz, 6.0) == (2 + 3, 4 + 3, 0 + 3)
    noise = np.random.default_rng(0).standard_normal((4, 5, 3, 3)).astype(np.float32)
    gran = 6.0
    nodes = [np.linspace(-(b - 1) * gran, (b - 1) * gran, b) for b in noise.shape[:3]]
    assert np.allclose(np.diff(nodes[1]), 2 * gran)
    at = np.array([[nodes[0][1], nodes[1][3], nodes[2][0]]])
    assert np.allclose(elastic_displacement(at, noise, gran), noise[1, 3, 0][None], atol=1e-6)
    mid = np.array([[(nodes[0][1] + nodes[0][2]) / 2, nodes[1][3], nodes[2][2]]])
    assert np.allclose(elastic_displacement(mid, noise, gran), (noise[1, 3, 2] + noise[2, 3, 2]) / 2, atol=1e-6)
    outside = np.array([[nodes[0][-1] + 1.0, 0.0, 0.0]])
    assert np.array_equal(elastic_displacement(outside, noise, gran), np.zeros((1, 3)))


def test_elastic_displacement_bounded_and_smooth() -> None:
    rng = np.random.default_rng(4)
    xyz = rng.uniform(-150, 150, (3000, 3))
    gran, mag = 6.0, 40.0
    moved = elastic_distortion(xyz, gran, mag, np.random.default_rng(9))
    noise = elastic_noise(elastic_grid_shape(xyz, gran), np.random.default_rng(9))
    disp = moved - xyz
    assert np.allclose(disp, mag * elastic_displacement(xyz, noise, gran))  # replayed exactly
    assert np.abs(disp).max() <= mag * np.abs(noise).max() + 1e-9
    assert np.abs(noise).max() < 1.0  # smoothing averages 125 normals: far below N(0, 1)'s range
    # Smooth: points 0.5 voxel apart move almost alike; far-apart points move independently.
    near = mag * elastic_displacement(xyz + 0.5, noise, gran)
    far = disp[rng.permutation(len(disp))]
    step = np.abs(near - disp).mean()
    assert step < 0.1 * np.abs(far - disp).mean()


def test_subsample_index() -> None:
    assert subsample_index(10, 10, np.random.default_rng(0)) is None
    idx = subsample_index(100, 30, np.random.default_rng(0))
    assert idx is not None and len(np.unique(idx)) == 30 and idx.min() >= 0 and idx.max() < 100
    assert np.all(np.diff(idx) > 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_augmented_batch_stays_inside_voxel_grid(seed: int) -> None:
    scenes = [make_scene(3000, seed=seed), make_scene(2000, seed=seed + 10, extent=6.0)]
    outs = [TrainTransform(max_npoint=2500)(s, np.random.default_rng(seed + i)) for i, s in enumerate(scenes)]
    for out in outs:
        assert out["xyz"].min() >= 0.0
    xyz = torch.cat([torch.from_numpy(o["xyz"]) for o in outs])
    feats = torch.cat([torch.from_numpy(np.concatenate([o["color"], o["xyz_middle"]], 1)) for o in outs])
    batch = torch.cat([torch.full((len(o["xyz"]),), i) for i, o in enumerate(outs)])
    vox = voxelize(xyz, feats, batch)
    assert bool((vox.coords[:, 1:] >= 0).all())
    assert bool((vox.coords[:, 1:] < torch.tensor(vox.spatial_shape, dtype=torch.int32)).all())
    assert max(vox.spatial_shape) > 128  # 6 m at 2 cm voxels exceeds the minimum shape


def test_train_transform_needs_a_generator() -> None:
    with pytest.raises(TypeError, match="Generator"):
        TrainTransform()(make_scene(10), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TrainTransform(max_npoint=0)
