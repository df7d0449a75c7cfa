"""Positive word sets of a description for MDIN's semantic-consistency loss (rgsan-mdin spec §6.1, §6.7).

MDIN takes five token sets per description from EDA's scene-graph parser (main object, its modifiers, pronouns,
relation words, other entities) plus the "no object" slot made of the appended " . not mentioned". The toolkit
derives the same five sets from the dependency parse that every 3D model already has
(:class:`grounding.text.DependencyParser`, spaCy), on words rather than sub-word tokens (the shared
``TextEncoder`` gives one feature per word). The rules (a choice: the vendored scene-graph parser is not a
dependency of the toolkit):

- **main**: the target word of the rule-guided selection (``Parse.target``: the noun naming the referred
  object(s)), the other mentions of the same noun (same lemma), and their ``compound`` dependents
  ("trash can", "kitchen counter");
- **modifier**: adjectives and numbers attached to a main word (``amod``, ``nummod``, or any ADJ / NUM child),
  and predicative adjectives of a clause whose subject is a main word or a pronoun ("it is *blue*");
- **pronoun**: pronouns other than the observer's (*you*, *your*, *yourself*, *I*, *me*);
- **relation**: prepositions (ADP) and spatial words (:data:`RELATION_WORDS`, e.g. left, between, nearest);
- **other**: every other noun (with its compounds): the context objects, extra negatives of the loss;
- **no_object**: the two words appended by :data:`NO_OBJECT_SUFFIX` ("not", "mentioned"); the model appends
  ``[".", "not", "mentioned"]`` after the parsed words, so the slot is the last two word positions.
"""

from __future__ import annotations

from dataclasses import dataclass

from grounding.text import Parse
from grounding.text.roles import RELATION_WORDS

NO_OBJECT_SUFFIX = (".", "not", "mentioned")
OBSERVER_WORDS = frozenset({"you", "your", "yourself", "i", "me", "my"})
SETS = ("main", "modifier", "pronoun", "relation", "other")


@dataclass(frozen=True)
class PhraseSets:
    """0-based word indices of each positive set (into ``Parse.words``; the suffix is not included).

    ``no_object`` is given separately by the model as the last two positions of the encoded word sequence.
    """

    main: tuple[int, ...]
    modifier: tuple[int, ...]
    pronoun: tuple[int, ...]
    relation: tuple[int, ...]
    other: tuple[int, ...]


def phrase_sets(parse: Parse) -> PhraseSets:
    """The five word sets of one parsed description (rules in the module docstring)."""
    n = len(parse.words)
    lower = [w.lower() for w in parse.words]
    children: list[list[int]] = [[] for _ in range(n + 1)]  # by 1-based governor; 0 = ROOT
    for k, h in enumerate(parse.heads, start=1):
        children[h].append(k)
    target = parse.target
    main = {target} if 1 <= target <= n else set()
    if main:  # repeated mentions of the target noun ("... this trash can is the trash can farthest ...")
        lemma = parse.lemmas[target - 1].lower()
        main |= {k for k in range(1, n + 1) if parse.pos[k - 1] in ("NOUN", "PROPN")
                 and parse.lemmas[k - 1].lower() == lemma}
    main |= {c for t in list(main) for c in children[t] if parse.labels[c - 1] == "compound"}
    pronoun = {k for k in range(1, n + 1) if parse.pos[k - 1] == "PRON" and lower[k - 1] not in OBSERVER_WORDS}
    relation = {k for k in range(1, n + 1)
                if parse.pos[k - 1] == "ADP" or parse.lemmas[k - 1].lower() in RELATION_WORDS
                or lower[k - 1] in RELATION_WORDS} - main
    modifier: set[int] = set()
    for m in main:
        modifier |= {c for c in children[m] if parse.labels[c - 1] in ("amod", "nummod")
                     or parse.pos[c - 1] in ("ADJ", "NUM")}
    subjects = main | pronoun
    for k in range(1, n + 1):  # "it is blue": ADJ whose governor's subject is a main word or a pronoun
        h = parse.heads[k - 1]
        if parse.pos[k - 1] == "ADJ" and h >= 1 and any(
                c in subjects and parse.labels[c - 1].startswith("nsubj") for c in children[h]):
            modifier.add(k)
    modifier -= main | relation
    other = {k for k in range(1, n + 1) if parse.pos[k - 1] in ("NOUN", "PROPN")} - main - relation
    other |= {c for o in list(other) for c in children[o] if parse.labels[c - 1] == "compound"} - main
    return PhraseSets(*(tuple(sorted(k - 1 for k in s)) for s in (main, modifier, pronoun, relation, other)))
