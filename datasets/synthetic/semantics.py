"""Meaning of the description grammar, evaluated over measured geometry (three-valued).

A description is stored as a *program* (JSON-able dict)::

    {"target": {"label": "chair", "plural": false},
     "filters": [{"rel": "color", "color": "brown"},
                 {"rel": "near" | "on" | "above" | "under", "anchor": NP},
                 {"rel": "left" | "right", "anchor": NP, "view": VIEW},
                 {"rel": "between", "anchors": [NP, NP]}],
     "selector": null | {"rel": "tallest" | "shortest" | "biggest" | "smallest"}
                      | {"rel": "closest" | "farthest", "anchor": NP}
                      | {"rel": "leftmost" | "rightmost", "view": VIEW}}
    NP   = {"label": raw category, "color": palette name or null}   -- must name exactly one object
    VIEW = {"anchor": NP, "back": bool}   -- "when facing the <NP>" / "with your back to the <NP>"

The referents are the objects of the target label for which every filter holds and which win the
selector; the selector ranks *all* objects of the target label (so "the tallest chair ... it is
brown" reads the same whichever way the sentences are combined). Every relation is three-valued:
true, false, or unsure inside a band around its threshold (e.g. "near" is true below a 0.35 m gap,
false above 0.65 m). A description is accepted only when no candidate is unsure, so small changes of
measurement never flip its meaning. The thresholds below are the definition of the grammar's words.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datasets.synthetic.geometry import SceneGeometry, point_polygon_distance

TRUE, FALSE, UNSURE = 1, 0, -1

NEAR_TRUE, NEAR_FALSE = 0.35, 0.65  # gap (m)
ON_CONTACT, ON_FAR, ON_OUT = 0.04, 0.15, 0.10  # |zmin_a - zmax_b|; centre of a outside b's footprint
ABOVE_DZ_TRUE, ABOVE_DZ_FALSE = -0.02, -0.10  # zmin_a - zmax_b
ABOVE_OUT_TRUE, ABOVE_OUT_FALSE = 0.15, 0.35  # distance of a's centre from b's footprint
LATERAL_TRUE, LATERAL_FALSE = 0.30, 0.05  # offset along the viewer's right axis (m)
LATERAL_GAP_TRUE, LATERAL_GAP_FALSE = 2.5, 3.5  # "left of" also means "not far from"
BETWEEN_T, BETWEEN_PERP_T, BETWEEN_PERP_F = (0.15, 0.85), (0.35, 0.6), (0.6, 1.0)
VIEW_WALL_NEAR, VIEW_WALL_SECOND = 0.35, 0.60  # a view anchor stands by exactly one wall
HEIGHT_RATIO, HEIGHT_DIFF = 1.12, 0.06
SIZE_RATIO = 1.35
CLOSEST_MARGIN, FARTHEST_MARGIN, SIDE_MARGIN = 0.35, 0.50, 0.40

FILTER_RELS = ("color", "near", "on", "above", "under", "left", "right", "between")
SELECTOR_RELS = ("tallest", "shortest", "biggest", "smallest", "closest", "farthest", "leftmost", "rightmost")


class ProgramError(ValueError):
    """A program that cannot be evaluated in this scene (an anchor or view that names no single object)."""


def and3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Three-valued conjunction: false wins, then unsure, else true."""
    out = np.where((a == UNSURE) | (b == UNSURE), UNSURE, TRUE)
    return np.where((a == FALSE) | (b == FALSE), FALSE, out).astype(np.int8)


def band(value: np.ndarray, true_max: float, false_min: float) -> np.ndarray:
    """TRUE where value <= true_max, FALSE where value >= false_min, UNSURE between."""
    out = np.full(np.shape(value), UNSURE, np.int8)
    out[np.asarray(value) <= true_max] = TRUE
    out[np.asarray(value) >= false_min] = FALSE
    return out


def np_values(geom: SceneGeometry, np_: dict[str, Any]) -> np.ndarray:
    """Which things a noun phrase {"label", "color"} matches, (n,) three-valued."""
    out = np.array([TRUE if t.label == np_["label"] else FALSE for t in geom.things], np.int8)
    if np_.get("color"):
        out = and3(out, color_values(geom, np_["color"]))
    return out


def resolve(geom: SceneGeometry, np_: dict[str, Any]) -> int:
    """Index of the one thing a definite noun phrase names; ProgramError unless exactly one, surely."""
    v = np_values(geom, np_)
    if (v == TRUE).sum() != 1 or (v == UNSURE).any():
        raise ProgramError(f"{geom.scene_id}: 'the {np_.get('color') or ''} {np_['label']}' does not name one object")
    return int(np.flatnonzero(v == TRUE)[0])


def view_direction(geom: SceneGeometry, view: dict[str, Any]) -> np.ndarray:
    """Unit (2,) direction a viewer faces: toward the wall its anchor stands by (reversed for "back")."""
    j = resolve(geom, view["anchor"])
    gaps = geom.wall_gaps(j)
    if len(gaps) < 2:
        raise ProgramError(f"{geom.scene_id}: no walls to orient a view")
    order = np.argsort(gaps)
    if gaps[order[0]] > VIEW_WALL_NEAR or gaps[order[1]] < VIEW_WALL_SECOND:
        raise ProgramError(f"{geom.scene_id}: the {view['anchor']['label']} is not by exactly one wall")
    d = geom.walls[int(order[0])].normal
    return -d if view.get("back") else d


def right_of_view(direction: np.ndarray) -> np.ndarray:
    """The viewer's right hand (2,) when facing ``direction`` with z up."""
    return np.array([direction[1], -direction[0]])


def color_values(geom: SceneGeometry, color: str) -> np.ndarray:
    return np.array([UNSURE if t.color is None else (TRUE if t.color == color else FALSE) for t in geom.things],
                    np.int8)


def near_values(geom: SceneGeometry, j: int) -> np.ndarray:
    out = band(geom.gap[:, j], NEAR_TRUE, NEAR_FALSE)
    out[j] = FALSE
    return out


def _support(geom: SceneGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(n, n) matrices: ``dz[i, j] = zmin_i - zmax_j``, ``out[i, j]`` = distance of i's centre from j's footprint."""
    if "support" not in geom.cache:
        things = geom.things
        dz = np.array([[a.zmin - b.zmax for b in things] for a in things]).reshape(len(things), len(things))
        out = np.array([[point_polygon_distance(a.centre[:2], b.hull) for b in things] for a in things])
        geom.cache["support"] = (dz, out.reshape(len(things), len(things)))
    return geom.cache["support"]


def _above_matrix(geom: SceneGeometry) -> np.ndarray:
    """(n, n) three-valued: thing i is above thing j (higher than j's top, over or just beside its footprint)."""
    if "above" not in geom.cache:
        dz, out = _support(geom)
        res = np.full(dz.shape, UNSURE, np.int8)
        res[(dz >= ABOVE_DZ_TRUE) & (out <= ABOVE_OUT_TRUE)] = TRUE
        res[(dz <= ABOVE_DZ_FALSE) | (out >= ABOVE_OUT_FALSE)] = FALSE
        np.fill_diagonal(res, FALSE)
        geom.cache["above"] = res
    return geom.cache["above"]


def on_values(geom: SceneGeometry, j: int) -> np.ndarray:
    """Thing i rests on thing j: its bottom touches j's top and its centre is over j's footprint."""
    dz, out = _support(geom)
    dz, out = np.abs(dz[:, j]), out[:, j]
    res = np.full(len(dz), UNSURE, np.int8)
    res[(dz <= ON_CONTACT) & (out <= 0.0)] = TRUE
    res[(dz >= ON_FAR) | (out >= ON_OUT)] = FALSE
    res[j] = FALSE
    return res


def above_values(geom: SceneGeometry, j: int) -> np.ndarray:
    """Thing i is above thing j."""
    return _above_matrix(geom)[:, j].copy()


def under_values(geom: SceneGeometry, j: int) -> np.ndarray:
    """Thing i is under thing j, i.e. j is above i."""
    return _above_matrix(geom)[j, :].copy()


def lateral_values(geom: SceneGeometry, j: int, direction: np.ndarray, side: str) -> np.ndarray:
    """Thing i is to the ``side`` ("left"/"right") of thing j for a viewer facing ``direction``."""
    right = right_of_view(direction)
    lat = np.array([t.centre[:2] @ right for t in geom.things])
    offset = (lat[j] - lat) if side == "left" else (lat - lat[j])
    res = np.full(len(lat), UNSURE, np.int8)
    res[(offset >= LATERAL_TRUE) & (geom.gap[:, j] <= LATERAL_GAP_TRUE)] = TRUE
    res[(offset <= LATERAL_FALSE) | (geom.gap[:, j] >= LATERAL_GAP_FALSE)] = FALSE
    res[j] = FALSE
    return res


def between_values(geom: SceneGeometry, j: int, k: int) -> np.ndarray:
    """Thing i lies between things j and k: it projects inside the segment joining their centres, close to it."""
    a, b = geom.things[j].centre[:2], geom.things[k].centre[:2]
    ab = b - a
    length = float(np.linalg.norm(ab))
    res = np.full(len(geom.things), FALSE, np.int8)
    if length < 1e-6:
        return res
    p = np.array([t.centre[:2] for t in geom.things]) - a
    t = p @ ab / length**2
    perp = np.abs(p[:, 0] * ab[1] - p[:, 1] * ab[0]) / length
    perp_t = min(BETWEEN_PERP_T[0] * length, BETWEEN_PERP_T[1])
    perp_f = min(BETWEEN_PERP_F[0] * length, BETWEEN_PERP_F[1])
    res[:] = UNSURE
    res[(t >= BETWEEN_T[0]) & (t <= BETWEEN_T[1]) & (perp <= perp_t)] = TRUE
    res[(t <= 0.0) | (t >= 1.0) | (perp >= perp_f)] = FALSE
    res[[j, k]] = FALSE
    return res


def filter_values(geom: SceneGeometry, f: dict[str, Any]) -> np.ndarray:
    """(n,) three-valued truth of one filter for every thing."""
    rel = f["rel"]
    if rel == "color":
        return color_values(geom, f["color"])
    if rel == "between":
        return between_values(geom, resolve(geom, f["anchors"][0]), resolve(geom, f["anchors"][1]))
    j = resolve(geom, f["anchor"])
    if rel == "near":
        return near_values(geom, j)
    if rel == "on":
        return on_values(geom, j)
    if rel == "above":
        return above_values(geom, j)
    if rel == "under":
        return under_values(geom, j)
    if rel in ("left", "right"):
        return lateral_values(geom, j, view_direction(geom, f["view"]), rel)
    raise ProgramError(f"unknown filter relation {rel!r}")


def _extreme(values: np.ndarray, largest: bool, ratio: float, diff: float) -> np.ndarray:
    """Winner-takes-all over candidate values with a margin: TRUE/FALSE per candidate, all UNSURE if too close."""
    if len(values) == 1:
        return np.array([TRUE], np.int8)
    v = values if largest else -values
    order = np.argsort(-v, kind="stable")
    best, second = values[order[0]], values[order[1]]
    if largest:
        ok = best - second >= diff and (ratio <= 1.0 or best >= ratio * second)
    else:
        ok = second - best >= diff and (ratio <= 1.0 or second >= ratio * best)
    out = np.full(len(values), FALSE if ok else UNSURE, np.int8)
    if ok:
        out[order[0]] = TRUE
    return out


def selector_values(geom: SceneGeometry, sel: dict[str, Any], label: str) -> np.ndarray:
    """(n,) three-valued: which thing of ``label`` wins the selector (others of the label FALSE)."""
    n = len(geom.things)
    cand = [i for i, t in enumerate(geom.things) if t.label == label]
    rel = sel["rel"]
    res = np.full(n, FALSE, np.int8)
    if rel in ("closest", "farthest"):
        j = resolve(geom, sel["anchor"])
        cand = [i for i in cand if i != j]
        vals = geom.gap[cand, j]
        margin = CLOSEST_MARGIN if rel == "closest" else FARTHEST_MARGIN
        win = _extreme(vals, rel == "farthest", 0.0, margin) if cand else np.zeros(0, np.int8)
    elif rel in ("leftmost", "rightmost"):
        right = right_of_view(view_direction(geom, sel["view"]))
        vals = np.array([geom.things[i].centre[:2] @ right for i in cand])
        win = _extreme(vals, rel == "rightmost", 0.0, SIDE_MARGIN) if cand else np.zeros(0, np.int8)
    elif rel in ("tallest", "shortest"):
        vals = np.array([geom.things[i].height for i in cand])
        win = _extreme(vals, rel == "tallest", HEIGHT_RATIO, HEIGHT_DIFF) if cand else np.zeros(0, np.int8)
    elif rel in ("biggest", "smallest"):
        vals = np.array([geom.things[i].size for i in cand])
        win = _extreme(vals, rel == "biggest", SIZE_RATIO, 0.0) if cand else np.zeros(0, np.int8)
    else:
        raise ProgramError(f"unknown selector {rel!r}")
    res[cand] = win
    return res


def program_values(geom: SceneGeometry, program: dict[str, Any]) -> np.ndarray:
    """(n,) three-valued: which things the whole program refers to."""
    label = program["target"]["label"]
    val = np.array([TRUE if t.label == label else FALSE for t in geom.things], np.int8)
    for f in program.get("filters", []):
        val = and3(val, filter_values(geom, f))
    if program.get("selector"):
        val = and3(val, selector_values(geom, program["selector"], label))
    return val


def evaluate(geom: SceneGeometry, program: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Object ids the program surely refers to, and those it might (unsure). Raises ProgramError."""
    val = program_values(geom, program)
    ids = np.array([t.object_id for t in geom.things], np.int64)
    return sorted(ids[val == TRUE].tolist()), sorted(ids[val == UNSURE].tolist())


def verify(geom: SceneGeometry, program: dict[str, Any], object_ids: list[int]) -> bool:
    """True when the program refers exactly to ``object_ids`` (possibly none) with no unsure object."""
    try:
        true, unsure = evaluate(geom, program)
    except ProgramError:
        return False
    return true == sorted(object_ids) and not unsure
