"""The template annotator over a partition's columns: :func:`template.annotate`'s answers
without building an :class:`ExampleContext` per row.

The reference (:func:`template.annotate` over :func:`context.load_contexts`) builds one facts
object per history item and scores each item in Python; together that was about 130 us of the
~150 us a row cost (150k users, 2-core VM). Here each distinct item of a partition is looked up
once (:class:`ItemBase`, kept per worker process like the context loader's bases), every
(row, history item) pair is scored at once with NumPy (shared category depth, store, price band;
the shared words are a set intersection per pair), the named items are chosen by one sort, and
the preferences are counted per row with NumPy. Python is left with the sentences of each row
(:func:`template.rationale_from`, shared with the reference) and the request hash.

:func:`template_answers` returns None where the columns hold what this path does not cover
(history items with catalog fields of their own, missing history items, category paths deeper
than :data:`MAX_PATH_LEVELS`): the caller then takes the reference path. Tests pin the two to
each other.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.tables import FileSignature
from pipeline.annotators import template
from pipeline.annotators.catalog import ITEM_FACT_COLUMNS, CatalogFacts, cached_by_asin, catalog_identity, non_empty, shared_path
from pipeline.annotators.context import history_pairs
from pipeline.teacher_prompt import ItemFacts

MAX_PATH_LEVELS = 64
"""Deepest category path scored here (real catalogs: under ten levels); deeper ones take the reference path."""


STORE, BAND, LAST_CATEGORY_NAME, STORE_NAME = range(4)
"""Columns of :func:`_codes_array` (the order of :attr:`ItemBase.codes`)."""


@dataclass(frozen=True, slots=True)
class ItemBase:
    """What the template reads of one item but its rating: the item's facts (as the context
    loader builds them) and what :func:`template._derived` computes from them, with the store,
    price band, category levels and preference values as integer codes of this worker process."""

    title: str
    categories: tuple[str, ...]
    store: str | None
    price: float | None
    features: tuple[str, ...]
    words: frozenset[str]
    title_words: frozenset[str]
    path_codes: tuple[int, ...]
    """Codes of the lower-cased category levels: what the shared category depth compares."""
    codes: tuple[int, int, int, int]
    """The store code, the band code, and the name codes of the last category and of the store
    as written (-1: none; the preferences count the names), in the order of :data:`STORE` .. :data:`STORE_NAME`."""

    @property
    def store_code(self) -> int:
        """Code of the lower-cased store (-1: none): what "the same store" compares."""
        return self.codes[STORE]

    @property
    def band_code(self) -> int:
        """Index of the price band in :data:`BAND_LABELS` (-1: no price)."""
        return self.codes[BAND]


BAND_LABELS: tuple[str, ...] = (*(label for _, label in template.PRICE_BANDS), "over $100")
_BAND_CODE = {label: code for code, label in enumerate(BAND_LABELS)}

_worker_bases: dict[tuple[FileSignature], dict[str, tuple[str | None, ItemBase]]] = {}
"""(title, item base) of a history item by asin, for one catalog at a time (see :func:`_bases_for`):
keyed by the short asin, the title compared on a hit (an asin seen with another title is built
again and replaces it)."""
_codes: dict[str, int] = {}
"""Codes of lower-cased stores and category levels (one table: only codes of one kind are compared)."""
_name_codes: dict[str, int] = {}
"""Codes of store and category names as written (the preferences name them)."""
_names: list[str] = []
"""The name of each code of :data:`_name_codes`."""
MAX_CODES = 1 << 20
"""Most codes of either table a worker keeps: past it, the bases and codes start afresh before the
next partition (a real catalog has a few thousand categories and at most some 100k stores; a
hostile one cannot grow the tables without bound). Never within a partition: its bases must share
one numbering."""


def forget_bases() -> None:
    """Drop this process's item bases and codes (see ``worker_caches.forget_worker_caches``)."""
    _worker_bases.clear()
    _codes.clear()
    _name_codes.clear()
    _names.clear()


def _code(text: str) -> int:
    found = _codes.get(text)
    if found is None:
        found = _codes[text] = len(_codes)
    return found


def _name_code(name: str) -> int:
    found = _name_codes.get(name)
    if found is None:
        found = _name_codes[name] = len(_names)
        _names.append(name)
    return found


def _item_base(title: str, categories: tuple[str, ...], store: str | None, price: float | None, features: tuple[str, ...]) -> ItemBase:
    words, title_words = template._item_words(title, features, store or "")
    band = template.price_band(price)
    return ItemBase(
        title,
        categories,
        store,
        price,
        features,
        words,
        title_words,
        tuple(_code(level) for level in template._lower_path(categories)),
        (
            _code(store.lower()) if store else -1,
            _BAND_CODE[band] if band is not None else -1,
            _name_code(categories[-1]) if categories else -1,
            _name_code(store) if store else -1,
        ),
    )


def _bases_for(run_path: Path) -> dict[str, tuple[str | None, ItemBase]]:
    identity = catalog_identity(run_path)
    bases = _worker_bases.get(identity)
    if bases is None or len(_codes) > MAX_CODES or len(_names) > MAX_CODES:
        forget_bases()  # another catalog (or full tables): the codes start afresh too
        bases = _worker_bases[identity] = {}
    return bases


def _history_bases(run_path: Path, keys: list[tuple[str, str | None]]) -> list[ItemBase]:
    """The base of each (asin, title) of a history item, from the worker's bases or the catalog
    (what ``catalog.base_with_catalog`` makes of an item without catalog fields of its own)."""
    return cached_by_asin(_bases_for(run_path), run_path, keys, ITEM_FACT_COLUMNS, _history_base)


def _history_base(asin: str, title: str | None, catalog_facts: CatalogFacts) -> ItemBase:
    return _item_base(title or "", *catalog_facts)


def _target_base(base: ItemBase, own_categories: list[str | None] | None, own_store: str | None) -> ItemBase:
    """A target's base: its (asin, title) base with the categories and store the sequences row
    gives it in their place (``catalog.base_with_catalog``); the same object when they agree."""
    categories = shared_path(non_empty(own_categories)) if own_categories else base.categories
    store = sys.intern(own_store) if own_store else base.store
    if categories == base.categories and store == base.store:
        return base
    return _item_base(base.title, categories, store, base.price, base.features)


@dataclass
class TemplateAnswers:
    """The template's answers for the rows of a partition, column by column."""

    user_preferences: list[str]
    rationales: list[str]
    coherent: list[bool]
    request_hashes: list[str]


def template_answers(run_path: Path, sequences: pa.Table, seed: int) -> TemplateAnswers | None:
    """The template annotations of ``sequences`` rows (``context.CONTEXT_COLUMNS``), equal to
    :func:`template.annotate` and ``annotation_rows.template_request_hash`` of each row's
    context without review titles; None where this path does not apply (module docstring)."""
    pairs = history_pairs(sequences)
    target = sequences.column("target").combine_chunks()
    target_asins = pc.struct_field(target, "parent_asin")
    if pairs is None or target.null_count or target_asins.null_count:
        return None
    rows = sequences.num_rows
    starts = pairs.starts
    entry_row = np.repeat(np.arange(rows, dtype=np.int64), np.diff(starts))
    position = np.arange(len(entry_row), dtype=np.int64) - starts[entry_row]

    # One base per distinct (asin, title) of the history, then one per row for the target.
    history_keys, history_unique = pairs.keys, pairs.item_key
    target_asin_list = target_asins.to_pylist()
    target_keys = list(zip(target_asin_list, pc.struct_field(target, "title").to_pylist(), strict=True))
    found = _history_bases(Path(run_path), [*history_keys, *target_keys])
    own = zip(pc.struct_field(target, "categories").to_pylist(), pc.struct_field(target, "store").to_pylist(), strict=True)
    distinct = len(history_keys)
    target_bases = [_target_base(base, categories, store) for base, (categories, store) in zip(found[distinct:], own, strict=True)]
    bases = [*found[:distinct], *target_bases]
    if any(len(base.path_codes) > MAX_PATH_LEVELS for base in bases):
        return None
    target_unique = np.arange(distinct, distinct + rows, dtype=np.int64)
    rating_column = pc.struct_field(pairs.flat, "rating")
    rated = pc.is_valid(rating_column).to_numpy(zero_copy_only=False)
    ratings = pc.fill_null(rating_column, 0.0).to_numpy(zero_copy_only=False).astype(np.float64)

    codes = _codes_array(bases)
    links = _named_links(bases, codes, history_unique, target_unique, entry_row, position)
    preferences = _preferences(codes[history_unique], entry_row, ratings, rated, rows)

    flat_asins = pairs.asins
    flat_ratings = [rating if valid else None for rating, valid in zip(ratings.tolist(), rated.tolist(), strict=True)]
    flat_bases = [bases[unique] for unique in history_unique.tolist()]
    prefix = [template.TEMPLATE_VERSION, str(seed)]
    rationales, coherent, hashes = [], [], []
    for row, (user_id, split, target_asin, target_base, start, end) in enumerate(
        zip(
            sequences.column("user_id").to_pylist(),
            sequences.column("split").to_pylist(),
            target_asin_list,
            target_bases,
            starts[:-1].tolist(),
            starts[1:].tolist(),
            strict=True,
        )
    ):
        supporting = [
            _link(flat_bases[entry], target_base, flat_asins[entry], flat_ratings[entry], entry - start, depth)
            for entry, depth in links.get(row, ())
        ]
        rationale, reason = template.rationale_from(
            seed,
            user_id,
            target_asin,
            target_base.title,
            BAND_LABELS[target_base.band_code] if target_base.band_code >= 0 else None,
            [base.title for base in flat_bases[max(start, end - 2) : end]],
            supporting,
        )
        rationales.append(rationale)
        coherent.append(reason is None)
        payload = "\x1f".join([*prefix, user_id, split, target_asin, *flat_asins[start:end], rationale, preferences[row]])
        hashes.append(hashlib.sha256(payload.encode()).hexdigest())
    return TemplateAnswers(preferences, rationales, coherent, hashes)


def _codes_array(bases: list[ItemBase]) -> np.ndarray:
    """The :attr:`ItemBase.codes` of ``bases``, one row each."""
    return np.array([base.codes for base in bases], dtype=np.int64).reshape(len(bases), 4)


def _named_links(
    bases: list[ItemBase],
    codes: np.ndarray,
    history_unique: np.ndarray,
    target_unique: np.ndarray,
    entry_row: np.ndarray,
    position: np.ndarray,
) -> dict[int, list[tuple[int, int]]]:
    """Per row, the (entry, shared category depth) of the history items a rationale names, in
    :func:`template.supporting_links` order: score at least ``MIN_LINK_SCORE``, highest first,
    ties most recent first, at most ``MAX_NAMED_ITEMS``."""
    if not len(entry_row):
        return {}
    levels = np.fromiter((len(base.path_codes) for base in bases), dtype=np.int64, count=len(bases))
    paths = np.full((len(bases), max(int(levels.max()), 1)), -1, dtype=np.int64)
    paths[np.arange(paths.shape[1]) < levels[:, None]] = np.fromiter(
        itertools.chain.from_iterable(base.path_codes for base in bases), dtype=np.int64, count=int(levels.sum())
    )
    stores, bands = codes[:, STORE], codes[:, BAND]
    pair_target = target_unique[entry_row]
    # The common prefix of the two paths (a missing level never matches: -1 only on the history side).
    history_paths = paths[history_unique]
    depth = np.cumprod((history_paths == paths[pair_target]) & (history_paths >= 0), axis=1).sum(axis=1)
    words = [base.words for base in bases]
    shared = np.fromiter(
        (len(words[h] & words[t]) for h, t in zip(history_unique.tolist(), pair_target.tolist(), strict=True)),
        dtype=np.int64,
        count=len(entry_row),
    )
    store, band = stores[history_unique], bands[history_unique]
    score = (
        template.CATEGORY_WEIGHT * np.maximum(depth - 1, 0)
        + template.KEYWORD_WEIGHT * np.minimum(shared, 3)
        + np.where((store >= 0) & (store == stores[pair_target]), template.STORE_WEIGHT, 0.0)
        + np.where((band >= 0) & (band == bands[pair_target]), template.PRICE_WEIGHT, 0.0)
    )
    kept = np.flatnonzero(score >= template.MIN_LINK_SCORE)
    order = kept[np.lexsort((-position[kept], -score[kept], entry_row[kept]))]
    named = order[_ranks(entry_row[order]) < template.MAX_NAMED_ITEMS]
    links: dict[int, list[tuple[int, int]]] = {}
    for entry, row, entry_depth in zip(named.tolist(), entry_row[named].tolist(), depth[named].tolist(), strict=True):
        links.setdefault(row, []).append((entry, entry_depth))
    return links


def _ranks(sorted_rows: np.ndarray) -> np.ndarray:
    """Each element's place among the elements of its row (``sorted_rows`` sorted by row)."""
    return np.arange(len(sorted_rows)) - np.searchsorted(sorted_rows, sorted_rows, side="left")


def _link(base: ItemBase, target: ItemBase, asin: str, rating: float | None, position: int, depth: int) -> template.Link:
    """The :class:`template.Link` of one named history item, as ``template._supporting`` builds it."""
    title_shared = base.title_words & target.title_words
    return template.Link(
        item=ItemFacts(asin, base.title, base.categories, base.store, base.price, base.features, rating),
        position=position,
        shared_category=base.categories[depth - 1] if depth >= 2 else None,
        category_depth=depth - 1 if depth > 1 else 0,
        same_store=base.store_code >= 0 and base.store_code == target.store_code,
        shared_keywords=(*sorted(title_shared), *sorted((base.words & target.words) - title_shared)),
        same_price_band=base.band_code >= 0 and base.band_code == target.band_code,
        liked=rating is not None and rating >= 4.0,
    )


def _ranked_values(entry_row: np.ndarray, values: np.ndarray, top: int) -> list[tuple[int, int, int]]:
    """Per row, its ``top`` most counted values (codes >= 0), most first, ties first seen first:
    (row, value, count) in that order."""
    present = np.flatnonzero(values >= 0)
    if not len(present):
        return []
    width = int(values.max()) + 1
    keys, first, counts = np.unique(entry_row[present] * width + values[present], return_index=True, return_counts=True)
    key_rows = keys // width
    order = np.lexsort((present[first], -counts, key_rows))
    chosen = order[_ranks(key_rows[order]) < top]
    return list(zip(key_rows[chosen].tolist(), (keys[chosen] % width).tolist(), counts[chosen].tolist(), strict=True))


def _preferences(history_codes: np.ndarray, entry_row: np.ndarray, ratings: np.ndarray, rated: np.ndarray, rows: int) -> list[str]:
    """Each row's :func:`template.user_preferences`, counted with NumPy from its history items'
    codes (:func:`_codes_array`)."""
    top_categories: list[list[str]] = [[] for _ in range(rows)]
    for row, name, _ in _ranked_values(entry_row, history_codes[:, LAST_CATEGORY_NAME], 2):
        top_categories[row].append(_names[name])
    top_store: list[tuple[str, int] | None] = [None] * rows
    for row, name, count in _ranked_values(entry_row, history_codes[:, STORE_NAME], 1):
        top_store[row] = (_names[name], count)
    top_band: list[str | None] = [None] * rows
    for row, band, _ in _ranked_values(entry_row, history_codes[:, BAND], 1):
        top_band[row] = BAND_LABELS[band]
    # bincount adds each row's ratings in history order, as sum() does.
    totals = np.bincount(entry_row[rated], weights=ratings[rated], minlength=rows)
    counts = np.bincount(entry_row[rated], minlength=rows)
    return [
        template.preferences_sentence(categories, store, band, total / count if count else None)
        for categories, store, band, total, count in zip(top_categories, top_store, top_band, totals.tolist(), counts.tolist(), strict=True)
    ]
