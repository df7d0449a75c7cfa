"""Room layouts: which objects a room holds, where they stand, and that no two of them interpenetrate.

Frame: the room's own frame, metres, z-up, floor at z = 0, the room rectangle ``[0, W] x [0, D]``.
Walls are numbered 0 (y = 0), 1 (x = W), 2 (y = D), 3 (x = 0). An object's pose is the position of
its local origin (centre of its base) and a yaw that turns its local front (+y) into the room frame;
an object against wall k faces away from it.

Every object is an oriented box (footprint rectangle and height range) for placement. A new object is
accepted only if its box, grown by a clearance, meets no other box (objects standing on a host skip
that host, whose free top they were placed on), stays inside the room, and keeps out of the swing zone
in front of each door. Rooms follow one of a few programs (bedroom, living room, office, kitchen,
conference room, bathroom); most programs hold several objects of the same class, which descriptions
must tell apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from datasets.synthetic.catalog import CLASSES
from datasets.synthetic.furniture import Top, build
from datasets.synthetic.primitives import Part, box

Range = tuple[float, float]
CLEARANCE = 0.04
AREA_UNIT, MAX_SCALE = 20.0, 2.5


@dataclass
class Placed:
    """One object in the room frame (see module docstring); ``parts`` are in its local frame."""

    label: str
    size: tuple[float, float, float]
    x: float
    y: float
    yaw: float
    z0: float
    color: str
    parts: list[Part] = field(default_factory=list, repr=False)
    top: Top | None = None
    host: int | None = None
    wall: int | None = None
    u: float = 0.0
    annotated: bool = True
    virtual: bool = False  # a keep-out zone: blocks placement, has no mesh

    def corners(self, grow: float = 0.0) -> np.ndarray:
        """(4, 2) footprint corners in the room frame, grown by ``grow`` on every side."""
        w, d = self.size[0] / 2 + grow, self.size[1] / 2 + grow
        local = np.array([[-w, -d], [w, -d], [w, d], [-w, d]])
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return local @ np.array([[c, s], [-s, c]]) + np.array([self.x, self.y])

    @property
    def z1(self) -> float:
        return self.z0 + self.size[2]


def _overlap_2d(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test of two convex quadrilaterals (4, 2)."""
    if (a.max(0) <= b.min(0)).any() or (b.max(0) <= a.min(0)).any():
        return False
    for poly in (a, b):
        edges = poly[[1, 2, 3, 0]] - poly
        axes = np.stack([-edges[:, 1], edges[:, 0]], 1)
        pa, pb = a @ axes.T, b @ axes.T
        if ((pa.max(0) <= pb.min(0)) | (pb.max(0) <= pa.min(0))).any():
            return False
    return True


@dataclass
class Entry:
    """One line of a room program: how many objects of a class, placed by which rule.

    rule: "door", "wallmount", "wall", "corner", "free", "around" (chairs at a host), "beside" (next to a
    host along its wall), "on" (on a host's free top). ``per_host`` makes the count per host instance.
    ``style`` is the probability that an instance takes the entry's common look (size, colour, parts),
    so that a room holds look-alike distractors (chairs around a table) next to distinct objects.
    """

    label: str
    count: Range
    rule: str
    hosts: tuple[str, ...] = ()
    size: tuple[Range, Range, Range] | None = None
    mount: str | None = None
    z: Range = (1.1, 1.4)  # "wallmount": height of the bottom edge (m)
    style: float = 0.0
    per_host: bool = False
    scales: bool = True  # counts grow with the floor area (see ``sample_room``)


FLOOR_LAMP = ((0.35, 0.5), (0.35, 0.5), (1.35, 1.75))
COFFEE_TABLE = ((0.8, 1.3), (0.5, 0.75), (0.4, 0.5))
MONITOR = ((0.5, 0.75), (0.18, 0.22), (0.35, 0.5))
BASIN = ((0.45, 0.6), (0.36, 0.44), (0.22, 0.28))
BIG_TABLE = ((1.6, 2.4), (0.9, 1.2), (0.72, 0.76))
OPENINGS = [Entry("door", (1, 1), "door", scales=False), Entry("door", (0, 1), "door", scales=False),
            Entry("window", (1, 3), "wallmount", z=(0.8, 1.1), style=0.6)]

PROGRAMS: dict[str, list[Entry]] = {
    "bedroom": OPENINGS + [
        Entry("bed", (1, 2), "wall", style=0.6), Entry("nightstand", (1, 2), "beside", ("bed",), style=0.8,
                                                       per_host=True),
        Entry("pillow", (1, 2), "on", ("bed",), per_host=True, style=0.5),
        Entry("lamp", (1, 2), "on", ("nightstand", "dresser", "desk"), style=0.6),
        Entry("dresser", (0, 1), "wall"), Entry("cabinet", (0, 2), "wall", style=0.5),
        Entry("desk", (0, 2), "wall", style=0.5), Entry("chair", (1, 1), "around", ("desk",), per_host=True, style=0.6),
        Entry("picture", (1, 3), "wallmount", style=0.3), Entry("trash can", (0, 1), "corner"),
        Entry("lamp", (0, 1), "corner", size=FLOOR_LAMP)],
    "living room": OPENINGS + [
        Entry("couch", (1, 2), "wall", style=0.4), Entry("table", (1, 2), "free", size=COFFEE_TABLE, style=0.4),
        Entry("chair", (1, 3), "free", style=0.6), Entry("cabinet", (1, 2), "wall", style=0.5),
        Entry("tv", (0, 1), "on", ("cabinet",)), Entry("tv", (0, 1), "wallmount", mount="wall", z=(1.0, 1.3)),
        Entry("bookshelf", (0, 2), "wall", style=0.6), Entry("lamp", (1, 2), "corner", size=FLOOR_LAMP, style=0.5),
        Entry("lamp", (0, 1), "on", ("cabinet", "table")), Entry("pillow", (1, 3), "on", ("couch",), style=0.5),
        Entry("picture", (1, 3), "wallmount", style=0.3), Entry("trash can", (0, 1), "corner")],
    "office": OPENINGS + [
        Entry("desk", (2, 4), "wall", style=0.6), Entry("chair", (1, 1), "around", ("desk",), per_host=True, style=0.7),
        Entry("chair", (0, 2), "free"), Entry("cabinet", (1, 3), "wall", style=0.5),
        Entry("bookshelf", (1, 2), "wall", style=0.5), Entry("trash can", (1, 2), "corner", style=0.5),
        Entry("lamp", (0, 2), "on", ("desk",)), Entry("tv", (0, 2), "on", ("desk",), size=MONITOR, style=0.7),
        Entry("whiteboard", (0, 1), "wallmount", z=(0.9, 1.1)), Entry("picture", (0, 2), "wallmount")],
    "kitchen": OPENINGS + [
        Entry("refrigerator", (1, 1), "wall"), Entry("kitchen counter", (1, 2), "wall", style=0.8),
        Entry("sink", (0, 1), "on", ("kitchen counter",), size=BASIN, mount="onto"),
        Entry("cabinet", (1, 3), "wall", style=0.5), Entry("table", (1, 2), "free", style=0.5),
        Entry("chair", (2, 5), "around", ("table",), per_host=True, style=0.7),
        Entry("trash can", (1, 2), "corner", style=0.4), Entry("picture", (0, 2), "wallmount"),
        Entry("tv", (0, 1), "wallmount", mount="wall", z=(1.1, 1.4)), Entry("lamp", (0, 1), "on", ("cabinet",))],
    "conference room": OPENINGS + [
        Entry("table", (1, 2), "free", size=BIG_TABLE, style=0.7),
        Entry("chair", (4, 8), "around", ("table",), per_host=True, style=0.8),
        Entry("tv", (0, 1), "wallmount", mount="wall", z=(1.0, 1.3)), Entry("whiteboard", (0, 1), "wallmount",
                                                                          z=(0.9, 1.1)),
        Entry("cabinet", (0, 2), "wall", style=0.5), Entry("trash can", (0, 2), "corner"),
        Entry("picture", (0, 2), "wallmount")],
    "bathroom": OPENINGS[:1] + OPENINGS[2:] + [
        Entry("toilet", (1, 1), "wall"), Entry("sink", (1, 2), "wall", style=0.7), Entry("bathtub", (0, 1), "corner"),
        Entry("trash can", (1, 2), "corner"), Entry("cabinet", (0, 2), "wall", style=0.5),
        Entry("picture", (0, 2), "wallmount")],
}
ROOM_WEIGHTS = {"bedroom": 0.21, "living room": 0.21, "office": 0.21, "kitchen": 0.2, "conference room": 0.1,
                "bathroom": 0.07}


@dataclass
class Room:
    """A furnished room: size (m), program kind, structure colours and the placed objects."""

    kind: str
    width: float
    depth: float
    height: float
    wall_color: str
    floor_color: str
    objects: list[Placed] = field(default_factory=list)

    def wall_frame(self, k: int) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Wall k: start corner (2,), unit tangent (2,), length, and the yaw of an object facing away from it."""
        w, d = self.width, self.depth
        return [(np.array([0.0, 0.0]), np.array([1.0, 0.0]), w, 0.0),
                (np.array([w, 0.0]), np.array([0.0, 1.0]), d, math.pi / 2),
                (np.array([w, d]), np.array([-1.0, 0.0]), w, math.pi),
                (np.array([0.0, d]), np.array([0.0, -1.0]), d, -math.pi / 2)][k]

    def fits(self, obj: Placed, grow: float = CLEARANCE) -> bool:
        """Inside the room and clear of every other object (except its host) and keep-out zone."""
        c = obj.corners()
        if c.min() < 0.002 or (c[:, 0] > self.width - 0.002).any() or (c[:, 1] > self.depth - 0.002).any():
            return False
        if obj.z1 > self.height - 0.05:
            return False
        mine = obj.corners(grow)
        for i, other in enumerate(self.objects):
            if i == obj.host or other.z0 >= obj.z1 + grow or obj.z0 >= other.z1 + grow:
                continue
            if other.virtual and obj.host is not None:
                continue
            if _overlap_2d(mine, other.corners()):
                return False
        return True


def _size(rng: np.random.Generator, ranges: tuple[Range, Range, Range]) -> tuple[float, float, float]:
    w, d, h = (float(rng.uniform(lo, hi)) for lo, hi in ranges)
    return w, d, h


def _against_wall(room: Room, k: int, u: float, size: tuple[float, float, float],
                  gap: float) -> tuple[float, float, float]:
    """Pose (x, y, yaw) of an object of ``size`` with its back ``gap`` from wall k, centred at ``u`` along it."""
    start, tangent, _, yaw = room.wall_frame(k)
    normal = np.array([-tangent[1], tangent[0]])  # into the room
    p = start + u * tangent + (gap + size[1] / 2) * normal
    return float(p[0]), float(p[1]), yaw


def _candidate(room: Room, entry: Entry, rng: np.random.Generator, size: tuple[float, float, float],
               host: int | None) -> Placed | None:
    """One random pose for the entry's rule, or None when the rule cannot apply."""
    w, d, h = size
    mk = dict(label=entry.label, size=size, color="", z0=0.0)
    rule = entry.rule
    if rule in ("door", "wallmount", "wall", "corner"):
        k = int(rng.integers(4))
        length = room.wall_frame(k)[2]
        if length < w + 0.1:
            return None
        if rule == "corner":
            u = w / 2 + rng.uniform(0.03, 0.25)
            u = u if rng.random() < 0.5 else length - u
        else:
            u = rng.uniform(w / 2 + 0.05, length - w / 2 - 0.05)
        gap = 0.005 if rule in ("door", "wallmount") else rng.uniform(0.02, 0.06)
        x, y, yaw = _against_wall(room, k, u, size, gap)
        z0 = float(rng.uniform(*entry.z)) if rule == "wallmount" else 0.0
        return Placed(**{**mk, "z0": z0}, x=x, y=y, yaw=yaw, wall=k, u=u)
    if rule == "free":
        m = max(w, d) / 2 + 0.1
        if room.width < 2 * m or room.depth < 2 * m:
            return None
        yaw = rng.integers(4) * math.pi / 2 + rng.uniform(-0.35, 0.35)
        return Placed(**mk, x=rng.uniform(m, room.width - m), y=rng.uniform(m, room.depth - m), yaw=float(yaw))
    assert host is not None
    hb = room.objects[host]
    if rule == "on":
        if hb.top is None:
            return None
        x0, x1, y0, y1, zt = hb.top
        if x1 - x0 < w + 0.04 or y1 - y0 < d + 0.04:
            return None
        lx, ly = rng.uniform(x0 + w / 2 + 0.02, x1 - w / 2 - 0.02), rng.uniform(y0 + d / 2 + 0.02, y1 - d / 2 - 0.02)
        c, s = math.cos(hb.yaw), math.sin(hb.yaw)
        return Placed(**{**mk, "z0": hb.z0 + zt + 0.002}, x=hb.x + c * lx - s * ly, y=hb.y + s * lx + c * ly,
                      yaw=hb.yaw, host=host)
    if rule == "beside":
        if hb.wall is None:
            return None
        side = 1 if rng.random() < 0.5 else -1
        u = hb.u + side * (hb.size[0] / 2 + rng.uniform(0.05, 0.15) + w / 2)
        x, y, yaw = _against_wall(room, hb.wall, u, size, rng.uniform(0.02, 0.05))
        return Placed(**mk, x=x, y=y, yaw=yaw, wall=hb.wall, u=u)
    if rule == "around":
        sides = [(0.0, 1.0)] if hb.wall is not None else [(0.0, 1.0), (0.0, -1.0), (1.0, 0.0), (-1.0, 0.0)]
        nx, ny = sides[int(rng.integers(len(sides)))]
        half_along = (hb.size[0] if nx == 0 else hb.size[1]) / 2
        half_across = (hb.size[1] if nx == 0 else hb.size[0]) / 2
        if half_along * 2 < w * 0.8:
            return None
        along = rng.uniform(-max(0.0, half_along - w / 2), max(0.0, half_along - w / 2))
        dist = half_across + rng.uniform(0.05, 0.3) + d / 2
        lx, ly = nx * dist + (along if nx == 0 else 0.0), ny * dist + (along if ny == 0 else 0.0)
        c, s = math.cos(hb.yaw), math.sin(hb.yaw)
        n_room = np.array([c * nx - s * ny, s * nx + c * ny])
        yaw = math.atan2(n_room[0], -n_room[1]) + rng.uniform(-0.25, 0.25)
        return Placed(**mk, x=hb.x + c * lx - s * ly, y=hb.y + s * lx + c * ly, yaw=yaw)
    raise ValueError(f"unknown placement rule {rule!r}")


def _place_entry(room: Room, entry: Entry, rng: np.random.Generator, spacing: float, tries: int,
                 scale: float = 1.0) -> None:
    spec = CLASSES[entry.label]
    hosts = [i for i, o in enumerate(room.objects) if o.label in entry.hosts and not o.virtual]
    if entry.rule in ("on", "around", "beside") and not hosts:
        return
    lo, hi = entry.count
    if entry.scales and not entry.per_host:
        lo, hi = int(round(lo * scale)), int(round(hi * scale))
    plan: list[int | None]
    if entry.per_host:  # a count per host, each instance tied to its host
        plan = [h for h in hosts for _ in range(int(rng.integers(lo, hi + 1)))]
    else:  # a total count; a host (if any) is drawn anew at every try
        plan = [None] * int(rng.integers(lo, hi + 1))
    style_size = _size(rng, entry.size or spec.size)
    style_color = str(spec.colors[int(rng.integers(len(spec.colors)))])
    style_seed = int(rng.integers(2**31))
    mount = entry.mount or ("onto" if entry.rule == "on" else spec.mount)
    grow = 0.0 if entry.rule in ("wallmount", "door", "on") else CLEARANCE
    for fixed_host in plan:
        shared = rng.random() < entry.style  # this instance looks like the entry's common style
        size = style_size if shared else _size(rng, entry.size or spec.size)
        color = style_color if shared else str(spec.colors[int(rng.integers(len(spec.colors)))])
        part_seed = style_seed if shared else int(rng.integers(2**31))
        for _ in range(tries):
            host = fixed_host if fixed_host is not None or not hosts else hosts[int(rng.integers(len(hosts)))]
            obj = _candidate(room, entry, rng, size, host)
            if obj is None or not room.fits(obj, grow):
                continue
            obj.color = color
            obj.parts, obj.top = build(entry.label, size, np.random.default_rng(part_seed), spacing, mount)
            room.objects.append(obj)
            if entry.rule == "door":  # the swing zone in front of a door stays empty
                zone_size = (size[0] + 0.3, 0.9, 2.0)
                x, y, yaw = _against_wall(room, obj.wall or 0, obj.u, zone_size, 0.0)
                room.objects.append(Placed("door zone", zone_size, x, y, yaw, 0.0, "", annotated=False, virtual=True))
            break


def _clutter(room: Room, rng: np.random.Generator, spacing: float, tries: int) -> None:
    """A few unannotated boxes on the floor or on furniture (label 0 in labels.ply, in no segGroup)."""
    hosts = [i for i, o in enumerate(room.objects) if o.top is not None and not o.virtual]
    for _ in range(int(rng.integers(0, 4))):
        size = (float(rng.uniform(0.15, 0.4)), float(rng.uniform(0.15, 0.35)), float(rng.uniform(0.1, 0.3)))
        entry = Entry("box", (1, 1), "on" if hosts and rng.random() < 0.5 else "free")
        for _ in range(tries):
            host = hosts[int(rng.integers(len(hosts)))] if entry.rule == "on" else None
            obj = _candidate(room, entry, rng, size, host)
            if obj is not None and room.fits(obj, 0.0 if host is not None else CLEARANCE):
                w, d, h = size
                obj.color, obj.annotated = "brown" if rng.random() < 0.5 else "white", False
                obj.parts = [box([-w / 2, -d / 2, 0], [w / 2, d / 2, h], spacing, ("-z",))]
                room.objects.append(obj)
                break


def sample_room(rng: np.random.Generator, width: Range, depth: Range, height: Range, spacing: float,
                kind: str | None = None, tries: int = 40) -> Room:
    """Sample a furnished room of one program kind (random by ``ROOM_WEIGHTS`` when None)."""
    if kind is None:
        kinds = list(ROOM_WEIGHTS)
        p = np.array([ROOM_WEIGHTS[k] for k in kinds])
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    scale = 0.75 if kind == "bathroom" else 1.0
    room = Room(kind, float(rng.uniform(*width)) * scale, float(rng.uniform(*depth)) * scale,
                float(rng.uniform(*height)), str(rng.choice(["white", "gray", "yellow"])),
                str(rng.choice(["brown", "gray"])))
    # a big room holds more: counts scale with the floor area beyond AREA_UNIT (up to MAX_SCALE times)
    scale = float(np.clip(room.width * room.depth / AREA_UNIT, 1.0, MAX_SCALE))
    for entry in PROGRAMS[kind]:
        _place_entry(room, entry, rng, spacing, tries, scale)
    _clutter(room, rng, spacing, tries)
    return room
