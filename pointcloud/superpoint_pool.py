"""Voxel -> point gathering and per-superpoint pooling in plain PyTorch (rgsan-mdin spec §1 steps 1-2, §2.1).

The originals call ``torch_scatter.scatter_mean``; these functions use ``index_add_`` / ``scatter_reduce`` so
they run on any device without an extra compiled package (spec D23). Superpoint ids are *global* over a batch
(scene b's ids are offset by ``sp_offsets[b]``, see :class:`datasets.batch3d.ReferBatch3D`), so one call pools
every scene of the batch; :func:`pad_by_offsets` then lays the result out per scene with a padding mask.

Precision: sums are accumulated in float32 whatever the input dtype (fp16 / bf16 under autocast would lose
digits over the thousands of points of a large superpoint, and fp16 overflows past 65504), and the result is
cast back to the input dtype.

Empty superpoints (an id in ``0..S-1`` that no point carries, e.g. after cropping) pool to 0 for ``mean`` and
``max``, so they are well defined, but their count from :func:`superpoint_counts` is 0 and callers should mask
them rather than treat the zeros as features.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

Reduce = Literal["mean", "max"]


def _check_index(index: Tensor, size: int, rows: int, what: str, index_name: str, validate: bool) -> None:
    if index.ndim != 1 or index.shape[0] != rows:
        raise ValueError(f"{what}: {index_name} must be ({rows},) to match the features, got {tuple(index.shape)}")
    if index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{what}: {index_name} must be an integer tensor, got {index.dtype}")
    # Out-of-range ids would be a device-side assert on CUDA (or a silent wrong row with gathers); name them here.
    if validate and rows > 0:
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= size:
            raise ValueError(f"{what}: {index_name} values span [{low}, {high}] but must lie in [0, {size})")


def superpoint_counts(superpoint: Tensor, num_superpoints: int) -> Tensor:
    """(S,) int64 number of points per superpoint (0 for empty ones).

    Args:
        superpoint: (P,) integer global superpoint id per point, values in ``0..num_superpoints-1``.
        num_superpoints: S, the total number of superpoints in the batch.
    """
    return torch.bincount(superpoint.long(), minlength=num_superpoints)[:num_superpoints]


def superpoint_pool(point_feats: Tensor, superpoint: Tensor, num_superpoints: int, reduce: Reduce = "mean",
                    validate: bool = True) -> Tensor:
    """Pool point features per superpoint: ``S_s = reduce({f_p : superpoint[p] == s})``.

    Used for both the 32-d backbone features (spec §2.1 ``S``) and the superpoint centres (``P``, pooling
    ``xyz_middle`` in metres, not voxel units).

    Args:
        point_feats: (P, C) float point features (any float dtype; autocast fp16 is fine).
        superpoint: (P,) int64 global superpoint id per point, values in ``0..num_superpoints-1``.
        num_superpoints: S, number of output rows (the largest id + 1, or more to keep trailing empty ones).
        reduce: ``"mean"`` (what the originals use) or ``"max"`` (coded but unused in the originals).
        validate: check the id range (one host sync); turn off only in tight loops with trusted ids.

    Returns:
        (S, C) in ``point_feats.dtype``; empty superpoints give 0. Differentiable w.r.t. ``point_feats``.

    Raises:
        ValueError: on shape mismatch, non-integer ids or ids outside ``[0, num_superpoints)``.
    """
    if point_feats.ndim != 2:
        raise ValueError(f"superpoint_pool: point_feats must be (P, C), got {tuple(point_feats.shape)}")
    if num_superpoints < 0:
        raise ValueError(f"superpoint_pool: num_superpoints must be >= 0, got {num_superpoints}")
    _check_index(superpoint, num_superpoints, point_feats.shape[0], "superpoint_pool", "superpoint", validate)
    index = superpoint.long()
    # Accumulate in fp32 (see the module docstring); index_add_ and scatter_reduce are not autocast ops, so
    # the explicit cast is what decides the accumulation dtype.
    src = point_feats.float()
    out = src.new_zeros(num_superpoints, point_feats.shape[1])
    if reduce == "mean":
        out = out.index_add(0, index, src)
        counts = superpoint_counts(index, num_superpoints).clamp_min(1).to(out.dtype)
        out = out / counts[:, None]
    elif reduce == "max":
        # include_self=False: the zero initial values only survive in empty rows (max of negatives stays < 0).
        out = out.scatter_reduce(0, index[:, None].expand_as(src), src, reduce="amax", include_self=False)
    else:
        raise ValueError(f"superpoint_pool: reduce must be 'mean' or 'max', got {reduce!r}")
    return out.to(point_feats.dtype)


def voxel_to_point(voxel_feats: Tensor, p2v: Tensor, validate: bool = True) -> Tensor:
    """Give every point the feature of its voxel (the originals' ``x.features[p2v_map]``).

    Args:
        voxel_feats: (V, C) voxel features, e.g. the output of :class:`pointcloud.backbone.SparseUNet`.
        p2v: (P,) int64 voxel index of every point (``Voxels.p2v``), values in ``0..V-1``.
        validate: check the index range (one host sync).

    Returns:
        (P, C) in ``voxel_feats.dtype``; gradients flow back to the voxels (summed over their points).
    """
    if voxel_feats.ndim != 2:
        raise ValueError(f"voxel_to_point: voxel_feats must be (V, C), got {tuple(voxel_feats.shape)}")
    _check_index(p2v, voxel_feats.shape[0], p2v.shape[0] if p2v.ndim == 1 else -1, "voxel_to_point", "p2v", validate)
    return voxel_feats.index_select(0, p2v.long())


def pad_by_offsets(values: Tensor, offsets: Tensor, pad_value: float = 0.0) -> tuple[Tensor, Tensor]:
    """Lay out rows grouped by scene as a padded batch (spec §2.1: padded to the largest superpoint count).

    Args:
        values: (S, ...) rows of all scenes, scene b owning ``offsets[b]:offsets[b + 1]`` (e.g. the output of
            :func:`superpoint_pool` with global ids, or ``sp_center`` in metres).
        offsets: (B + 1,) int64 exclusive prefix sums, ``offsets[0] == 0`` and ``offsets[-1] == S``.
        pad_value: value written into padding rows.

    Returns:
        ``(padded, valid)``: padded (B, S_max, ...) in ``values.dtype``; valid (B, S_max) bool, False on padding
        (invert it for a transformer key-padding mask, where True means "ignore").
    """
    if offsets.ndim != 1 or offsets.shape[0] < 1:
        raise ValueError(f"pad_by_offsets: offsets must be (B + 1,), got {tuple(offsets.shape)}")
    offsets = offsets.to(device=values.device, dtype=torch.long)
    counts = offsets[1:] - offsets[:-1]
    if int(offsets[0]) != 0 or int(offsets[-1]) != values.shape[0] or bool((counts < 0).any()):
        raise ValueError(f"pad_by_offsets: offsets must rise from 0 to {values.shape[0]} (rows of values), "
                         f"got {offsets.tolist()}")
    b = counts.shape[0]
    s_max = int(counts.max()) if b else 0
    valid = torch.arange(s_max, device=values.device)[None, :] < counts[:, None]
    padded = values.new_full((b, s_max, *values.shape[1:]), pad_value)
    # Row-major order of the True entries of ``valid`` is exactly scene after scene, row after row.
    padded[valid] = values
    return padded, valid


def pool_padded(point_feats: Tensor, superpoint: Tensor, sp_offsets: Tensor, reduce: Reduce = "mean"
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Pool a whole batch per superpoint and lay it out per scene, ready for the decoder or a TokenSet.

    Args:
        point_feats: (P, C) point features of all scenes (or (P, 3) ``xyz_middle`` in metres for centres).
        superpoint: (P,) int64 global superpoint ids (scene b's ids offset by ``sp_offsets[b]``).
        sp_offsets: (B + 1,) int64 superpoint offsets per scene (``ReferBatch3D.sp_offsets``).
        reduce: see :func:`superpoint_pool`.

    Returns:
        ``(feats, counts, valid)``: feats (B, S_max, C) with zero padding, counts (B, S_max) int64 points per
        superpoint (0 on padding and on empty superpoints), valid (B, S_max) bool, False on padding; the
        arguments :meth:`grounding.tokens.TokenSet.from_superpoints` takes.
    """
    total = int(sp_offsets[-1])
    pooled = superpoint_pool(point_feats, superpoint, total, reduce=reduce)
    feats, valid = pad_by_offsets(pooled, sp_offsets)
    counts, _ = pad_by_offsets(superpoint_counts(superpoint, total), sp_offsets)
    return feats, counts, valid


SUPERPOINT_GEOMETRY_DIM = 7


def superpoint_geometry(feat: Tensor, superpoint: Tensor, point_scene: Tensor, num_superpoints: int) -> Tensor:
    """Hand-made descriptors of every superpoint, from its points alone (no learning).

    Args:
        feat: (P, 6) ``[colour in [-1, 1], xyz_middle in metres, z-up]`` (the batch's ``feat``).
        superpoint: (P,) int64 global superpoint id; point_scene: (P,) int64 scene index of each point.

    Returns:
        (S, 7) float: mean colour (3), height of the centre and of the top above the scene's lowest point (2),
        horizontal spread ``sqrt(var x + var y)`` and vertical spread ``std z`` (2), in metres except colour.
        Rotation about z leaves every column unchanged, so the training augmentation does not disturb them.
    """
    colour, xyz = feat[:, :3], feat[:, 3:6]
    num_scenes = int(point_scene.max()) + 1 if point_scene.numel() else 0
    floor = xyz.new_full((num_scenes,), float("inf")).scatter_reduce(0, point_scene, xyz[:, 2], "amin")
    height = xyz[:, 2] - floor[point_scene]
    mean = superpoint_pool(torch.cat([colour, height[:, None], xyz, xyz * xyz], 1), superpoint, num_superpoints)
    top = xyz.new_full((num_superpoints,), float("-inf")).scatter_reduce(0, superpoint, height, "amax")
    var = (mean[:, 7:10] - mean[:, 4:7] ** 2).clamp_min(0)
    spread = torch.stack([(var[:, 0] + var[:, 1]).sqrt(), var[:, 2].sqrt()], 1)
    return torch.cat([mean[:, :4], top.clamp_min(0)[:, None], spread], 1)


def backbone_superpoints(backbone: torch.nn.Module, batch: Any) -> Tensor:
    """Scene side of the 3D referring models: the sparse U-Net once per scene, its voxel features broadcast to
    the points and mean-pooled per superpoint.

    Args:
        backbone: ``(voxel_feats, voxel_coords, spatial_shape, num_scenes) -> (V, C)``
            (:class:`pointcloud.backbone.SparseUNet`).
        batch: a :class:`datasets.batch3d.ReferBatch3D` with superpoints.

    Returns:
        (S_total, C) superpoint features, scenes concatenated in batch order (global superpoint ids).
    """
    voxel = backbone(batch.voxel_feats, batch.voxel_coords, batch.spatial_shape, batch.num_scenes)
    return superpoint_pool(voxel_to_point(voxel, batch.p2v), batch.superpoint, int(batch.sp_offsets[-1]))
