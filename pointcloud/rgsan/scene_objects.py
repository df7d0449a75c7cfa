"""Object-level scene knowledge for referring models whose U-Net is trained from scratch (additions, not published).

The published RG-SAN and MDIN get object-level knowledge from a U-Net pretrained for instance segmentation
(SPFormer). Without those weights, three auxiliary heads on the pooled superpoint features stand in for it; both
models use them through :func:`scene_objects` (forward) and :func:`object_terms` (losses):

- a superpoint semantic head (``loss_semantic``, majority ScanNet-20 label of the superpoint's points);
- a superpoint affinity head on the adjacency graph (``loss_affinity``, "same annotated instance?"), whose
  average-linkage groups are the objects of a user's scan (:mod:`pointcloud.rgsan.affinity`);
- an object context (``loss_object_class``): superpoints grouped into objects (the annotated instances in training,
  the affinity groups otherwise), each group classified from its mean feature and geometry, and every superpoint
  given its group's class probabilities and geometry (:mod:`pointcloud.rgsan.objects`).

Frames: metres in the batch's ``xyz_middle`` frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.scannet.labels import IGNORE_LABEL
from pointcloud.rgsan.affinity import edge_targets, group_superpoints, pair_geometry
from pointcloud.rgsan.objects import instance_groups
from pointcloud.superpoint_graph import superpoint_edges
from pointcloud.superpoint_pool import superpoint_geometry

IGNORE = IGNORE_LABEL  # semantic label of unannotated points (data spec §2) and of superpoints without any


@dataclass
class SceneObjects:
    """What :func:`scene_objects` computed for a batch's S superpoints (None where the head is off).

    Attributes:
        geometry: (S, 7) :func:`~pointcloud.superpoint_pool.superpoint_geometry` (computed once when needed).
        semantic_logits: (S, C) superpoint class logits.
        edges: (E, 2) adjacent superpoint pairs (global ids); edge_logits: (E,) "same object?" logits.
        groups: (S,) int64 object group per superpoint in [0, G) (batch-wide numbering).
        object_logits: (G, C) class logits per group; context: (S, C + 9) each superpoint's group class
            probabilities and geometry, for the decoder input.
    """

    geometry: Tensor | None = None
    semantic_logits: Tensor | None = None
    edges: Tensor | None = None
    edge_logits: Tensor | None = None
    groups: Tensor | None = None
    object_logits: Tensor | None = None
    context: Tensor | None = None

    def decoder_input(self, sp: Tensor, with_geometry: bool) -> Tensor:
        """``sp`` (S, C) extended with the superpoint geometry (when asked) and the object context (when computed):
        (S, C [+ 7] [+ K + 9]), the decoder's superpoint input."""
        parts = [sp] + ([self.geometry] if with_geometry else []) + ([self.context] if self.context is not None else [])
        return torch.cat(parts, 1) if len(parts) > 1 else sp


def check_object_context(model: str, object_context: bool, aux_affinity: bool, aux_semantic_classes: int) -> None:
    """Raise ValueError when ``object_context`` is asked for without the heads it needs."""
    if object_context and (not aux_affinity or aux_semantic_classes <= 0):
        raise ValueError(f"{model}(object_context=True) groups superpoints by the affinity head outside training "
                         "and classifies the groups into the semantic classes: it needs aux_affinity=True and "
                         f"aux_semantic_classes > 0 (got {aux_affinity}, {aux_semantic_classes})")


def scene_objects(sp: Tensor, batch: Any, *, semantic_head: nn.Module | None = None,
                  affinity_head: nn.Module | None = None, object_context: nn.Module | None = None,
                  affinity_cell: float = 0.05, need_geometry: bool = False, training: bool = False) -> SceneObjects:
    """Run the auxiliary heads on the pooled superpoint features ``sp`` (S, C) of a ``ReferBatch3D``.

    ``object_context`` needs ``affinity_head`` (its groups outside training). ``training`` with annotated instances
    (``batch.sp_ins_label``) groups by those instead (teacher forcing: clean objects, clean labels).
    """
    out = SceneObjects()
    if need_geometry or affinity_head is not None:
        out.geometry = superpoint_geometry(batch.feat.to(sp.dtype), batch.superpoint, batch.point_scene, sp.shape[0])
    if semantic_head is not None:
        out.semantic_logits = semantic_head(sp)
    if affinity_head is not None:
        out.edges, contact = superpoint_edges(batch.coord.to(sp.device), batch.superpoint, batch.point_scene,
                                              affinity_cell)
        pairs = pair_geometry(batch.feat.to(sp.dtype), batch.superpoint, out.geometry, batch.sp_center.to(sp.dtype),
                              out.edges, contact)
        out.edge_logits = affinity_head(sp, out.edges, pairs)
    if object_context is not None:
        if affinity_head is None:
            raise ValueError("scene_objects: object_context groups superpoints by the affinity head outside "
                             "training; pass affinity_head too")
        if training and batch.sp_ins_label is not None:
            out.groups = instance_groups(batch.sp_ins_label.to(sp.device), batch.sp_offsets.to(sp.device))
        else:
            groups = group_superpoints(out.edges, out.edge_logits.detach().sigmoid(), batch.sp_offsets)
            out.groups = torch.unique(groups, return_inverse=True)[1]
        out.context, out.object_logits = object_context(sp, out.groups, batch.feat.to(sp.dtype), batch.superpoint,
                                                        batch.point_scene)
    return out


def superpoint_majority(point_label: Tensor, superpoint: Tensor, num_sp: int, num_classes: int) -> Tensor:
    """(S,) int64 majority label of each superpoint's points; ``IGNORE`` where no point has a label in [0, C).

    Args:
        point_label: (P,) int64 labels, ``IGNORE`` (or anything outside [0, C)) for unlabelled points.
        superpoint: (P,) int64 superpoint id of each point, in [0, S).
    """
    ok = (point_label >= 0) & (point_label < num_classes)
    counts = torch.zeros(num_sp * num_classes, dtype=torch.long, device=point_label.device)
    counts.index_add_(0, superpoint[ok] * num_classes + point_label[ok], torch.ones_like(point_label[ok]))
    counts = counts.view(num_sp, num_classes)
    best = counts.argmax(1)  # ties -> the smallest class id, deterministically
    return torch.where(counts.sum(1) > 0, best, torch.full_like(best, IGNORE))


def balanced_class_weights(labels: Tensor, num_classes: int, power: float) -> Tensor | None:
    """(C,) weights ``n_c^-power`` from the batch's label counts, with ``sum_s w[label_s] = #labelled``.

    Returns None when ``power`` is 0 (plain cross-entropy). Classes absent from the batch get weight 0.

    Args:
        labels: (S,) int64 superpoint labels, ``IGNORE`` for unlabelled ones.
    """
    if power == 0.0:
        return None
    ok = labels >= 0
    counts = torch.bincount(labels[ok], minlength=num_classes).float()
    weights = torch.where(counts > 0, counts.clamp_min(1.0).pow(-power), torch.zeros_like(counts))
    total = (weights * counts).sum()
    return weights * (counts.sum() / total) if bool(total > 0) else weights


def point_classes(batch: Any, semantic_field: str = "semantic") -> Tensor:
    """(P,) int64 point labels the class heads learn: ``batch.semantic`` (ScanNet-20) or ``batch.semantic_fine``.

    Raises:
        ValueError: the field is None (fine classes need a dataset built with a ``label_map``).
    """
    labels = getattr(batch, semantic_field, None)
    if labels is None:
        raise ValueError(f"the class heads learn batch.{semantic_field}, which this batch does not carry (for "
                         "'semantic_fine' give the dataset a label_map: data.train.label_map=<scannetv2-labels."
                         "combined.tsv>)")
    return labels


def object_terms(outputs: Any, batch: Any, semantic_balance: float = 0.0,
                 semantic_field: str = "semantic", affinity_balance: float = 0.0) -> dict[str, Tensor]:
    """The auxiliary losses of the heads present in ``outputs`` (fields ``sp_semantic_logits``, ``sp_edges`` /
    ``sp_edge_logits``, ``object_groups`` / ``object_logits``; absent or None: no term).

    - ``loss_semantic``: cross-entropy of the superpoint class logits against each superpoint's majority label
      (unlabelled points do not vote; superpoints without a labelled point are ignored); class ``c`` weighted by
      ``n_c^-semantic_balance`` over the batch's superpoints (0: plain cross-entropy);
    - ``loss_affinity``: BCE of each edge's logit against "both superpoints have the same majority instance",
      mean over edges whose two superpoints both have one; "same" and "different" edges weighted by
      ``n^-affinity_balance`` of their count in the batch (0: unweighted; 1: each half of the loss). Edges inside
      objects outnumber the edges between touching objects about 4 to 1, and a few confident "same" scores on the
      contact between a pillow and its couch merge the two objects;
    - ``loss_object_class``: cross-entropy of each group's class logits against its points' majority label.

    The labels are ``batch.<semantic_field>`` (:func:`point_classes`). Each term is 0 (in the graph) when the batch
    has nothing to supervise it with.
    """
    terms: dict[str, Tensor] = {}
    sem = getattr(outputs, "sp_semantic_logits", None)
    if sem is not None:
        labels = superpoint_majority(point_classes(batch, semantic_field).to(sem.device),
                                     batch.superpoint.to(sem.device),
                                     sem.shape[0], sem.shape[1])
        weight = balanced_class_weights(labels, sem.shape[1], semantic_balance)
        terms["loss_semantic"] = (F.cross_entropy(sem, labels, weight=weight, ignore_index=IGNORE)
                                  if bool((labels >= 0).any()) else sem.sum() * 0.0)
    edge_logits = getattr(outputs, "sp_edge_logits", None)
    if edge_logits is not None:
        target, ok = edge_targets(outputs.sp_edges, batch.sp_ins_label.to(edge_logits.device))
        if bool(ok.any()):
            weight = balanced_class_weights(target[ok].long(), 2, affinity_balance)
            terms["loss_affinity"] = F.binary_cross_entropy_with_logits(
                edge_logits[ok], target[ok], weight=None if weight is None else weight[target[ok].long()])
        else:
            terms["loss_affinity"] = edge_logits.sum() * 0.0
    object_logits = getattr(outputs, "object_logits", None)
    if object_logits is not None:
        dev = object_logits.device
        labels = superpoint_majority(point_classes(batch, semantic_field).to(dev),
                                     outputs.object_groups[batch.superpoint.to(dev)],
                                     object_logits.shape[0], object_logits.shape[1])
        terms["loss_object_class"] = (F.cross_entropy(object_logits, labels, ignore_index=IGNORE)
                                      if bool((labels >= 0).any()) else object_logits.sum() * 0.0)
    return terms
