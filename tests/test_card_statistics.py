"""The card statistics counted in Arrow equal their plain-Python definitions, on hostile text too."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from datacards.statistics import UNCATEGORISED, category_counts, category_of, word_counts

HOSTILE_TEXTS = [
    None,
    "",
    " ",
    "   ",
    "one",
    "  two words  ",
    "tab\tnew\nline\x0bvt\x0cff\rcr",
    "file\x1csep\x1dgroup\x1erecord\x1funit",
    "nel\x85nbsp\xa0ogham\u1680en\u2002thin\u2009hair\u200a",
    "line\u2028para\u2029narrow\u202fmath\u205fideo\u3000end",
    "zero\u200bwidth is not a space",
    "émoji 🎉 and ümlaut",
    "\u3000\u3000",
]


def test_word_counts_equal_str_split_on_hostile_text() -> None:
    expected = dict(Counter(len(text.split()) for text in HOSTILE_TEXTS if text))
    counted = word_counts(pa.chunked_array([HOSTILE_TEXTS[:5], HOSTILE_TEXTS[5:]], pa.string()))
    assert counted == expected
    assert list(counted) == list(expected)  # first-seen order, as Counter keeps it
    assert word_counts(pa.array([], pa.string())) == {}
    assert word_counts(pa.array([None, ""], pa.string())) == {}


def test_category_counts_follow_category_of_on_every_shape_of_item() -> None:
    categories = [None, [], ["Grocery"], ["Grocery", "Snacks"], ["Grocery", "Snacks", "Chips"], ["Grocery", None], [None], ["", "x"], []]
    main = ["Main", None, "Main", None, "Main", "Main", None, "Main", ""]
    items = pa.table({"categories": pa.array(categories, pa.list_(pa.string())), "main_category": pa.array(main, pa.string())})
    expected = dict(Counter(category_of(c, m) for c, m in zip(categories, main)))
    assert category_counts(items) == expected
    assert list(category_counts(items)) == list(expected)
    assert expected[UNCATEGORISED] == 2
    empty = items.slice(0, 0)
    assert category_counts(empty) == {}
    chunked = pa.concat_tables([items.slice(0, 4), items.slice(4)])
    assert category_counts(chunked) == expected
