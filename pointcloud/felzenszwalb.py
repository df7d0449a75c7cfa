"""Felzenszwalb–Huttenlocher graph segmentation over weighted edges, as ScanNet's Segmentator runs it.

The algorithm (Felzenszwalb & Huttenlocher 2004, "Efficient graph-based image segmentation") visits edges in
non-decreasing weight order and joins the two components of an edge when its weight is no larger than both
components' thresholds, a component's threshold being ``w_last_join + k_thresh / size``. ScanNet's Segmentator
then runs one more pass over the same sorted edges that joins any edge touching a component smaller than
``min_size``. Both passes are sequential by nature (each decision depends on the sizes left by the previous
ones), so they are written as tight loops over Python ints and lists, which CPython runs at well under a
microsecond per edge; everything that can be decided without the loop is done in NumPy first.

The partition depends only on the edge order and the component sizes, never on which union-find root
survives a join, so union by size is used here where ScanNet uses union by rank.
"""

from __future__ import annotations

import numpy as np


def _roots(parent: np.ndarray) -> np.ndarray:
    """(n,) int64 root of every element of a union-find parent array, by pointer jumping in NumPy."""
    root = parent.copy()
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def _threshold_pass(n: int, a: list[int], b: list[int], w: list[float], k_thresh: float) -> list[int]:
    """The Felzenszwalb–Huttenlocher pass over edges already sorted by weight; returns the parent list."""
    parent = list(range(n))
    size = [1] * n
    thresh = [k_thresh] * n
    for x, y, wt in zip(a, b, w):
        # find with path halving, inlined: a function call per find would double the loop's cost
        p = parent[x]
        while p != x:
            g = parent[p]
            parent[x] = g
            x = g
            p = parent[g]
        p = parent[y]
        while p != y:
            g = parent[p]
            parent[y] = g
            y = g
            p = parent[g]
        if x == y or wt > thresh[x] or wt > thresh[y]:
            continue
        s = size[x] + size[y]
        if size[x] < size[y]:
            x, y = y, x
        parent[y] = x
        size[x] = s
        thresh[x] = wt + k_thresh / s
    return parent


def _min_size_pass(n: int, a: list[int], b: list[int], size: list[int], min_size: int) -> list[int]:
    """Join, in edge order, every edge whose either component is still smaller than ``min_size``."""
    parent = list(range(n))
    for x, y in zip(a, b):
        while parent[x] != x:
            x = parent[x]
        while parent[y] != y:
            y = parent[y]
        if x == y or (size[x] >= min_size and size[y] >= min_size):
            continue
        if size[x] < size[y]:
            x, y = y, x
        parent[y] = x
        size[x] += size[y]
    return parent


def felzenszwalb_segments(num_nodes: int, edges: np.ndarray, weights: np.ndarray, k_thresh: float,
                          min_size: int) -> np.ndarray:
    """Graph segmentation of ``num_nodes`` nodes: the threshold pass, then the minimum-size pass.

    Args:
        num_nodes: number of graph nodes (mesh vertices or points).
        edges: (E, 2) int node pairs; an edge may appear several times (ScanNet keeps one copy per face side).
        weights: (E,) float dissimilarity of each edge (lower merges first).
        k_thresh: the ``k`` of the threshold function ``k / size``; larger gives larger segments.
        min_size: after the threshold pass, components smaller than this are merged along edges in weight
            order (a component stays smaller only when its connected component of the graph is smaller).

    Returns:
        (num_nodes,) int64 root node id of each node's segment (not compact).
    """
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    weights = np.asarray(weights).reshape(-1)
    if edges.shape[0] != weights.shape[0]:
        raise ValueError(f"felzenszwalb_segments: {edges.shape[0]} edges but {weights.shape[0]} weights")
    if not np.all(np.isfinite(weights)):
        # a NaN fails every comparison, so the loop would join across it: refuse instead
        raise ValueError("felzenszwalb_segments: weights must be finite (check the normals for NaN)")
    if num_nodes == 0:
        return np.zeros(0, dtype=np.int64)
    if edges.size and (edges.min() < 0 or edges.max() >= num_nodes):
        raise ValueError(f"felzenszwalb_segments: edge endpoints must lie in [0, {num_nodes}), "
                         f"got [{edges.min()}, {edges.max()}]")
    # a stable sort makes ties (frequent on flat surfaces) resolve by edge index: deterministic everywhere
    order = np.argsort(weights, kind="stable")
    a, b = edges[order, 0], edges[order, 1]
    parent = np.asarray(_threshold_pass(num_nodes, a.tolist(), b.tolist(), weights[order].tolist(),
                                        float(k_thresh)), dtype=np.int64)
    root = _roots(parent)
    if min_size <= 1:
        return root
    # the second pass works on components: only edges between two components, one of them small at the
    # start, can ever join (sizes only grow), so the rest are dropped in NumPy and the loop stays short
    comp_root, comp = np.unique(root, return_inverse=True)
    size = np.bincount(comp)
    ca, cb = comp[a], comp[b]
    keep = (ca != cb) & ((size[ca] < min_size) | (size[cb] < min_size))
    comp_parent = np.asarray(_min_size_pass(len(comp_root), ca[keep].tolist(), cb[keep].tolist(), size.tolist(),
                                            int(min_size)), dtype=np.int64)
    return comp_root[_roots(comp_parent)][comp]
