"""Scene transforms of the 3D tasks: augmentation (data spec §9.1), validation mapping (§9.2), voxelisation.

Transforms are classes called as ``transform(scene, rng)`` with a ``numpy.random.Generator`` that the
dataset derives from (seed, epoch, item); nothing here uses the global ``np.random`` state.
"""

from datasets.transforms.augment import (
    ELASTIC_STAGES,
    affine_matrix,
    color_offset,
    elastic_distortion,
    map_colors,
    z_rotation,
)
from datasets.transforms.pipeline import POINT_KEYS, TrainTransform, ValTransform, select_points, shift_to_origin
from datasets.transforms.voxelize import Voxels, spatial_shape_of, voxelize

__all__ = [
    "ELASTIC_STAGES", "POINT_KEYS", "TrainTransform", "ValTransform", "Voxels", "affine_matrix", "color_offset",
    "elastic_distortion", "map_colors", "select_points", "shift_to_origin", "spatial_shape_of", "voxelize",
    "z_rotation",
]
