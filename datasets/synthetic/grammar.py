"""Surface text of description programs: ScanRefer-style sentences, lower case, punctuation spaced.

A program (``semantics.py``) says *what* a description means; :func:`render` says it in words. Every
free choice of wording (frame, template, synonym, subject) is drawn from a :class:`Chooser`, which
records the draws. Stored beside the program, the draws replay the exact text, so a check can prove
that the words on file say what the program means.

Two frames:

- A (singular only), ScanRefer's usual two or three sentences: an intro naming the class (and the
  colour), then one sentence per fact: "this is a brown chair. it is next to the window."
- B, one noun phrase with relative clauses: "the brown chair that is next to the window and is the
  tallest chair in the room." Plural programs (several targets) always use B: "the brown chairs that
  are next to the table.", and so do zero-target ones (``target.np_only``), which must not assert
  that the object exists.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from datasets.synthetic.catalog import CLASSES, noun

INTRO_COLOR = ("this is a {c} {n}.", "there is a {c} {n}.", "it is a {c} {n}.", "the {n} is {c}.", "this {n} is {c}.")
INTRO_PLAIN = ("this is a {n}.", "there is a {n}.", "it is a {n}.", "this is the {n}.")
SUBJECTS = ("it", "the {n}", "this {n}")
HEADS_SINGULAR = ("the {np}", "this is the {np}", "it is the {np}")
HEADS_PLURAL = ("the {np}", "these are the {np}", "they are the {np}")

# {be}/{sit} agree with the subject; {a}/{b} are anchor noun phrases, {v} a view phrase.
CLAUSES: dict[str, tuple[str, ...]] = {
    "color": ("{be} {c}", "{be} {c} in color", "{be} colored {c}"),
    "near": ("{be} next to the {a}", "{be} near the {a}", "{be} beside the {a}", "{be} close to the {a}",
             "{sit} by the {a}"),
    "on": ("{be} on the {a}", "{be} on top of the {a}", "{sit} on the {a}", "{be} placed on the {a}"),
    "above": ("{be} above the {a}", "{be} over the {a}"),
    "under": ("{be} under the {a}", "{be} below the {a}", "{be} underneath the {a}"),
    "left": ("{be} to the left of the {a} {v}", "{be} on the left side of the {a} {v}", "{be} left of the {a} {v}"),
    "right": ("{be} to the right of the {a} {v}", "{be} on the right side of the {a} {v}",
              "{be} right of the {a} {v}"),
    "between": ("{be} between the {a} and the {b}", "{be} in between the {a} and the {b}",
                "{sit} between the {a} and the {b}"),
    "tallest": ("{be} the tallest {n} in the room", "{be} the tallest of the {pl}", "{be} taller than the other {pl}"),
    "shortest": ("{be} the shortest {n} in the room", "{be} the shortest of the {pl}",
                 "{be} shorter than the other {pl}"),
    "biggest": ("{be} the biggest {n} in the room", "{be} the largest of the {pl}", "{be} bigger than the other {pl}"),
    "smallest": ("{be} the smallest {n} in the room", "{be} the smallest of the {pl}",
                 "{be} smaller than the other {pl}"),
    "closest": ("{be} the {n} closest to the {a}", "{be} the closest {n} to the {a}",
                "{be} closer to the {a} than the other {pl}", "{be} the nearest {n} to the {a}"),
    "farthest": ("{be} the {n} farthest from the {a}", "{be} the farthest {n} from the {a}",
                 "{be} farther from the {a} than the other {pl}", "{be} the {n} furthest from the {a}"),
    "leftmost": ("{be} the leftmost {n} {v}", "{be} the {n} on the far left {v}",
                 "{be} the first {n} from the left {v}"),
    "rightmost": ("{be} the rightmost {n} {v}", "{be} the {n} on the far right {v}",
                  "{be} the first {n} from the right {v}"),
}
VIEW_FRONT = ("when facing the {x}", "if you face the {x}", "when you are facing the {x}")
VIEW_BACK = ("with your back to the {x}", "when your back is to the {x}")
VERBS = {"be": ("is", "are"), "sit": ("sits", "sit")}


class Chooser:
    """Source of wording choices: draws from ``rng`` and records them, or replays recorded ones."""

    def __init__(self, rng: np.random.Generator | None = None, replay: list[int] | None = None):
        self.rng, self.replay = rng, replay
        self.choices: list[int] = []

    def pick(self, n: int) -> int:
        if self.replay is not None:
            pos = len(self.choices)
            if pos >= len(self.replay) or not 0 <= self.replay[pos] < n:
                raise ValueError(f"recorded wording choices do not fit this program (choice {pos} of {n})")
            value = self.replay[pos]
        else:
            assert self.rng is not None
            value = int(self.rng.integers(n))
        self.choices.append(value)
        return value


def tokenize(text: str) -> list[str]:
    """ScanRefer-style tokens: lower-case words and numbers, each punctuation mark a token of its own."""
    return re.findall(r"[a-z0-9]+|[^a-z0-9\s]", text.lower())


def _np_text(np_: dict[str, Any], ch: Chooser) -> str:
    word = noun(np_["label"], False, ch.pick(len(CLASSES[np_["label"]].nouns)))
    return f"{np_['color']} {word}" if np_.get("color") else word


def _view_text(view: dict[str, Any], ch: Chooser) -> str:
    forms = VIEW_BACK if view.get("back") else VIEW_FRONT
    form = forms[ch.pick(len(forms))]
    return form.format(x=_np_text(view["anchor"], ch))


def _clause(f: dict[str, Any], plural: bool, n: str, pl: str, ch: Chooser) -> tuple[str, str | None]:
    """(clause, view phrase or None) of one filter/selector; the view is kept apart so it may lead."""
    rel = f["rel"]
    template = CLAUSES[rel][ch.pick(len(CLAUSES[rel]))]
    words = {k: v[1 if plural else 0] for k, v in VERBS.items()}
    words.update(n=n, pl=pl, c=f.get("color", ""))
    if "anchor" in f:
        words["a"] = _np_text(f["anchor"], ch)
    if "anchors" in f:
        words["a"], words["b"] = _np_text(f["anchors"][0], ch), _np_text(f["anchors"][1], ch)
    view = _view_text(f["view"], ch) if "view" in f else None
    words["v"] = "{v}"
    return template.format(**words), view


def render(program: dict[str, Any], ch: Chooser) -> str:
    """The description text of a program (see module docstring), lower case."""
    target = program["target"]
    plural = bool(target.get("plural"))
    syn = ch.pick(len(CLASSES[target["label"]].nouns))
    n, pl = noun(target["label"], False, syn), noun(target["label"], True, syn)
    facts = list(program.get("filters", [])) + ([program["selector"]] if program.get("selector") else [])
    color = next((f["color"] for f in facts if f["rel"] == "color"), None)
    # two thirds of the singular ones read like ScanRefer's sentences; a description of nothing
    # ("np_only", zero-target) must not open with "there is a ...", so it is a noun phrase
    frame_a = not plural and not target.get("np_only") and ch.pick(3) > 0
    sentences = []
    if frame_a:
        color_in_intro = color is not None and ch.pick(4) > 0
        if color_in_intro:
            sentences.append(INTRO_COLOR[ch.pick(len(INTRO_COLOR))].format(c=color, n=n))
            facts = [f for f in facts if f["rel"] != "color"]
        else:
            sentences.append(INTRO_PLAIN[ch.pick(len(INTRO_PLAIN))].format(n=n))
        for f in facts:
            clause, view = _clause(f, False, n, pl, ch)
            subject = SUBJECTS[ch.pick(len(SUBJECTS))].format(n=n)
            if view is not None and ch.pick(2) == 0:  # "when facing the door, it is to the left of the table."
                sentences.append(f"{view}, {subject} {clause.replace(' {v}', '')}.")
            else:
                sentences.append(f"{subject} {clause.format(v=view or '')}.")
    else:
        facts = [f for f in facts if f["rel"] != "color"]
        np_ = f"{color} {pl if plural else n}" if color else (pl if plural else n)
        heads = HEADS_PLURAL if plural else HEADS_SINGULAR
        head = heads[ch.pick(len(heads))].format(np=np_)
        clauses = []
        for f in facts:
            clause, view = _clause(f, plural, n, pl, ch)
            clauses.append(clause.format(v=view or ""))
        sentences.append(f"{head} that {' and '.join(clauses)}." if clauses else f"{head}.")
    return " ".join(re.sub(r"\s+", " ", s).replace(" .", ".").replace(" ,", ",") for s in sentences)
