"""Mean-pooling voxelisation in plain PyTorch (data spec §9.1 step 7), on any device.

This replaces the CUDA-only voxelisation op of the originals (rgsan-mdin spec D23). Input points are
in voxel units (metres x scale, shifted to per-axis minimum 0), so a point's voxel is the floor of its
coordinates. Voxels are identified by one int64 key per point, ``((b * X + x) * Y + y) * Z + z``, whose
sort order is the lexicographic order of ``[b, x, y, z]``: output voxels are grouped by batch index,
scene after scene, and ``torch.unique`` on a 1-D key is much faster than ``unique(dim=0)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MIN_SPATIAL_SHAPE = 128


@dataclass
class Voxels:
    """Result of :func:`voxelize`.

    Attributes:
        coords: (V, 4) int32 ``[batch, x, y, z]`` integer voxel coordinates, all >= 0, sorted
            lexicographically (so each scene's voxels are contiguous, in batch order).
        feats: (V, C) mean of the features of the points in each voxel (dtype of the point features).
        p2v: (P,) int64 voxel index of every point (scatter voxel features back with ``feats[p2v]``).
        counts: (V,) int64 number of points per voxel.
        v2p_index: (P,) int64 point indices grouped by voxel (stable: ascending point index inside a voxel).
        v2p_offsets: (V + 1,) int64 CSR offsets: voxel v owns ``v2p_index[v2p_offsets[v]:v2p_offsets[v + 1]]``.
        spatial_shape: per-axis ``max coordinate + 1`` over the whole batch, clipped below at 128.
    """

    coords: Tensor
    feats: Tensor
    p2v: Tensor
    counts: Tensor
    v2p_index: Tensor
    v2p_offsets: Tensor
    spatial_shape: tuple[int, int, int]

    def to(self, device: torch.device | str) -> Voxels:
        """Move every tensor to ``device`` (``spatial_shape`` stays a tuple)."""
        return Voxels(self.coords.to(device), self.feats.to(device), self.p2v.to(device), self.counts.to(device),
                      self.v2p_index.to(device), self.v2p_offsets.to(device), self.spatial_shape)


def spatial_shape_of(coords: Tensor, min_size: int = MIN_SPATIAL_SHAPE) -> tuple[int, int, int]:
    """``max(coords[:, 1:]) + 1`` per axis, clipped below at ``min_size`` (128 in the originals)."""
    if coords.shape[0] == 0:
        return (min_size, min_size, min_size)
    top = (coords[:, 1:].max(0).values + 1).clamp_min(min_size).tolist()
    return int(top[0]), int(top[1]), int(top[2])


def voxelize(xyz: Tensor, feats: Tensor, batch_index: Tensor, min_spatial_shape: int = MIN_SPATIAL_SHAPE) -> Voxels:
    """Group points into unit voxels per scene and average their features.

    Args:
        xyz: (P, 3) float, voxel units, every coordinate >= 0 (the transforms shift to minimum 0).
        feats: (P, C) float point features (the 6-channel [colour, xyz_middle] input).
        batch_index: (P,) integer scene index of every point, values in 0..B-1.
        min_spatial_shape: lower clip of ``spatial_shape`` per axis.

    Returns:
        :class:`Voxels`. The features are exact means: sums by ``index_add_`` in the features' dtype
        divided by the point counts.

    Raises:
        ValueError: on mismatched lengths or negative coordinates (a transform that forgot the shift).
    """
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be (P, 3), got {tuple(xyz.shape)}")
    p = xyz.shape[0]
    if feats.shape[0] != p or batch_index.shape != (p,):
        raise ValueError(f"feats {tuple(feats.shape)} and batch_index {tuple(batch_index.shape)} must have "
                         f"{p} rows like xyz")
    device = xyz.device
    grid = torch.floor(xyz).long()
    if p and int(grid.min()) < 0:
        raise ValueError("voxelize needs coordinates >= 0 (shift each scene to per-axis minimum 0 first)")
    b = batch_index.long()
    if p == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return Voxels(torch.zeros(0, 4, dtype=torch.int32, device=device), feats.new_zeros((0, feats.shape[1])),
                      empty, empty, empty, torch.zeros(1, dtype=torch.long, device=device),
                      spatial_shape_of(torch.zeros(0, 4), min_spatial_shape))
    dims = grid.max(0).values + 1  # (3,) key radices; the key fits int64 for any real scene
    key = ((b * dims[0] + grid[:, 0]) * dims[1] + grid[:, 1]) * dims[2] + grid[:, 2]
    unique_key, p2v, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
    # Decode the sorted keys back into [b, x, y, z] (cheaper than gathering one point per voxel).
    z = unique_key % dims[2]
    rest = unique_key // dims[2]
    y = rest % dims[1]
    rest = rest // dims[1]
    x = rest % dims[0]
    bb = rest // dims[0]
    coords = torch.stack([bb, x, y, z], dim=1).to(torch.int32)
    sums = feats.new_zeros((unique_key.shape[0], feats.shape[1])).index_add_(0, p2v, feats)
    mean = sums / counts.to(feats.dtype).unsqueeze(1)
    v2p_index = torch.argsort(p2v, stable=True)
    v2p_offsets = torch.zeros(unique_key.shape[0] + 1, dtype=torch.long, device=device)
    v2p_offsets[1:] = torch.cumsum(counts, 0)
    return Voxels(coords, mean, p2v, counts, v2p_index, v2p_offsets, spatial_shape_of(coords, min_spatial_shape))
