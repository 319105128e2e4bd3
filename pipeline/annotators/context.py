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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from core.schemas import TABLE_SCHEMAS
from core.tables import dataset, parts
from pipeline.teacher_prompt import ExampleContext, ItemFacts


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


@functools.lru_cache(maxsize=1)
def _context_columns(file: str, mtime_ns: int, size: int) -> pa.Table:
    # A part file holds many partitions and Parquet cannot read a row range of one row group:
    # each worker process reads a file once and slices it for every partition it is given.
    return pq.read_table(file, columns=CONTEXT_COLUMNS)


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


FileSignature = tuple[tuple[str, int, int], ...]


def _signature(folder: Path) -> FileSignature:
    return tuple((str(f), (st := f.stat()).st_mtime_ns, st.st_size) for f in parts(folder))


@functools.lru_cache(maxsize=2)
def _catalog(signature: FileSignature, columns: tuple[str, ...]) -> tuple[pa.Table, dict[str, int]]:
    """The ``columns`` of the whole items table and each asin's row: read once per worker process.

    A filter pushed down per partition scanned the whole catalog every time (quadratic in the
    data); the catalog is the small table (one row per item, without descriptions and details),
    so a worker keeps one copy per column set (the annotator's and the filter's). The last row of
    an asin wins, as when the filtered rows were read into a dict.
    """
    files = [file for file, _, _ in signature]
    table = pads.dataset(files, format="parquet", schema=TABLE_SCHEMAS["items"]).to_table(columns=list(columns))
    index = dict(zip(table.column("parent_asin").to_pylist(), range(table.num_rows), strict=True))
    return table, index


def read_item_facts(run_path: Path, asins: list[str], columns: tuple[str, ...] = ITEM_FACT_COLUMNS) -> dict[str, dict[str, Any]]:
    """Catalog metadata (``columns``) of ``asins`` from the run's ``items`` table (empty when absent).

    The rows are taken from the worker's cached copy of the catalog (:func:`_catalog`).
    """
    folder = Path(run_path) / "items"
    if not asins or not folder.is_dir():
        return {}
    signature = _signature(folder)
    if not signature:
        return {}
    table, index = _catalog(signature, tuple(columns))
    rows = sorted({row for asin in set(asins) if (row := index.get(asin)) is not None})
    return {row["parent_asin"]: row for row in table.take(pa.array(rows, type=pa.int64())).to_pylist()}


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


def _item_base(item: dict[str, Any], catalog: dict[str, dict[str, Any]]) -> _Base:
    meta = catalog.get(item["parent_asin"], {})
    categories = item.get("categories") or meta.get("categories") or []
    if not categories and meta.get("main_category"):
        categories = [meta["main_category"]]
    return (
        item.get("title") or "",
        tuple(c for c in categories if c),
        item.get("store") or meta.get("store") or None,
        meta.get("price"),
        tuple(f for f in (meta.get("features") or []) if f),
    )


def contexts_from_rows(
    rows: list[dict[str, Any]],
    catalog: dict[str, dict[str, Any]],
    review_titles: dict[tuple[str, str], str],
) -> list[ExampleContext]:
    """Example contexts from sequences rows (as dicts) plus catalog and review-title lookups.

    An item's facts are built once per (item, title, rating) and shared (they are frozen): a
    user's examples repeat most of one history, and popular items recur across users. With
    review titles the user is part of that key. The facts but the rating (title, categories,
    store, price, features) are built once per item and their tuples shared by all its facts,
    so per-item work downstream (the template's keywords) can be keyed by those objects.
    """
    contexts = []
    bases: dict[tuple[Any, ...], _Base] = {}
    shared: dict[tuple[Any, ...], ItemFacts] = {}

    def base(item: dict[str, Any]) -> tuple[tuple[Any, ...], _Base]:
        categories = item.get("categories")
        key = (item["parent_asin"], item.get("title"), tuple(categories) if categories else (), item.get("store"))
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


def load_contexts(run_path: Path, sequences: pa.Table, review_titles: bool = True) -> list[ExampleContext]:
    """Contexts for a table of sequences rows, enriched from the run's items and interactions.

    ``review_titles=False`` leaves the users' review titles out (the template never shows them,
    and finding them reads the interactions table).
    """
    rows = sequences.to_pylist()
    asins = [item["parent_asin"] for row in rows for item in [*(row["history"] or []), row["target"]]]
    catalog = read_item_facts(run_path, asins)
    titles = read_review_titles(run_path, [row["user_id"] for row in rows]) if review_titles else {}
    return contexts_from_rows(rows, catalog, titles)


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
        table = pq.read_table(file, columns=["user_id", "split", "target"])
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
    signature = _signature(Path(run_path) / "sequences")
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
