"""Word roles of referring expressions (grounding.text.roles): hand-tagged parses and the real spaCy parser."""

from __future__ import annotations

import pytest

from grounding.text import DependencyParser, Parse
from grounding.text.roles import CONTEXT, REFERENT, RELATION, locating_start, referring_roles

R, X, C = REFERENT, RELATION, CONTEXT


def tagged(words: str, pos: str) -> Parse:
    """A parse with the given universal POS tags (the rules read only words, POS and lemmas)."""
    w, p = words.split(), pos.split()
    assert len(w) == len(p)
    return Parse(text=words, words=w, heads=[0] + [1] * (len(w) - 1), labels=["ROOT"] + ["dep"] * (len(w) - 1),
                 pos=p, lemmas=[x.lower() for x in w], target=1, target_word=w[0], rule="test")


@pytest.mark.parametrize(("words", "pos", "roles"), [  # the locating part starts at the first non-REFERENT word
    # the anchor's colour is context, the referent's is not
    ("the yellow cup below the purple circle", "DET ADJ NOUN ADP DET ADJ NOUN", [R, R, R, X, C, C, C]),
    # a spatial word followed by a preposition starts the locating part
    ("the small one right of the green object", "DET ADJ NUM ADJ ADP DET ADJ NOUN", [R, R, R, X, X, C, C, C]),
    # ... but not when it modifies the referent
    ("the right orange one", "DET ADJ ADJ NUM", [R, R, R, R]),
    # ordinals and extremes before the head belong to the referent
    ("the second object from the right", "DET ADJ NOUN ADP DET NOUN", [R, R, R, X, C, X]),
    # relative clauses: the pronoun starts the locating part
    ("yellow one that is over the cross", "VERB NOUN PRON AUX ADP DET NOUN", [R, R, C, C, X, C, C]),
    # the first word never starts it; no locating part at all
    ("on left", "ADP ADJ", [R, R]),
    ("the bottommost tiny one", "DET NOUN ADJ NUM", [R, R, R, R]),
])
def test_roles_on_tagged_parses(words, pos, roles):
    parse = tagged(words, pos)
    assert referring_roles(parse) == roles
    assert locating_start(parse) == next((k for k, r in enumerate(roles) if r != R), len(roles))


def test_roles_with_the_real_parser():
    """spaCy's tags on generated and RefCOCO-style expressions: the referent's attributes are REFERENT, the
    anchor's are CONTEXT."""
    parser = DependencyParser()
    cases = {
        "the tiny house to the left of the tiny orange house": ("tiny", "orange"),
        "the green circle that is above the tiny purple one": ("green", "purple"),
        "large object which is right of the large yellow object": ("large", "yellow"),
        "man in red shirt on the left": ("man", "red"),
    }
    for text, (own, anchor) in cases.items():
        parse = parser.parse(text)
        roles = referring_roles(parse)
        assert len(roles) == len(parse.words)
        assert roles[parse.words.index(own)] == REFERENT, (text, parse.words, parse.pos)  # its first mention
        assert roles[len(parse.words) - 1 - parse.words[::-1].index(anchor)] == CONTEXT, (text, parse.pos)
    assert set(referring_roles(parser.parse("the blue disc"))) == {REFERENT}
