"""Meshed primitives with dense, near-uniform vertices: boxes, planes, frusta (cylinders, cones).

Every builder returns a :class:`Part`: a triangle mesh in the local frame of its object (metres,
z-up) whose vertices are spaced about ``spacing`` apart, like ScanNet's decimated ``_vh_clean_2``
meshes. Closed primitives share their vertices along edges and rims (a box is one connected
component, not six loose faces), and every triangle is wound so that its normal points outward. Both
matter for the mesh segmentation (``segments.py``): it walks the mesh graph and compares vertex normals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Part:
    """One primitive of an object.

    Attributes:
        xyz: (V, 3) float64 vertices, metres, in the object's local frame (z-up).
        faces: (F, 3) int64 triangles, outward normals by the right-hand rule.
        color: palette name of an accent colour, or None for the object's own named colour.
        tint: brightness factor of this part (small differences between parts of one object).
    """

    xyz: np.ndarray
    faces: np.ndarray
    color: str | None = None
    tint: float = 1.0


def _count(length: float, spacing: float) -> int:
    """Number of grid cells along ``length`` so that cells are at most ``spacing`` long (at least 1)."""
    return max(1, int(math.ceil(length / spacing - 1e-9)))


def _grid_triangles(index: np.ndarray) -> np.ndarray:
    """Two triangles per cell of a vertex-index grid ``index`` (nu+1, nv+1); normal = u x v."""
    p00, p10 = index[:-1, :-1].ravel(), index[1:, :-1].ravel()
    p11, p01 = index[1:, 1:].ravel(), index[:-1, 1:].ravel()
    return np.concatenate([np.stack([p00, p10, p11], 1), np.stack([p00, p11, p01], 1)])


def _compact(xyz: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop vertices that no face uses and renumber the faces."""
    used = np.zeros(len(xyz), bool)
    used[faces.ravel()] = True
    new = np.cumsum(used) - 1
    return xyz[used], new[faces]


def _orient(xyz: np.ndarray, faces: np.ndarray, outward: np.ndarray) -> np.ndarray:
    """Flip triangles whose normal points against ``outward`` ((F, 3) wanted directions)."""
    a, b, c = xyz[faces[:, 0]], xyz[faces[:, 1]], xyz[faces[:, 2]]
    flip = (np.cross(b - a, c - a) * outward).sum(1) < 0
    faces = faces.copy()
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return faces


def box(lo: Sequence[float], hi: Sequence[float], spacing: float, skip: Sequence[str] = (),
        color: str | None = None, tint: float = 1.0) -> Part:
    """Closed axis-aligned box from corner ``lo`` to ``hi`` (3 floats each, local frame).

    The surface vertices are the boundary nodes of a regular lattice, so the six faces share their
    edge and corner vertices. ``skip`` names faces to leave out ("-z" for a bottom that rests on
    something, "-y" for a back against a wall); the box is then open there.
    """
    lo_a, hi_a = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    size = hi_a - lo_a
    if (size <= 0).any():
        raise ValueError(f"box: hi {hi_a} must exceed lo {lo_a} on every axis")
    n = [_count(s, spacing) for s in size]
    grids = np.meshgrid(*[np.arange(k + 1) for k in n], indexing="ij")
    on_surface = np.zeros(grids[0].shape, bool)
    for ax in range(3):
        on_surface |= (grids[ax] == 0) | (grids[ax] == n[ax])
    index = np.full(on_surface.shape, -1, np.int64)
    index[on_surface] = np.arange(int(on_surface.sum()))
    lattice = np.stack([g[on_surface] for g in grids], 1).astype(np.float64)
    xyz = lo_a + lattice / np.asarray(n, np.float64) * size
    faces = []
    for ax in range(3):
        u, v = (ax + 1) % 3, (ax + 2) % 3
        for side, sign in ((0, "-"), (n[ax], "+")):
            if f"{sign}{'xyz'[ax]}" in skip:
                continue
            sl: list[slice | int] = [slice(None)] * 3
            sl[ax] = side
            face_index = index[tuple(sl)]  # the two other axes, in increasing order
            if u > v:  # put the cyclic successor of ax first, so that u x v = +ax
                face_index = face_index.T
            if sign == "-":  # the low face must point along -ax
                face_index = face_index.T
            faces.append(_grid_triangles(face_index))
    faces_a = np.concatenate(faces)
    xyz, faces_a = _compact(xyz, faces_a)
    return Part(xyz, faces_a, color, tint)


def plane(origin: Sequence[float], u: Sequence[float], v: Sequence[float], spacing: float,
          color: str | None = None, tint: float = 1.0) -> Part:
    """Open rectangle ``origin + s*u + t*v`` (s, t in [0, 1]); its normal is ``u x v``."""
    o, ua, va = (np.asarray(x, np.float64) for x in (origin, u, v))
    nu, nv = _count(float(np.linalg.norm(ua)), spacing), _count(float(np.linalg.norm(va)), spacing)
    s, t = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1), indexing="ij")
    xyz = o + s.reshape(-1, 1) * ua + t.reshape(-1, 1) * va
    index = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
    return Part(xyz, _grid_triangles(index), color, tint)


def _ring(n: int, radius: float, z: float, cx: float, cy: float, phase: float = 0.0) -> np.ndarray:
    ang = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([cx + radius * np.cos(ang), cy + radius * np.sin(ang), np.full(n, z)], 1)


def _zipper(outer: np.ndarray, inner: np.ndarray, n_outer: int, n_inner: int, phase_inner: float) -> np.ndarray:
    """Triangulate the strip between two concentric rings with different vertex counts.

    ``outer``/``inner`` are the vertex indices of the rings (angles 2*pi*i/n, the inner one shifted by
    ``phase_inner``). Each ring edge becomes one triangle with the current vertex of the other ring;
    edges are visited in order of their mid angle, which is a merge of two sorted sequences.
    """
    key_o = (np.arange(n_outer) + 0.5) / n_outer
    key_i = ((np.arange(n_inner) + 0.5) / n_inner + phase_inner / (2 * math.pi)) % 1.0
    keys = np.concatenate([key_o, key_i])
    order = np.argsort(keys, kind="stable")
    is_outer = order < n_outer
    done_o = np.cumsum(is_outer) - is_outer  # outer edges visited before this event
    done_i = np.cumsum(~is_outer) - (~is_outer)
    tris = np.empty((len(order), 3), np.int64)
    e_o = order[is_outer]
    cur_i = inner[(done_i[is_outer] + _first_inner(key_i)) % n_inner]
    tris[is_outer] = np.stack([outer[e_o], outer[(e_o + 1) % n_outer], cur_i], 1)
    e_i = order[~is_outer] - n_outer
    cur_o = outer[done_o[~is_outer] % n_outer]
    tris[~is_outer] = np.stack([inner[e_i], inner[(e_i + 1) % n_inner], cur_o], 1)
    return tris


def _first_inner(key_i: np.ndarray) -> int:
    """Index of the inner ring vertex that is current at angle 0 (the one just before the first edge)."""
    return int(np.argmin(key_i))


def frustum(center: Sequence[float], r_bottom: float, r_top: float, height: float, spacing: float,
            caps: tuple[bool, bool] = (True, True), color: str | None = None, tint: float = 1.0) -> Part:
    """Vertical truncated cone (a cylinder when both radii agree) standing on ``center`` (x, y, z_bottom).

    The side is a grid of rings; the caps (bottom, top) are concentric rings zipped together and share
    the side's rim vertices. A radius of 0 closes the side to a point without a cap.
    """
    cx, cy, z0 = (float(c) for c in center)
    r_max = max(r_bottom, r_top)
    m = max(8, _count(2 * math.pi * r_max, spacing))
    slant = math.hypot(height, r_top - r_bottom)
    rows = _count(slant, spacing)
    zs = np.linspace(z0, z0 + height, rows + 1)
    rs = np.linspace(r_bottom, r_top, rows + 1)
    xyz = np.concatenate([_ring(m, r, z, cx, cy) for r, z in zip(rs, zs)])
    index = np.arange((rows + 1) * m).reshape(rows + 1, m)
    wrapped = np.concatenate([index, index[:, :1]], 1).T  # (m+1, rows+1): u = angle, v = up
    faces = [_grid_triangles(wrapped)]
    outward = []
    pts = [xyz]
    n_vert = len(xyz)
    ends = ((caps[0], r_bottom, z0, index[0], -1.0), (caps[1], r_top, z0 + height, index[-1], 1.0))
    for cap, r, z, rim, sign in ends:
        if not cap or r <= 0:
            continue
        k = _count(r, spacing)
        prev, n_prev = rim, m
        for ring in range(k - 1, 0, -1):
            rr = r * ring / k
            n_r = max(6, _count(2 * math.pi * rr, spacing))
            phase = math.pi / n_r
            ring_idx = np.arange(n_vert, n_vert + n_r)
            pts.append(_ring(n_r, rr, z, cx, cy, phase))
            n_vert += n_r
            tri = _zipper(prev, ring_idx, n_prev, n_r, phase)
            faces.append(tri)
            outward.append((len(tri), sign))
            prev, n_prev = ring_idx, n_r
        pts.append(np.array([[cx, cy, z]]))
        centre = n_vert
        n_vert += 1
        fan = np.stack([prev, np.roll(prev, -1), np.full(n_prev, centre)], 1)
        faces.append(fan)
        outward.append((len(fan), sign))
    xyz = np.concatenate(pts)
    faces_a = np.concatenate(faces)
    # side triangles point away from the axis, cap triangles along +-z
    want = np.zeros((len(faces_a), 3))
    n_side = len(faces[0])
    tri_c = xyz[faces_a[:n_side]].mean(1)
    want[:n_side, 0], want[:n_side, 1] = tri_c[:, 0] - cx, tri_c[:, 1] - cy
    pos = n_side
    for count, sign in outward:
        want[pos:pos + count, 2] = sign
        pos += count
    return Part(xyz, _orient(xyz, faces_a, want), color, tint)


def rotate_z(xyz: np.ndarray, yaw: float) -> np.ndarray:
    """Rotate (N, 3) points by ``yaw`` radians about +z (counter-clockwise seen from above)."""
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return xyz @ rot.T


def merge(parts: Sequence[Part]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate parts: (V, 3) xyz, (F, 3) faces with offset indices, (V,) part index of each vertex."""
    offsets = np.cumsum([0] + [len(p.xyz) for p in parts])
    xyz = np.concatenate([p.xyz for p in parts])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets[:-1])])
    part_of = np.repeat(np.arange(len(parts)), [len(p.xyz) for p in parts])
    return xyz, faces, part_of


def face_normals(xyz: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted face normals (F, 3): the cross product of two edges, not normalised."""
    a, b, c = xyz[faces[:, 0]], xyz[faces[:, 1]], xyz[faces[:, 2]]
    return np.cross(b - a, c - a)


def vertex_normals(xyz: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals (V, 3) float64: the sum of the area-weighted normals of the adjacent faces.

    This is how ScanNet's segmentator computes them; isolated vertices get (0, 0, 1).
    """
    xyz = np.asarray(xyz, np.float64)
    fn = face_normals(xyz, faces)
    normals = np.zeros_like(xyz)
    for d in range(3):  # bincount is an order of magnitude faster than np.add.at
        for k in range(3):
            normals[:, d] += np.bincount(faces[:, k], weights=fn[:, d], minlength=len(xyz))
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.where(norm > 0, normals / np.maximum(norm, 1e-300), np.array([0.0, 0.0, 1.0]))
