"""The composed scene transforms of RG-SAN and MDIN: training (data spec §9.1) and validation (§9.2).

A transform maps a :class:`~datasets.scannet.scene.PreparedScene` and the item's
``numpy.random.Generator`` to a dict of per-point arrays, all with the same first dimension and the
same point order (:data:`POINT_KEYS`):

=============== ================ ==========================================================================
key             shape, dtype     meaning
=============== ================ ==========================================================================
``xyz``         (N, 3) float32   voxel units (metres x scale, elastic-distorted at training), min 0 per axis
``xyz_middle``  (N, 3) float32   metres: the augmented (jittered, flipped, rotated) centred coordinates;
                                 the network's position feature, superpoint centres and ``gt_center``
``color``       (N, 3) float32   ``rgb / 127.5 - 1`` plus the scene's colour offset at training
``superpoint``  (N,) int64       compacted to 0..S-1 after subsampling (absent if the scene has none)
``semantic``    (N,) int64       ScanNet-20 id or -100, unchanged
``instance``    (N,) int64       ScanNet object id or -1, never renumbered (spec D12)
``point_index`` (N,) int64       index of the point in the prepared scene (identity when nothing is dropped)
=============== ================ ==========================================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from datasets.scannet.scene import PreparedScene
from datasets.transforms.augment import (
    ELASTIC_STAGES,
    affine_matrix,
    color_offset,
    elastic_distortion,
    map_colors,
    subsample_index,
)

POINT_KEYS: tuple[str, ...] = ("xyz", "xyz_middle", "color", "superpoint", "semantic", "instance", "point_index")
DEFAULT_SCALE = 50.0
DEFAULT_MAX_NPOINT = 250_000


def _base_arrays(scene: PreparedScene) -> dict[str, np.ndarray]:
    """The scene's label arrays plus the identity ``point_index``; coordinates and colours are added by callers."""
    out = {"semantic": np.asarray(scene.semantic, dtype=np.int64),
           "instance": np.asarray(scene.instance, dtype=np.int64),
           "point_index": np.arange(scene.num_points, dtype=np.int64)}
    if scene.superpoint is not None:
        out["superpoint"] = np.asarray(scene.superpoint, dtype=np.int64)
    return out


def shift_to_origin(xyz: np.ndarray) -> np.ndarray:
    """Subtract the per-axis minimum so every voxel coordinate is >= 0 (§9.1 step 5); float32 out."""
    xyz = np.asarray(xyz, dtype=np.float64)
    if len(xyz):
        xyz = xyz - xyz.min(0)
    return xyz.astype(np.float32)


def select_points(arrays: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """Apply one point index to every per-point array; re-compact superpoint ids to 0..S'-1 (§9.1 step 6).

    Instance ids are kept as they are: ``instance == object_id`` must stay the ground truth.
    """
    out = {key: value[index] for key, value in arrays.items()}
    if "superpoint" in out:
        out["superpoint"] = np.unique(out["superpoint"], return_inverse=True)[1].reshape(-1).astype(np.int64)
    return out


class ValTransform:
    """Validation / test transform (§9.2): no augmentation, every point kept in its original order.

    ``xyz_middle`` is the stored centred coordinate, ``xyz = coord * scale`` shifted to minimum 0, and
    the colour is ``rgb / 127.5 - 1``. Deterministic: the generator is accepted and ignored.

    Args:
        scale: voxels per metre (50 gives 2 cm voxels).
    """

    def __init__(self, scale: float = DEFAULT_SCALE) -> None:
        self.scale = float(scale)

    def __call__(self, scene: PreparedScene, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        arrays = _base_arrays(scene)
        coord = np.asarray(scene.coord, dtype=np.float32)
        arrays["xyz_middle"] = coord.copy()
        arrays["xyz"] = shift_to_origin(coord.astype(np.float64) * self.scale)
        arrays["color"] = map_colors(scene.color)
        return arrays

    def __repr__(self) -> str:
        return f"ValTransform(scale={self.scale})"


class TrainTransform:
    """RG-SAN / MDIN training transform (§9.1), in this order and with this draw order from ``rng``:

    1. affine ``xyz_middle = coord @ M`` (jitter, flip, z-rotation; see :func:`affine_matrix`);
    2. colour ``rgb / 127.5 - 1`` plus one N(0, ``color_std``^2) offset per channel (also when ``aug`` is off);
    3. ``xyz = xyz_middle * scale`` (voxel units);
    4. elastic distortion of ``xyz`` only, once per stage of ``elastic_stages`` (voxel units);
    5. shift ``xyz`` to per-axis minimum 0;
    6. random subsample to ``max_npoint`` points (every per-point array, superpoints re-compacted).

    Args:
        scale: voxels per metre.
        aug: apply step 1 (False: ``xyz_middle = coord``, 3D-STMN's setting).
        jitter_std: std of the affine jitter.
        flip: random sign on M[0][0] (or on the x column with ``clean_flip``).
        rotate: random z-rotation.
        clean_flip: exact mirror instead of the original's approximate one (spec D24).
        color_std: std of the per-scene colour offset (0 disables it).
        elastic: apply step 4.
        elastic_stages: (granularity, magnitude) pairs in voxel units.
        max_npoint: subsample above this many points; None keeps all.
    """

    def __init__(self, scale: float = DEFAULT_SCALE, aug: bool = True, jitter_std: float = 0.1, flip: bool = True,
                 rotate: bool = True, clean_flip: bool = False, color_std: float = 0.1, elastic: bool = True,
                 elastic_stages: Sequence[Sequence[float]] = ELASTIC_STAGES,
                 max_npoint: int | None = DEFAULT_MAX_NPOINT) -> None:
        if max_npoint is not None and max_npoint < 1:
            raise ValueError(f"max_npoint must be >= 1 or None, got {max_npoint}")
        self.scale = float(scale)
        self.aug = aug
        self.jitter_std = float(jitter_std)
        self.flip = flip
        self.rotate = rotate
        self.clean_flip = clean_flip
        self.color_std = float(color_std)
        self.elastic = elastic
        self.elastic_stages = tuple((float(g), float(m)) for g, m in elastic_stages)
        self.max_npoint = max_npoint

    def __call__(self, scene: PreparedScene, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if not isinstance(rng, np.random.Generator):
            raise TypeError("TrainTransform needs a numpy.random.Generator (never the global np.random state)")
        arrays = _base_arrays(scene)
        coord = np.asarray(scene.coord, dtype=np.float64)
        if self.aug:
            m = affine_matrix(rng, self.jitter_std, self.flip, self.rotate, self.clean_flip)
            xyz_middle = coord @ m
        else:
            xyz_middle = coord
        color = map_colors(scene.color)
        if self.color_std > 0:
            color = color + color_offset(rng, self.color_std)
        xyz = xyz_middle * self.scale
        if self.elastic:
            for gran, mag in self.elastic_stages:
                xyz = elastic_distortion(xyz, gran, mag, rng)
        arrays["xyz"] = shift_to_origin(xyz)
        arrays["xyz_middle"] = xyz_middle.astype(np.float32)
        arrays["color"] = color.astype(np.float32)
        if self.max_npoint is not None:
            index = subsample_index(scene.num_points, self.max_npoint, rng)
            if index is not None:
                arrays = select_points(arrays, index)
        return arrays

    def __repr__(self) -> str:
        return (f"TrainTransform(scale={self.scale}, aug={self.aug}, jitter_std={self.jitter_std}, flip={self.flip}, "
                f"rotate={self.rotate}, clean_flip={self.clean_flip}, color_std={self.color_std}, "
                f"elastic={self.elastic}, elastic_stages={self.elastic_stages}, max_npoint={self.max_npoint})")
