"""ScanRefer-format descriptions: sample programs that single out one object, verify them, render them.

For a scene (a :class:`~datasets.synthetic.geometry.SceneGeometry` measured from the raw arrays) this
module lists every *fact* the grammar can state: a filter (colour, near/on/above/under an anchor,
left/right of an anchor for a viewer facing some wall object, between two anchors) with its
three-valued truth for every object, and per class the selectors (tallest/shortest/biggest/smallest,
closest to/farthest from an anchor, leftmost/rightmost). Anchors are objects that a definite noun
phrase names by itself ("the door") or with its colour ("the red chair").

A description of target t is a random conjunction of facts true of t, drawn with balanced relation
kinds, kept only if the conjunction is true of t and false (never unsure) for every other object of
t's class; the final check re-evaluates the program from scratch with :func:`semantics.verify`.
Because rooms hold several objects of most classes, often in the same colour, the class alone
rarely suffices and a description must use colour, size or a spatial relation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datasets.synthetic.geometry import SceneGeometry
from datasets.synthetic.grammar import Chooser, render, tokenize
from datasets.synthetic.semantics import (
    TRUE,
    UNSURE,
    ProgramError,
    and3,
    filter_values,
    selector_values,
    verify,
)

# which kind of reasoning each relation asks for (the "relation mix" of the statistics)
KIND = {"color": "color", "near": "near", "on": "vertical", "above": "vertical", "under": "vertical",
        "left": "left/right", "right": "left/right", "between": "between", "tallest": "size", "shortest": "size",
        "biggest": "size", "smallest": "size", "closest": "distance", "farthest": "distance",
        "leftmost": "left/right", "rightmost": "left/right"}
KIND_WEIGHT = {"color": 1.0, "near": 1.0, "vertical": 1.2, "left/right": 1.2, "between": 0.8, "size": 1.2,
               "distance": 1.0}
PLAN_WEIGHTS = {"color": 0.15, "one": 0.35, "color+one": 0.25, "two": 0.25, "three": 1.0}
BACK_VIEW_LABELS = ("door", "window")
# objects a viewer can sensibly "face": large or wall-mounted ones that stand by one wall
VIEW_LABELS = ("door", "window", "tv", "whiteboard", "picture", "bed", "couch", "refrigerator", "bookshelf",
               "kitchen counter", "dresser", "cabinet", "desk", "toilet", "bathtub")
BETWEEN_SPAN = (0.8, 5.0)


@dataclass
class Fact:
    """One statement with its truth (n,) for every thing; ``spec`` is the program's filter or selector."""

    spec: dict[str, Any]
    values: np.ndarray
    selector: bool = False
    refs: tuple[int, ...] = ()  # things its noun phrases name (anchors, then the view anchor if any)
    view_ref: int | None = None

    @property
    def kind(self) -> str:
        return KIND[self.spec["rel"]]


@dataclass
class SceneFacts:
    """All anchor phrases, views and filter facts of one scene (selectors are made per class)."""

    geom: SceneGeometry
    anchors: dict[int, dict[str, Any]]  # thing index -> definite noun phrase
    views: list[dict[str, Any]]
    filters: list[Fact]
    view_of: list[int]  # the thing each view faces
    _selectors: dict[str, list[Fact]] = field(default_factory=dict)

    def selectors(self, label: str) -> list[Fact]:
        if label not in self._selectors:
            self._selectors[label] = _selector_facts(self, label)
        return self._selectors[label]

    def members(self, label: str) -> np.ndarray:
        return np.array([i for i, t in enumerate(self.geom.things) if t.label == label], np.int64)


def _anchor_phrases(geom: SceneGeometry) -> dict[int, dict[str, Any]]:
    labels = geom.labels
    out = {}
    for i, t in enumerate(geom.things):
        same = [j for j, lab in enumerate(labels) if lab == t.label]
        if len(same) == 1:
            out[i] = {"label": t.label, "color": None}
        elif t.color is not None and all(geom.things[j].color is not None for j in same) and \
                sum(geom.things[j].color == t.color for j in same) == 1:
            out[i] = {"label": t.label, "color": t.color}
    return out


def _safe(geom: SceneGeometry, spec: dict[str, Any], selector_label: str | None = None) -> np.ndarray | None:
    try:
        if selector_label is not None:
            return selector_values(geom, spec, selector_label)
        return filter_values(geom, spec)
    except ProgramError:
        return None


def scene_facts(geom: SceneGeometry) -> SceneFacts:
    """Enumerate anchors, views and every filter fact of a scene."""
    anchors = _anchor_phrases(geom)
    views, view_of = [], []
    for j, np_ in anchors.items():
        if geom.things[j].label not in VIEW_LABELS:
            continue
        for back in (False, True):
            if back and geom.things[j].label not in BACK_VIEW_LABELS:
                continue
            view = {"anchor": np_, "back": back}
            if _safe(geom, {"rel": "left", "anchor": np_, "view": view}) is not None:
                views.append(view)
                view_of.append(j)
    specs: list[tuple[dict[str, Any], tuple[int, ...], int | None]] = [
        ({"rel": "color", "color": c}, (), None) for c in sorted({t.color for t in geom.things if t.color is not None})]
    for j, np_ in anchors.items():
        specs += [({"rel": r, "anchor": np_}, (j,), None) for r in ("near", "on", "above", "under")]
        specs += [({"rel": r, "anchor": np_, "view": v}, (j, view_of[k]), view_of[k]) for k, v in enumerate(views)
                  for r in ("left", "right") if view_of[k] != j]
    keys = sorted(anchors)
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            span = np.linalg.norm(geom.things[keys[a]].centre[:2] - geom.things[keys[b]].centre[:2])
            if BETWEEN_SPAN[0] <= span <= BETWEEN_SPAN[1]:
                specs.append(({"rel": "between", "anchors": [anchors[keys[a]], anchors[keys[b]]]},
                              (keys[a], keys[b]), None))
    facts = []
    for spec, refs, view_ref in specs:
        values = _safe(geom, spec)
        if values is not None and (values == TRUE).any():
            facts.append(Fact(spec, values, refs=refs, view_ref=view_ref))
    return SceneFacts(geom, anchors, views, facts, view_of)


def _selector_facts(sf: SceneFacts, label: str) -> list[Fact]:
    specs: list[tuple[dict[str, Any], tuple[int, ...], int | None]] = [
        ({"rel": r}, (), None) for r in ("tallest", "shortest", "biggest", "smallest")]
    specs += [({"rel": r, "anchor": np_}, (j,), None) for j, np_ in sf.anchors.items() for r in ("closest", "farthest")]
    specs += [({"rel": r, "view": v}, (k,), k) for v, k in zip(sf.views, sf.view_of) for r in ("leftmost", "rightmost")]
    out = []
    for spec, refs, view_ref in specs:
        values = _safe(sf.geom, spec, label)
        if values is not None and (values == TRUE).sum() == 1 and not (values == UNSURE).any():
            out.append(Fact(spec, values, selector=True, refs=refs, view_ref=view_ref))
    return out


def usable(sf: SceneFacts, f: Fact, label: str, targets: np.ndarray) -> bool:
    """A fact may describe ``targets`` of ``label`` unless it names one of them, or faces an object of the label.

    ("the blue painting on the far right if you face the blue painting" is true but useless.)
    """
    if any(r in targets for r in f.refs):
        return False
    return f.view_ref is None or sf.geom.things[f.view_ref].label != label


def conjunction(facts: list[Fact], n: int) -> np.ndarray:
    val = np.full(n, TRUE, np.int8)
    for f in facts:
        val = and3(val, f.values)
    return val


def make_program(label: str, facts: list[Fact], plural: bool = False, np_only: bool = False) -> dict[str, Any]:
    """The program (see ``semantics.py``) of a conjunction of facts about objects of ``label``."""
    sel = [f.spec for f in facts if f.selector]
    target: dict[str, Any] = {"label": label, "plural": plural}
    if np_only:
        target["np_only"] = True
    return {"target": target, "filters": [f.spec for f in facts if not f.selector], "selector": sel[0] if sel else None}


def _draw(pool: list[Fact], k: int, rng: np.random.Generator) -> list[Fact]:
    """k facts of distinct kinds, kinds drawn by weight, at most one selector."""
    chosen: list[Fact] = []
    for _ in range(k):
        avail = [f for f in pool if f.kind not in {c.kind for c in chosen}
                 and not (f.selector and any(c.selector for c in chosen))]
        if not avail:
            break
        kinds = sorted({f.kind for f in avail})
        w = np.array([KIND_WEIGHT[kd] for kd in kinds])
        kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
        options = [f for f in avail if f.kind == kind]
        chosen.append(options[int(rng.integers(len(options)))])
    return chosen


def _singles_out(vals: np.ndarray, ti: int) -> np.ndarray:
    """Rows of (k, m) three-valued member values that are TRUE at member ti only, with nothing UNSURE."""
    return (vals[:, ti] == TRUE) & ((vals == TRUE).sum(1) == 1) & ~(vals == UNSURE).any(1)


def _pick_balanced(combos: list[list[Fact]], rng: np.random.Generator) -> list[Fact]:
    """A combination drawn so that every kind signature (e.g. "near", "color+size") is equally likely."""
    sigs = sorted({"+".join(sorted(f.kind for f in c)) for c in combos})
    sig = sigs[int(rng.integers(len(sigs)))]
    options = [c for c in combos if "+".join(sorted(f.kind for f in c)) == sig]
    return options[int(rng.integers(len(options)))]


def single_target_facts(sf: SceneFacts, t: int, rng: np.random.Generator, decorate: float = 0.35,
                        max_pairs: int = 400) -> list[Fact] | None:
    """A random conjunction of facts that is true of thing t and false of every other thing of its class.

    A plan is drawn first (``PLAN_WEIGHTS``): the colour alone, one relation alone, colour plus a
    relation that need each other, or two facts that need each other (three only when nothing shorter
    works). So colour, size and relations
    are each often *required*, not decorative. Then, with probability ``decorate``, one more true fact
    is added as ScanRefer annotators often do ("this is a brown chair. it is the closest one to the
    door." when the chairs are all brown). Returns None when t cannot be singled out.
    """
    label = sf.geom.things[t].label
    members = sf.members(label)
    ti = int(np.flatnonzero(members == t)[0])
    pool = [f for f in sf.filters + sf.selectors(label)
            if f.values[t] == TRUE and usable(sf, f, label, np.array([t]))]
    color = next((f for f in pool if f.spec["rel"] == "color"), None)
    others = [f for f in pool if f.spec["rel"] != "color"]
    if len(members) == 1:  # alone in its class: any true facts will do
        chosen = ([color] if color is not None and rng.random() < 0.6 else [])
        chosen += _draw(others, int(rng.choice([0, 1, 2], p=[0.3, 0.45, 0.25])), rng)
        return [chosen[i] for i in rng.permutation(len(chosen))]
    m_vals = np.stack([f.values[members] for f in others]) if others else np.zeros((0, len(members)), np.int8)
    single = _singles_out(m_vals, ti)
    plans: dict[str, list[list[Fact]]] = {}
    color_alone = color is not None and bool(_singles_out(color.values[members][None], ti)[0])
    if color_alone:
        plans["color"] = [[color]]
    if single.any():
        plans["one"] = [[others[i]] for i in np.flatnonzero(single)]
    rest = np.flatnonzero(~single)
    if color is not None and not color_alone and len(rest):
        ok = _singles_out(and3(m_vals[rest], color.values[members][None]), ti)
        if ok.any():
            plans["color+one"] = [[color, others[i]] for i in rest[ok]]
    if len(rest) >= 2:
        a, b = rng.integers(len(rest), size=(2, max_pairs))
        a, b = rest[a], rest[b]
        keep = np.array([others[i].kind != others[j].kind and not (others[i].selector and others[j].selector)
                         for i, j in zip(a, b)], bool)
        a, b = a[keep], b[keep]
        ok = _singles_out(and3(m_vals[a], m_vals[b]), ti) if len(a) else np.zeros(0, bool)
        pairs = sorted({(min(i, j), max(i, j)) for i, j in zip(a[ok].tolist(), b[ok].tolist())})
        if pairs:
            plans["two"] = [[others[i], others[j]] for i, j in pairs]
    if not plans and len(rest) >= 3:  # last resort: three facts that only together single t out
        idx = rest[rng.integers(len(rest), size=(max_pairs, 3))]
        kinds = [[others[i].kind for i in row] for row in idx]
        keep = np.array([len(set(k)) == 3 and sum(others[i].selector for i in row) <= 1
                         for k, row in zip(kinds, idx)], bool)
        idx = idx[keep]
        if len(idx):
            vals = and3(and3(m_vals[idx[:, 0]], m_vals[idx[:, 1]]), m_vals[idx[:, 2]])
            triples = sorted({tuple(sorted(row)) for row in idx[_singles_out(vals, ti)].tolist()})
            if triples:
                plans["three"] = [[others[i] for i in row] for row in triples]
    if not plans:
        return None
    names = sorted(plans)
    w = np.array([PLAN_WEIGHTS[k] for k in names])
    chosen = list(_pick_balanced(plans[names[int(rng.choice(len(names), p=w / w.sum()))]], rng))
    if rng.random() < decorate:
        if color is not None and color not in chosen and rng.random() < 0.6:
            chosen.append(color)
        else:
            extra = _draw([f for f in others if f not in chosen and not (f.selector and any(c.selector for c in chosen))
                           and f.kind not in {c.kind for c in chosen}], 1, rng)
            chosen += extra
    return [chosen[i] for i in rng.permutation(len(chosen))]


def necessary_kinds(sf: SceneFacts, facts: list[Fact], t: int) -> list[str]:
    """Kinds of the facts without which the description would no longer single out t."""
    members = sf.members(sf.geom.things[t].label)
    out = []
    for i, f in enumerate(facts):
        rest = facts[:i] + facts[i + 1:]
        val = conjunction(rest, len(sf.geom.things))[members]
        if (val == TRUE).sum() != 1 or (val == UNSURE).any():
            out.append(f.kind)
    return out


@dataclass
class Description:
    """One generated description with its program and wording choices (the side file keeps both)."""

    object_ids: list[int]
    label: str
    text: str
    program: dict[str, Any]
    choices: list[int]
    kinds: list[str]
    needed: list[str]


def scanrefer_descriptions(sf: SceneFacts, counts: dict[int, int], rng: np.random.Generator) -> list[Description]:
    """Up to ``counts[i]`` distinct verified descriptions of each thing index i (fewer if it cannot be singled out)."""
    out = []
    for t in sorted(counts):
        thing = sf.geom.things[t]
        texts: set[str] = set()
        for _ in range(4 * counts[t]):
            if len(texts) >= counts[t]:
                break
            facts = single_target_facts(sf, t, rng)
            if facts is None:
                break
            program = make_program(thing.label, facts)
            ch = Chooser(rng)
            text = render(program, ch)
            if text in texts or not verify(sf.geom, program, [thing.object_id]):
                continue
            texts.add(text)
            out.append(Description([thing.object_id], thing.label, text, program, ch.choices,
                                   [f.kind for f in facts], necessary_kinds(sf, facts, t)))
    return out


def scanrefer_record(scene_id: str, d: Description, ann_id: int) -> dict[str, Any]:
    """The ScanRefer JSON record (only ScanRefer's own fields)."""
    return {"scene_id": scene_id, "object_id": str(d.object_ids[0]), "object_name": d.label.replace(" ", "_"),
            "ann_id": str(ann_id), "description": d.text, "token": tokenize(d.text)}
