"""Turn ``sequences`` rows into :class:`ExampleContext` objects, enriched from ``items``.

The sequences table carries titles and ratings of history items but not their categories,
store, price or features, nor the user's review titles. When the run folder has the ``items``
and ``interactions`` tables of the ingest stage, the worker reads just the rows it needs (an
``isin`` filter pushed down to Parquet) and adds them; without them the context is built from
the sequences table alone.

Partitions are fixed slices of the sequences part files (:class:`PartitionSpec`), computed from
the data only, so the outputs never depend on how many Dask workers run them.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from core.runtime import one_slot_cache, paused_gc
from core.schemas import TABLE_SCHEMAS
from core.tables import FileSignature, dataset, folder_signature, parts
from pipeline.annotators.template import MAX_MEMO_ITEMS
from pipeline.teacher_prompt import ExampleContext, ItemFacts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionSpec:
    """Rows ``row_indices`` of one sequences part file; output part number ``index``."""

    index: int
    file: str
    row_indices: tuple[int, ...]


def plan_partitions(sequences_dir: Path, splits: list[str], partition_rows: int, limit: int | None = None) -> list[PartitionSpec]:
    """Slice the selected splits of the sequences table into partitions of ``partition_rows``.

    ``limit`` keeps the first N selected rows in table order (part file, then row), so
    ``--limit`` picks the same rows whatever the cluster looks like.
    """
    specs: list[PartitionSpec] = []
    remaining = limit
    for file in parts(sequences_dir):
        split_column = pq.read_table(file, columns=["split"]).column("split")
        selected = pc.indices_nonzero(pc.is_in(split_column, value_set=pa.array(splits))).to_pylist()
        if remaining is not None:
            selected = selected[:remaining]
            remaining -= len(selected)
        for start in range(0, len(selected), partition_rows):
            specs.append(PartitionSpec(len(specs), str(file), tuple(selected[start : start + partition_rows])))
        if remaining == 0:
            break
    return specs


# The candidates (a hundred per row with the paper's settings) never enter a prompt: not read.
CONTEXT_COLUMNS = ["user_id", "split", "history", "target"]


@one_slot_cache  # the old part's columns go before the next part is read
def _context_columns(file: str, mtime_ns: int, size: int) -> pa.Table:
    # A part file holds many partitions and Parquet cannot read a row range of one row group:
    # each worker process reads a file once and slices it for every partition it is given.
    # One chunk per column: a take from a chunked nested column concatenates every chunk first
    # (0.3 s per 2,000-row partition of a 276k-row part at 14M reviews, against 0.013 s).
    # ParquetFile.read gives one chunk per row group (a sequences part has one): half the time
    # of read_table and no second copy from combining.
    return _one_chunk(pq.ParquetFile(file).read(columns=CONTEXT_COLUMNS))


def _one_chunk(table: pa.Table) -> pa.Table:
    return table if all(column.num_chunks <= 1 for column in table.columns) else table.combine_chunks()


def read_partition(spec: PartitionSpec) -> pa.Table:
    """The sequences rows of one partition (the columns a context needs)."""
    stat = os.stat(spec.file)
    table = _context_columns(spec.file, stat.st_mtime_ns, stat.st_size)
    return table.take(pa.array(spec.row_indices, type=pa.int64()))


def _optional_dataset(run_path: Path, name: str) -> pads.Dataset | None:
    folder = Path(run_path) / name
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return None
    return dataset(folder, name)


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


def read_review_titles(run_path: Path, user_ids: list[str]) -> dict[tuple[str, str], str]:
    """The users' own review titles, by (user_id, parent_asin), from ``interactions``."""
    interactions = _optional_dataset(run_path, "interactions")
    if interactions is None or not user_ids:
        return {}
    table = interactions.to_table(
        columns=["user_id", "parent_asin", "review_title"],
        filter=pc.field("user_id").isin(sorted(set(user_ids))),
    )
    titles: dict[tuple[str, str], str] = {}
    for user, asin, title in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
        if title:
            titles.setdefault((user, asin), title)
    return titles


def _facts(
    item: dict[str, Any],
    catalog: dict[str, dict[str, Any]],
    review_titles: dict[tuple[str, str], str] | None,
    user_id: str,
) -> ItemFacts:
    """The facts of one item of a sequences row (the reference of :func:`contexts_from_rows`)."""
    return ItemFacts(
        item["parent_asin"],
        *_item_base(item, catalog),
        rating=item.get("rating"),
        review_title=review_titles.get((user_id, item["parent_asin"])) if review_titles is not None else None,
    )


_Base = tuple[str, tuple[str, ...], "str | None", "float | None", tuple[str, ...]]
"""An item's title, categories, store, price and features: its facts but rating and review."""


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


def _item_base(item: dict[str, Any], catalog: dict[str, dict[str, Any]]) -> _Base:
    meta = catalog.get(item["parent_asin"], {})
    categories = item.get("categories") or meta.get("categories") or []
    if not categories and meta.get("main_category"):
        categories = [meta["main_category"]]
    store = item.get("store") or meta.get("store") or None
    return (
        item.get("title") or "",
        shared_path(tuple(c for c in categories if c)),
        sys.intern(store) if store else None,
        meta.get("price"),
        tuple(f for f in (meta.get("features") or []) if f),
    )


CatalogFacts = tuple[tuple[str, ...], "str | None", "float | None", tuple[str, ...]]
"""An item's categories, store, price and features as its catalog row alone gives them."""
NO_CATALOG_FACTS: CatalogFacts = ((), None, None, ())
"""The :data:`CatalogFacts` of an item the catalog does not have."""


def read_catalog_facts(run_path: Path, asins: list[str], columns: tuple[str, ...] = ITEM_FACT_COLUMNS) -> dict[str, CatalogFacts]:
    """What :func:`_item_base` takes from the catalog for each of ``asins`` the catalog has.

    Equal to ``_item_base({"parent_asin": asin}, read_item_facts(run_path, asins, columns))``
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
            shared_path(_non_empty(categories)) if categories else (),
            sys.intern(store) if store else None,
            price,
            _non_empty(features) if features else (),
        )
    return found


def _non_empty(values: list[str | None]) -> tuple[str, ...]:
    """The values but empty and missing ones (a generator only for the rare list that has them)."""
    return tuple(values) if all(values) else tuple(value for value in values if value)


def _base_with_catalog(item: dict[str, Any], catalog_facts: CatalogFacts) -> _Base:
    """:func:`_item_base` from the item's :func:`read_catalog_facts` (or :data:`NO_CATALOG_FACTS`)."""
    categories, store, price, features = catalog_facts
    if own_categories := item.get("categories"):
        categories = shared_path(_non_empty(own_categories))
    own_store = item.get("store")
    return (item.get("title") or "", categories, sys.intern(own_store) if own_store else store, price, features)


def _base_key(item: dict[str, Any]) -> tuple[Any, ...]:
    """What an item's :data:`_Base` depends on besides the catalog."""
    categories = item.get("categories")
    return (item["parent_asin"], item.get("title"), tuple(categories) if categories else (), item.get("store"))


def contexts_from_rows(
    rows: list[dict[str, Any]],
    catalog: dict[str, dict[str, Any]],
    review_titles: dict[tuple[str, str], str],
    bases: dict[tuple[Any, ...], _Base] | None = None,
    shared: dict[tuple[Any, ...], ItemFacts] | None = None,
) -> list[ExampleContext]:
    """Example contexts from sequences rows (as dicts) plus catalog and review-title lookups.

    An item's facts are built once per (item, title, rating) and shared (they are frozen): a
    user's examples repeat most of one history, and popular items recur across users. With
    review titles the user is part of that key. The facts but the rating (title, categories,
    store, price, features) are built once per item and their tuples shared by all its facts,
    so per-item work downstream (the template's keywords) can be keyed by those objects.
    ``bases`` may hold bases built before from the same catalog (they are added to it); an item
    whose base is not there must be in ``catalog`` if the catalog has it. ``shared`` may hold
    history facts built before from the same catalog and review titles (they are added to it).
    """
    contexts = []
    bases = {} if bases is None else bases
    shared = {} if shared is None else shared

    def base(item: dict[str, Any]) -> tuple[tuple[Any, ...], _Base]:
        key = _base_key(item)
        if (found := bases.get(key)) is None:
            found = bases[key] = _item_base(item, catalog)
        return key, found

    for row in rows:
        user_id = row["user_id"]
        history = []
        for item in row["history"] or []:
            base_key, item_base = base(item)
            key = (user_id if review_titles else None, base_key, item.get("rating"))
            if (facts := shared.get(key)) is None:
                title = review_titles.get((user_id, item["parent_asin"])) if review_titles else None
                facts = shared[key] = ItemFacts(item["parent_asin"], *item_base, rating=item.get("rating"), review_title=title)
            history.append(facts)
        # The target's own rating and review would leak the outcome: they never enter the prompt.
        target = ItemFacts(row["target"]["parent_asin"], *base(row["target"])[1])
        contexts.append(ExampleContext(user_id=user_id, split=row["split"], history=tuple(history), target=target))
    return contexts


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
_worker_bases: dict[tuple[FileSignature, tuple[str, ...]], dict[tuple[Any, ...], _Base]] = {}
_worker_facts: dict[tuple[Any, ...], ItemFacts] = {}
"""History facts (without review titles) of the bases in :data:`_worker_bases` (at most two per base)."""


def _contexts_with_worker_bases(
    run_path: Path, rows: list[dict[str, Any]], titles: dict[tuple[str, str], str], columns: tuple[str, ...] = ITEM_FACT_COLUMNS
) -> list[ExampleContext]:
    """:func:`contexts_from_rows` with the catalog rows of the items and their bases kept per worker.

    A partition's items are mostly new to it but recur across partitions (one train row per
    user): the bases built for earlier partitions are reused (bounded by
    :data:`MAX_CACHED_BASES`, for one catalog at a time) and only the other items' catalog rows
    are read. The bases are keyed by the items table's files and the columns read, so a changed
    catalog starts afresh; the contexts equal those built without the cache.
    """
    shared = _worker_caches(run_path, columns)
    local: dict[tuple[Any, ...], _Base] = {}
    missing: set[str] = set()
    facts = _worker_facts if not titles else {}  # with review titles, facts are the user's own
    for row in rows:
        for item in [*(row["history"] or []), row["target"]]:
            key = _base_key(item)
            if key not in local:
                if (found := shared.get(key)) is None:
                    missing.add(item["parent_asin"])
                else:
                    local[key] = found
    catalog = read_item_facts(run_path, sorted(missing), columns)
    if len(facts) > 2 * MAX_CACHED_BASES:
        _drop_oldest_half(facts)
    contexts = contexts_from_rows(rows, catalog, titles, local, facts)
    if len(shared) + len(local) > MAX_CACHED_BASES:
        _drop_oldest_half(shared)
    shared.update(local)
    return contexts


def _drop_oldest_half(cache: dict[Any, Any]) -> None:
    """Bound a worker cache: its first-inserted half goes (safe with another thread using it)."""
    for key in list(itertools.islice(cache, len(cache) // 2)):
        cache.pop(key, None)


_worker_history: dict[tuple[str, str | None, float | None], ItemFacts] = {}
"""History facts by (asin, title, rating) of :func:`_contexts_from_table` (same catalog as the bases)."""
_worker_targets: dict[tuple[Any, ...], ItemFacts] = {}
"""Target facts by base key of :func:`_contexts_from_table` (same catalog as the bases)."""
PLAIN_HISTORY_FIELDS = frozenset(["parent_asin", "title", "rating", "timestamp"])
"""History item fields of the sequences table: none of them replaces a catalog fact."""


def _worker_caches(run_path: Path, columns: tuple[str, ...]) -> dict[tuple[Any, ...], _Base]:
    """This worker's bases for the run's catalog (all worker caches start afresh on another one)."""
    folder = Path(run_path) / "items"
    identity = (folder_signature(folder) if folder.is_dir() else (), tuple(columns))
    shared = _worker_bases.get(identity)
    if shared is None:
        for cache in (_worker_bases, _worker_facts, _worker_history, _worker_targets):
            cache.clear()
        shared = _worker_bases[identity] = {}
    return shared


def _publish(cache: dict[Any, Any], new: dict[Any, Any], limit: int) -> None:
    """Add a partition's new entries to a worker cache, first dropping its oldest half when full."""
    if len(cache) + len(new) > limit:
        _drop_oldest_half(cache)
    cache.update(new)


def _contexts_from_table(run_path: Path, sequences: pa.Table, columns: tuple[str, ...] = ITEM_FACT_COLUMNS) -> list[ExampleContext] | None:
    """:func:`contexts_from_rows` without review titles, straight from the columns (None when the
    history items carry fields beyond :data:`PLAIN_HISTORY_FIELDS`).

    The history items are read column by column, and their facts are kept by the worker per
    (asin, title, rating) (targets per base key), so most items of a partition cost a lookup;
    the rest get their bases as in :func:`_contexts_with_worker_bases`, from the catalog facts
    of :func:`read_catalog_facts`.
    """
    history_type = sequences.schema.field("history").type.value_type
    if {field.name for field in history_type} - PLAIN_HISTORY_FIELDS:
        return None
    bases = _worker_caches(run_path, columns)
    history = sequences.column("history").combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(history), 0).to_pylist()
    flat = history.flatten()
    keys = list(zip(*(pc.struct_field(flat, name).to_pylist() for name in ("parent_asin", "title", "rating")), strict=True))
    targets = sequences.column("target").to_pylist()
    target_keys = [_base_key(target) for target in targets]

    items = [_worker_history.get(key) for key in keys]
    new_facts = list(dict.fromkeys([key for key, found in zip(keys, items, strict=True) if found is None]))
    target_facts: dict[tuple[Any, ...], ItemFacts] = {}
    new_targets = {}
    for key, target in zip(target_keys, targets, strict=True):
        if key not in target_facts and key not in new_targets:
            if (found := _worker_targets.get(key)) is None:
                new_targets[key] = target
            else:
                target_facts[key] = found
    local: dict[tuple[Any, ...], _Base] = {}
    missing: set[str] = set()
    wanted = [((asin, title, (), None), {"parent_asin": asin, "title": title}) for asin, title, _ in new_facts]
    for key, _ in [*wanted, *new_targets.items()]:
        if key not in local:
            if (found := bases.get(key)) is None:
                missing.add(key[0])
            else:
                local[key] = found
    catalog = read_catalog_facts(run_path, sorted(missing), columns)
    for key, item in [*wanted, *new_targets.items()]:
        if key not in local:
            local[key] = _base_with_catalog(item, catalog.get(key[0], NO_CATALOG_FACTS))
    built = {(asin, title, rating): ItemFacts(asin, *local[(asin, title, (), None)], rating=rating) for asin, title, rating in new_facts}
    built_targets = {key: ItemFacts(target["parent_asin"], *local[key]) for key, target in new_targets.items()}
    target_facts.update(built_targets)
    _publish(bases, local, MAX_CACHED_BASES)
    _publish(_worker_history, built, 2 * MAX_CACHED_BASES)
    _publish(_worker_targets, built_targets, MAX_CACHED_BASES)

    if built:
        items = [built[key] if found is None else found for key, found in zip(keys, items, strict=True)]
    contexts = []
    start = 0
    for user_id, split, length, target_key in zip(
        sequences.column("user_id").to_pylist(), sequences.column("split").to_pylist(), lengths, target_keys, strict=True
    ):
        history_facts = tuple(items[start : start + length])
        start += length
        contexts.append(ExampleContext(user_id=user_id, split=split, history=history_facts, target=target_facts[target_key]))
    return contexts


@dataclass(frozen=True)
class HistoryPairs:
    """The history items of a table of sequences rows, flattened, by distinct (asin, title)."""

    keys: list[tuple[str, str | None]]
    """The distinct (asin, title) pairs."""
    item_key: np.ndarray
    """For each flattened history item, the index of its pair in :attr:`keys`."""
    asins: list[str]
    """The asin of each flattened history item."""
    starts: np.ndarray
    """Where each row's items start in the flattened list (one more entry: the end)."""


def history_pairs(sequences: pa.Table) -> HistoryPairs | None:
    """The :class:`HistoryPairs` of ``sequences`` (its ``history`` column), found with Arrow and
    NumPy: only the distinct pairs become Python objects. None when a history item or its asin
    is missing (the row path handles those)."""
    history = sequences.column("history").combine_chunks()
    flat = history.flatten()
    asin_column = pc.struct_field(flat, "parent_asin")
    if flat.null_count or asin_column.null_count:
        return None
    lengths = pc.fill_null(pc.list_value_length(history), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.zeros(sequences.num_rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    asin_codes, asins = _codes_of(asin_column)
    title_codes, titles = _codes_of(pc.struct_field(flat, "title"))
    width = max(len(titles), 1)
    pairs, item_key = np.unique(asin_codes * width + title_codes, return_inverse=True)
    keys = [(asins[pair // width], titles[pair % width]) for pair in pairs.tolist()]
    return HistoryPairs(keys, item_key.reshape(-1), [asins[code] for code in asin_codes.tolist()], starts)


def _codes_of(values: pa.Array) -> tuple[np.ndarray, list[Any]]:
    """Dictionary codes of ``values`` (nulls get a code of their own) and the distinct values."""
    encoded = pc.dictionary_encode(values, null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


_worker_grounding: dict[tuple[FileSignature, ...], dict[str, tuple[str | None, ItemFacts]]] = {}
"""History facts for the grounding rules, (title, facts) by asin, for one catalog at a time."""


def _grounding_facts(run_path: Path, keys: list[tuple[str, str | None]]) -> list[ItemFacts]:
    """The facts of each (asin, title) as :func:`_contexts_from_table` builds them with
    :data:`GROUNDING_COLUMNS`, but without a rating (kept per worker process by asin)."""
    folder = Path(run_path) / "items"
    identity = (folder_signature(folder) if folder.is_dir() else (),)
    cache = _worker_grounding.get(identity)
    if cache is None:
        _worker_grounding.clear()
        cache = _worker_grounding[identity] = {}
    found = [entry[1] if (entry := cache.get(asin)) is not None and entry[0] == title else None for asin, title in keys]
    missing = [key for key, facts in zip(keys, found, strict=True) if facts is None]
    if not missing:
        return found  # type: ignore[return-value]
    catalog = read_catalog_facts(run_path, sorted({asin for asin, _ in missing}), GROUNDING_COLUMNS)
    new = {
        key: ItemFacts(key[0], *_base_with_catalog({"parent_asin": key[0], "title": key[1]}, catalog.get(key[0], NO_CATALOG_FACTS)))
        for key in missing
    }
    if len(cache) + len(new) > MAX_CACHED_BASES:
        _drop_oldest_half(cache)
    cache.update({asin: (title, facts) for (asin, title), facts in new.items()})
    return [new[key] if facts is None else facts for key, facts in zip(keys, found, strict=True)]


def grounding_contexts(run_path: Path, sequences: pa.Table) -> list[ExampleContext] | None:
    """Contexts of ``sequences`` rows as the filter's grounding rules read them: history items with
    their title, categories and store (:data:`GROUNDING_COLUMNS`, as :func:`_contexts_from_table`
    gives them) but no rating, and the target with its asin and title only.

    Each distinct (asin, title) of the history is one facts object for all its rows, found
    column-wise (:func:`history_pairs`). None where the history items carry fields beyond
    :data:`PLAIN_HISTORY_FIELDS` or miss their asin (the row path applies).
    """
    history_type = sequences.schema.field("history").type.value_type
    if {field.name for field in history_type} - PLAIN_HISTORY_FIELDS:
        return None
    pairs = history_pairs(sequences)
    if pairs is None:
        return None
    facts = _grounding_facts(run_path, pairs.keys)
    items = [facts[key] for key in pairs.item_key.tolist()]
    target = sequences.column("target")
    starts = pairs.starts.tolist()
    return [
        ExampleContext(user_id=user_id, split=split, history=tuple(items[start:end]), target=ItemFacts(asin, title or ""))
        for user_id, split, asin, title, start, end in zip(
            sequences.column("user_id").to_pylist(),
            sequences.column("split").to_pylist(),
            pc.struct_field(target, "parent_asin").to_pylist(),
            pc.struct_field(target, "title").to_pylist(),
            starts[:-1],
            starts[1:],
            strict=True,
        )
    ]


def load_grounding_contexts_for_keys(run_path: Path, keys: pa.Table) -> dict[tuple[str, str, str], ExampleContext]:
    """:func:`grounding_contexts` of the examples named by ``keys``, by key (the filter's loader;
    the rows are found as :func:`load_contexts_for_keys` finds them, which it falls back to)."""
    sequences = sequences_for_keys(Path(run_path), keys)
    if sequences.num_rows == 0:
        return {}
    contexts = grounding_contexts(Path(run_path), sequences)
    if contexts is None:
        return load_contexts_for_keys(run_path, keys, catalog_columns=GROUNDING_COLUMNS)
    return {context.key: context for context in contexts}


def load_contexts(run_path: Path, sequences: pa.Table, review_titles: bool = True) -> list[ExampleContext]:
    """Contexts for a table of sequences rows, enriched from the run's items and interactions.

    ``review_titles=False`` leaves the users' review titles out (the template never shows them,
    and finding them reads the interactions table).
    """
    if not review_titles and (contexts := _contexts_from_table(run_path, sequences)) is not None:
        return contexts
    rows = sequences.to_pylist()
    titles = read_review_titles(run_path, [row["user_id"] for row in rows]) if review_titles else {}
    return _contexts_with_worker_bases(run_path, rows, titles)


def load_partition_contexts(run_path: Path, spec: PartitionSpec, review_titles: bool = True) -> list[ExampleContext]:
    """Contexts of one planned partition (see :func:`load_contexts` for ``review_titles``)."""
    return load_contexts(run_path, read_partition(spec), review_titles)


KEY_COLUMNS = ["user_id", "split", "target_parent_asin"]
"""The columns that name an example in annotation, filter and judge tables."""


@functools.lru_cache(maxsize=1)
def _key_index(signature: FileSignature) -> pa.Table:
    """Key, part file number and row of every sequences row: read once per worker process.

    The sequences part files each span the whole user range (their Parquet statistics prune
    nothing), so a filter pushed down per partition would read every file every time.
    """
    tables = []
    for number, (file, _, _) in enumerate(signature):
        table = pq.ParquetFile(file).read(columns=["user_id", "split", "target.parent_asin"])
        tables.append(
            pa.table(
                {
                    "user_id": table.column("user_id"),
                    "split": table.column("split"),
                    "target_parent_asin": pc.struct_field(table.column("target"), "parent_asin"),
                    "_file": pa.array([number] * table.num_rows, type=pa.int32()),
                    "_row": pa.array(range(table.num_rows), type=pa.int64()),
                }
            )
        )
    return pa.concat_tables(tables)


def sequences_for_keys(run_path: Path, keys: pa.Table) -> pa.Table:
    """The sequences rows (context columns) of the examples named by ``keys``, in table order.

    ``keys`` holds :data:`KEY_COLUMNS` (extra columns are ignored; duplicates are fine). The
    keys are found by a join against the run's key index (:func:`_key_index`, read once per
    worker), and the rows are taken from the one or few part files that hold them (each read
    once per worker and kept while consecutive partitions use it, as the annotator does).
    """
    signature = folder_signature(Path(run_path) / "sequences")
    wanted = keys.select(KEY_COLUMNS).group_by(KEY_COLUMNS).aggregate([])
    found = _key_index(signature).join(wanted, KEY_COLUMNS, join_type="inner")
    found = found.sort_by([("_file", "ascending"), ("_row", "ascending")])
    pieces = []
    for number in pc.unique(found.column("_file")).to_pylist():
        rows = found.filter(pc.equal(found.column("_file"), number)).column("_row")
        pieces.append(_context_columns(*signature[number]).take(rows))
    if not pieces:
        return dataset(Path(run_path) / "sequences", "sequences").schema.empty_table().select(CONTEXT_COLUMNS)
    return pa.concat_tables(pieces)


def load_contexts_for_keys(
    run_path: Path, keys: pa.Table, review_titles: bool = False, catalog_columns: tuple[str, ...] = ITEM_FACT_COLUMNS
) -> dict[tuple[str, str, str], ExampleContext]:
    """Example contexts of the examples named by ``keys``, by key: the one loader of filter and judge.

    Per partition and cheap: the users' sequences rows (:func:`sequences_for_keys`) and the
    catalog facts of their items (:func:`read_item_facts`), plus the users' own review titles
    when ``review_titles`` (the filter and the judge do not show them). ``catalog_columns``
    narrows the catalog facts read (the filter passes :data:`GROUNDING_COLUMNS`; a prompt needs
    them all). A key with no sequences row has no entry: the caller decides what that means.
    """
    sequences = sequences_for_keys(Path(run_path), keys)
    if sequences.num_rows == 0:
        return {}
    if not review_titles:
        with paused_gc(freeze=True):
            contexts = _contexts_from_table(Path(run_path), sequences, catalog_columns)
        if contexts is not None:
            return {context.key: context for context in contexts}
    rows = sequences.to_pylist()
    asins = pc.unique(
        pa.concat_arrays(
            [
                pc.struct_field(pc.list_flatten(sequences.column("history")), "parent_asin").combine_chunks(),
                pc.struct_field(sequences.column("target"), "parent_asin").combine_chunks(),
            ]
        )
    ).to_pylist()
    catalog = read_item_facts(Path(run_path), asins, catalog_columns)
    titles = read_review_titles(Path(run_path), pc.unique(sequences.column("user_id")).to_pylist()) if review_titles else {}
    return {context.key: context for context in contexts_from_rows(rows, catalog, titles)}


def forget_context_caches() -> None:
    """Drop this process's caches of the context loader (see ``worker_caches.forget_worker_caches``)."""
    for cached in (_context_columns, _catalog, _key_index):
        cached.cache_clear()
    for table in (_worker_bases, _worker_facts, _worker_history, _worker_targets, _worker_grounding, _shared_paths):
        table.clear()
