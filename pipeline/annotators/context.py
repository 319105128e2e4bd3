"""Turn ``sequences`` rows into :class:`ExampleContext` objects, enriched from ``items``.

The sequences table carries titles and ratings of history items but not their categories,
store, price or features, nor the user's review titles. When the run folder has the ``items``
and ``interactions`` tables of the ingest stage, the worker adds them: the catalog facts from its
copy of the catalog (:mod:`pipeline.annotators.catalog`), the review titles by an ``isin``
filter pushed down to Parquet; without them the context is built from the sequences table alone.
The filter's lighter contexts are in :mod:`pipeline.annotators.grounding_contexts`.

Partitions are fixed slices of the sequences part files (:class:`PartitionSpec`), computed from
the data only, so the outputs never depend on how many Dask workers run them.
"""

from __future__ import annotations

import functools
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
from core.tables import (
    ITEM_ID_DICTIONARY_BYTES,
    FileSignature,
    dataset,
    dictionary_pages,
    folder_signature,
    list_leaf_paths,
    parts,
    read_with_dictionaries,
)
from pipeline.annotators.catalog import (
    ITEM_FACT_COLUMNS,
    MAX_CACHED_BASES,
    NO_CATALOG_FACTS,
    BaseFacts,
    base_with_catalog,
    catalog_identity,
    drop_oldest_half,
    read_catalog_facts,
    read_item_facts,
    shared_path,
)
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
    # Read a row group at a time: one chunk per row group (a sequences part has one), half the
    # time of read_table and no second copy from combining.
    return _one_chunk(_read_context_columns(file))


HISTORY_DICTIONARY_FIELDS = {"parent_asin": ITEM_ID_DICTIONARY_BYTES, "title": 24}
"""History item fields read dictionary-encoded, with the most bytes a value their column chunk
may take for it (:func:`core.tables.dictionary_pages`: beyond it the writer fell back to plain
pages, which Arrow reads faster as strings). A plain title takes its length and 4 bytes
(50-70 in these catalogs); one 150k-user part stores ids in 4.0 bytes a value, titles in 9.4.

A part's histories name each item many times (about nine items a row, three rows a user), and
the readers decode only the rows they take (:func:`_codes_of` turns just the used entries into
Python strings). One 150k-user part (40,890 rows): read in 0.05-0.09 CPU-s against 0.12-0.25 s
decoded; the heuristic judge, which reads every part for 300 rows, went from 1.7-1.9 to 1.3-1.5
CPU-s."""


def _read_context_columns(file: str) -> pa.Table:
    """:data:`CONTEXT_COLUMNS` of a part file, its :data:`HISTORY_DICTIONARY_FIELDS` leaves
    dictionary-encoded where their pages are (:func:`core.tables.read_with_dictionaries`)."""
    parquet = pq.ParquetFile(file)
    encoded = [
        path
        for path in list_leaf_paths(parquet.schema, {("history", name) for name in HISTORY_DICTIONARY_FIELDS})
        if dictionary_pages(parquet, path, HISTORY_DICTIONARY_FIELDS[path.rsplit(".", 1)[1]])
    ]
    return read_with_dictionaries(file, CONTEXT_COLUMNS, encoded, parquet.metadata) if encoded else parquet.read(columns=CONTEXT_COLUMNS)


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


def _item_base(item: dict[str, Any], catalog: dict[str, dict[str, Any]]) -> BaseFacts:
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


def _base_key(item: dict[str, Any]) -> tuple[Any, ...]:
    """What an item's :data:`BaseFacts` depends on besides the catalog."""
    categories = item.get("categories")
    return (item["parent_asin"], item.get("title"), tuple(categories) if categories else (), item.get("store"))


def contexts_from_rows(
    rows: list[dict[str, Any]],
    catalog: dict[str, dict[str, Any]],
    review_titles: dict[tuple[str, str], str],
    bases: dict[tuple[Any, ...], BaseFacts] | None = None,
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

    def base(item: dict[str, Any]) -> tuple[tuple[Any, ...], BaseFacts]:
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


_worker_bases: dict[tuple[FileSignature, tuple[str, ...]], dict[tuple[Any, ...], BaseFacts]] = {}
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
    local: dict[tuple[Any, ...], BaseFacts] = {}
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
        drop_oldest_half(facts)
    contexts = contexts_from_rows(rows, catalog, titles, local, facts)
    if len(shared) + len(local) > MAX_CACHED_BASES:
        drop_oldest_half(shared)
    shared.update(local)
    return contexts


_worker_history: dict[tuple[str, str | None, float | None], ItemFacts] = {}
"""History facts by (asin, title, rating) of :func:`_contexts_from_table` (same catalog as the bases)."""
_worker_targets: dict[tuple[Any, ...], ItemFacts] = {}
"""Target facts by base key of :func:`_contexts_from_table` (same catalog as the bases)."""
PLAIN_HISTORY_FIELDS = frozenset(["parent_asin", "title", "rating", "timestamp"])
"""History item fields of the sequences table: none of them replaces a catalog fact."""


def _worker_caches(run_path: Path, columns: tuple[str, ...]) -> dict[tuple[Any, ...], BaseFacts]:
    """This worker's bases for the run's catalog (all worker caches start afresh on another one)."""
    identity = (*catalog_identity(run_path), tuple(columns))
    shared = _worker_bases.get(identity)
    if shared is None:
        for cache in (_worker_bases, _worker_facts, _worker_history, _worker_targets):
            cache.clear()
        shared = _worker_bases[identity] = {}
    return shared


def _publish(cache: dict[Any, Any], new: dict[Any, Any], limit: int) -> None:
    """Add a partition's new entries to a worker cache, first dropping its oldest half when full."""
    if len(cache) + len(new) > limit:
        drop_oldest_half(cache)
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
    local: dict[tuple[Any, ...], BaseFacts] = {}
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
            local[key] = base_with_catalog(item, catalog.get(key[0], NO_CATALOG_FACTS))
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
    flat: pa.Array
    """The flattened history items themselves (their other fields, e.g. the ratings)."""


def history_pairs(sequences: pa.Table) -> HistoryPairs | None:
    """The :class:`HistoryPairs` of ``sequences`` (its ``history`` column), found with Arrow and
    NumPy: only the distinct pairs become Python objects. None when the history items carry
    fields beyond :data:`PLAIN_HISTORY_FIELDS` (a catalog fact of their own) or a history item
    or its asin is missing (the row path handles those)."""
    if {field.name for field in sequences.schema.field("history").type.value_type} - PLAIN_HISTORY_FIELDS:
        return None
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
    return HistoryPairs(keys, item_key.reshape(-1), [asins[code] for code in asin_codes.tolist()], starts, flat)


def _codes_of(values: pa.Array) -> tuple[np.ndarray, list[Any]]:
    """Codes of ``values`` (nulls get a code of their own) and the value of each code.

    A plain array is dictionary-encoded: equal values get equal codes. A dictionary array (a
    part file's history, read encoded) is coded through its indices, and only the entries they
    use become Python objects; a value its dictionary holds twice then gets two codes, which
    :func:`history_pairs` takes as two keys with the same (asin, title): the same facts.
    """
    if not pa.types.is_dictionary(values.type):
        encoded = pc.dictionary_encode(values, null_encoding="encode")
        return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()
    # Null indices take the slot after the dictionary's last entry.
    indices = pc.fill_null(values.indices, len(values.dictionary)).to_numpy(zero_copy_only=False)
    seen = np.zeros(len(values.dictionary) + 1, dtype=bool)
    seen[indices] = True
    used = np.flatnonzero(seen)
    code = np.empty(len(seen), dtype=np.int64)
    code[used] = np.arange(len(used), dtype=np.int64)
    distinct = values.dictionary.take(pa.array(used[used < len(values.dictionary)])).to_pylist()
    if seen[-1]:
        distinct.append(None)
    return code[indices], distinct


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
    return _concat_parts(pieces)


def _concat_parts(pieces: list[pa.Table]) -> pa.Table:
    """Rows taken from several part files as one table. Each file's history leaves are read
    encoded or plain by its own pages (:func:`_read_context_columns`); where they differ, the
    pieces are brought to the encoded form (only the taken rows are encoded)."""
    if all(piece.schema.equals(pieces[0].schema) for piece in pieces):
        return pa.concat_tables(pieces)
    history = pieces[0].schema.field("history")
    item = history.type.value_type
    encoded_item = pa.struct(
        [field.with_type(pa.dictionary(pa.int32(), pa.string())) if field.name in HISTORY_DICTIONARY_FIELDS else field for field in item]
    )
    schema = pieces[0].schema.set(
        pieces[0].schema.get_field_index("history"), history.with_type(pa.list_(history.type.value_field.with_type(encoded_item)))
    )
    return pa.concat_tables([piece.cast(schema) for piece in pieces])


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
    return contexts_for_sequences(Path(run_path), sequences, review_titles, catalog_columns)


def contexts_for_sequences(
    run_path: Path, sequences: pa.Table, review_titles: bool = False, catalog_columns: tuple[str, ...] = ITEM_FACT_COLUMNS
) -> dict[tuple[str, str, str], ExampleContext]:
    """The contexts of ``sequences`` rows by key (see :func:`load_contexts_for_keys`)."""
    if not review_titles:
        with paused_gc(freeze=True):
            contexts = _contexts_from_table(run_path, sequences, catalog_columns)
        if contexts is not None:
            return {context.key: context for context in contexts}
    rows = sequences.to_pylist()
    asins = pc.unique(
        pa.concat_arrays(
            [
                pc.struct_field(pc.list_flatten(sequences.column("history")), "parent_asin").combine_chunks().cast(pa.string()),
                pc.struct_field(sequences.column("target"), "parent_asin").combine_chunks().cast(pa.string()),
            ]
        )
    ).to_pylist()
    catalog = read_item_facts(run_path, asins, catalog_columns)
    titles = read_review_titles(run_path, pc.unique(sequences.column("user_id")).to_pylist()) if review_titles else {}
    return {context.key: context for context in contexts_from_rows(rows, catalog, titles)}


def forget_context_caches() -> None:
    """Drop this process's caches of the context loader (see ``worker_caches.forget_worker_caches``)."""
    for cached in (_context_columns, _key_index):
        cached.cache_clear()
    for table in (_worker_bases, _worker_facts, _worker_history, _worker_targets):
        table.clear()
