"""Mesh over-segmentation the way ScanNet makes ``_vh_clean_2.0.010000.segs.json`` (data spec §1.4, §2.2).

ScanNet's ``Segmentator`` (and the ``segmentator`` wrapper of [SEG]) runs a Felzenszwalb-Huttenlocher
graph segmentation on the mesh:

1. vertex normals = normalised sum of the area-weighted normals of the adjacent faces;
2. one graph edge per triangle side, in face order (a, b), (a, c), (b, c) - shared sides appear twice;
3. edge weight ``w = 1 - n_a . n_b``, squared when the edge is convex (``n_b . (p_b - p_a) > 0``), so
   that smooth convex bends cost little;
4. edges sorted by weight; two sets merge when ``w <= Int(S) + k/|S|`` for both of them, where
   ``Int`` is the weight of the last edge that grew the set (kThresh ``k`` = 0.01);
5. a second pass over the sorted edges joins every set smaller than ``segMinVerts`` (20) with its
   neighbour.

:func:`segment_mesh_reference` is the sequential algorithm, edge by edge. :func:`segment_mesh` gives the
same partition faster: every edge of weight exactly 0 merges unconditionally (every threshold is
positive) and comes first in the order, so those edges are contracted at once with a
connected-components pass, after which every set's threshold is exactly ``k/|S|``; the Python loop then
only visits the remaining, curved or creased edges between different sets. On the synthetic meshes
(planar faces, cylinders) that is a small fraction of the edges.

Weights below ``ZERO_WEIGHT`` are set to 0: on exactly planar surfaces ``1 - n_a . n_b`` is float
rounding noise (1e-16), and ScanNet's float32 segmentator would not separate those vertices either.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from datasets.synthetic.primitives import vertex_normals

K_THRESH = 0.01
SEG_MIN_VERTS = 20
ZERO_WEIGHT = 1e-9


def edge_weights(xyz: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The segmentation graph of a triangle mesh.

    Args:
        xyz: (N, 3) vertices, metres (any frame); computed in float64.
        faces: (F, 3) int triangles.

    Returns:
        ``(a, b, w)``: (3F,) int64 endpoints and float64 weights, in ScanNet's edge order.
    """
    xyz = np.asarray(xyz, np.float64)
    faces = np.asarray(faces, np.int64)
    normals = vertex_normals(xyz, faces)
    a = np.concatenate([faces[:, 0], faces[:, 0], faces[:, 1]])
    b = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 2]])
    # interleave to face order: (f0: ab, ac, bc), (f1: ab, ac, bc), ...
    order = np.arange(3 * len(faces)).reshape(3, -1).T.ravel()
    a, b = a[order], b[order]
    d = xyz[b] - xyz[a]
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-300)
    dot = (normals[a] * normals[b]).sum(1)
    convex = (normals[b] * d).sum(1) > 0
    w = 1.0 - dot
    w = np.where(convex, w * w, w)
    w[w < ZERO_WEIGHT] = 0.0
    return a, b, w


class _Universe:
    """Disjoint sets with union by rank and path halving (the C++ ``universe``)."""

    def __init__(self, sizes: list[int]):
        self.parent = list(range(len(sizes)))
        self.rank = [0] * len(sizes)
        self.size = list(sizes)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(self, x: int, y: int) -> int:
        if self.rank[x] > self.rank[y]:
            x, y = y, x
        self.parent[x] = y
        self.size[y] += self.size[x]
        if self.rank[x] == self.rank[y]:
            self.rank[y] += 1
        return y


def _felzenszwalb(u: _Universe, a: np.ndarray, b: np.ndarray, w: np.ndarray, threshold: list[float],
                  k_thresh: float, min_verts: int) -> None:
    """Both passes over edges already sorted by weight, on the sets of ``u`` (modified in place)."""
    find, join, size = u.find, u.join, u.size
    for ea, eb, ew in zip(a.tolist(), b.tolist(), w.tolist()):
        ra, rb = find(ea), find(eb)
        if ra != rb and ew <= threshold[ra] and ew <= threshold[rb]:
            r = join(ra, rb)
            threshold[r] = ew + k_thresh / size[r]
    for ea, eb in zip(a.tolist(), b.tolist()):
        ra, rb = find(ea), find(eb)
        if ra != rb and (size[ra] < min_verts or size[rb] < min_verts):
            join(ra, rb)


def _segment_ids(root: np.ndarray) -> np.ndarray:
    """Name each segment by its smallest vertex index: non-contiguous ids, as in ScanNet's files."""
    first = np.full(root.max() + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, root, np.arange(len(root)))
    return first[root]


def segment_mesh_reference(xyz: np.ndarray, faces: np.ndarray, k_thresh: float = K_THRESH,
                           min_verts: int = SEG_MIN_VERTS) -> np.ndarray:
    """Sequential Felzenszwalb segmentation, one edge at a time (slow; the reference for tests).

    Returns (N,) int64 segment ids (the smallest vertex index of each segment).
    """
    a, b, w = edge_weights(xyz, faces)
    order = np.argsort(w, kind="stable")
    n = len(xyz)
    u = _Universe([1] * n)
    _felzenszwalb(u, a[order], b[order], w[order], [k_thresh] * n, k_thresh, min_verts)
    return _segment_ids(np.array([u.find(i) for i in range(n)], np.int64))


def segment_mesh(xyz: np.ndarray, faces: np.ndarray, k_thresh: float = K_THRESH,
                 min_verts: int = SEG_MIN_VERTS) -> np.ndarray:
    """Felzenszwalb mesh segmentation, same partition as :func:`segment_mesh_reference`.

    Args:
        xyz: (N, 3) vertices, metres.
        faces: (F, 3) int triangles.

    Returns:
        (N,) int64 segment id per vertex (the smallest vertex index of its segment).
    """
    a, b, w = edge_weights(xyz, faces)
    n = len(xyz)
    order = np.argsort(w, kind="stable")
    a, b, w = a[order], b[order], w[order]
    n_zero = int(np.searchsorted(w, 0.0, side="right"))
    graph = coo_matrix((np.ones(n_zero), (a[:n_zero], b[:n_zero])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    ca, cb, cw = comp[a[n_zero:]], comp[b[n_zero:]], w[n_zero:]
    keep = ca != cb  # an edge inside a contracted set can never merge anything
    u = _Universe(sizes.tolist())
    threshold = (k_thresh / sizes).tolist()  # Int(S) = 0 after the zero-weight prefix
    _felzenszwalb(u, ca[keep], cb[keep], cw[keep], threshold, k_thresh, min_verts)
    roots = np.array([u.find(i) for i in range(len(sizes))], np.int64)
    return _segment_ids(roots[comp])


def same_partition(s1: np.ndarray, s2: np.ndarray) -> bool:
    """True when two labelings define the same partition (a bijection between their ids)."""
    pairs = np.unique(np.stack([s1, s2], 1), axis=0)
    return len(pairs) == len(np.unique(s1)) == len(np.unique(s2))
