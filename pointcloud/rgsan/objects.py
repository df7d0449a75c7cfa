"""Object context for the decoder: what each superpoint's whole object is, recognised at object level.

Not part of the published RG-SAN (model flag ``object_context``, off by default; docs/rgsan.md). The published
model gets object-level knowledge from a U-Net pretrained for instance segmentation; with a U-Net trained from
scratch for a few hundred steps, one superpoint (a chair's seat, a table's top) says little about the class of
its object, while the object's size and height say a lot. So superpoints are grouped into objects, each group is
described by its mean U-Net feature and hand-made geometry, a small head classifies it (``loss_object_class``
against the group's majority label), and every superpoint's decoder input gets its group's class probabilities
and geometry.

Groups: in training the annotated instances (teacher forcing: clean objects, clean labels); otherwise the
affinity head's groups (:func:`pointcloud.rgsan.affinity.group_superpoints`), which are what a user's scan has.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pointcloud.superpoint_pool import superpoint_counts, superpoint_pool

OBJECT_GEOMETRY_DIM = 9


def instance_groups(sp_ins_label: Tensor, sp_offsets: Tensor) -> Tensor:
    """(S,) int64 group per superpoint from the annotated instances, numbered 0..G-1 over the batch.

    Args:
        sp_ins_label: (S,) int64 majority instance of each superpoint (ids are per scene), -1 for none.
        sp_offsets: (B + 1,) superpoint offsets per scene.

    Superpoints without an instance are groups of their own; equal ids in different scenes are different groups.
    """
    num = sp_ins_label.shape[0]
    scene = torch.searchsorted(sp_offsets[1:].to(sp_ins_label.device),
                               torch.arange(num, device=sp_ins_label.device), right=True)
    own = -1 - torch.arange(num, device=sp_ins_label.device)
    span = int(sp_ins_label.max()) + 2 if num else 1
    key = torch.where(sp_ins_label >= 0, scene * span + sp_ins_label, own)
    return torch.unique(key, return_inverse=True)[1]


def object_geometry(feat: Tensor, group_of_point: Tensor, point_scene: Tensor, num_groups: int) -> Tensor:
    """Hand-made descriptors of every group from its points (no learning).

    Args:
        feat: (P, 6) ``[colour in [-1, 1], xyz_middle in metres, z-up]``.
        group_of_point: (P,) int64 group of each point in [0, G); point_scene: (P,) int64 scene of each point.

    Returns:
        (G, 9): mean colour (3); bottom and top height above the scene's lowest point (2); the square roots of the
        two eigenvalues of the horizontal covariance, larger first (2: an oriented length and width, invariant to
        rotation about z); the vertical standard deviation (1); log point count / 10 (1). Metres except colour.
    """
    colour, xyz = feat[:, :3], feat[:, 3:6]
    num_scenes = int(point_scene.max()) + 1 if point_scene.numel() else 0
    floor = xyz.new_full((num_scenes,), float("inf")).scatter_reduce(0, point_scene, xyz[:, 2], "amin")
    height = xyz[:, 2] - floor[point_scene]
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    moments = torch.stack([x, y, z, x * x, y * y, x * y, z * z], 1)
    mean = superpoint_pool(torch.cat([colour, moments], 1), group_of_point, num_groups)
    mx, my, mz, mxx, myy, mxy, mzz = mean[:, 3:].unbind(1)
    cxx, cyy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    # Eigenvalues of [[cxx, cxy], [cxy, cyy]] in closed form.
    half_trace = (cxx + cyy) / 2
    root = (((cxx - cyy) / 2) ** 2 + cxy ** 2).clamp_min(0).sqrt()
    major, minor = (half_trace + root).clamp_min(0).sqrt(), (half_trace - root).clamp_min(0).sqrt()
    vertical = (mzz - mz * mz).clamp_min(0).sqrt()
    bottom = height.new_full((num_groups,), float("inf")).scatter_reduce(0, group_of_point, height, "amin")
    top = height.new_full((num_groups,), float("-inf")).scatter_reduce(0, group_of_point, height, "amax")
    count = superpoint_counts(group_of_point, num_groups).to(feat.dtype)
    bottom = torch.where(count > 0, bottom, torch.zeros_like(bottom))
    top = torch.where(count > 0, top, torch.zeros_like(top))
    size = count.clamp_min(1).log() / 10
    return torch.cat([mean[:, :3], torch.stack([bottom, top, major, minor, vertical, size], 1)], 1)


class ObjectContext(nn.Module):
    """Classify groups of superpoints and give each superpoint its group's class probabilities and geometry.

    Args:
        sp_channels: C, width of the pooled U-Net superpoint features.
        num_classes: K, the semantic classes (the same as the superpoint semantic head's).
        hidden: width of the classifier MLP.
    """

    def __init__(self, sp_channels: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.classifier = nn.Sequential(
            nn.Linear(sp_channels + OBJECT_GEOMETRY_DIM, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    @property
    def out_channels(self) -> int:
        """Width appended to every superpoint: K class probabilities + the group geometry."""
        return self.num_classes + OBJECT_GEOMETRY_DIM

    def forward(self, sp_feats: Tensor, groups: Tensor, feat: Tensor, superpoint: Tensor,
                point_scene: Tensor) -> tuple[Tensor, Tensor]:
        """Recognise the groups.

        Args:
            sp_feats: (S, C) pooled superpoint features; groups: (S,) int64 group per superpoint in [0, G);
            feat: (P, 6) the batch's ``[colour, xyz_middle]``; superpoint: (P,) global ids; point_scene: (P,).

        Returns:
            ``(context, logits)``: (S, K + 9) each superpoint's group class probabilities and geometry, and
            (G, K) the class logits of every group.
        """
        num = int(groups.max()) + 1 if groups.numel() else 0
        geometry = object_geometry(feat, groups[superpoint], point_scene, num)
        # Each superpoint counts by its points: a group's feature is the mean over its points, like its geometry.
        weight = superpoint_counts(superpoint, sp_feats.shape[0]).to(sp_feats.dtype)[:, None]
        mean = superpoint_pool(sp_feats * weight, groups, num) / superpoint_pool(weight, groups, num).clamp_min(1e-6)
        logits = self.classifier(torch.cat([mean, geometry], 1))
        context = torch.cat([logits.softmax(-1), geometry], 1)[groups]
        return context, logits
