"""The run's catalog (the ingest stage's ``items`` table) as the annotators and the filter read it.

Each worker process keeps one copy of the catalog's columns (:func:`_catalog`) and takes the
rows of the items a partition names from it: their facts as dicts (:func:`read_item_facts`, the
reference) or column by column (:func:`read_catalog_facts`). Per-item values built from those
facts are kept per worker by asin (:func:`cached_by_asin`), bounded by :data:`MAX_CACHED_BASES`,
for one catalog at a time (:func:`catalog_identity`).
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.dataset as pads

from core.schemas import TABLE_SCHEMAS
from core.tables import FileSignature, folder_signature
from pipeline.annotators.template import MAX_MEMO_ITEMS

T = TypeVar("T")

ITEM_FACT_COLUMNS = ("parent_asin", "categories", "store", "price", "features", "main_category")
"""The catalog columns an :class:`ItemFacts` can use."""
GROUNDING_COLUMNS = ("parent_asin", "categories", "store", "main_category")
"""The catalog columns the filter's rules read (features are most of a catalog's bytes)."""


@functools.lru_cache(maxsize=2)
def _catalog(signature: FileSignature, columns: tuple[str, ...]) -> tuple[pa.Table, dict[str, int]]:
    """The ``columns`` of the whole items table and each asin's row: read once per worker process.

    A filter pushed down per partition scanned the whole catalog every time (quadratic in the
    data); the catalog is the small table (one row per item, without descriptions and details),
    so a worker keeps one copy per column set (the annotator's and the filter's). The last row of
    an asin wins, as when the filtered rows were read into a dict.
    """
    files = [file for file, _, _ in signature]
    # One chunk per column: a take from chunked nested columns concatenates them all each time.
    table = pads.dataset(files, format="parquet", schema=TABLE_SCHEMAS["items"]).to_table(columns=list(columns)).combine_chunks()
    index = dict(zip(table.column("parent_asin").to_pylist(), range(table.num_rows), strict=True))
    return table, index


def read_item_facts(run_path: Path, asins: list[str], columns: tuple[str, ...] = ITEM_FACT_COLUMNS) -> dict[str, dict[str, Any]]:
    """Catalog metadata (``columns``) of ``asins`` from the run's ``items`` table (empty when absent).

    The rows are taken from the worker's cached copy of the catalog (:func:`_catalog`).
    """
    rows = _catalog_rows(run_path, asins, columns)
    return {} if rows is None else {row["parent_asin"]: row for row in rows.to_pylist()}


def _catalog_rows(run_path: Path, asins: list[str], columns: tuple[str, ...]) -> pa.Table | None:
    """The rows (``columns``) of the run's cached catalog that hold ``asins``, in catalog order;
    None when there is no ``asin`` or no ``items`` table."""
    folder = Path(run_path) / "items"
    if not asins or not folder.is_dir():
        return None
    signature = folder_signature(folder)
    if not signature:
        return None
    table, index = _catalog(signature, tuple(columns))
    rows = sorted({row for asin in set(asins) if (row := index.get(asin)) is not None})
    return table.take(pa.array(rows, type=pa.int64()))


MAX_SHARED_PATHS = 1 << 16
"""Most category paths a worker shares between its items (a catalog has a few thousand)."""
_shared_paths: dict[tuple[str, ...], tuple[str, ...]] = {}


def shared_path(categories: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple (of interned strings) per distinct category path in this process.

    Items share a few thousand paths: at 14M reviews one tuple per item held ~400 bytes of
    repeated strings for each of ~500k cached item bases.
    """
    found = _shared_paths.get(categories)
    if found is None:
        if len(_shared_paths) >= MAX_SHARED_PATHS:  # hostile catalogs: bounded, never wrong
            _shared_paths.clear()
        found = _shared_paths[categories] = tuple(sys.intern(c) for c in categories)
    return found


BaseFacts = tuple[str, tuple[str, ...], "str | None", "float | None", tuple[str, ...]]
"""An item's title, categories, store, price and features: its facts but rating and review."""
CatalogFacts = tuple[tuple[str, ...], "str | None", "float | None", tuple[str, ...]]
"""An item's categories, store, price and features as its catalog row alone gives them."""
NO_CATALOG_FACTS: CatalogFacts = ((), None, None, ())
"""The :data:`CatalogFacts` of an item the catalog does not have."""


def read_catalog_facts(run_path: Path, asins: list[str], columns: tuple[str, ...] = ITEM_FACT_COLUMNS) -> dict[str, CatalogFacts]:
    """What ``context._item_base`` takes from the catalog for each of ``asins`` the catalog has.

    Equal to ``context._item_base({"parent_asin": asin}, read_item_facts(run_path, asins, columns))``
    but the title, and cheaper: the rows are converted column by column, not into a dict each.
    """
    rows = _catalog_rows(run_path, asins, columns)
    if rows is None:
        return {}

    def column(name: str) -> list[Any]:
        return rows.column(name).to_pylist() if name in columns else [None] * rows.num_rows

    found = {}
    for asin, categories, main_category, store, price, features in zip(
        *(column(name) for name in ("parent_asin", "categories", "main_category", "store", "price", "features")), strict=True
    ):
        if not categories and main_category:
            categories = [main_category]
        found[asin] = (
            shared_path(non_empty(categories)) if categories else (),
            sys.intern(store) if store else None,
            price,
            non_empty(features) if features else (),
        )
    return found


def non_empty(values: list[str | None]) -> tuple[str, ...]:
    """The values but empty and missing ones (a generator only for the rare list that has them)."""
    return tuple(values) if all(values) else tuple(value for value in values if value)


def base_with_catalog(item: dict[str, Any], catalog_facts: CatalogFacts) -> BaseFacts:
    """``context._item_base`` from the item's :func:`read_catalog_facts` (or :data:`NO_CATALOG_FACTS`)."""
    categories, store, price, features = catalog_facts
    if own_categories := item.get("categories"):
        categories = shared_path(non_empty(own_categories))
    own_store = item.get("store")
    return (item.get("title") or "", categories, sys.intern(own_store) if own_store else store, price, features)


MAX_CACHED_BASES = MAX_MEMO_ITEMS
"""Most item bases a worker process keeps between partitions (the oldest half goes when full);
an item has one as history item and one as target. Measured on a 617k-item catalog (14M
reviews), template annotator, one worker: 1 << 17 gave 355 us a row at 1.4 GB, 1 << 18 320 us
at 2.0 GB, 1 << 19 255 us at 2.7 GB (with :data:`template.MAX_MEMO_ITEMS` alike). 1 << 19 made
the annotate workers the chain's largest processes at 14M (3.07 GB, 1.64x the 3.5M run's peak
for 4x the input, over the 1.5x target). With interned category paths and slotted facts, three
part files of the same run in one process (eighth session): 1 << 18 took 23.0-24.2 s a part and
ended at 2.06 GB, 1 << 17 25.2-26.4 s (+9%) at 1.65 GB. The smaller bound is the default: the
memory then stops growing with the catalog (a ~155k-item catalog, 3.5M reviews, nearly fills
it), which the chain's 1.5x memory target for 4x the input asks, at a cost the 15-minute
target has room for."""


def drop_oldest_half(cache: dict[Any, Any]) -> None:
    """Bound a worker cache: its first-inserted half goes (safe with another thread using it)."""
    for key in list(itertools.islice(cache, len(cache) // 2)):
        cache.pop(key, None)


def catalog_identity(run_path: Path) -> tuple[FileSignature]:
    """The files of the run's items table (empty: none): per-worker caches of catalog facts start
    afresh when it changes."""
    folder = Path(run_path) / "items"
    return (folder_signature(folder) if folder.is_dir() else (),)


def cached_by_asin(
    cache: dict[str, tuple[str | None, T]],
    run_path: Path,
    keys: list[tuple[str, str | None]],
    columns: tuple[str, ...],
    build: Callable[[str, str | None, CatalogFacts], T],
) -> list[T]:
    """The value of each (asin, title) in ``keys``: from ``cache`` ((title, value) by asin; the
    title is compared on a hit, and an asin seen under another title is built again and replaces
    it), or ``build(asin, title, catalog facts)`` from :func:`read_catalog_facts` (``columns``).
    New values are added, the cache's oldest half dropped first when it would pass
    :data:`MAX_CACHED_BASES`."""
    found = [entry[1] if (entry := cache.get(asin)) is not None and entry[0] == title else None for asin, title in keys]
    missing = {key for key, value in zip(keys, found, strict=True) if value is None}
    if not missing:
        return found  # type: ignore[return-value]
    catalog = read_catalog_facts(run_path, sorted({asin for asin, _ in missing}), columns)
    new = {(asin, title): build(asin, title, catalog.get(asin, NO_CATALOG_FACTS)) for asin, title in missing}
    if len(cache) + len(new) > MAX_CACHED_BASES:
        drop_oldest_half(cache)
    cache.update({asin: (title, value) for (asin, title), value in new.items()})
    return [new[key] if value is None else value for key, value in zip(keys, found, strict=True)]


def forget_catalog_caches() -> None:
    """Drop this process's copy of the catalog and its shared category paths."""
    _catalog.cache_clear()
    _shared_paths.clear()
