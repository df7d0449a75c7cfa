"""Superpoint affinity: "do these two adjacent superpoints belong to one object?" (an addition to RG-SAN).

RG-SAN scores each superpoint on its own, so a mask can cover parts of several instances of the target's class;
the published model relies on an instance-segmentation-pretrained U-Net to keep masks on one object. With
``RGSAN(aux_affinity=True)`` the model also scores every edge of the superpoint adjacency graph
(:func:`pointcloud.superpoint_graph.superpoint_edges`) from both superpoints' features and a few hand-made
rotation-invariant pair descriptors, trained with ``loss_affinity`` (BCE against "same annotated instance").
``RGSANPostprocess(snap_to_instances=True)`` groups the superpoints by average linkage of the edge probabilities
and answers each description with the group its mask covers best, i.e. whole objects.

Frames: metres in the batch's ``xyz_middle`` frame; pair descriptors use only horizontal distances, heights and
``|n_z|``, so the rotation about z of the training augmentation does not change them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from datasets.refer3d import NO_MAJORITY
from pointcloud.rgsan.tlm import mlp
from pointcloud.superpoint_graph import average_linkage, superpoint_shape
from pointcloud.superpoint_pool import superpoint_counts

PAIR_GEOMETRY_DIM = 21


def pair_geometry(feat: Tensor, superpoint: Tensor, geom: Tensor, sp_center: Tensor, edges: Tensor,
                  contact: Tensor) -> Tensor:
    """Symmetric hand-made descriptors of each edge (a, b).

    Args:
        feat: (P, 6) the batch's ``[colour in [-1, 1], xyz_middle]``; superpoint: (P,) global ids;
        geom: (S, 7) :func:`pointcloud.superpoint_pool.superpoint_geometry` of the superpoints (the model computes
        it once for this and for the decoder input); sp_center: (S, 3) metres, mean point of each superpoint;
        edges: (E, 2) global superpoint pairs; contact: (E,) their contact counts.

    Returns:
        (E, 21): ``|colour_a - colour_b|`` (3), horizontal and vertical distance of the centres (2),
        ``|n_a . n_b|`` (1), then min and max over the pair of: ``|n_z|``, centre height, top height, horizontal
        spread, vertical spread, thickness, log point count (14), and ``log contact`` (1).
    """
    num_superpoints = sp_center.shape[0]  # geom: colour 3, heights 2, spreads 2
    normal, extent = superpoint_shape(feat[:, 3:6], superpoint, num_superpoints)
    center = sp_center.to(feat.dtype)
    size = superpoint_counts(superpoint, num_superpoints).to(feat.dtype).clamp_min(1).log()
    per_sp = torch.cat([normal[:, 2:3].abs(), geom[:, 3:7], extent[:, :1], size[:, None]], 1)  # (S, 7)
    a, b = edges[:, 0], edges[:, 1]
    delta = center[a] - center[b]
    return torch.cat([
        (geom[a, :3] - geom[b, :3]).abs(),
        delta[:, :2].norm(dim=1, keepdim=True), delta[:, 2:3].abs(),
        (normal[a] * normal[b]).sum(1, keepdim=True).abs(),
        torch.minimum(per_sp[a], per_sp[b]), torch.maximum(per_sp[a], per_sp[b]),
        contact.to(feat.dtype).log()[:, None],
    ], 1)


class AffinityHead(nn.Module):
    """Edge logit from two superpoints' features and the pair's hand-made descriptors.

    Args:
        channels: C, width of the superpoint features; hidden: width of the MLP.
    """

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        # Batch norm on the input: the descriptors mix colours, metres and log counts.
        self.norm = nn.BatchNorm1d(2 * channels + PAIR_GEOMETRY_DIM)
        self.mlp = mlp([2 * channels + PAIR_GEOMETRY_DIM, hidden, hidden, 1])

    def forward(self, sp_feats: Tensor, edges: Tensor, pair_geom: Tensor) -> Tensor:
        """sp_feats: (S, C); edges: (E, 2); pair_geom: (E, 21) -> (E,) logits (order-independent in a, b)."""
        fa, fb = sp_feats[edges[:, 0]], sp_feats[edges[:, 1]]
        x = torch.cat([fa * fb, (fa - fb).abs(), pair_geom], 1)
        if x.shape[0] == 0:
            return x.new_zeros(0)
        if self.training and x.shape[0] == 1:
            return self.mlp(x).squeeze(1)  # batch norm cannot take a single row in training
        return self.mlp(self.norm(x)).squeeze(1)


def edge_targets(edges: Tensor, sp_ins_label: Tensor) -> tuple[Tensor, Tensor]:
    """"Same instance?" for each edge, from the superpoints' majority instances.

    Args:
        edges: (E, 2) global superpoint pairs; sp_ins_label: (S,) majority instance (-1 unannotated,
            ``NO_MAJORITY`` none). Instance ids are per scene, and edges never join two scenes.

    Returns:
        ``(target (E,) float, valid (E,) bool)``: edges touching a superpoint without an instance are not valid.
    """
    la, lb = sp_ins_label[edges[:, 0]], sp_ins_label[edges[:, 1]]
    valid = (la >= 0) & (lb >= 0) & (la != NO_MAJORITY) & (lb != NO_MAJORITY)
    return (la == lb).float(), valid




def group_superpoints(edges: Tensor, prob: Tensor, sp_offsets: Tensor, threshold: float = 0.5) -> Tensor:
    """Objects of every scene of the batch: average linkage of the edge probabilities, scene by scene.

    Args:
        edges: (E, 2) global superpoint pairs (never across scenes); prob: (E,) "same object" probabilities;
        sp_offsets: (B + 1,) superpoint offsets per scene; threshold: see
        :func:`pointcloud.superpoint_graph.average_linkage`.

    Returns:
        (S,) int64 group of each superpoint, named by its smallest global superpoint id (unique in the batch).
    """
    offsets = sp_offsets.tolist()
    groups = torch.empty(offsets[-1], dtype=torch.long)
    edges_cpu, prob_cpu = edges.detach().cpu(), prob.detach().cpu()
    scene_of_edge = torch.searchsorted(torch.as_tensor(offsets[1:]), edges_cpu[:, 0].contiguous(), right=True)
    for b in range(len(offsets) - 1):
        lo, hi = offsets[b], offsets[b + 1]
        mine = scene_of_edge == b
        labels = average_linkage(hi - lo, edges_cpu[mine] - lo, prob_cpu[mine], threshold)
        groups[lo:hi] = torch.from_numpy(labels) + lo
    return groups.to(edges.device)
