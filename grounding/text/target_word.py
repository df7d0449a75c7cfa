"""Rule-based target-word selection (RG-SAN's RTS, spec rgsan-mdin §4.4, corrected variants).

The target word is the noun naming the object a description refers to. It is picked from the parse
alone, so the same index serves the loss and the choice of the output query at test time.

The rules run on a CoreNLP-style parse (1-based heads, node 0 = ROOT, UD labels, later sentence roots
re-attached to the first root with label ``ROOT``) and accept both tree shapes: spaCy's (the copula
verb heads "this is a chair", the preposition heads "of cabinets") and UD's (the predicate noun heads
the clause, the noun heads its preposition). Rules, in order (the name of the one that decides is
returned and counted):

1. ``subject``: the nominal subject of the first sentence's root, else the first nominal subject
   (``nsubj``/``nsubj:pass``) of the first sentence. Corrected against the original: the candidate
   must lie in the first sentence (sentence membership, not an edge index).
   ``expletive``: "there is/are X" -> X (spaCy's ``attr``, mapped to ``nsubj``, or the predicate).
2. ``pronoun_predicate``: a pronoun or determiner subject ("this", "it", "that", "there", "these",
   "they", "which", "object", ...) resolves to the noun it is predicated to: the governor when that is
   a noun (UD copula), else the nominal complement of its verb ("this is a brown chair" -> chair).
   Corrected against the original: the governor of the *edge whose dependent is the candidate*, not
   of the edge at the candidate's index. ``relative_pronoun``: "that"/"which"/"who" as subject of a
   relative clause resolves to the noun the clause modifies.
   ``personal_pronoun_object``: "you are looking for the chair ..." -> the first nominal object or
   oblique of the verb (a personal pronoun never names the object).
3. ``+of``: a quantity or attribute noun ("set", "pair", "stack", "color", "group", "row", ...)
   followed by "of" falls through to the noun it governs ("a set of white cabinets" -> cabinets),
   repeatedly ("a set of pairs of shoes" -> shoes). Appended to the rule that picked the candidate.
4. ``+can``: spaCy's small model often tags the "can" of "trash can" as an auxiliary verb, leaving
   "trash" as the subject; the head noun "can" is taken instead. Appended like ``+of``.
5. ``root_noun``: no usable subject: the first sentence's root when it is a noun (fragments without a
   verb: "brown wooden chair next to the table" -> chair). ``first_noun``: the first noun of the first
   sentence. ``later_sentence:<rule>``: rules 1-4 on the following sentences, in order, when the
   first sentence has no noun at all ("it is brown. the chair is at the table"). ``root``: the root
   word itself (degenerate parses only).

Compound nouns keep their head ("the kitchen cabinets" -> cabinets, "the trash can" -> can): every
rule returns a head word, never a compound modifier.
"""

from __future__ import annotations

from collections.abc import Sequence

NOUN_POS = frozenset({"NOUN", "PROPN"})
# Subjects that never name the object themselves: demonstratives, pronouns, expletives, and the
# placeholder "object" (as in the original rule 3).
PRONOUN_SUBJECTS = frozenset(
    {"this", "that", "these", "those", "it", "its", "they", "them", "there", "here", "which", "what",
     "who", "object", "thing", "item", "one"}
)  # fmt: skip
RELATIVE_PRONOUNS = frozenset({"that", "which", "who", "whom"})
PERSONAL_PRONOUNS = frozenset({"you", "we", "i", "he", "she", "someone", "somebody", "u"})
# Head nouns of "<quantity/attribute> of <noun>" phrases that refer to <noun>.
OF_NOUNS = frozenset(
    {"set", "sets", "pair", "pairs", "stack", "stacks", "group", "groups", "row", "rows", "pile", "piles",
     "bunch", "collection", "couple", "color", "colour", "kind", "type", "sort", "series", "number",
     "lot", "lots", "line", "cluster", "array", "bank", "one", "each", "shape"}
)  # fmt: skip
# First words of compounds whose head "can" spaCy's small model tends to tag as an auxiliary verb.
CAN_COMPOUNDS = frozenset({"trash", "garbage", "waste", "recycling", "rubbish", "paint", "watering", "soda"})
SUBJECT_LABELS = ("nsubj", "nsubj:pass")
# Labels of a copula/expletive verb's nominal complement (spaCy attr/oprd map to xcomp or nsubj).
PREDICATE_LABELS = ("xcomp", "nsubj", "nsubj:pass", "obj", "attr", "oprd", "appos")


class _Tree:
    """Children lists and sentence membership of a 1-based parse."""

    def __init__(self, words: Sequence[str], heads: Sequence[int], labels: Sequence[str],
                 pos: Sequence[str], lemmas: Sequence[str]) -> None:  # fmt: skip
        self.words = [w.lower() for w in words]
        self.heads = list(heads)
        self.labels = list(labels)
        self.pos = list(pos)
        self.lemmas = [lem.lower() for lem in lemmas]
        n = len(words)
        self.children: list[list[int]] = [[] for _ in range(n + 1)]
        for k, h in enumerate(self.heads, start=1):
            self.children[h].append(k)
        self.root = self.children[0][0]
        # Sentence of each word = the ROOT-labelled word reached by walking up (sentence roots carry
        # label ROOT even after re-attachment).
        self.sentence = [0] * (n + 1)
        for k in range(1, n + 1):
            node, steps = k, 0
            while self.labels[node - 1] != "ROOT" and self.heads[node - 1] != 0 and steps <= n:
                node, steps = self.heads[node - 1], steps + 1
            self.sentence[k] = node
        # Sentence roots in text order: the first root, then the re-attached ones.
        self.sentence_roots = sorted({self.sentence[k] for k in range(1, n + 1)})

    def word(self, k: int) -> str:
        return self.words[k - 1]

    def label(self, k: int) -> str:
        return self.labels[k - 1]

    def is_noun(self, k: int) -> bool:
        return self.pos[k - 1] in NOUN_POS and self.words[k - 1] not in PRONOUN_SUBJECTS

    def in_sentence(self, root: int) -> list[int]:
        return [k for k in range(1, len(self.words) + 1) if self.sentence[k] == root]


def select_target(
    words: Sequence[str],
    heads: Sequence[int],
    labels: Sequence[str],
    pos: Sequence[str],
    lemmas: Sequence[str] | None = None,
) -> tuple[int, str]:
    """Pick the target word of a parsed description.

    Args:
        words, heads, labels, pos: the n words, 1-based heads (0 = ROOT), UD labels and universal POS
            tags of a :class:`~grounding.text.parser.Parse`.
        lemmas: n lemmas (lowercase); None uses the lowercased words.

    Returns:
        (target, rule): the 1-based index of the target word and the name of the rule that chose it.
    """
    if not words:
        raise ValueError("select_target got an empty parse")
    if not (len(words) == len(heads) == len(labels) == len(pos)):
        raise ValueError(
            f"select_target: words, heads, labels and pos differ in length "
            f"({len(words)}, {len(heads)}, {len(labels)}, {len(pos)})"
        )
    tree = _Tree(words, heads, labels, pos, lemmas if lemmas is not None else words)
    found = _in_sentence(tree, tree.root)
    if found is not None:
        return found
    for root in tree.sentence_roots:
        if root == tree.root:
            continue
        found = _in_sentence(tree, root)
        if found is not None and tree.is_noun(found[0]):
            return found[0], f"later_sentence:{found[1]}"
    return tree.root, "root"


def _in_sentence(tree: _Tree, root: int) -> tuple[int, str] | None:
    """Rules 1-5 on the sentence headed by ``root``; None when it holds no noun at all."""
    members = tree.in_sentence(root)
    candidate, rule = _subject(tree, root, members)
    if candidate is not None:
        # "one of the chairs is ..." : fall through "of" before treating "one" as a pronoun.
        candidate, rule = _through_of(tree, candidate, rule)
        if not tree.is_noun(candidate):
            candidate, rule = _resolve_pronoun(tree, candidate, members)
    if candidate is None:
        if tree.is_noun(root):
            candidate, rule = root, "root_noun"
        else:
            nouns = [k for k in members if tree.is_noun(k)]
            if not nouns:
                return None
            candidate, rule = nouns[0], "first_noun"
    candidate, rule = _through_of(tree, candidate, rule)
    followed_by_can = candidate < len(tree.words) and tree.word(candidate + 1) == "can"
    if tree.word(candidate) in CAN_COMPOUNDS and followed_by_can:
        candidate, rule = candidate + 1, rule + "+can"
    return candidate, rule


def _subject(tree: _Tree, root: int, members: list[int]) -> tuple[int | None, str]:
    """Rule 1: subject of the sentence root, expletive complement, or first subject of the sentence."""
    kids = tree.children[root]
    if any(tree.label(c) == "expl" for c in kids):
        for c in kids:
            if tree.label(c) in PREDICATE_LABELS and tree.is_noun(c):
                return c, "expletive"
    for c in kids:
        if tree.label(c) in SUBJECT_LABELS:
            return c, "subject"
    for k in members:
        if tree.label(k) in SUBJECT_LABELS:
            return k, "subject"
    return None, ""


def _resolve_pronoun(tree: _Tree, cand: int, members: list[int]) -> tuple[int | None, str]:
    """Rule 2: map a non-noun subject to the noun it stands for; (None, "") when nothing fits."""
    word, head = tree.word(cand), tree.heads[cand - 1]
    if word in PERSONAL_PRONOUNS:
        # "you are looking for the chair ..." : first nominal object/oblique after the subject.
        for k in members:
            if k > cand and tree.is_noun(k) and tree.label(k) in ("obj", "obl", "nmod", "xcomp", "nsubj"):
                return k, "personal_pronoun_object"
        return None, ""
    if word in RELATIVE_PRONOUNS and head and tree.label(head) == "acl:relcl":
        antecedent = tree.heads[head - 1]
        if antecedent and tree.is_noun(antecedent):
            return antecedent, "relative_pronoun"
    if head and tree.is_noun(head):  # UD copula shape: nsubj(chair, this)
        return head, "pronoun_predicate"
    if head:
        # spaCy shape: nsubj(is, this) + attr(is, chair); take the verb's nominal complement.
        for c in tree.children[head]:
            if c != cand and tree.label(c) in PREDICATE_LABELS and tree.is_noun(c):
                return c, "pronoun_predicate"
    return None, ""


def _of_object(tree: _Tree, k: int) -> int | None:
    """The noun governed by an "of" attached to word k, in spaCy or UD shape; None if none."""
    for c in tree.children[k]:
        if tree.word(c) == "of":  # spaCy: prep(k, of) -> pobj(of, noun)
            for g in tree.children[c]:
                if tree.is_noun(g):
                    return g
        elif tree.is_noun(c) and any(tree.word(g) == "of" for g in tree.children[c]):
            return c  # UD: nmod(k, noun) + case(noun, of)
    return None


def _through_of(tree: _Tree, cand: int, rule: str) -> tuple[int, str]:
    """Rule 3: fall through "set/color/pair of X" to X, repeatedly."""
    seen = {cand}
    while tree.word(cand) in OF_NOUNS or tree.lemmas[cand - 1] in OF_NOUNS:
        nxt = _of_object(tree, cand)
        if nxt is None or nxt in seen:
            break
        cand, rule = nxt, rule + "+of"
        seen.add(cand)
    return cand, rule
