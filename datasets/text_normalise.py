"""The toolkit's one text normaliser for referring descriptions (data spec §6.4, toolkit rule).

The original Multi3DRefer text contains glued number-unit pairs ("50cm"), "3+ tiers" and stray
characters after backslashes; they break spaCy-based parsers whose tokens must line up with a
sub-word tokenizer ([MD] issues #4, #6). This module applies one deterministic, versioned set of rules
before any tokenizer or parser sees the text. The rules, in the order they run:

1. ``backslash``: a backslash and the single character after it are dropped (``"microwave\\\\. "`` ->
   ``"microwave "``). A backslash followed by whitespace, or at the end, is dropped alone: deleting the
   whitespace would glue two words together.
2. ``plus_after_number``: a run of ``+`` right after a digit is dropped unless a digit follows
   (``"3+ tiers"`` -> ``"3 tiers"``; ``"2+2"`` is left alone because it is arithmetic, not a count).
3. ``number_unit``: a space is put between a number and a glued unit of length (``"50cm"`` ->
   ``"50 cm"``, ``"2.5m"`` -> ``"2.5 m"``). Only the units in ``UNITS`` are split; ordinals such as
   ``"2nd"`` and names such as ``"3d"`` stay whole, as spaCy keeps them whole too.
4. ``whitespace``: runs of (Unicode) whitespace become one space; leading/trailing space is stripped.

Everything else is kept as is: case, punctuation, contractions and all non-ASCII letters. In
particular MDIN's ``"'s" -> "is"`` rewrite (which turns ``chair's`` into ``chairis``) is never copied.

``normalise`` is idempotent: ``normalise(normalise(x)) == normalise(x)``. Any change to the rules must
bump ``NORMALISER_VERSION``, since text caches (parses, positive maps) are keyed by it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable

NORMALISER_VERSION = "1"

# Units of length (and a few of size) that annotators glue to numbers. Longest alternatives first so
# the regex prefers "cms" over "cm"; the trailing \b makes "5min" or "3mmm" no match at all.
UNITS: tuple[str, ...] = (
    "millimeters", "millimetres", "millimeter", "millimetre", "centimeters", "centimetres", "centimeter",
    "centimetre", "meters", "metres", "meter", "metre", "kilometers", "kilometres", "km", "inches", "inch",
    "feet", "foot", "ft", "yards", "yard", "yds", "yd", "mms", "mm", "cms", "cm", "in", "m",
)

# ASCII digits only: the rules must not depend on the Unicode digit class of the Python build.
_BACKSLASH = re.compile(r"\\\S?")
_PLUS = re.compile(r"(?<=[0-9])\++(?![0-9])")
_NUMBER_UNIT = re.compile(r"(?<=[0-9])(?=(?:" + "|".join(UNITS) + r")\b)", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def _drop_backslash(text: str) -> str:
    return _BACKSLASH.sub("", text)


def _drop_plus(text: str) -> str:
    return _PLUS.sub("", text)


def _split_number_unit(text: str) -> str:
    return _NUMBER_UNIT.sub(" ", text)


def _collapse_space(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


# Order matters: dropping "+" may glue a unit to its number ("3+cm" -> "3cm"), which rule 3 then splits;
# whitespace runs last so that every rule's leftovers are collapsed.
RULES: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("backslash", _drop_backslash),
    ("plus_after_number", _drop_plus),
    ("number_unit", _split_number_unit),
    ("whitespace", _collapse_space),
)
RULE_NAMES: tuple[str, ...] = tuple(name for name, _ in RULES)


def normalise(text: str) -> str:
    """Apply the toolkit's text rules (module docstring) to one description.

    Args:
        text: the description as written in the annotation file.

    Returns:
        The normalised text; idempotent and deterministic for a given ``NORMALISER_VERSION``.
    """
    for _, rule in RULES:
        text = rule(text)
    return text


def normalise_with_stats(texts: Iterable[str]) -> tuple[list[str], Counter[str]]:
    """Normalise many descriptions and count, per rule, how many of them the rule changed.

    Args:
        texts: descriptions as written in the file.

    Returns:
        ``(normalised, changed)``: the normalised texts in input order, and a Counter that maps each rule
        name of ``RULE_NAMES`` to the number of texts it changed (rules that changed nothing are absent).
    """
    out: list[str] = []
    changed: Counter[str] = Counter()
    for text in texts:
        for name, rule in RULES:
            new = rule(text)
            if new != text:
                changed[name] += 1
            text = new
        out.append(text)
    return out, changed


def format_stats(changed: Counter[str], total: int) -> str:
    """One log line for loaders: ``normaliser v1: backslash 2, whitespace 5 of 120 records``."""
    parts = ", ".join(f"{name} {changed[name]}" for name in RULE_NAMES if changed.get(name))
    return f"text normaliser v{NORMALISER_VERSION}: {parts or 'no changes'} (of {total} records)"
