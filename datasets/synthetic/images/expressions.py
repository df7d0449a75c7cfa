"""Referring expressions of the generated images: their meaning (programs), uniqueness, and wording.

A *program* is the structured meaning of one expression, a JSON-ready dict; it is stored beside the
RefCOCO files (``scenes.json``) so that every expression can be re-checked without parsing text. A
noun phrase ``np`` is ``{"size": ..., "color": ..., "cls": ...}`` where ``None`` means "not said"; an
object matches when every said attribute equals its own. Positions are the centres of the objects'
drawn extents (``SceneObject.center``); ``W`` and ``H`` are the image size.

Kinds of program and when they pick out exactly one object (otherwise they are not used):

- ``attr`` ("the blue star", "the small red one"): exactly one object matches ``np``.
- ``extreme`` ("the large triangle on the right", "leftmost circle"): at least two objects match; ordered
  along ``dir`` (left: ascending x, right: descending x, top: ascending y, bottom: descending y), the
  first is ahead of the second by at least ``GAP`` times the image side along that axis.
- ``ordinal`` ("second circle from the top"): at least three objects match; in the same order, the one
  at ``rank`` (2 or 3) is at least ``GAP`` apart from both of its neighbours in the order.
- ``relation`` ("the yellow cup below the purple circle"): the anchor ``np`` matches exactly one
  object, and among the other objects matching ``np`` exactly one is clearly in relation ``rel`` to
  it while all others are clearly not. With ``on`` the signed distance from the object to the anchor
  along the relation (left: anchor.x - x, right: x - anchor.x, above: anchor.y - y, below: y -
  anchor.y) and ``off`` the absolute distance across: clearly in relation when ``on >= REL_GAP`` times
  the image side along the axis and ``off <= on``; clearly not when ``on <= 0``; otherwise unsure.

The generator draws expressions so that no single attribute suffices for all of them: for a target it
enumerates every valid program, then prefers kinds and noun phrases whose spatial part is needed.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from datasets.synthetic.images.shapes import BY_NAME

GAP = 0.1
REL_GAP = 0.06
ATTRS: tuple[str, ...] = ("size", "color", "cls")
DIRS: tuple[str, ...] = ("left", "right", "top", "bottom")
RELS: tuple[str, ...] = ("left", "right", "above", "below")
KIND_WEIGHTS: dict[str, float] = {"attr": 0.3, "extreme": 0.25, "ordinal": 0.1, "relation": 0.35}

Program = dict[str, Any]


@dataclass(frozen=True)
class Fact:
    """What the semantics needs to know about one object."""

    cls: str
    color: str
    size: str
    x: float
    y: float


def matches(np_: dict[str, str | None], f: Fact) -> bool:
    """True when every attribute the noun phrase says equals the object's."""
    return all(v is None or getattr(f, k) == v for k, v in np_.items())


def _np_key(np_: dict[str, str | None]) -> tuple[str | None, ...]:
    return np_["size"], np_["color"], np_["cls"]  # the order of ATTRS


def program_key(p: Program) -> tuple[Any, ...]:
    """A hashable form of a program (for de-duplication)."""
    anchor = _np_key(p["anchor"]) if "anchor" in p else None
    return p["kind"], _np_key(p["np"]), p.get("dir"), p.get("rank"), p.get("rel"), anchor


def _relation(rel: str, f: Fact, a: Fact, width: int, height: int) -> bool | None:
    """True / False when ``f`` clearly is / is not ``rel`` of the anchor ``a``; None when unsure."""
    if rel in ("left", "right"):
        on, off, side = (a.x - f.x) if rel == "left" else (f.x - a.x), abs(f.y - a.y), width
    else:
        on, off, side = (a.y - f.y) if rel == "above" else (f.y - a.y), abs(f.x - a.x), height
    if on <= 0:
        return False
    if on >= REL_GAP * side and off <= on:
        return True
    return None


_ORDER_KEY = {"left": lambda f: f.x, "right": lambda f: -f.x, "top": lambda f: f.y, "bottom": lambda f: -f.y}


class Resolver:
    """The semantics of the module docstring over one image, with the candidate sets and relation
    truths cached: the generator asks hundreds of programs about the same few objects."""

    def __init__(self, facts: list[Fact], width: int, height: int) -> None:
        self.facts, self.width, self.height = facts, width, height
        self._cands: dict[tuple[str | None, ...], list[int]] = {}
        self._rel: dict[tuple[str, int, int], bool | None] = {}
        self._order: dict[tuple[Any, ...], tuple[list[int], list[float]]] = {}

    def candidates(self, np_: dict[str, str | None]) -> list[int]:
        """Indices of the objects the noun phrase matches, in drawing order."""
        key = _np_key(np_)
        if key not in self._cands:
            self._cands[key] = [i for i, f in enumerate(self.facts) if matches(np_, f)]
        return self._cands[key]

    def relation(self, rel: str, i: int, a: int) -> bool | None:
        key = (rel, i, a)
        if key not in self._rel:
            self._rel[key] = _relation(rel, self.facts[i], self.facts[a], self.width, self.height)
        return self._rel[key]

    def _ordered(self, np_: dict[str, str | None], direction: str) -> tuple[list[int], list[float]]:
        """Candidates sorted along ``direction`` (first = most to that side), with their sort keys."""
        ck = (_np_key(np_), direction)
        if ck not in self._order:
            key = _ORDER_KEY[direction]
            order = sorted(self.candidates(np_), key=lambda i: key(self.facts[i]))
            self._order[ck] = order, [key(self.facts[i]) for i in order]
        return self._order[ck]

    def resolve(self, program: Program) -> int | None:
        """Index of the one object the program picks out, or None (no object, or not clearly one)."""
        cands = self.candidates(program["np"])
        kind = program["kind"]
        if kind == "attr":
            return cands[0] if len(cands) == 1 else None
        if kind in ("extreme", "ordinal"):
            direction = program["dir"]
            gap = GAP * (self.width if direction in ("left", "right") else self.height)
            rank = program.get("rank", 1)
            if len(cands) < (2 if kind == "extreme" else max(3, rank)):
                return None
            order, keys = self._ordered(program["np"], direction)
            r = rank - 1
            if r > 0 and keys[r] - keys[r - 1] < gap:
                return None
            if r + 1 < len(keys) and keys[r + 1] - keys[r] < gap:
                return None
            return order[r]
        if kind == "relation":
            anchors = self.candidates(program["anchor"])
            if len(anchors) != 1:
                return None
            a = anchors[0]
            hit = None
            for i in cands:
                if i == a:
                    continue
                t = self.relation(program["rel"], i, a)
                if t is None or (t and hit is not None):
                    return None
                if t:
                    hit = i
            return hit
        raise ValueError(f"unknown program kind {kind!r}")


def resolve(program: Program, facts: list[Fact], width: int, height: int) -> int | None:
    """Index of the one object the program picks out in an image, or None (see the module docstring)."""
    return Resolver(facts, width, height).resolve(program)


def _nps(f: Fact, allow_empty: bool) -> list[dict[str, str | None]]:
    out = []
    for n in range(0 if allow_empty else 1, len(ATTRS) + 1):
        for keys in itertools.combinations(ATTRS, n):
            out.append({k: (getattr(f, k) if k in keys else None) for k in ATTRS})
    return out


def _said(np_: dict[str, str | None]) -> int:
    return sum(v is not None for v in np_.values())


def candidate_programs(t: int, res: Resolver) -> dict[str, list[tuple[Program, bool]]]:
    """Every valid program for target ``t``, by kind, each with a flag: is its spatial part needed.

    "Needed" means the noun phrase alone does not single out the target (always True for ``attr``).
    """
    facts = res.facts
    out: dict[str, list[tuple[Program, bool]]] = {k: [] for k in KIND_WEIGHTS}
    nps = _nps(facts[t], allow_empty=True)
    alone = [_said(np_) > 0 and res.candidates(np_) == [t] for np_ in nps]
    for np_, ok in zip(nps, alone):
        if ok:
            out["attr"].append(({"kind": "attr", "np": np_}, True))
    for np_, ok in zip(nps, alone):
        if t not in res.candidates(np_) or len(res.candidates(np_)) < 2:
            continue
        for d in DIRS:
            p = {"kind": "extreme", "np": np_, "dir": d}
            if res.resolve(p) == t:
                out["extreme"].append((p, not ok))
            for rank in (2, 3):
                p = {"kind": "ordinal", "np": np_, "dir": d, "rank": rank}
                if res.resolve(p) == t:
                    out["ordinal"].append((p, not ok))
    for a, fa in enumerate(facts):
        rels = [rel for rel in RELS if a != t and res.relation(rel, t, a)]
        if not rels:
            continue
        anchors = [np_ for np_ in _nps(fa, allow_empty=False) if res.candidates(np_) == [a]]
        if not anchors:
            continue
        fewest = min(_said(np_) for np_ in anchors)
        for anchor in (np_ for np_ in anchors if _said(np_) <= fewest + 1):
            for np_, ok in zip(nps, alone):
                for rel in rels:
                    p = {"kind": "relation", "np": np_, "rel": rel, "anchor": anchor}
                    if res.resolve(p) == t:
                        out["relation"].append((p, not ok))
    return out


def choose_program(rng: np.random.Generator, options: dict[str, list[tuple[Program, bool]]],
                   used: set[tuple[Any, ...]]) -> Program | None:
    """One program not in ``used``: a kind by ``KIND_WEIGHTS``, then preferably a needed, short one."""
    pools = {k: [(p, n) for p, n in v if program_key(p) not in used] for k, v in options.items()}
    kinds = [k for k in KIND_WEIGHTS if pools[k]]
    if not kinds:
        return None
    w = np.array([KIND_WEIGHTS[k] for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
    pool = pools[kind]
    needed = [p for p, n in pool if n]
    if needed and rng.random() < 0.85:
        pool = [(p, True) for p in needed]
    # Short noun phrases are what people say; longer ones stay possible.
    weights = np.array([1.0 / (1 + _said(p["np"])) ** 2 for p, _ in pool])
    return pool[int(rng.choice(len(pool), p=weights / weights.sum()))][0]


SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
WHERE = {"left": ("on the left", "on left", "at the far left"), "right": ("on the right", "on right",
         "at the far right"), "top": ("at the top", "on top"), "bottom": ("at the bottom", "on the bottom")}
MOST = {"left": ("leftmost", "left"), "right": ("rightmost", "right"), "top": ("topmost", "top", "highest"),
        "bottom": ("bottom", "lowest", "bottommost")}
SIDE = {"left": "left", "right": "right", "top": "top", "bottom": "bottom"}
ORDINAL = {2: "second", 3: "third"}
REL_WORDS = {"left": ("left of", "to the left of"), "right": ("right of", "to the right of"),
             "above": ("above", "over"), "below": ("below", "under", "beneath")}


def _pick(rng: np.random.Generator, words: tuple[str, ...] | list[str]) -> str:
    return words[int(rng.integers(len(words)))]


def _np_text(rng: np.random.Generator, np_: dict[str, str | None], nouns: dict[str, str], lead: str = "") -> str:
    """'[lead] [size] [colour] noun'; the noun is 'one' / 'object' / 'thing' when no class is said.

    ``nouns`` keeps the word chosen for each class (and size) within one sentence: "the rhombus right
    of the big diamond" would read as two different classes.
    """
    words = [lead] if lead else []
    if np_["size"]:
        if "size:" + np_["size"] not in nouns:
            nouns["size:" + np_["size"]] = _pick(rng, SIZE_WORDS[np_["size"]])
        words.append(nouns["size:" + np_["size"]])
    if np_["color"]:
        words.append(np_["color"])
    if np_["cls"]:
        if np_["cls"] not in nouns:
            nouns[np_["cls"]] = _pick(rng, BY_NAME[np_["cls"]].nouns)
        words.append(nouns[np_["cls"]])
    else:
        words.append(_pick(rng, ("one", "one", "object") if words else ("one", "object", "thing")))
    return " ".join(words)


def render(rng: np.random.Generator, program: Program) -> str:
    """The raw expression string of a program, with RefCOCO-like variation (articles, case, a period)."""
    art = "the " if rng.random() < 0.7 else ""
    kind = program["kind"]
    nouns: dict[str, str] = {}
    if kind == "attr":
        text = art + _np_text(rng, program["np"], nouns)
    elif kind == "extreme":
        d = program["dir"]
        if rng.random() < 0.5:
            text = f"{art}{_np_text(rng, program['np'], nouns)} {_pick(rng, WHERE[d])}"
        else:
            text = art + _np_text(rng, program["np"], nouns, lead=_pick(rng, MOST[d]))
    elif kind == "ordinal":
        np_text = _np_text(rng, program["np"], nouns)
        text = f"{art}{ORDINAL[program['rank']]} {np_text} from the {SIDE[program['dir']]}"
    else:
        link = _pick(rng, ("", "", "", "that is ", "which is "))
        anchor_art = "the " if rng.random() < 0.85 else ""
        text = (f"{art}{_np_text(rng, program['np'], nouns)} {link}{_pick(rng, REL_WORDS[program['rel']])} "
                f"{anchor_art}{_np_text(rng, program['anchor'], nouns)}")
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.1:
        text += "."
    return text


def tokenize(raw: str) -> list[str]:
    """RefCOCO-style tokens: lower-case words and numbers; punctuation dropped."""
    return re.findall(r"[a-z0-9]+", raw.lower())
