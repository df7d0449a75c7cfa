"""Point-cloud augmentations of the RG-SAN / MDIN training transform (data spec §9.1).

Every function takes an explicit ``numpy.random.Generator``; nothing here touches the global
``np.random`` state, so forked DataLoader workers can never share a stream (rgsan-mdin spec D14).

Frames:
- ``coord`` / ``xyz_middle``: (N, 3) metres, scene-centred, z-up.
- ``xyz``: (N, 3) voxel units (metres x scale; scale 50 gives 2 cm voxels).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.interpolate import RegularGridInterpolator

# Elastic stages of PointGroup / SoftGroup / SPFormer (granularity, magnitude), in voxel units.
ELASTIC_STAGES: tuple[tuple[float, float], ...] = ((6.0, 40.0), (20.0, 160.0))


def map_colors(color: np.ndarray) -> np.ndarray:
    """Map uint8 RGB (N, 3) to float32 ``rgb / 127.5 - 1`` in [-1, 1] (data spec §2)."""
    return np.asarray(color, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def z_rotation(theta: float) -> np.ndarray:
    """(3, 3) float64 rotation about z, for row vectors: rows (cos, sin, 0), (-sin, cos, 0), (0, 0, 1)."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float64)


def affine_matrix(rng: np.random.Generator, jitter_std: float = 0.1, flip: bool = True, rotate: bool = True,
                  clean_flip: bool = False) -> np.ndarray:
    """Draw the (3, 3) float64 matrix M of §9.1 step 1; apply it as ``xyz_middle = coord @ M``.

    Draw order (fixed, so a seed reproduces a matrix): jitter E (3x3 normals), flip sign, angle.

    Args:
        rng: the item's generator.
        jitter_std: std of the i.i.d. N(0, std^2) entries added to the identity (0 disables the jitter).
        flip: multiply by a random sign with p = 0.5.
        rotate: right-multiply a z-rotation with theta ~ U[0, 2 pi).
        clean_flip: False (parity, D24) flips only the entry M[0][0] of the jittered matrix, an
            approximate mirror; True negates the whole x column, an exact mirror of the output x.
    """
    m = np.eye(3, dtype=np.float64)
    if jitter_std > 0:
        m = m + rng.normal(0.0, jitter_std, size=(3, 3))
    if flip:
        sign = 1.0 if rng.random() < 0.5 else -1.0
        if clean_flip:
            m[:, 0] *= sign
        else:
            m[0, 0] *= sign
    if rotate:
        m = m @ z_rotation(rng.uniform(0.0, 2.0 * math.pi))
    return m


def color_offset(rng: np.random.Generator, std: float = 0.1) -> np.ndarray:
    """One N(0, std^2) offset per RGB channel for the whole scene, (3,) float32 (§9.1 step 2, no clipping)."""
    return rng.normal(0.0, std, size=3).astype(np.float32)


def elastic_grid_shape(xyz: np.ndarray, gran: float) -> tuple[int, int, int]:
    """Noise-grid nodes per axis: ``floor(max |xyz| / gran) + 3`` (xyz in voxel units).

    The original computes ``int32(max |xyz|) // gran``, the same number for the integer granularities
    (6, 20) of both stages.
    """
    extent = np.abs(xyz).max(0) if len(xyz) else np.zeros(3)
    b0, b1, b2 = (int(v) + 3 for v in np.floor(extent / gran))
    return b0, b1, b2


def smooth_noise(grid: np.ndarray) -> np.ndarray:
    """Box-filter a 3-D grid with weights (1/3, 1/3, 1/3) along axis 0, 1, 2, and that sequence twice.

    Zero padding outside the grid (``mode='constant'``), exactly like the original's six
    ``ndimage.convolve`` calls with (3,1,1), (1,3,1), (1,1,3) kernels; float32 in, float32 out.
    """
    box = np.full(3, 1.0 / 3.0, dtype=np.float32)
    out = np.asarray(grid, dtype=np.float32)
    for _ in range(2):
        for axis in range(3):
            out = ndimage.convolve1d(out, box, axis=axis, mode="constant", cval=0.0)
    return out


def elastic_noise(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Three independent smoothed N(0, 1) float32 grids stacked as (b0, b1, b2, 3): one per displacement axis."""
    grids = [smooth_noise(rng.standard_normal(shape).astype(np.float32)) for _ in range(3)]
    return np.stack(grids, axis=-1)


def elastic_displacement(xyz: np.ndarray, noise: np.ndarray, gran: float) -> np.ndarray:
    """Trilinear interpolation of ``noise`` (b0, b1, b2, 3) at ``xyz`` (N, 3), giving (N, 3) float64.

    Node k of axis a sits at ``-(b_a - 1) gran + 2 gran k`` (b_a nodes evenly spaced over
    ``[-(b_a - 1) gran, (b_a - 1) gran]``); points outside the grid get 0.
    """
    axes = [np.linspace(-(b - 1) * gran, (b - 1) * gran, b) for b in noise.shape[:3]]
    interp = RegularGridInterpolator(axes, noise.astype(np.float64), method="linear", bounds_error=False,
                                     fill_value=0.0)
    return interp(np.asarray(xyz, dtype=np.float64)) if len(xyz) else np.zeros((0, 3))


def elastic_distortion(xyz: np.ndarray, gran: float, mag: float, rng: np.random.Generator) -> np.ndarray:
    """PointGroup's elastic distortion of voxel coordinates (§9.1 step 4): ``xyz + mag * disp(xyz)``.

    Args:
        xyz: (N, 3) voxel units, centred (the grid is symmetric about 0).
        gran: node half-spacing in voxel units (nodes are ``2 * gran`` apart).
        mag: magnitude in voxel units per unit of smoothed noise.
        rng: draws the three N(0, 1) grids.

    Returns:
        (N, 3) float64 distorted voxel coordinates.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    noise = elastic_noise(elastic_grid_shape(xyz, gran), rng)
    return xyz + mag * elastic_displacement(xyz, noise, gran)


def subsample_index(n: int, max_npoint: int, rng: np.random.Generator) -> np.ndarray | None:
    """Uniform random subset of ``max_npoint`` of ``n`` points without replacement, or None to keep all.

    The kept indices are sorted, so subsampled points stay in their original relative order (the
    original leaves them permuted; sorting changes no statistic and makes the map back to the
    original points monotone).
    """
    if n <= max_npoint:
        return None
    return np.sort(rng.choice(n, size=max_npoint, replace=False))
