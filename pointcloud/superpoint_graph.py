"""The superpoint adjacency graph, per-superpoint shape, and average-linkage grouping of superpoints.

Superpoints (ScanNet's mesh over-segmentation) rarely cross object boundaries, so an object is a connected set of
superpoints. Two superpoints are *adjacent* when some of their points lie within one cell of each other
(:func:`superpoint_edges`); a model can score each edge "same object?" and :func:`average_linkage` merges
superpoints into objects from those scores. Used by RG-SAN's instance snapping (``pointcloud.rgsan.affinity``).

Frames: coordinates are metres in any frame shared by the points of one scene (the batch's ``xyz_middle``).
"""

from __future__ import annotations

import heapq

import numpy as np
import torch
from torch import Tensor

from pointcloud.superpoint_pool import superpoint_pool

_HALF_NEIGHBOURHOOD = [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)
                       if (dx, dy, dz) >= (0, 0, 0)]


def superpoint_edges(coord: Tensor, superpoint: Tensor, point_scene: Tensor, cell: float) -> tuple[Tensor, Tensor]:
    """Pairs of superpoints with points in the same or neighbouring cells of a ``cell``-metre grid.

    Args:
        coord: (P, 3) metres; superpoint: (P,) int64 global superpoint id (unique across the batch's scenes);
        point_scene: (P,) int64 scene of each point (scenes share a frame, so the scene is part of the cell key
            and superpoints of different scenes are never adjacent).
        cell: grid size in metres (adjacency reaches up to two cells, at most ``2 sqrt(3) cell`` apart).

    Returns:
        ``(edges (E, 2) int64, contact (E,) int64)``: each adjacent pair once, ``edges[:, 0] < edges[:, 1]``,
        sorted; ``contact`` counts the (cell, neighbour cell) pairs joining them, a measure of the contact area.
    """
    if cell <= 0:
        raise ValueError(f"superpoint_edges: cell must be > 0 metres, got {cell}")
    device = coord.device
    if coord.shape[0] == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=device), torch.zeros(0, dtype=torch.long, device=device)
    ijk = torch.floor(coord.double() / cell).long()
    ijk = ijk - ijk.min(0).values + 1  # one empty layer on each side: neighbour offsets never wrap into a scene
    dims = ijk.max(0).values + 2
    key = ((point_scene * dims[0] + ijk[:, 0]) * dims[1] + ijk[:, 1]) * dims[2] + ijk[:, 2]
    num_sp = int(superpoint.max()) + 1
    # One int64 per (cell, superpoint): 1-D unique is far faster than unique over rows.
    pairs = torch.unique(key * num_sp + superpoint)  # sorted by cell, then superpoint
    cells, owner = torch.div(pairs, num_sp, rounding_mode="floor").contiguous(), pairs % num_sp
    rows = torch.arange(len(cells), device=device)
    found_a, found_b = [], []
    # Half of the 26 neighbour offsets (plus the cell itself) visit every pair of neighbouring cells once.
    for dx, dy, dz in _HALF_NEIGHBOURHOOD:
        target = cells + (dx * dims[1] + dy) * dims[2] + dz
        lo = torch.searchsorted(cells, target, side="left")
        hi = torch.searchsorted(cells, target, side="right")
        n = hi - lo  # entries (superpoints) in the neighbour cell
        i = torch.repeat_interleave(rows, n)
        start = torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        j = lo[i] + torch.arange(len(i), device=device) - start
        a, b = owner[i], owner[j]
        keep = a < b if (dx, dy, dz) == (0, 0, 0) else a != b  # within a cell each pair appears in both orders
        found_a.append(torch.minimum(a, b)[keep])
        found_b.append(torch.maximum(a, b)[keep])
    codes, contact = torch.unique(torch.cat(found_a) * num_sp + torch.cat(found_b), return_counts=True)
    edges = torch.stack([torch.div(codes, num_sp, rounding_mode="floor"), codes % num_sp], 1)
    return edges, contact


def superpoint_shape(coord: Tensor, superpoint: Tensor, num_superpoints: int) -> tuple[Tensor, Tensor]:
    """Normal and thickness of every superpoint from the covariance of its points.

    Args:
        coord: (P, 3) metres; superpoint: (P,) int64 id in ``[0, num_superpoints)``.

    Returns:
        ``(normal (S, 3), extent (S, 3))``: the unit eigenvector of the smallest covariance eigenvalue (its sign
        is arbitrary: use it through ``|n_z|`` or ``|n_a . n_b|``) and the square roots of the eigenvalues in
        ascending order (metres; the first is the thickness). Extents of superpoints without points are 0.
        Sums accumulate in float32 (:func:`superpoint_pool`), after centring on each superpoint's mean.
        No gradient is meant to flow through it (eigenvectors of repeated eigenvalues are not differentiable).
    """
    x = coord.double()
    mean = superpoint_pool(x, superpoint, num_superpoints)
    d = x - mean[superpoint]  # centred first: E[xx^T] - E[x]E[x]^T would cancel catastrophically far from 0
    cov = superpoint_pool((d[:, :, None] * d[:, None, :]).reshape(-1, 9), superpoint, num_superpoints)
    cov = cov.reshape(-1, 3, 3)
    values, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    normal, extent = vectors[:, :, 0], values.clamp_min(0).sqrt()
    return normal.to(coord.dtype), extent.to(coord.dtype)


def average_linkage(num_nodes: int, edges: np.ndarray | Tensor, prob: np.ndarray | Tensor,
                    threshold: float = 0.5) -> np.ndarray:
    """Group the nodes of a graph by average-linkage agglomeration of edge probabilities.

    Starting from singletons, the two adjacent groups with the highest mean "same group" probability over the
    edges between them merge, until no pair of adjacent groups has a mean above ``threshold``. Unlike connected
    components of the edges above the threshold, one wrong edge between two large groups cannot merge them.

    Args:
        num_nodes: S; edges: (E, 2) int node pairs in ``[0, S)``; prob: (E,) probabilities in [0, 1].
        threshold: groups merge while their mean edge probability is strictly above it.

    Returns:
        (S,) int64 group label of each node: the smallest node index of its group.
    """
    edges = np.asarray(edges.cpu() if isinstance(edges, Tensor) else edges, dtype=np.int64).reshape(-1, 2)
    prob = np.asarray(prob.detach().cpu() if isinstance(prob, Tensor) else prob, dtype=np.float64).reshape(-1)
    if len(edges) != len(prob):
        raise ValueError(f"average_linkage: {len(edges)} edges but {len(prob)} probabilities")
    if len(edges) and (edges.min() < 0 or edges.max() >= num_nodes):
        raise ValueError(f"average_linkage: edge node ids must lie in [0, {num_nodes}), got "
                         f"[{edges.min()}, {edges.max()}]")
    # links[g][h] = [sum of probabilities, edge count] between groups g and h; one list shared by both sides.
    links: list[dict[int, list[float]]] = [{} for _ in range(num_nodes)]
    for (a, b), p in zip(edges.tolist(), prob.tolist()):
        if a == b:
            continue
        link = links[a].get(b)
        if link is None:
            link = links[a][b] = links[b][a] = [0.0, 0.0]
        link[0] += p
        link[1] += 1.0
    heap = [(-s / n, g, h) for g in range(num_nodes) for h, (s, n) in links[g].items() if g < h]
    heapq.heapify(heap)
    parent = np.arange(num_nodes)
    while heap:
        neg, g, h = heapq.heappop(heap)
        if -neg <= threshold:
            break
        link = links[g].get(h)
        if link is None or link[0] / link[1] != -neg:
            continue  # stale entry: one side merged away or the link changed since it was pushed
        if len(links[g]) < len(links[h]):
            g, h = h, g  # fold the group with fewer neighbours into the other
        del links[g][h]
        for c, (s, n) in links[h].items():
            if c == g:
                continue
            del links[c][h]
            joined = links[g].get(c)
            if joined is None:
                joined = links[g][c] = links[c][g] = [0.0, 0.0]
            joined[0] += s
            joined[1] += n
            heapq.heappush(heap, (-joined[0] / joined[1], min(g, c), max(g, c)))
        links[h] = {}
        parent[h] = g
    # Resolve parents, then name each group by its smallest node.
    root = parent.copy()
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    smallest = np.full(num_nodes, num_nodes, dtype=np.int64)
    np.minimum.at(smallest, root, np.arange(num_nodes))
    return smallest[root]
