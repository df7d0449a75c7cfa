"""What a description may talk about, measured from a scene's raw files (or the same arrays in memory).

Every quantity the description grammar refers to is computed here from the four ScanNet raw files
alone (mesh xyz and RGB, segment ids, aggregation groups), never from the generator's internal state.
So the generator and an independent check (the tests) read the same facts from the same bytes.

Frames: all coordinates are the raw scan frame of the files (metres, z-up, arbitrary yaw and offset).
Only rotation-invariant quantities are used, except left/right, which is taken relative to a viewer
facing a wall-side object (door, window, ...), whose direction is the outward normal of that wall.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from datasets.scannet.raw import SegGroup, read_aggregation, read_mesh, read_segs, scan_files

# Named colours as ScanNet-like vertex RGB; a vertex takes the nearest name (Euclidean in RGB).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (180, 40, 40), "blue": (45, 75, 170), "green": (55, 135, 65), "brown": (115, 75, 45),
    "black": (35, 35, 38), "white": (225, 225, 220), "gray": (130, 130, 130), "yellow": (215, 190, 60),
}
COLOR_NAMES: tuple[str, ...] = tuple(PALETTE)
COLOR_SHARE = 0.5  # an object "is <colour>" when more than this share of its vertices are nearest to it
STRUCTURE_LABELS = ("wall", "floor", "ceiling")


def classify_colors(rgb: np.ndarray) -> np.ndarray:
    """Nearest palette colour of each vertex: (N, 3) uint8 RGB -> (N,) int index into ``COLOR_NAMES``."""
    pal = np.asarray(list(PALETTE.values()), np.float64)
    d = ((rgb.astype(np.float64)[:, None, :] - pal[None]) ** 2).sum(-1)
    return d.argmin(1)


def convex_hull_xy(xy: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull (H, 2) of (N, 2) points; a 2-point segment if they are collinear."""
    try:
        hull = ConvexHull(xy)
        return xy[hull.vertices]
    except (QhullError, ValueError):
        centre = xy.mean(0)
        _, _, vt = np.linalg.svd(xy - centre, full_matrices=False)
        t = (xy - centre) @ vt[0]
        return np.stack([centre + t.min() * vt[0], centre + t.max() * vt[0]])


def _edges(poly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge start and end points of a closed polygon (a segment gives its two directions)."""
    return poly, np.concatenate([poly[1:], poly[:1]])


def point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances (K, M) from points p (K, 2) to segments a->b (M, 2 each)."""
    ab = b - a
    denom = np.maximum((ab * ab).sum(1), 1e-18)
    t = np.clip(((p[:, None, :] - a[None]) * ab[None]).sum(-1) / denom[None], 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(p[:, None, :] - closest, axis=-1)


def _separated(p: np.ndarray, q: np.ndarray) -> bool:
    """Separating-axis test for two convex polygons (segments allowed)."""
    for poly in (p, q):
        a, b = _edges(poly)
        normals = np.stack([-(b - a)[:, 1], (b - a)[:, 0]], 1)
        pp, qq = p @ normals.T, q @ normals.T
        if ((pp.max(0) < qq.min(0) - 1e-12) | (qq.max(0) < pp.min(0) - 1e-12)).any():
            return True
    return False


def polygon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Euclidean distance between two convex polygons (0 when they overlap)."""
    lo = np.maximum(p.min(0), q.min(0))
    hi = np.minimum(p.max(0), q.max(0))
    if (lo > hi + 1e-12).any():  # bounding boxes apart: cheaper than the separating-axis test
        return float(min(point_segment_distance(p, *_edges(q)).min(), point_segment_distance(q, *_edges(p)).min()))
    if not _separated(p, q):
        return 0.0
    return float(min(point_segment_distance(p, *_edges(q)).min(), point_segment_distance(q, *_edges(p)).min()))


def point_polygon_distance(pt: np.ndarray, poly: np.ndarray) -> float:
    """Distance from a point (2,) to a convex polygon, 0 inside (CCW polygon, or a segment)."""
    a, b = _edges(poly)
    if len(poly) >= 3:
        cross = (b - a)[:, 0] * (pt - a)[:, 1] - (b - a)[:, 1] * (pt - a)[:, 0]
        if (cross >= -1e-12).all():
            return 0.0
    return float(point_segment_distance(pt[None], a, b).min())


@dataclass
class Thing:
    """One annotated object other than walls and floor, measured from its vertices.

    Attributes:
        object_id: the aggregation objectId (= ScanRefer object_id).
        label: the raw category (aggregation ``label``).
        centre: (3,) float64 centre of the vertices' axis-aligned box, file frame.
        zmin, zmax: vertical extent (m).
        hull: (H, 2) float64 convex hull of the vertices' xy, counter-clockwise.
        area: hull area (m^2).
        color: the palette colour of more than ``COLOR_SHARE`` of the vertices, else None (not nameable).
        n_points: number of vertices.
    """

    object_id: int
    label: str
    centre: np.ndarray
    zmin: float
    zmax: float
    hull: np.ndarray
    area: float
    color: str | None
    n_points: int

    @property
    def height(self) -> float:
        return self.zmax - self.zmin

    @property
    def size(self) -> float:
        """Volume of the vertical prism over the footprint hull (m^3): what "big"/"small" compare."""
        return self.area * self.height


@dataclass
class Wall:
    """An annotated wall: a vertical plane seen from above as a segment ``ends`` (2, 2)."""

    object_id: int
    ends: np.ndarray
    normal: np.ndarray  # (2,) unit, pointing out of the room


@dataclass
class SceneGeometry:
    """The measured objects of one scene plus the pairwise gaps the relations use.

    ``gap[i, j]`` is the 3D gap between things i and j: the footprint-hull distance combined with the
    vertical gap between their height ranges (``hypot``), 0 when they touch or overlap.
    """

    scene_id: str
    things: list[Thing]
    walls: list[Wall]
    room_centre: np.ndarray
    gap: np.ndarray = field(repr=False)
    cache: dict = field(default_factory=dict, repr=False)  # relation matrices, filled on first use

    def index(self, object_id: int) -> int:
        for i, t in enumerate(self.things):
            if t.object_id == object_id:
                return i
        raise KeyError(f"{self.scene_id}: no object {object_id}")

    @property
    def labels(self) -> list[str]:
        return [t.label for t in self.things]

    def wall_gaps(self, i: int) -> np.ndarray:
        """Distances (W,) from the footprint of thing i to each wall segment."""
        key = ("wall_gaps", i)
        if key not in self.cache:
            self.cache[key] = np.array([polygon_distance(self.things[i].hull, w.ends) for w in self.walls])
        return self.cache[key]


def _thing(object_id: int, label: str, xyz: np.ndarray, color_idx: np.ndarray) -> Thing:
    lo, hi = xyz.min(0), xyz.max(0)
    hull = convex_hull_xy(xyz[:, :2].astype(np.float64))
    area = 0.0
    if len(hull) >= 3:
        x, y = hull[:, 0], hull[:, 1]
        area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    counts = np.bincount(color_idx, minlength=len(COLOR_NAMES))
    best = int(counts.argmax())
    color = COLOR_NAMES[best] if counts[best] > COLOR_SHARE * len(color_idx) else None
    return Thing(object_id, label, (lo + hi) / 2.0, float(lo[2]), float(hi[2]), hull, area, color, len(xyz))


def _wall(object_id: int, xy: np.ndarray, room_centre: np.ndarray) -> Wall:
    centre = xy.mean(0)
    _, _, vt = np.linalg.svd(xy - centre, full_matrices=False)
    tangent = vt[0]
    t = (xy - centre) @ tangent
    normal = np.array([-tangent[1], tangent[0]])
    if np.dot(normal, centre - room_centre) < 0:
        normal = -normal
    return Wall(object_id, np.stack([centre + t.min() * tangent, centre + t.max() * tangent]), normal)


def scene_geometry(scene_id: str, xyz: np.ndarray, rgb: np.ndarray, seg: np.ndarray,
                   groups: list[SegGroup]) -> SceneGeometry:
    """Measure a scene from its raw arrays.

    Args:
        xyz: (N, 3) float32 vertices as stored in ``_vh_clean_2.ply`` (metres, z-up).
        rgb: (N, 3) uint8 vertex colours of the same file.
        seg: (N,) segment id per vertex (``segIndices``).
        groups: the aggregation's segGroups.
    """
    xyz = np.asarray(xyz, np.float64)
    uniq, seg_c = np.unique(seg, return_inverse=True)
    seg_to_group = np.full(len(uniq), -1, np.int64)
    for gi, g in enumerate(groups):
        seg_to_group[np.searchsorted(uniq, g.segments)] = gi
    owner = seg_to_group[seg_c]
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(len(groups) + 1))
    members = [order[bounds[gi]:bounds[gi + 1]] for gi in range(len(groups))]
    colors = classify_colors(rgb)
    floor = [m for g, m in zip(groups, members) if g.label == "floor" and len(m)]
    if floor:
        fl = xyz[np.concatenate(floor), :2]
        room_centre = (fl.min(0) + fl.max(0)) / 2.0
    else:
        room_centre = xyz[:, :2].mean(0)
    things, walls = [], []
    for g, m in zip(groups, members):
        if len(m) == 0:
            continue
        if g.label == "wall":
            walls.append(_wall(g.object_id, xyz[m, :2], room_centre))
        elif g.label not in STRUCTURE_LABELS:
            things.append(_thing(g.object_id, g.label, xyz[m], colors[m]))
    n = len(things)
    gap = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            h = polygon_distance(things[i].hull, things[j].hull)
            v = max(0.0, things[i].zmin - things[j].zmax, things[j].zmin - things[i].zmax)
            gap[i, j] = gap[j, i] = float(np.hypot(h, v))
    return SceneGeometry(scene_id, things, walls, room_centre, gap)


def load_scene_geometry(scan_dir: str | Path) -> SceneGeometry:
    """Read the raw files of ``scans/<scene>/`` (with ``datasets.scannet.raw``) and measure the scene."""
    scan_dir = Path(scan_dir)
    files = scan_files(scan_dir)
    mesh = read_mesh(files["mesh"])
    seg = read_segs(files["segs"], len(mesh.xyz))
    return scene_geometry(scan_dir.name, mesh.xyz, mesh.rgb, seg, read_aggregation(files["aggregation"]))
