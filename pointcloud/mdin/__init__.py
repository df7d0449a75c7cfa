"""MDIN (ACM MM 2024): generalized 3D referring segmentation with zero, one or many targets (rgsan-mdin spec §6).

Model / criterion / postprocess split: :class:`MDIN` -> :class:`MDINOutputs`; :class:`MDINCriterion` (losses);
:class:`MDINPostprocess` -> :class:`MDINPrediction` (union mask, objects, "no target"). Evaluation:
:class:`grounding.metrics.gres.GeneralizedReferringMaskMetric`.
"""

from pointcloud.mdin.assign import Assignment, assign_targets, object_centres, pair_gt_masks
from pointcloud.mdin.criterion import MDINCriterion
from pointcloud.mdin.fps import batched_fps, farthest_point_sampling
from pointcloud.mdin.model import MDIN, MDINOutputs
from pointcloud.mdin.postprocess import MDINPostprocess, MDINPrediction

__all__ = ["MDIN", "MDINCriterion", "MDINOutputs", "MDINPostprocess", "MDINPrediction", "Assignment",
           "assign_targets", "batched_fps", "farthest_point_sampling", "object_centres", "pair_gt_masks"]
