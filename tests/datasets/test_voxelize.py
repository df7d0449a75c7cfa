"""Voxelisation (data spec §9.1 step 7) against a naive Python-loop reference."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from datasets.transforms.voxelize import spatial_shape_of, voxelize


def naive_voxelize(xyz: torch.Tensor, feats: torch.Tensor, batch: torch.Tensor):
    """Reference: a dict from (b, x, y, z) to the points in it; voxels in lexicographic key order."""
    groups: dict[tuple[int, int, int, int], list[int]] = defaultdict(list)
    for i in range(xyz.shape[0]):
        key = (int(batch[i]), *(int(torch.floor(xyz[i, a])) for a in range(3)))
        groups[key].append(i)
    keys = sorted(groups)
    coords = torch.tensor(keys, dtype=torch.int32).reshape(-1, 4)
    means = torch.stack([feats[groups[k]].double().mean(0) for k in keys])
    p2v = torch.empty(xyz.shape[0], dtype=torch.long)
    for v, k in enumerate(keys):
        p2v[groups[k]] = v
    counts = torch.tensor([len(groups[k]) for k in keys])
    return coords, means, p2v, counts


def random_points(n: int, b: int, extent: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(n, 3, generator=g) * extent
    feats = torch.randn(n, 6, generator=g)
    batch = torch.randint(0, b, (n,), generator=g)
    return xyz, feats, batch


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_loop(seed: int) -> None:
    xyz, feats, batch = random_points(3000, 3, 12.0, seed)  # ~1700 voxels, many with several points
    vox = voxelize(xyz, feats, batch)
    coords, means, p2v, counts = naive_voxelize(xyz, feats, batch)
    assert vox.coords.dtype == torch.int32
    assert torch.equal(vox.coords, coords)
    assert torch.equal(vox.p2v, p2v)
    assert torch.equal(vox.counts, counts)
    assert torch.allclose(vox.feats.double(), means, atol=1e-6)
    assert vox.spatial_shape == (128, 128, 128)


def test_hand_case_means_and_maps() -> None:
    xyz = torch.tensor([[0.2, 0.3, 0.9], [0.7, 0.1, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [3.99, 2.0, 1.5]])
    feats = torch.tensor([[1.0, 10.0], [3.0, 20.0], [5.0, 5.0], [7.0, 7.0], [9.0, 9.0]])
    batch = torch.tensor([0, 0, 0, 1, 1])
    vox = voxelize(xyz, feats, batch)
    assert vox.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [1, 3, 2, 1]]
    assert vox.feats.tolist() == [[2.0, 15.0], [5.0, 5.0], [7.0, 7.0], [9.0, 9.0]]
    assert vox.p2v.tolist() == [0, 0, 1, 2, 3]
    assert vox.counts.tolist() == [2, 1, 1, 1]
    # CSR voxel -> points, stable inside a voxel.
    assert vox.v2p_offsets.tolist() == [0, 2, 3, 4, 5]
    assert vox.v2p_index.tolist() == [0, 1, 2, 3, 4]
    # Scattering back gives each point its voxel's mean.
    assert vox.feats[vox.p2v][0].tolist() == [2.0, 15.0]


def test_csr_inverse_of_p2v() -> None:
    xyz, feats, batch = random_points(500, 2, 5.0, 7)
    vox = voxelize(xyz, feats, batch)
    for v in range(vox.coords.shape[0]):
        pts = vox.v2p_index[vox.v2p_offsets[v]:vox.v2p_offsets[v + 1]]
        assert len(pts) == vox.counts[v]
        assert bool((vox.p2v[pts] == v).all())
        assert bool((pts[1:] > pts[:-1]).all())


def test_scenes_are_contiguous_in_batch_order() -> None:
    xyz, feats, batch = random_points(800, 4, 20.0, 3)
    vox = voxelize(xyz, feats, batch)
    b = vox.coords[:, 0]
    assert bool((b[1:] >= b[:-1]).all())
    assert bool((vox.coords[vox.p2v, 0].long() == batch).all())


def test_spatial_shape_clipping() -> None:
    xyz = torch.tensor([[300.5, 2.0, 127.0], [0.0, 0.0, 0.0]])
    vox = voxelize(xyz, torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    assert vox.spatial_shape == (301, 128, 128)  # 300 + 1; 2 + 1 -> 128; 127 + 1 = 128
    vox = voxelize(torch.tensor([[10.0, 130.2, 128.0]]), torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))
    assert vox.spatial_shape == (128, 131, 129)
    assert spatial_shape_of(torch.tensor([[0, 5, 5, 5]]), min_size=4) == (6, 6, 6)
    assert spatial_shape_of(torch.tensor([[0, 1, 1, 1]]), min_size=4) == (4, 4, 4)


def test_rejects_negative_and_mismatched_input() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        voxelize(torch.tensor([[-0.5, 0.0, 0.0]]), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="rows"):
        voxelize(torch.zeros(3, 3), torch.zeros(2, 2), torch.zeros(3, dtype=torch.long))


def test_empty_input() -> None:
    vox = voxelize(torch.zeros(0, 3), torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
    assert vox.coords.shape == (0, 4) and vox.feats.shape == (0, 6) and vox.p2v.shape == (0,)
    assert vox.v2p_offsets.tolist() == [0]
    assert vox.spatial_shape == (128, 128, 128)


def test_to_device_keeps_content() -> None:
    xyz, feats, batch = random_points(100, 2, 4.0, 1)
    vox = voxelize(xyz, feats, batch)
    moved = vox.to("cpu")
    assert torch.equal(moved.coords, vox.coords) and moved.spatial_shape == vox.spatial_shape
