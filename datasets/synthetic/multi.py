"""Multi3DRefer-format descriptions: zero, one or several targets, all five eval types (data spec §6).

- ``mt``: a class with several objects and filters that hold for at least two of them and for none
  ambiguously ("the brown chairs that are next to the table."); classes of three or more objects are
  preferred, with filters that select a proper subset of them.
- ``st_w_d`` / ``st_wo_d``: one target singled out as for ScanRefer, with / without other objects of
  its class in the scene.
- ``zt_w_d``: objects of the class exist, but no object of it satisfies the description. Preferably
  each fact alone is true of some of them and only their conjunction is false of all ("the black chair
  next to the window" when black chairs and chairs by the window exist, but not both at once).
- ``zt_wo_d``: a class absent from the scene, with a colour and a relation to an object that is there.

Every description is re-evaluated with :func:`semantics.verify` against its ``object_ids``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from datasets.synthetic.catalog import CLASSES
from datasets.synthetic.describe import (
    Description,
    Fact,
    SceneFacts,
    conjunction,
    make_program,
    single_target_facts,
    usable,
)
from datasets.synthetic.geometry import COLOR_NAMES
from datasets.synthetic.grammar import Chooser, render
from datasets.synthetic.semantics import FALSE, TRUE, UNSURE, color_values, verify

EVAL_WEIGHTS = {"mt": 0.3, "st_w_d": 0.25, "st_wo_d": 0.1, "zt_w_d": 0.2, "zt_wo_d": 0.15}
SPATIAL_KINDS = ("near", "vertical", "left/right", "between", "distance")
ALWAYS_PRESENT = ("door", "window")  # every room is meant to have them: never describe them as absent


T = TypeVar("T")


def _pick(items: list[T], rng: np.random.Generator) -> T:
    return items[int(rng.integers(len(items)))]


def _distinct_kinds(facts: list[Fact], k: int, rng: np.random.Generator) -> list[Fact]:
    chosen: list[Fact] = []
    for f in (facts[i] for i in rng.permutation(len(facts))):
        if len(chosen) == k:
            break
        if f.kind not in {c.kind for c in chosen}:
            chosen.append(f)
    return chosen


def _multi(sf: SceneFacts, rng: np.random.Generator) -> tuple[str, list[Fact]] | None:
    """A class with several objects and filters that select at least two of them.

    Classes with four or more objects are preferred (3 in 4 draws when the room has one), then classes of three;
    for classes of three or more the
    first attempts look for filters that select a *proper* subset, at most half of the class when it has four or
    more objects ("the chairs left of the table" among five chairs). Otherwise most answers would be "every
    object of the class", which a model can give from the class name alone: the 3D-GRES bar compares MDIN with
    exactly that baseline, and the real Multi3DRefer has such subset descriptions.
    """
    labels = sorted({t.label for t in sf.geom.things if len(sf.members(t.label)) >= 2})
    if not labels:
        return None
    larger = [lab for lab in labels if len(sf.members(lab)) >= 4]
    large = [lab for lab in labels if len(sf.members(lab)) >= 3]
    pick = rng.random()
    label = _pick(larger if larger and pick < 0.75 else large if large and pick < 0.85 else labels, rng)
    members = sf.members(label)
    pool = [f for f in sf.filters if (f.values[members] == TRUE).sum() >= 2 and usable(sf, f, label, members)]
    most = len(members) // 2 if len(members) >= 4 else len(members) - 1  # a proper subset: at most this many
    for attempt in range(30):
        proper = len(members) >= 3 and attempt < 20
        p_facts = [0.0, 0.6, 0.4] if proper else [0.1, 0.6, 0.3]
        facts = _distinct_kinds(pool, int(rng.choice([0, 1, 2], p=p_facts)), rng)
        val = conjunction(facts, len(sf.geom.things))[members]
        hits = int((val == TRUE).sum())
        if hits >= 2 and not (val == UNSURE).any() and (not proper or hits <= most):
            return label, facts
    return None


def _zero_with_distractors(sf: SceneFacts, rng: np.random.Generator) -> tuple[str, list[Fact]] | None:
    labels = sorted({t.label for t in sf.geom.things})
    label = _pick(labels, rng)
    members = sf.members(label)
    n = len(sf.geom.things)
    present = {sf.geom.things[i].color for i in members}
    absent = [Fact({"rel": "color", "color": c}, color_values(sf.geom, c)) for c in COLOR_NAMES
              if c not in present and c in CLASSES[label].colors]
    clean = [f for f in sf.filters if not (f.values[members] == UNSURE).any() and usable(sf, f, label, members)]
    partly_true = [f for f in clean if (f.values[members] == TRUE).any()]
    for attempt in range(40):
        hard = attempt < 25  # first look for conjunctions of facts that each hold for some member
        facts = _distinct_kinds(partly_true if hard else clean + absent, 2 if hard else int(rng.integers(1, 3)), rng)
        if hard and len(facts) < 2:
            continue
        if not hard and absent and rng.random() < 0.5 and not any(f.spec["rel"] == "color" for f in facts):
            facts = [_pick(absent, rng)] + facts[:1]
        val = conjunction(facts, n)[members]
        if facts and (val == FALSE).all():
            return label, facts
    return None


def _zero_without_distractors(sf: SceneFacts, rng: np.random.Generator) -> tuple[str, list[Fact]] | None:
    present = {t.label for t in sf.geom.things}
    absent = [lab for lab in CLASSES if lab not in present and lab not in ALWAYS_PRESENT]
    if not absent:
        return None
    label = _pick(absent, rng)
    n = len(sf.geom.things)
    facts: list[Fact] = []
    if rng.random() < 0.7:
        color = _pick(list(CLASSES[label].colors), rng)
        facts.append(Fact({"rel": "color", "color": color}, np.full(n, FALSE, np.int8)))
    relations = [f for f in sf.filters if f.spec["rel"] != "color"]
    if relations and (not facts or rng.random() < 0.7):
        facts.append(_pick(relations, rng))
    return (label, facts) if facts else None


def multi3drefer_descriptions(sf: SceneFacts, n: int, rng: np.random.Generator) -> list[tuple[str, Description]]:
    """About ``n`` verified (eval_type, description) pairs of one scene, eval types drawn by ``EVAL_WEIGHTS``."""
    things = sf.geom.things
    kinds = list(EVAL_WEIGHTS)
    p = np.array([EVAL_WEIGHTS[k] for k in kinds])
    out: list[tuple[str, Description]] = []
    texts: set[str] = set()
    for _ in range(3 * n):
        if len(out) >= n:
            break
        eval_type = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
        plural = eval_type == "mt"
        if eval_type.startswith("st"):
            alone = eval_type == "st_wo_d"
            cands = [i for i, t in enumerate(things) if (len(sf.members(t.label)) == 1) == alone]
            if not cands:
                continue
            t = _pick(cands, rng)
            facts = single_target_facts(sf, t, rng)
            found = None if facts is None else (things[t].label, facts)
        elif plural:
            found = _multi(sf, rng)
        elif eval_type == "zt_w_d":
            found = _zero_with_distractors(sf, rng)
        else:
            found = _zero_without_distractors(sf, rng)
        if found is None:
            continue
        label, facts = found
        program = make_program(label, facts, plural, np_only=eval_type.startswith("zt"))
        val = conjunction(facts, len(things))
        val[[i for i, t in enumerate(things) if t.label != label]] = FALSE
        ids = [things[i].object_id for i in np.flatnonzero(val == TRUE)]
        if not verify(sf.geom, program, ids) or not _consistent(eval_type, ids):
            continue
        ch = Chooser(rng)
        text = render(program, ch)
        if text in texts:
            continue
        texts.add(text)
        out.append((eval_type, Description(sorted(ids), label, text, program, ch.choices, [f.kind for f in facts],
                                           [])))
    return out


def _consistent(eval_type: str, ids: list[int]) -> bool:
    """Spec §6.3 toolkit rule: 0 targets <=> zt*, 1 <=> st*, >= 2 <=> mt."""
    return (len(ids) == 0) == eval_type.startswith("zt") and (len(ids) == 1) == eval_type.startswith("st")


def multi3drefer_record(scene_id: str, eval_type: str, d: Description, ann_id: int) -> dict[str, Any]:
    """The Multi3DRefer JSON record."""
    return {"scene_id": scene_id, "object_name": d.label.replace(" ", "_"), "ann_id": ann_id,
            "description": d.text, "object_ids": list(d.object_ids), "eval_type": eval_type,
            "spatial": any(k in SPATIAL_KINDS for k in d.kinds), "color": "color" in d.kinds,
            "texture": False, "shape": "size" in d.kinds}
