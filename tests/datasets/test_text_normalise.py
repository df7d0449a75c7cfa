"""The versioned description normaliser (data spec §6.4 toolkit rule)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datasets.text_normalise import NORMALISER_VERSION, RULE_NAMES, format_stats, normalise, normalise_with_stats

CASES = [
    # number glued to a unit of length
    ("a 50cm tall lamp", "a 50 cm tall lamp"),
    ("50cm", "50 cm"),
    ("it is 2.5m wide", "it is 2.5 m wide"),
    ("about 3ft.", "about 3 ft."),
    ("a 10CM box", "a 10 CM box"),
    ("6inches away", "6 inches away"),
    # not units: ordinals, names, words that only start like a unit
    ("the 2nd chair", "the 2nd chair"),
    ("the 1st and 3rd shelves", "the 1st and 3rd shelves"),
    ("a 3d printer", "a 3d printer"),
    ("wait 5min", "wait 5min"),
    ("cm and m alone", "cm and m alone"),
    # "+" after numbers
    ("a cake with 3+ tiers", "a cake with 3 tiers"),
    ("10++ books", "10 books"),
    ("3+cm", "3 cm"),
    ("2+2 is arithmetic", "2+2 is arithmetic"),
    ("a + sign", "a + sign"),
    # backslash and the single character after it
    ("the microwave\\. next to it", "the microwave next to it"),
    ("microwave\\. ", "microwave"),
    ("a chair\\nnear the door", "a chairnear the door"),
    ("two\\\\backslashes", "twobackslashes"),
    ("trailing backslash\\", "trailing backslash"),
    ("a\\ b", "a b"),
    # whitespace
    ("  lots   of\tspace\n\nhere  ", "lots of space here"),
    ("non\u00a0breaking", "non breaking"),
    # kept as is: case, punctuation, possessives (never MDIN's "'s" -> "is"), Unicode
    ("The chair's leg, it's brown.", "The chair's leg, it's brown."),
    ("naïve café — 10cm ½ ", "naïve café — 10 cm ½"),
    ("椅子 在 桌子 旁边", "椅子 在 桌子 旁边"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_normalise_table(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_idempotent_on_table(text: str, expected: str) -> None:
    assert normalise(expected) == expected
    assert normalise(normalise(text)) == normalise(text)


@given(st.text(alphabet=st.sampled_from(list("0123456789+\\ \t\n.cmftinsd'é椅")), max_size=40))
def test_idempotent_property(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once
    assert "\\" not in once
    assert once == once.strip() and "  " not in once


@given(st.text(max_size=60))
def test_idempotent_any_unicode(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once


def test_stats_count_records_per_rule() -> None:
    texts = ["a 50cm lamp", "3+ tiers", "microwave\\. ", "clean text", "two  spaces and 4ft"]
    out, changed = normalise_with_stats(texts)
    assert out == [normalise(t) for t in texts]
    # "microwave\\. " leaves a trailing space, so whitespace counts it too
    assert changed == Counter({"number_unit": 2, "plus_after_number": 1, "backslash": 1, "whitespace": 2})
    assert set(changed) <= set(RULE_NAMES)


def test_stats_nothing_changed() -> None:
    out, changed = normalise_with_stats(["clean", "also clean"])
    assert out == ["clean", "also clean"] and not changed
    assert "no changes" in format_stats(changed, 2)


def test_format_stats_names_version_and_rules() -> None:
    line = format_stats(Counter({"whitespace": 5, "backslash": 1}), 76)
    assert line == f"text normaliser v{NORMALISER_VERSION}: backslash 1, whitespace 5 (of 76 records)"


def test_version_is_a_string() -> None:
    assert isinstance(NORMALISER_VERSION, str) and NORMALISER_VERSION
