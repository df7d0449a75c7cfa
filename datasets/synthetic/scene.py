"""Turn a furnished room into ScanNet raw arrays: mesh, colours, NYU40 labels, segments, segGroups.

The room (``room.py``) is meshed object by object, moved from each object's local frame into the room
frame and then, as a whole, into an arbitrary scan frame (random yaw about z and offset), as real
ScanNet scans are not axis-aligned. Colours are the named palette colour of each part with a small
per-object hue offset, Lambert-like shading and per-vertex noise. Segments come from the
Felzenszwalb mesh segmentation (``segments.py``); since every object is its own set of mesh
components, no segment can span two objects, and every annotated instance is a union of segments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from datasets.scannet.labels import NYU40_CLASSES
from datasets.scannet.raw import Mesh, SegGroup
from datasets.synthetic.catalog import CLASSES
from datasets.synthetic.geometry import PALETTE
from datasets.synthetic.primitives import Part, merge, plane, rotate_z, vertex_normals
from datasets.synthetic.room import Room
from datasets.synthetic.segments import segment_mesh

LIGHT = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])
SHADE = (0.88, 0.14)  # brightness = 0.88 + 0.14 * max(0, n . light), so a colour keeps its palette name
NOISE_RGB = 4.0
HUE_JITTER = 8.0


@dataclass
class SceneArrays:
    """Everything the raw writers need for one scene (N vertices, F faces, K annotated objects).

    Attributes:
        mesh: xyz (N, 3) float32 in the scan frame (metres, z-up), rgb (N, 3) uint8, faces (F, 3) int64.
        nyu40: (N,) int64 NYU40 id per vertex, 0 = unannotated.
        seg: (N,) int64 segment id per vertex (smallest vertex index of the segment).
        groups: K segGroups, ``id == object_id``, sorted by id.
        colors: object_id -> named colour the generator painted (for checking the read-back colour).
    """

    mesh: Mesh
    nyu40: np.ndarray
    seg: np.ndarray
    groups: list[SegGroup]
    colors: dict[int, str]


def _cuts(rng: np.random.Generator, length: float, lo: float, hi: float) -> list[float]:
    """Random cut positions 0 = c0 < c1 < ... < cn = length with pieces between lo and hi long (roughly)."""
    cuts = [0.0]
    while length - cuts[-1] > hi:
        cuts.append(cuts[-1] + float(rng.uniform(lo, hi)))
    if length - cuts[-1] < lo / 2 and len(cuts) > 1:
        cuts.pop()
    return cuts + [length]


def _structure(room: Room, rng: np.random.Generator, spacing: float) -> list[tuple[str, list[Part], str]]:
    """Floor and four walls as open planes, normals into the room, each cut into separate panels.

    Real scans of floors and walls come out of ScanNet's segmentation in several pieces (scan noise,
    holes, seams); perfectly flat synthetic planes would not. Panels (floor tiles of 0.8-2 m, wall
    strips of 0.8-2.5 m, sometimes split at mid height) separated by a seam of 0.3 * spacing give the
    same effect while the surfaces stay exactly flat.
    """
    w, d, h = room.width, room.depth, room.height
    seam = 0.3 * spacing
    tiles = []
    xs, ys = _cuts(rng, w, 0.8, 2.0), _cuts(rng, d, 0.8, 2.0)
    for x0, x1 in zip(xs[:-1], xs[1:]):
        for y0, y1 in zip(ys[:-1], ys[1:]):
            tiles.append(plane([x0, y0, 0], [x1 - x0 - seam, 0, 0], [0, y1 - y0 - seam, 0], spacing))
    out = [("floor", tiles, room.floor_color)]
    for k in range(4):
        start, tangent, length, _ = room.wall_frame(k)
        t3, inward = np.array([tangent[0], tangent[1], 0.0]), np.array([-tangent[1], tangent[0], 0.0])
        zs = [0.0, float(rng.uniform(0.8, 1.4)), h] if rng.random() < 0.5 else [0.0, h]
        panels = []
        us = _cuts(rng, length, 0.8, 2.5)
        for u0, u1 in zip(us[:-1], us[1:]):
            for z0, z1 in zip(zs[:-1], zs[1:]):
                origin = np.array([start[0], start[1], z0]) + u0 * t3
                along, up = t3 * (u1 - u0 - seam), np.array([0.0, 0.0, z1 - z0 - seam])
                u, v = (along, up) if np.dot(np.cross(along, up), inward) > 0 else (up, along)
                panels.append(plane(origin, u, v, spacing))
        out.append(("wall", panels, room.wall_color))
    return out


def _label_rgb(nyu40: np.ndarray) -> np.ndarray:
    """Deterministic visualisation colour per NYU40 id (what ScanNet stores in labels.ply)."""
    table = np.random.default_rng(40).integers(40, 256, size=(len(NYU40_CLASSES) + 1, 3)).astype(np.uint8)
    table[0] = 0
    return table[nyu40]


def build_scene(room: Room, rng: np.random.Generator, spacing: float, structure_spacing: float) -> SceneArrays:
    """Mesh, colour, label and segment a room (see module docstring)."""
    instances: list[tuple[str, bool, str, list[Part], np.ndarray, float]] = []  # label, annotated, colour, parts
    for label, parts, color in _structure(room, rng, structure_spacing):
        instances.append((label, True, color, parts, np.zeros(3), 0.0))
    for obj in room.objects:
        if obj.virtual or not obj.parts:
            continue
        instances.append((obj.label, obj.annotated, obj.color, obj.parts, np.array([obj.x, obj.y, obj.z0]), obj.yaw))
    xyz_l, faces_l, rgb_base, inst_l, tint_l = [], [], [], [], []
    offset = 0
    for k, (_, _, color, parts, pos, yaw) in enumerate(instances):
        xyz, faces, part_of = merge(parts)
        xyz = rotate_z(xyz, yaw) + pos
        hue = rng.normal(0.0, HUE_JITTER / 2, 3).clip(-HUE_JITTER, HUE_JITTER)
        base = np.array([PALETTE[p.color or color] for p in parts], np.float64) + hue
        rgb_base.append(base[part_of])
        tint_l.append(np.array([p.tint for p in parts])[part_of])
        xyz_l.append(xyz)
        faces_l.append(faces + offset)
        inst_l.append(np.full(len(xyz), k))
        offset += len(xyz)
    xyz = np.concatenate(xyz_l)
    faces = np.concatenate(faces_l)
    inst = np.concatenate(inst_l)
    # the whole room into an arbitrary scan frame
    yaw = float(rng.uniform(0, 2 * math.pi))
    xyz = rotate_z(xyz - [room.width / 2, room.depth / 2, 0.0], yaw)
    xyz += [rng.uniform(2.0, 5.0), rng.uniform(2.0, 5.0), rng.uniform(-0.05, 0.05)]
    xyz32 = xyz.astype(np.float32)
    normals = vertex_normals(xyz32, faces)
    shade = SHADE[0] + SHADE[1] * np.clip(normals @ LIGHT, 0.0, 1.0)
    rgb = np.concatenate(rgb_base) * (np.concatenate(tint_l) * shade)[:, None] + rng.normal(0, NOISE_RGB, (len(xyz), 3))
    rgb8 = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    seg = segment_mesh(xyz32, faces)
    # objectIds in a random order, as annotation order is arbitrary in ScanNet
    annotated = [k for k, inst_k in enumerate(instances) if inst_k[1]]
    ids = rng.permutation(len(annotated))
    nyu_of = np.zeros(len(instances), np.int64)
    groups, colors = [], {}
    order = np.argsort(inst, kind="stable")
    bounds = np.searchsorted(inst[order], np.arange(len(instances) + 1))
    for k, oid in zip(annotated, ids.tolist()):
        label = instances[k][0]
        nyu_of[k] = CLASSES[label].nyu40id if label in CLASSES else {"wall": 1, "floor": 2}[label]
        segs = np.unique(seg[order[bounds[k]:bounds[k + 1]]])
        groups.append(SegGroup(id=oid, object_id=oid, label=label, segments=[int(s) for s in segs]))
        if label in CLASSES:
            colors[oid] = instances[k][2]
    groups.sort(key=lambda g: g.id)
    nyu40 = nyu_of[inst]
    return SceneArrays(Mesh(xyz32, rgb8, faces), nyu40, seg, groups, colors)


def label_colors(nyu40: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 visualisation colours of NYU40 ids for ``labels.ply``."""
    return _label_rgb(nyu40)
