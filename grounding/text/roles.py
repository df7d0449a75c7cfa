"""Word roles of a referring expression: the referent's own phrase, and the context that locates it.

A referring expression names its referent first and then, if needed, locates it: "the yellow cup | below the
purple circle", "the second object | from the right", "man | in red shirt on left". A bag of words cannot tell
which colour is the referent's in "the yellow cup below the purple circle"; a role per word can. The roles come
from the part-of-speech tags of the dependency parse (:class:`~grounding.text.parser.Parse`, spaCy):

- :data:`REFERENT`: every word before the locating part (:func:`locating_start`), i.e. the referent's phrase with
  its determiners and pre-modifiers ("the third small object", "the right orange one");
- in the locating part, :data:`RELATION` for prepositions and spatial words (:data:`RELATION_WORDS`) and
  :data:`CONTEXT` for everything else (the anchor objects and their attributes, relative pronouns, verbs).

:data:`PAD` (0) is for padding. A choice of the toolkit: the rule is not from a paper. It differs from
:func:`~grounding.text.target_word.select_target`, whose rules are written for ScanRefer's sentences ("this is a
chair ...") and pick "top" in "the blue object on top".
"""

from __future__ import annotations

from grounding.text.parser import Parse

__all__ = ["CONTEXT", "NUM_ROLES", "PAD", "REFERENT", "RELATION", "RELATION_WORDS", "locating_start",
           "referring_roles"]

PAD, REFERENT, RELATION, CONTEXT = 0, 1, 2, 3
NUM_ROLES = 4
BREAK_POS = frozenset({"ADP", "AUX", "VERB", "SCONJ", "PRON"})
# Spatial words that relate an object to another or to the scene (shared with MDIN's relation word set).
RELATION_WORDS = frozenset({
    "left", "right", "next", "between", "near", "nearest", "closest", "close", "farthest", "furthest", "far",
    "above", "below", "behind", "front", "under", "underneath", "beside", "middle", "corner", "center", "centre",
    "top", "bottom", "side", "across", "opposite", "facing", "against", "leftmost", "rightmost", "first",
    "second", "third", "last", "beneath", "over", "adjacent", "along",
})


def locating_start(parse: Parse) -> int:
    """0-based index of the first word of the locating part (``len(parse.words)`` when there is none).

    The locating part starts at the first word (the expression's first word excepted) that is a preposition, a verb
    or auxiliary, a subordinating conjunction or a pronoun ("that", "which", "who"), or a spatial word followed by a
    preposition ("right *of*", "next *to*"). So "on left" is all referent.
    """
    words, pos = parse.words, parse.pos
    n = len(words)
    for k in range(1, n):
        if pos[k] in BREAK_POS:
            return k
        if words[k].lower() in RELATION_WORDS and k + 1 < n and pos[k + 1] == "ADP":
            return k
    return n


def referring_roles(parse: Parse) -> list[int]:
    """One role id per word of ``parse.words`` (:data:`REFERENT`, :data:`RELATION` or :data:`CONTEXT`)."""
    start = locating_start(parse)
    roles = []
    for k, word in enumerate(parse.words):
        if k < start:
            roles.append(REFERENT)
        elif parse.pos[k] == "ADP" or word.lower() in RELATION_WORDS or parse.lemmas[k].lower() in RELATION_WORDS:
            roles.append(RELATION)
        else:
            roles.append(CONTEXT)
    return roles
