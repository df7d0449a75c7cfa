"""Builders of the object classes from primitives, so that each class shows in the geometry.

Every builder takes the instance size (w, d, h) in metres, a random generator and the vertex spacing
``s``, and returns the parts in the object's local frame (front toward +y, back toward -y, base at
z = 0, everything inside ``[-w/2, w/2] x [-d/2, d/2] x [0, h]``) plus the free top surface that other
objects may stand on, ``(x0, x1, y0, y1, z)`` in the same frame, or None. Faces that rest on the floor
are left open ("-z"): a scanner never sees them, and ScanNet meshes have no such faces either.

Every object is built from at least two separate primitives, so that the mesh segmentation always
gives it several segments (separate mesh components never share one). Parts keep the object's named
colour except small accents (handles, legs of some chairs, a lamp's
base, a bed frame): the named colour always covers most of the vertices, which is how it is read
back from the mesh (``geometry.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from datasets.synthetic.primitives import Part, box, frustum

Top = tuple[float, float, float, float, float]
Built = tuple[list[Part], Top | None]
FLOOR = ("-z",)
UNDERSIDE = ("-z",)  # undersides of table tops and seats: a hand-held scan rarely sees them


def _accent(rng: np.random.Generator, choices: tuple[str, ...] = ("black", "gray", "white")) -> str:
    return str(choices[int(rng.integers(len(choices)))])


def _legs(x: float, y: float, z1: float, t: float, s: float, color: str | None = None) -> list[Part]:
    """Four square legs of side t with outer faces at |x|, |y|, from the floor to z1."""
    return [box([sx * x - (t if sx > 0 else 0), sy * y - (t if sy > 0 else 0), 0.0],
                [sx * x + (0 if sx > 0 else t), sy * y + (0 if sy > 0 else t), z1], s, FLOOR, color)
            for sx in (-1, 1) for sy in (-1, 1)]


def _tub(w: float, d: float, h: float, t: float, s: float, z0: float = 0.0) -> list[Part]:
    """An open-top basin: a bottom slab and four walls of thickness t."""
    return [box([-w / 2, -d / 2, z0], [w / 2, d / 2, z0 + t], s, FLOOR),
            box([-w / 2, -d / 2, z0 + t], [-w / 2 + t, d / 2, z0 + h], s),
            box([w / 2 - t, -d / 2, z0 + t], [w / 2, d / 2, z0 + h], s),
            box([-w / 2 + t, -d / 2, z0 + t], [w / 2 - t, -d / 2 + t, z0 + h], s),
            box([-w / 2 + t, d / 2 - t, z0 + t], [w / 2 - t, d / 2, z0 + h], s)]


def chair(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    seat, st, leg = rng.uniform(0.42, 0.48), 0.05, rng.uniform(0.035, 0.045)
    legs = _accent(rng, ("black", "gray")) if rng.random() < 0.35 else None
    parts = _legs(w / 2, d / 2, seat - st, leg, s, legs)
    parts.append(box([-w / 2, -d / 2, seat - st], [w / 2, d / 2, seat], s, UNDERSIDE))
    parts.append(box([-w / 2, -d / 2, seat], [w / 2, -d / 2 + 0.05, h], s, tint=0.96))
    if rng.random() < 0.3:  # armchair: solid arm panels
        for x0 in (-w / 2, w / 2 - 0.05):
            parts.append(box([x0, -d / 2 + 0.05, seat], [x0 + 0.05, d / 2 - 0.04, seat + 0.22], s))
    return parts, None


def table(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    tt = rng.uniform(0.03, 0.05)
    if w < 1.3 * d and rng.random() < 0.4:  # round table on a pedestal
        r = min(w, d) / 2
        parts = [frustum([0, 0, h - tt], r, r, tt, s), frustum([0, 0, 0.03], 0.05, 0.05, h - tt - 0.03, s),
                 frustum([0, 0, 0], 0.6 * r, 0.6 * r, 0.03, s, caps=(False, True))]
        return parts, (-0.65 * r, 0.65 * r, -0.65 * r, 0.65 * r, h)
    # legs in the table's colour: with the top's underside left open, accent legs could outnumber it
    parts = _legs(w / 2 - 0.03, d / 2 - 0.03, h - tt, rng.uniform(0.045, 0.07), s)
    parts.append(box([-w / 2, -d / 2, h - tt], [w / 2, d / 2, h], s, UNDERSIDE))
    return parts, (-w / 2, w / 2, -d / 2, d / 2, h)


def desk(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    tt = 0.035
    parts = [box([-w / 2, -d / 2, h - tt], [w / 2, d / 2, h], s, UNDERSIDE)]
    if rng.random() < 0.5:  # two side panels and a modesty panel
        parts += [box([-w / 2, -d / 2, 0], [-w / 2 + 0.035, d / 2, h - tt], s, FLOOR),
                  box([w / 2 - 0.035, -d / 2, 0], [w / 2, d / 2, h - tt], s, FLOOR),
                  box([-w / 2 + 0.035, -d / 2, 0.3], [w / 2 - 0.035, -d / 2 + 0.02, h - tt], s)]
    else:  # a drawer block on one side, two legs on the other
        side = 1 if rng.random() < 0.5 else -1
        x0, x1 = sorted([side * w / 2, side * (w / 2 - 0.42)])
        parts.append(box([x0, -d / 2, 0], [x1, d / 2, h - tt], s, FLOOR, tint=0.95))
        for k in range(3):  # drawer handles
            z = 0.06 + k * (h - tt - 0.06) / 3
            parts.append(box([x0 + 0.16, d / 2 - 0.02, z + 0.1], [x1 - 0.16, d / 2, z + 0.12], s, color="gray"))
        for y in (-d / 2 + 0.03, d / 2 - 0.03 - 0.05):
            xl = -side * (w / 2 - 0.03)
            parts.append(box([min(xl, xl + side * 0.05), y, 0], [max(xl, xl + side * 0.05), y + 0.05, h - tt], s,
                             FLOOR))
    return parts, (-w / 2, w / 2, -d / 2, d / 2, h)


def _fronts(w: float, d: float, z0: float, z1: float, rows: int, cols: int, s: float,
            handle: str) -> list[Part]:
    """Door or drawer fronts (2 cm proud of the body) with small handles, on the +y face."""
    parts = []
    for r in range(rows):
        for c in range(cols):
            xa = -w / 2 + 0.01 + c * (w - 0.02) / cols
            xb = xa + (w - 0.02) / cols - 0.01
            za = z0 + r * (z1 - z0) / rows
            zb = za + (z1 - z0) / rows - 0.01
            parts.append(box([xa, d / 2 - 0.035, za], [xb, d / 2 - 0.015, zb], s, ("-y",), tint=1.03))
            xm, zm = (xa + xb) / 2, (zb - 0.06) if rows == 1 else (za + zb) / 2
            parts.append(box([xm - 0.05, d / 2 - 0.015, zm - 0.01], [xm + 0.05, d / 2, zm + 0.01], s, ("-y",),
                             color=handle))
    return parts


def cabinet(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    parts = [box([-w / 2, -d / 2, 0], [w / 2, d / 2 - 0.035, h], s, FLOOR)]
    cols = 1 if w < 0.6 else 2
    parts += _fronts(w, d, 0.06, h - 0.03, 1, cols, s, _accent(rng))
    return parts, (-w / 2, w / 2, -d / 2, d / 2 - 0.035, h)


def nightstand(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    parts = [box([-w / 2, -d / 2, 0], [w / 2, d / 2 - 0.035, h], s, FLOOR)]
    parts += _fronts(w, d, 0.05, h - 0.03, 2, 1, s, _accent(rng))
    return parts, (-w / 2, w / 2, -d / 2, d / 2 - 0.035, h)


def dresser(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    parts = [box([-w / 2, -d / 2, 0], [w / 2, d / 2 - 0.035, h], s, FLOOR)]
    parts += _fronts(w, d, 0.06, h - 0.03, int(rng.integers(3, 5)), 2, s, _accent(rng))
    return parts, (-w / 2, w / 2, -d / 2, d / 2 - 0.035, h)


def kitchen_counter(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    top = 0.04
    parts = [box([-w / 2, -d / 2, 0], [w / 2, d / 2 - 0.06, h - top], s, FLOOR),
             box([-w / 2, -d / 2, h - top], [w / 2, d / 2, h], s, FLOOR, tint=1.04)]
    parts += _fronts(w, d - 0.03, 0.1, h - top - 0.03, 1, max(1, round(w / 0.6)), s, _accent(rng))
    return parts, (-w / 2, w / 2, -d / 2, d / 2, h)


def bookshelf(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    t = 0.025
    parts = [box([-w / 2, -d / 2, 0], [-w / 2 + t, d / 2, h], s, FLOOR),
             box([w / 2 - t, -d / 2, 0], [w / 2, d / 2, h], s, FLOOR),
             box([-w / 2 + t, -d / 2, h - t], [w / 2 - t, d / 2, h], s),
             box([-w / 2 + t, -d / 2, 0], [w / 2 - t, d / 2, 0.06], s, FLOOR),
             box([-w / 2 + t, -d / 2, 0.06], [w / 2 - t, -d / 2 + 0.015, h - t], s, ("-y",), tint=0.92)]
    n = int(rng.integers(2, 5)) if h > 1.3 else 1
    for k in range(1, n + 1):
        z = 0.06 + k * (h - t - 0.06) / (n + 1)
        parts.append(box([-w / 2 + t, -d / 2 + 0.015, z - 0.01], [w / 2 - t, d / 2, z + 0.01], s))
    return parts, ((-w / 2, w / 2, -d / 2, d / 2, h) if h < 1.3 else None)


def bed(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    frame, mattress, head = rng.uniform(0.25, 0.32), rng.uniform(0.18, 0.25), 0.06
    wood = _accent(rng, ("brown", "black", "white", "gray"))
    parts = [box([-w / 2, -d / 2 + head, 0], [w / 2, d / 2, frame], s, ("-z", "+z"), wood),
             box([-w / 2 + 0.03, -d / 2 + head + 0.02, frame], [w / 2 - 0.03, d / 2 - 0.03, frame + mattress], s,
                 FLOOR),
             box([-w / 2, -d / 2, 0], [w / 2, -d / 2 + head, h], s, FLOOR, tint=0.94)]
    z = frame + mattress
    return parts, (-w / 2 + 0.05, w / 2 - 0.05, -d / 2 + head + 0.04, -d / 2 + head + 0.6, z)


def pillow(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    # a cushion and its slightly smaller, puffed-up top layer
    return [box([-w / 2, -d / 2, 0], [w / 2, d / 2, 0.6 * h], s, FLOOR),
            box([-w / 2 + 0.03, -d / 2 + 0.03, 0.6 * h], [w / 2 - 0.03, d / 2 - 0.03, h], s, FLOOR, tint=1.03)], None


def couch(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    seat, back, arm = rng.uniform(0.38, 0.44), rng.uniform(0.18, 0.24), rng.uniform(0.14, 0.2)
    arm_h, cushion = seat + rng.uniform(0.15, 0.25), 0.1
    parts = [box([-w / 2, -d / 2, 0], [w / 2, d / 2, seat], s, ("-z", "+z"), tint=0.95),
             box([-w / 2, -d / 2, seat], [w / 2, -d / 2 + back, h], s, FLOOR),
             box([-w / 2, -d / 2 + back, seat], [-w / 2 + arm, d / 2, arm_h], s, FLOOR),
             box([w / 2 - arm, -d / 2 + back, seat], [w / 2, d / 2, arm_h], s, FLOOR)]
    n = 2 if w < 1.8 else 3
    inner = w - 2 * arm
    for k in range(n):
        x0 = -w / 2 + arm + k * inner / n + 0.005
        parts.append(box([x0, -d / 2 + back + 0.005, seat], [x0 + inner / n - 0.01, d / 2 - 0.01, seat + cushion], s,
                         FLOOR, tint=1.03))
    z = seat + cushion
    return parts, (-w / 2 + arm + 0.02, w / 2 - arm - 0.02, -d / 2 + back + 0.02, -d / 2 + back + 0.4, z)


def lamp(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    r = min(w, d) / 2
    shade = min(0.35, max(0.18, 0.3 * h))
    base = _accent(rng)
    parts = [frustum([0, 0, 0], 0.5 * r, 0.45 * r, 0.03, s, (False, True), base),
             frustum([0, 0, 0.03], 0.015, 0.015, h - shade * 0.7 - 0.03, s, (False, False)),
             frustum([0, 0, h - shade], r, 0.65 * r, shade, s, (True, True), tint=1.02)]
    return parts, None


def tv(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    if mount == "wall":  # a panel on a small wall bracket
        return [box([-w / 2, -d / 2 + 0.02, 0], [w / 2, d / 2, h], s),
                box([-w / 6, -d / 2, h / 3], [w / 6, -d / 2 + 0.02, 2 * h / 3], s, ("-y",), "black")], None
    stand = rng.uniform(0.06, 0.1)
    t = 0.06
    parts = [box([-w / 2, -t / 2, stand], [w / 2, t / 2, h], s),
             box([-0.04, -0.02, 0.02], [0.04, 0.02, stand], s),
             box([-w / 4, -d / 2, 0], [w / 4, d / 2, 0.02], s, FLOOR)]
    return parts, None


def picture(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    f, back = 0.04, ("-y",)  # a canvas inside a frame of four bars (the frame a shade darker)
    parts = [box([-w / 2 + f, -d / 2, f], [w / 2 - f, d / 2 - 0.01, h - f], s, back),
             box([-w / 2, -d / 2, 0], [w / 2, d / 2, f], s, back, tint=0.93),
             box([-w / 2, -d / 2, h - f], [w / 2, d / 2, h], s, back, tint=0.93),
             box([-w / 2, -d / 2, f], [-w / 2 + f, d / 2, h - f], s, back, tint=0.93),
             box([w / 2 - f, -d / 2, f], [w / 2, d / 2, h - f], s, back, tint=0.93)]
    return parts, None


def window(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    f, back = 0.06, ("-y",)
    parts = [box([-w / 2, -d / 2, 0], [w / 2, d / 2, f], s, back),
             box([-w / 2, -d / 2, h - f], [w / 2, d / 2, h], s, back),
             box([-w / 2, -d / 2, f], [-w / 2 + f, d / 2, h - f], s, back),
             box([w / 2 - f, -d / 2, f], [w / 2, d / 2, h - f], s, back),
             box([-0.02, -d / 2, f], [0.02, d / 2, h - f], s, back),
             box([-w / 2 + f, -d / 2, f], [w / 2 - f, -d / 2 + 0.015, h - f], s, back, tint=1.05)]
    return parts, None


def door(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    parts = [box([-w / 2, -d / 2, 0], [w / 2, d / 2 - 0.015, h], s, ("-z", "-y")),
             box([w / 2 - 0.2, d / 2 - 0.015, 0.98], [w / 2 - 0.06, d / 2, 1.02], s, ("-y",), color="gray")]
    return parts, None


def whiteboard(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    return [box([-w / 2, -d / 2, 0.04], [w / 2, d / 2, h], s, ("-y",)),
            box([-w / 2, -d / 2, 0], [w / 2, d / 2, 0.04], s, ("-y",), color="gray")], None


def trash_can(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    r, rim = min(w, d) / 2, 0.03  # a body and a rim (or lid) at the top
    if rng.random() < 0.7:
        return [frustum([0, 0, 0], 0.85 * r, 0.97 * r, h - rim, s, (False, False)),
                frustum([0, 0, h - rim], r, r, rim, s, (False, rng.random() < 0.4), tint=0.95)], None
    return [box([-w / 2 * 0.9, -d / 2 * 0.9, 0], [w / 2 * 0.9, d / 2 * 0.9, h - rim], s, FLOOR),
            box([-w / 2, -d / 2, h - rim], [w / 2, d / 2, h], s, FLOOR, tint=0.95)], None


def refrigerator(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    split = h * rng.uniform(0.62, 0.72)
    handle = _accent(rng, ("gray", "black"))
    parts = [box([-w / 2, -d / 2, 0], [w / 2, d / 2 - 0.04, h], s, FLOOR),
             box([-w / 2 + 0.005, d / 2 - 0.04, 0.03], [w / 2 - 0.005, d / 2 - 0.015, split - 0.01], s, ("-y",),
                 tint=1.03),
             box([-w / 2 + 0.005, d / 2 - 0.04, split], [w / 2 - 0.005, d / 2 - 0.015, h - 0.01], s, ("-y",),
                 tint=1.03)]
    for z0, z1 in ((split - 0.45, split - 0.1), (split + 0.05, split + 0.3)):
        parts.append(box([w / 2 - 0.09, d / 2 - 0.015, z0], [w / 2 - 0.06, d / 2, z1], s, ("-y",), color=handle))
    return parts, None


def sink(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    faucet = 0.08
    basin = min(h - faucet, rng.uniform(0.14, 0.2))
    rim = h - faucet
    parts = _tub(w, d, basin, 0.04, s, rim - basin)
    if mount != "onto":  # pedestal sink on the floor
        parts.append(frustum([0, 0, 0], 0.09, 0.07, rim - basin, s, (False, False)))
    parts.append(frustum([0, -d / 2 + 0.02, rim], 0.018, 0.018, faucet, s, (False, True), "gray"))
    return parts, None


def toilet(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    tank_d, r = rng.uniform(0.17, 0.22), w / 2 - 0.01
    yc = d / 2 - r - 0.01
    seat = rng.uniform(0.38, 0.42)
    parts = [box([-w / 2, -d / 2, 0], [w / 2, -d / 2 + tank_d, h], s, FLOOR),
             frustum([0, yc, 0], 0.6 * r, 0.8 * r, seat - 0.05, s, (False, False)),
             frustum([0, yc, seat - 0.05], r, r, 0.05, s, (True, True), tint=1.03)]
    return parts, None


def bathtub(w: float, d: float, h: float, rng: np.random.Generator, s: float, mount: str) -> Built:
    return _tub(w, d, h, 0.07, s), None


BUILDERS: dict[str, Callable[[float, float, float, np.random.Generator, float, str], Built]] = {
    "chair": chair, "table": table, "desk": desk, "cabinet": cabinet, "nightstand": nightstand,
    "dresser": dresser, "kitchen counter": kitchen_counter, "bookshelf": bookshelf, "bed": bed, "pillow": pillow,
    "couch": couch, "lamp": lamp, "tv": tv, "picture": picture, "window": window, "door": door,
    "whiteboard": whiteboard, "trash can": trash_can, "refrigerator": refrigerator, "sink": sink,
    "toilet": toilet, "bathtub": bathtub,
}


def build(label: str, size: tuple[float, float, float], rng: np.random.Generator, spacing: float,
          mount: str = "floor") -> Built:
    """Parts (local frame, see module docstring) and free top of one instance of ``label``."""
    w, d, h = size
    return BUILDERS[label](w, d, h, rng, spacing, mount)
