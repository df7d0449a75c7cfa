"""Superpoints for any input: ScanNet's mesh over-segmentation, on a mesh or on a bare point cloud.

ScanNet's ``*_vh_clean_2.0.010000.segs.json`` come from its Segmentator (``ScanNet/Segmentator/segmentator.cpp``):
Felzenszwalb–Huttenlocher merging over the mesh edges with ``k_thresh = 0.01``, then a pass that merges
segments of fewer than ``seg_min_verts = 20`` vertices. This module re-implements that rule
(:func:`mesh_superpoints`), runs the same merging over a k-nearest-neighbour graph for point clouds without
faces (:func:`point_cloud_superpoints`), and scores a partition against instance labels
(:func:`superpoint_purity`).

Edge weight, as in the Segmentator, for an edge from node ``a`` to node ``b`` with unit direction
``d = (p_b - p_a) / |p_b - p_a|``: ``w = 1 - n_a . n_b``, squared when ``n_b . d > 0``. The square shrinks
weights (all below 1 on smooth surfaces) across *convex* creases, where the far normal leans along the edge;
concave creases (a chair on the floor, a picture on a wall) keep the full weight, so objects separate from
what they stand on while their own rounded outsides stay together. That needs normals pointing out of the
surface into free space, hence the orientation step of the point-cloud variant.

Frames: coordinates in metres, any frame (ScanNet's raw mesh frame is z-up); normals are unit vectors in the
same frame. Output ids are compact ``0..K-1`` numbered by first occurrence, so they are deterministic.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from pointcloud.felzenszwalb import felzenszwalb_segments

__all__ = [
    "compact_ids",
    "edge_weights",
    "estimate_normals",
    "graph_superpoints",
    "knn_edges",
    "mesh_edges",
    "mesh_superpoints",
    "mesh_vertex_normals",
    "point_cloud_superpoints",
    "superpoint_purity",
]


def compact_ids(labels: np.ndarray) -> np.ndarray:
    """Relabel any integer labels to ``0..K-1`` in order of first occurrence.

    Args:
        labels: (N,) integer labels.

    Returns:
        (N,) int64; ``out[i] == out[j]`` iff ``labels[i] == labels[j]`` and ``out[0] == 0`` (when N > 0).
    """
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def mesh_vertex_normals(vertices: np.ndarray, faces: np.ndarray,
                        weighting: Literal["scannet", "area"] = "scannet") -> np.ndarray:
    """Per-vertex normals of a triangle mesh.

    Args:
        vertices: (V, 3) float, metres. faces: (F, 3) int vertex indices, counter-clockwise seen from outside
            (the face normal is ``(p1 - p0) x (p2 - p0)``).
        weighting: ``"scannet"``: the mean of the *unit* normals of the incident faces, left unnormalised, as
            the Segmentator computes it (its running ``lerp`` is that mean), so on curved or noisy patches the
            normal is shorter than 1 and ``1 - n_a . n_b`` grows; ``"area"``: the area-weighted mean, normalised.

    Returns:
        (V, 3) float64. Degenerate (zero-area) faces contribute nothing; a vertex without a valid face gets
        the zero vector, so each of its edges weighs 1.
    """
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    length = np.linalg.norm(cross, axis=1)
    valid = length > 0
    if weighting == "scannet":
        face_normal = np.where(valid[:, None], cross / np.where(valid, length, 1.0)[:, None], 0.0)
    elif weighting == "area":
        face_normal = cross  # |cross| = twice the area, so summing weighs each face by its area
    else:
        raise ValueError(f"mesh_vertex_normals: weighting must be 'scannet' or 'area', got {weighting!r}")
    corner = f.reshape(-1)
    # bincount per coordinate is several times faster than np.add.at on ~10^6 corners
    summed = np.stack([np.bincount(corner, np.repeat(face_normal[:, c], 3), minlength=len(v))
                       for c in range(3)], axis=1)
    if weighting == "scannet":
        count = np.bincount(corner, np.repeat(valid.astype(np.float64), 3), minlength=len(v))
        return summed / np.maximum(count, 1.0)[:, None]
    norm = np.linalg.norm(summed, axis=1, keepdims=True)
    return summed / np.where(norm > 0, norm, 1.0)


def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """(3F, 2) int64 directed edges of a triangle mesh, three per face in the Segmentator's order.

    For face ``(i1, i2, i3)``: ``(i1, i2), (i1, i3), (i3, i2)``. An interior edge appears once per adjacent
    face, usually in both directions; both are kept because the convexity test makes the weight direction-
    dependent, and the lighter one is the one that can join.
    """
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    return np.stack([f[:, [0, 1]], f[:, [0, 2]], f[:, [2, 1]]], axis=1).reshape(-1, 2)


def edge_weights(points: np.ndarray, normals: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Segmentator edge weights: ``1 - n_a . n_b``, squared across convex creases (``n_b . d > 0``).

    Args:
        points: (N, 3) float, metres. normals: (N, 3) float, outward (towards free space).
        edges: (E, 2) int directed node pairs ``(a, b)``; ``d`` is the unit vector from ``a`` to ``b``.

    Returns:
        (E,) float64 weights in ``[0, 2]`` (tiny negatives from rounding are clipped to 0). A zero-length edge
        (duplicate vertices) counts as not convex.
    """
    p = np.asarray(points, dtype=np.float64)
    n = np.asarray(normals, dtype=np.float64)
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    na, nb = n[e[:, 0]], n[e[:, 1]]
    # n_b . d has the sign of n_b . (p_b - p_a): the direction never needs normalising
    convex = np.einsum("ij,ij->i", nb, p[e[:, 1]] - p[e[:, 0]]) > 0
    w = 1.0 - np.einsum("ij,ij->i", na, nb)
    w = np.where(convex, w * w, w)
    return np.maximum(w, 0.0)


def graph_superpoints(points: np.ndarray, normals: np.ndarray, edges: np.ndarray, k_thresh: float = 0.01,
                      seg_min_size: int = 20, extra_weight: np.ndarray | None = None) -> np.ndarray:
    """Segmentator merging over any graph (the ``segment_point`` of the Python segmentator wrappers).

    Args:
        points: (N, 3) float, metres. normals: (N, 3) float, outward unit normals.
        edges: (E, 2) int directed node pairs.
        k_thresh: Felzenszwalb–Huttenlocher ``k`` (larger: larger segments).
        seg_min_size: segments smaller than this are merged into a neighbour along edges in weight order.
        extra_weight: optional (E,) float added to the normal-based weight (e.g. a colour difference).

    Returns:
        (N,) int64 segment ids, compact ``0..K-1`` by first occurrence.
    """
    w = edge_weights(points, normals, edges)
    if extra_weight is not None:
        w = w + np.asarray(extra_weight, dtype=np.float64).reshape(-1)
    root = felzenszwalb_segments(len(points), edges, w, k_thresh, seg_min_size)
    return compact_ids(root)


def mesh_superpoints(vertices: np.ndarray, faces: np.ndarray, k_thresh: float = 0.01, seg_min_verts: int = 20,
                     normal_weighting: Literal["scannet", "area"] = "scannet") -> np.ndarray:
    """ScanNet's mesh over-segmentation (the rule behind ``*.segs.json``) of a triangle mesh.

    Args:
        vertices: (V, 3) float, metres (ScanNet: raw mesh frame, z-up). faces: (F, 3) int, outward winding.
        k_thresh: ScanNet uses 0.01 (the ``0.010000`` in the file name). seg_min_verts: ScanNet uses 20.
        normal_weighting: vertex normals, see :func:`mesh_vertex_normals`; ``"scannet"`` matches the
            Segmentator.

    Returns:
        (V,) int64 segment ids ``0..K-1`` by first occurrence. A segment has fewer than ``seg_min_verts``
        vertices only when it is a whole connected component of the mesh (a vertex used by no face is one).
    """
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"mesh_superpoints: faces must index [0, {len(vertices)}), "
                         f"got [{faces.min()}, {faces.max()}]")
    normals = mesh_vertex_normals(vertices, faces, normal_weighting)
    return graph_superpoints(vertices, normals, mesh_edges(faces), k_thresh, seg_min_verts)


def knn_edges(points: np.ndarray, k: int) -> np.ndarray:
    """(E, 2) int64 directed edges from every point to its ``k`` nearest neighbours (scipy's cKDTree).

    Args:
        points: (N, 3) float, metres. k: neighbours per point; capped at N - 1.

    Returns:
        Edges ``(i, j)``, ``j != i``, grouped by ``i`` and ordered by distance. A point whose duplicates crowd
        itself out of its own query keeps ``k`` edges, so E is ``N * k`` or slightly more.
    """
    from scipy.spatial import cKDTree

    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    k = min(int(k), len(p) - 1)
    if k < 1:
        return np.zeros((0, 2), dtype=np.int64)
    _, nbr = cKDTree(p).query(p, k=k + 1)
    src = np.repeat(np.arange(len(p), dtype=np.int64), k + 1).reshape(-1, k + 1)
    # normally column 0 is the point itself; with duplicate points it may sit in a later column instead
    keep = nbr != src
    keep[keep.sum(axis=1) > k, k] = False
    return np.stack([src[keep], nbr[keep].astype(np.int64)], axis=1)


def estimate_normals(points: np.ndarray, k: int = 10, camera_location: np.ndarray | None = None) -> np.ndarray:
    """Unit normals by Open3D's PCA over the ``k`` nearest neighbours, turned to face ``camera_location``.

    Args:
        points: (N, 3) float, metres. k: neighbourhood size (10 measured best on ScanNet: smaller is noisier,
            larger smooths across creases and lets objects leak into what they touch).
        camera_location: (3,) metres; every normal is flipped to point towards it, so surfaces seen from it
            face outwards, into free space, as the convexity test needs. Default: the centre of the
            bounding box, i.e. a viewer standing inside a scanned room.

    Returns:
        (N, 3) float64 unit normals.
    """
    import open3d as o3d

    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(p) < 3:
        return np.tile(np.array([0.0, 0.0, 1.0]), (len(p), 1))
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(int(k)))
    normals = np.asarray(cloud.normals, dtype=np.float64)
    cam = (p.min(axis=0) + p.max(axis=0)) / 2 if camera_location is None else np.asarray(camera_location, float)
    # flip in NumPy rather than with Open3D's orient call: the same rule, and it keeps a zero dot unflipped
    flip = np.einsum("ij,ij->i", normals, cam.reshape(1, 3) - p) < 0
    normals[flip] *= -1.0
    return normals


def point_cloud_superpoints(points: np.ndarray, colors: np.ndarray | None = None, k: int = 6,
                            k_thresh: float = 0.01, seg_min_points: int = 20, normals: np.ndarray | None = None,
                            normal_k: int = 10, camera_location: np.ndarray | None = None,
                            color_weight: float = 0.0) -> np.ndarray:
    """The Segmentator's merging over a k-nearest-neighbour graph, for point clouds without faces.

    Args:
        points: (N, 3) float, metres, z-up (only ``camera_location``'s default cares about the frame).
        colors: optional (N, 3) RGB, 0..255 (uint8 or float); used only when ``color_weight > 0``.
        k: neighbours per point in the graph (6, about a mesh vertex's valence).
        k_thresh: Felzenszwalb–Huttenlocher ``k``, as for meshes. seg_min_points: minimum segment size.
        normals: optional (N, 3) outward unit normals (e.g. Pointcept's ``normal.npy``, the mesh's own);
            estimated with :func:`estimate_normals` when absent.
        normal_k, camera_location: see :func:`estimate_normals`.
        color_weight: adds ``color_weight * |rgb_a - rgb_b| / (255 sqrt 3)`` to each edge weight. Off by
            default: on the real ScanNet scenes it only fragmented surfaces without raising purity.

    Returns:
        (N,) int64 segment ids, compact ``0..K-1`` by first occurrence; deterministic.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if normals is None:
        n = estimate_normals(p, normal_k, camera_location)
    else:
        n = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
        if len(n) != len(p):
            raise ValueError(f"point_cloud_superpoints: {len(p)} points but {len(n)} normals")
    edges = knn_edges(p, k)
    extra = None
    if color_weight > 0:
        if colors is None:
            raise ValueError("point_cloud_superpoints: color_weight > 0 needs colors (N, 3)")
        c = np.asarray(colors, dtype=np.float64).reshape(-1, 3) / 255.0
        if len(c) != len(p):
            raise ValueError(f"point_cloud_superpoints: {len(p)} points but {len(c)} colors")
        extra = color_weight * np.linalg.norm(c[edges[:, 0]] - c[edges[:, 1]], axis=1) / np.sqrt(3.0)
    return graph_superpoints(p, n, edges, k_thresh, seg_min_points, extra_weight=extra)


def superpoint_purity(superpoint: np.ndarray, instance: np.ndarray, ignore: int | None = None) -> float:
    """Fraction of points whose superpoint's majority instance is their own instance.

    By default unannotated points (instance -1 in ScanNet) count as one more label, so a superpoint straddling
    an object and unannotated space is impure too. With ``ignore=-1`` those points have no "own instance": they
    neither vote nor are scored (the fraction is over annotated points, each superpoint's majority over its
    annotated points). 1.0 means every superpoint lies inside one instance (the property ScanNet's own
    superpoints have by construction of its annotations).

    Args:
        superpoint: (N,) int segment id per point. instance: (N,) int instance id per point.
        ignore: instance id of unannotated points to leave out, or None to count them as a label.

    Returns:
        Purity in ``[0, 1]``; 1.0 when no point is scored.
    """
    sp = np.asarray(superpoint).reshape(-1)
    inst = np.asarray(instance).reshape(-1)
    if sp.shape != inst.shape:
        raise ValueError(f"superpoint_purity: {sp.shape[0]} superpoint ids but {inst.shape[0]} instance ids")
    if ignore is not None:
        keep = inst != ignore
        sp, inst = sp[keep], inst[keep]
    if sp.size == 0:
        return 1.0
    _, sp_c = np.unique(sp, return_inverse=True)
    _, inst_c = np.unique(inst, return_inverse=True)
    # count (superpoint, instance) pairs; the largest count per superpoint is its majority's points
    pair, count = np.unique(sp_c.reshape(-1).astype(np.int64) * (inst_c.max() + 1) + inst_c.reshape(-1),
                            return_counts=True)
    majority = np.zeros(sp_c.max() + 1, dtype=np.int64)
    np.maximum.at(majority, pair // (inst_c.max() + 1), count)
    return float(majority.sum() / sp.size)
