"""Instance grouping of superpoints by predicted instance centres (an addition to RG-SAN, off by default).

RG-SAN's mask head scores every superpoint on its own, so a mask can cover parts of several instances of the
target's class. With ``aux_instance_offsets`` the model also predicts, for each superpoint, the centre of the
instance it belongs to (PointGroup-style offset voting, here on superpoints). Superpoints whose predicted centres
lie within ``radius`` of each other, transitively, form one group; ``RGSANPostprocess(snap_to_instances=True)``
then answers with the group that the mask covers best (point-weighted mean probability), i.e. whole instances.

Frames: all positions are metres in the batch's ``xyz_middle`` frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

from datasets.refer3d import NO_MAJORITY
from pointcloud.superpoint_pool import superpoint_pool


def instance_center_targets(coord: Tensor, instance: Tensor, point_scene: Tensor, sp_ins_label: Tensor,
                            sp_offsets: Tensor) -> tuple[Tensor, Tensor]:
    """Centre (mean of the instance's points) of each superpoint's majority instance.

    Args:
        coord: (P, 3) metres; instance: (P,) int64 object id or -1; point_scene: (P,) int64 scene of each point.
        sp_ins_label: (S,) int64 majority instance of each superpoint (-1 unannotated, ``NO_MAJORITY`` none).
        sp_offsets: (B + 1,) int64 superpoint offsets per scene.

    Returns:
        ``(targets (S, 3), valid (S,) bool)``; ``valid`` is False for superpoints without an annotated majority
        instance (their target row is 0).
    """
    device = coord.device
    num_sp = sp_ins_label.shape[0]
    ok = instance >= 0
    width = (int(instance.max().clamp_min(0)) if instance.numel() else 0) + 1
    keys = point_scene[ok] * width + instance[ok]  # (P_ok,) one key per (scene, instance)
    uniq, inverse = torch.unique(keys, return_inverse=True)
    centres = superpoint_pool(coord[ok], inverse, len(uniq), validate=False)  # the same scatter mean, per instance

    sp_scene = torch.repeat_interleave(torch.arange(len(sp_offsets) - 1, device=device), sp_offsets.diff())
    label = sp_ins_label.to(device)
    sp_keys = sp_scene * width + label
    pos = torch.searchsorted(uniq, sp_keys).clamp_max(max(len(uniq) - 1, 0))
    valid = (label >= 0) & (label != NO_MAJORITY) & (label < width)  # < width: keys never alias another scene
    if len(uniq):
        valid &= uniq[pos] == sp_keys
    targets = torch.zeros(num_sp, 3, dtype=coord.dtype, device=device)
    if bool(valid.any()):
        targets[valid] = centres[pos[valid]]
    return targets, valid


def group_by_centres(centres: Tensor, radius: float) -> Tensor:
    """Connected components of the graph linking superpoints whose predicted centres are within ``radius``.

    Args:
        centres: (S, 3) metres, predicted instance centres of one scene's superpoints.

    Returns:
        (S,) int64 group id of each superpoint: the smallest superpoint index of its component.
    """
    s = centres.shape[0]
    if s == 0:
        return torch.zeros(0, dtype=torch.long, device=centres.device)
    near = torch.cdist(centres.float(), centres.float()) <= radius  # (S, S), reflexive
    labels = torch.arange(s, device=centres.device)
    big = torch.full((s, s), s, dtype=torch.long, device=centres.device)
    # Min-label propagation until stable: at most diameter(graph) rounds, each O(S^2); S ~ 500 per scene.
    while True:
        new = torch.where(near, labels[None, :], big).amin(1)
        if torch.equal(new, labels):
            return labels
        labels = new


def snap_to_groups(prob: Tensor, groups: Tensor, weight: Tensor) -> Tensor:
    """Replace each mask by the one group it covers best.

    Args:
        prob: (D, S) mask probabilities over one scene's superpoints.
        groups: (S,) int64 group ids (:func:`group_by_centres`).
        weight: (S,) point count of each superpoint (a group's score is its point-weighted mean probability).

    Returns:
        (D, S) bool: every superpoint of the best group of each description, nothing else.
    """
    d, s = prob.shape
    if s == 0:
        return torch.zeros(d, 0, dtype=torch.bool, device=prob.device)
    w = weight.to(prob.dtype)
    num = torch.zeros(d, s, dtype=prob.dtype, device=prob.device).index_add_(1, groups, prob * w)
    den = torch.zeros(s, dtype=prob.dtype, device=prob.device).index_add_(0, groups, w)
    score = torch.where(den > 0, num / den.clamp_min(1e-9), -1.0)  # ids that name no group score -1
    best = score.argmax(1)  # (D,)
    return groups[None, :] == best[:, None]


def instance_ranking_loss(masks: Tensor, gt: Tensor, sp_ins_label: Tensor, sizes: Tensor, sp_offsets: Tensor,
                          desc_offsets: Tensor) -> Tensor:
    """Cross-entropy over a scene's annotated instances, scored the way snapping scores groups.

    Each instance k of the description's scene gets the point-weighted mean probability ``m_k`` of the mask over
    its superpoints; the loss is ``-log(m_t / sum_k m_k)`` for the target instance t (the instance holding most
    of the GT mask's points). It trains what :func:`snap_to_groups` uses at inference: the right instance must
    be covered better than every other, whatever the absolute mask values.

    Args:
        masks: (L + 1, D, S_max) superpoint mask logits (columns past a scene's superpoints are ignored).
        gt: (D, S_max) GT superpoint mask; sp_ins_label: (S,) majority instance per superpoint (-1 or
            ``NO_MAJORITY``: in no instance); sizes: (S,) point counts; sp_offsets: (B + 1,); desc_offsets: (B + 1,).

    Returns:
        () the loss, mean over descriptions with a target, summed over the L + 1 predictions (0 when none has one).
    """
    offsets, desc = sp_offsets.tolist(), desc_offsets.tolist()
    per_desc = []
    for b in range(len(offsets) - 1):
        lo, hi, d0, d1 = offsets[b], offsets[b + 1], desc[b], desc[b + 1]
        if d0 == d1 or lo == hi:
            continue
        label = sp_ins_label[lo:hi].to(masks.device)
        inside = (label >= 0) & (label != NO_MAJORITY)
        ids, inverse = torch.unique(torch.where(inside, label, -1), return_inverse=True)
        k = len(ids)  # id -1 (if present) collects the superpoints in no instance; it is dropped below
        w = sizes[lo:hi].to(masks.dtype).to(masks.device)
        prob = masks[:, d0:d1, :hi - lo].sigmoid()  # (L + 1, D_b, S_b)
        num = prob.new_zeros(*prob.shape[:2], k).index_add_(2, inverse, prob * w)
        den = w.new_zeros(k).index_add_(0, inverse, w)
        cover = w.new_zeros(d1 - d0, k).index_add_(1, inverse, gt[d0:d1, :hi - lo].to(w.dtype) * w)  # GT points
        real = ids >= 0
        mean, cover = num[..., real] / den[real].clamp_min(1e-9), cover[:, real]
        has = cover.amax(1) > 0
        if not bool(has.any()) or mean.shape[-1] == 0:
            continue
        target = cover.argmax(1)
        picked = mean.gather(2, target[None, :, None].expand(mean.shape[0], -1, 1)).squeeze(2)  # (L + 1, D_b)
        nll = (mean.sum(2) + 1e-6).log() - (picked + 1e-6).log()
        per_desc.append(nll[:, has])
    if not per_desc:
        return masks.sum() * 0.0
    return torch.cat(per_desc, 1).mean(1).sum()
