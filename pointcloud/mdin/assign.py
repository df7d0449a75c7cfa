"""MDIN's geometric target assignment ("MDO", rgsan-mdin spec §6.5) and the per-pair ground truth (§6.6).

For one description with targets o_0..o_{N-1} (object ids) and centres c_j:

1. **nearest**: for each target j, the query whose seed centre is closest to c_j (Euclidean; ties to the lower
   query index) is paired with j; one query may be nearest to several targets and then has several pairs;
2. **in-object**: every query whose seed superpoint's instance label (``sp_ins_label``) equals o_j is paired with
   j, except queries that are the nearest query of any target.

Pairs are ordered: all nearest pairs in target order, then in-object pairs grouped by target (query order inside).
The same procedure over all seeds (not only the selected queries) gives the seed-level pairs of the sampler
targets. Object centre c_j: unweighted mean of the centres of the superpoints labelled o_j; when no superpoint has
o_j as majority, the mean of o_j's points (data spec §8.4 fallback); an object without points is dropped and
counted (:attr:`Assignment.dropped`).

Per-pair ground truth: the mask of *the pair's own target*, ``sp_ins_label == o_j``. The original indexes a tensor
that repeats target j's mask count_j times with the original index j, so pairs of targets j >= 1 mostly read
target 0's mask (§6.6, defect D1); ``replicate_mdin_gt_index_bug=True`` reproduces that for parity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Assignment:
    """Pairs of one description.

    Attributes:
        query: (M,) int64 query (or seed) index of each pair.
        target: (M,) int64 index j into the description's kept targets.
        object_ids: the kept targets' object ids (targets without points are dropped).
        centres: (N, 3) float target centres, metres.
        nearest: (N,) int64 nearest query (or seed) of each kept target.
        dropped: object ids dropped because they have no point in the scene.
    """

    query: Tensor
    target: Tensor
    object_ids: tuple[int, ...]
    centres: Tensor
    nearest: Tensor
    dropped: tuple[int, ...] = ()

    @property
    def num_pairs(self) -> int:
        return int(self.query.numel())


def object_centres(object_ids: Sequence[int], sp_ins_label: Tensor, sp_center: Tensor,
                   point_instance: Tensor | None = None, point_coord: Tensor | None = None
                   ) -> tuple[Tensor, list[int], list[int]]:
    """Centres of the targets of one description (module docstring rule).

    Args:
        object_ids: N target object ids.
        sp_ins_label: (S,) int64 majority instance of each superpoint of the scene; sp_center: (S, 3) metres.
        point_instance: (P,) int64 and point_coord: (P, 3) metres of the scene's points, for the fallback.

    Returns:
        (centres (N', 3), kept object ids (N'), dropped object ids).
    """
    centres, kept, dropped = [], [], []
    for o in object_ids:
        on = sp_ins_label == int(o)
        if bool(on.any()):
            centres.append(sp_center[on].float().mean(0))
        elif point_instance is not None and point_coord is not None and bool((point_instance == int(o)).any()):
            centres.append(point_coord[point_instance == int(o)].float().mean(0))
        else:
            dropped.append(int(o))
            continue
        kept.append(int(o))
    out = torch.stack(centres) if centres else sp_center.new_zeros((0, 3), dtype=torch.float32)
    return out, kept, dropped


def assign_targets(seed_centres: Tensor, seed_labels: Tensor, valid: Tensor, object_ids: Sequence[int],
                   centres: Tensor, dropped: Sequence[int] = ()) -> Assignment:
    """Nearest + in-object pairs of one description (module docstring).

    Args:
        seed_centres: (Q, 3) metres, the centre of each query's (or seed's) superpoint.
        seed_labels: (Q,) int64 instance label of each query's superpoint.
        valid: (Q,) bool, False on padding queries (never paired).
        object_ids: N kept target ids; centres: (N, 3) their centres.
    """
    dev = seed_centres.device
    n = len(object_ids)
    empty = torch.zeros(0, dtype=torch.long, device=dev)
    if n == 0 or not bool(valid.any()):
        return Assignment(empty, empty, tuple(int(o) for o in object_ids), centres, empty, tuple(dropped))
    dist = torch.cdist(centres.float().to(dev), seed_centres.float())  # (N, Q)
    dist = dist.masked_fill(~valid[None, :], float("inf"))
    nearest = dist.argmin(1)  # first minimum: ties to the lower query index
    is_nearest = torch.zeros(seed_centres.shape[0], dtype=torch.bool, device=dev)
    is_nearest[nearest] = True
    ids = torch.as_tensor([int(o) for o in object_ids], dtype=seed_labels.dtype, device=dev)
    inside = (seed_labels[None, :] == ids[:, None]) & valid[None, :] & ~is_nearest[None, :]  # (N, Q)
    in_target, in_query = inside.nonzero(as_tuple=True)  # row-major: grouped by target, query order inside
    query = torch.cat([nearest, in_query])
    target = torch.cat([torch.arange(n, device=dev), in_target])
    return Assignment(query, target, tuple(int(o) for o in object_ids), centres, nearest, tuple(dropped))


def pair_gt_masks(assignment: Assignment, sp_ins_label: Tensor, replicate_mdin_gt_index_bug: bool = False) -> Tensor:
    """(M, S) bool ground-truth superpoint mask of each pair over the scene's S superpoints.

    Correct rule: pair (q, j) gets ``sp_ins_label == object_ids[j]``. With ``replicate_mdin_gt_index_bug`` the
    original's indexing is reproduced (spec §6.6): target j's mask repeated count_j times in target order, and
    indexed with j.
    """
    ids = torch.as_tensor(assignment.object_ids, dtype=sp_ins_label.dtype, device=sp_ins_label.device)
    per_target = sp_ins_label[None, :] == ids[:, None]  # (N, S)
    if not replicate_mdin_gt_index_bug:
        return per_target[assignment.target]
    counts = torch.bincount(assignment.target, minlength=len(assignment.object_ids))
    repeated = per_target.repeat_interleave(counts, dim=0)  # [m_0 x count_0, m_1 x count_1, ...]
    return repeated[assignment.target]
