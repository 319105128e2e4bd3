"""The streaming release builder: a release written partition by partition on the Dask cluster.

The in-memory builder (``release.layout.load_domains`` + ``write_data``) holds every row of a
domain in one process. This one writes the same files holding one partition at a time:

1. **plan**: each sequences part file reports its row count, its first and last user id,
   whether it is in user order, and a sample of its sorted user ids;
2. **join**: a partition is a run of whole users of about ``partition_rows`` rows. Its
   sequences rows are joined with their filtered rows by the reference
   :func:`release.layout.join_release_rows`, written per split into a staging folder, and
   summed up as :class:`~datacards.statistics.RowStatistics`. A user's rows all fall in one
   partition, so the partitions in user order are the release's row order. The sequences stage
   writes parts in user order with disjoint user ranges: then one task per part streams it in
   batches (each part read once, one batch held at a time). Any other layout is cut into user
   ranges from the sampled ids, one task per range reading its users with a filter (correct
   for any input, but every task scans the row groups its range overlaps);
3. **items**: each join task marks the catalog rows its rows mention in a bitmap (one bit per
   row of the run's items table); the driver ORs them and one task keeps the marked rows (a
   fold of every partition's item ids took 36 s in one task at 14M reviews);
4. **shards**: one task per shard reads the slices of the staging files that fall in its rows
   (at most ``shard_rows`` per shard, as even as the rows allow, numbered across the whole
   split: :func:`release.layout.shard_starts`), writes the shard a row group at
   a time and returns its sha256.

The driver holds the plan and the statistics, never rows. The output does not depend on how
the ranges fell (shards are cut by global row number, row groups by row count), so it equals
the in-memory builder's byte for byte (tested). Without a client the same tasks run one after
the other in this process.
"""

from __future__ import annotations

import bisect
import functools
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.progress import track
from core.schemas import ITEMS, RELEASE_ROW, SEQUENCES, SPLITS
from core.tables import FileSignature, content_cache, dataset, folder_signature, list_leaf_paths, parts
from datacards.statistics import DomainStatistics, RowStatistics, category_counts, domain_statistics
from release.layout import (
    ITEMS_SPLIT,
    DomainRelease,
    DomainSource,
    ReleaseError,
    WrittenTable,
    catalog_of,
    join_release_rows,
    mentioned_parts,
    shard_name,
    shard_starts,
)
from release.shards import DICTIONARY_LEAVES, distinct_values, with_dictionary_leaves, write_shard

log = logging.getLogger(__name__)

# User ids sampled per planned partition: the ranges come out within a few percent of
# partition_rows while the plan stays small (a few thousand ids at 14M reviews).
SAMPLES_PER_PARTITION = 64
# Staging files are Arrow IPC files with LZ4-compressed buffers, written in batches of
# STAGING_BATCH_ROWS rows so that a shard task decompresses only the batches its rows fall in.
# Measured on one 150k-user sequences part (37,642 release rows, 2-core VM): written in 0.49 s
# and read in 0.34 s, against 1.2 s and 2.0 s for the LZ4 Parquet files used before (decoding
# a hundred nested candidate titles a row was most of that), for 138 MB on disk against 107 MB
# (51 MB with the lists still dictionary-encoded, see DICTIONARY_RELEASE_ROW).
# IPC leaves out the validity bitmap of a column without nulls, where Parquet readers add one:
# the shards' Arrow sizes are therefore measured layout-free (core.tables.arrow_bytes).
STAGED = ".arrow"
STAGING_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class RangeResult:
    """What the join of one partition (a batch of a part, or a user range) wrote into its staging folder.

    ``rationales`` counts the filtered rows the partition was given, so the driver can refuse
    rationales that no partition's users claimed (orphans). ``mentioned`` marks the rows of the
    run's items table (:func:`catalog_ids`) that the partition's rows mention, one bit per row
    (``numpy.packbits``).
    """

    folder: str
    rows: dict[str, int]
    statistics: RowStatistics
    train_without_rationale: int
    rationales: int
    mentioned: bytes


@dataclass(frozen=True)
class PartSample:
    """What the plan knows of one sequences part file."""

    path: str
    rows: int
    first: str | None
    last: str | None
    in_user_order: bool
    users: list[str]


def user_sample(path: str, stride: int) -> PartSample:
    """One sequences part file's rows, user range, order, and every ``stride``-th of its user ids in sorted order."""
    users = pq.read_table(path, columns=["user_id"])["user_id"].combine_chunks()
    ordered = users.take(pc.sort_indices(users))
    sampled = ordered.take(pa.array(range(0, len(ordered), stride), pa.int64())).to_pylist()
    if not len(users):
        return PartSample(path, 0, None, None, True, [])
    in_order = len(users) < 2 or bool(pc.all(pc.less_equal(users[:-1], users[1:])).as_py())
    return PartSample(path, len(users), ordered[0].as_py(), ordered[-1].as_py(), in_order, sampled)


def ordered_parts(samples: list[PartSample]) -> list[PartSample] | None:
    """The non-empty parts in user order if each is in user order and their user ranges are disjoint, else None."""
    parts_with_rows = sorted((s for s in samples if s.rows), key=lambda s: s.first or "")
    if not all(s.in_user_order for s in parts_with_rows):
        return None
    if any(a.last >= b.first for a, b in pairwise(parts_with_rows)):  # type: ignore[operator]
        return None
    return parts_with_rows


def range_bounds(samples: Iterable[PartSample], stride: int, partition_rows: int) -> list[str]:
    """User ids that start each range after the first, so that a range holds about ``partition_rows`` rows.

    Each sampled id stands for the ``stride`` rows that follow it in its part's sorted order.
    """
    ids = sorted(user for sample in samples for user in sample.users)
    bounds: list[str] = []
    held = 0
    for user in ids:
        if held >= partition_rows and (not bounds or user > bounds[-1]):
            bounds.append(user)
            held = 0
        held += stride
    return bounds


def _user_range(low: str | None, high: str | None) -> pc.Expression | None:
    conditions = []
    if low is not None:
        conditions.append(pc.field("user_id") >= low)
    if high is not None:
        conditions.append(pc.field("user_id") < high)
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else conditions[0] & conditions[1]


def write_staging(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` as a staging file (see :data:`STAGED`)."""
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as writer:
        # Batch i holds rows [i * STAGING_BATCH_ROWS, (i + 1) * STAGING_BATCH_ROWS): the reader
        # finds a row's batch by division (write_table would also cut at every chunk boundary).
        for start in range(0, table.num_rows, STAGING_BATCH_ROWS):
            writer.write_batch(table.slice(start, STAGING_BATCH_ROWS).combine_chunks().to_batches()[0])


def read_staging(path: str | Path, offset: int = 0, rows: int | None = None) -> pa.Table:
    """Rows ``[offset, offset + rows)`` of a staging file (every row from ``offset`` when ``rows`` is None).

    Only the batches that hold those rows are read and decompressed.
    """
    reader = pa.ipc.open_file(pa.memory_map(str(path)))
    batches = reader.num_record_batches
    first = min(offset // STAGING_BATCH_ROWS, batches)
    last = batches if rows is None else min(-(-(offset + rows) // STAGING_BATCH_ROWS), batches)
    table = pa.Table.from_batches([reader.get_batch(i) for i in range(first, last)], reader.schema)
    start = offset - first * STAGING_BATCH_ROWS
    return table.slice(start, table.num_rows - start if rows is None else rows)


def _items_table(run: str, columns: list[str] | None = None) -> pa.Table:
    """The run's items table in file order (the row numbering of the ``mentioned`` bitmaps)."""
    return dataset(Path(run) / "items", "items").to_table(columns=columns)


@functools.lru_cache(maxsize=1)
def _catalog_ids(signature: FileSignature, run: str) -> pa.Array:
    return _items_table(run, ["parent_asin"])["parent_asin"].combine_chunks()


def catalog_ids(run: str) -> pa.Array:
    """``parent_asin`` of every row of the run's items table, in file order (read once per worker process)."""
    return _catalog_ids(folder_signature(Path(run) / "items"), run)


def mentioned_bitmap(run: str, splits: Iterable[pa.Table]) -> bytes:
    """The rows of the run's items table whose item the release rows mention, one bit per row
    (packed): ``pc.is_in(catalog_ids(run), value_set=mentioned_items(splits))``.

    The ids of a dictionary-encoded chunk are marked through :func:`catalog_positions` of its
    dictionary, remembered per worker: every partition's candidates carry the sequences table's
    one catalog-wide dictionary, and matching its 600k ids against the catalog again in each of
    the 156 partitions of a 14M-review release was three times the cost of their join.
    """
    return np.packbits(mentioned_rows(catalog_ids(run), splits)).tobytes()


def mentioned_rows(catalog: pa.Array, splits: Iterable[pa.Table]) -> np.ndarray:
    """Per id of ``catalog``, whether the release rows mention it (see :func:`mentioned_bitmap`)."""
    plain, used = mentioned_parts(splits)
    marked = np.zeros(len(catalog), dtype=bool)
    for dictionary, entries in used:
        positions = catalog_positions(catalog, dictionary)
        if positions is None:
            plain.append(dictionary.filter(pa.array(entries)))
            continue
        found = positions >= 0
        marked[found] |= entries[positions[found]]
    if plain:
        marked |= pc.is_in(catalog, value_set=pc.unique(pa.chunked_array(plain, pa.string()))).to_numpy(zero_copy_only=False)
    return marked


@content_cache(maxsize=16)  # each an int32 per catalog row: 2.5 MB at 617k items
def catalog_positions(catalog: pa.Array, dictionary: pa.Array) -> np.ndarray | None:
    """For each row of ``catalog`` (item ids), the index of its id in ``dictionary`` (-1: not
    there); None when the dictionary repeats a value or holds a null (a row would then need
    every index of its id). Remembered per worker by the contents of both."""
    if not distinct_values(dictionary):
        return None
    return pc.fill_null(pc.index_in(catalog, value_set=dictionary), -1).to_numpy(zero_copy_only=False)


def _join_and_stage(run: str, sequences: pa.Table, filtered: pa.Table, folder: str) -> RangeResult:
    """Join one partition (reference join), write its rows per split into ``folder``, mark the items it mentions."""
    splits, dropped = join_release_rows(sequences, filtered, DICTIONARY_RELEASE_ROW)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for split, table in splits.items():
        write_staging(table, out / f"{split}{STAGED}")
    rows = {s: t.num_rows for s, t in splits.items()}
    return RangeResult(folder, rows, RowStatistics.of_splits(splits), dropped, filtered.num_rows, mentioned_bitmap(run, splits.values()))


def build_range(run: str, low: str | None, high: str | None, folder: str) -> RangeResult:
    """Release rows of the users in ``[low, high)`` (None: unbounded), written per split into ``folder``."""
    user_filter = _user_range(low, high)
    sequences = dataset(Path(run) / "sequences", "sequences").to_table(filter=user_filter)
    filtered = dataset(Path(run) / "filtered", "filtered").to_table(filter=user_filter)
    return _join_and_stage(run, sequences, filtered, folder)


DICTIONARY_SEQUENCES = with_dictionary_leaves(SEQUENCES)
"""The sequences rows as the join reads them: the lists' ids and titles stay dictionary-encoded
(reading them as plain strings was 40% of a 14M part's join, and held a second full copy of
~2 GB of titles)."""
DICTIONARY_RELEASE_ROW = with_dictionary_leaves(RELEASE_ROW)
"""The release rows as the join writes them to staging: still dictionary-encoded, so the staging
files hold each title once per file plus an index per mention, and a shard task hands them to the
Parquet writer still encoded (:func:`release.shards.write_shard`). On one
150k-user part (37,642 rows) join, staging write and read took 0.23 s against 2.1 s with the
titles decoded in the join, and the shards are the same bytes."""


def _whole_user_batches(path: str, partition_rows: int) -> Iterable[pa.Table]:
    """A part file in user order as tables of about ``partition_rows`` rows that never split a user
    (with :data:`DICTIONARY_SEQUENCES` types)."""
    pending: pa.Table | None = None
    metadata = pq.read_metadata(path)
    file = pq.ParquetFile(path, metadata=metadata, read_dictionary=list_leaf_paths(metadata.schema, DICTIONARY_LEAVES))
    for batch in file.iter_batches(batch_size=partition_rows):
        table = pa.Table.from_batches([batch]).select(SEQUENCES.names)
        table = table if table.schema.equals(DICTIONARY_SEQUENCES) else table.cast(DICTIONARY_SEQUENCES)
        table = table if pending is None else pa.concat_tables([pending, table])
        cut = pc.index(table["user_id"], table["user_id"][-1]).as_py()
        if cut > 0:
            yield table.slice(0, cut)
            table = table.slice(cut)
        pending = table
    if pending is not None and pending.num_rows:
        yield pending


def build_part(run: str, part: PartSample, folder: str, partition_rows: int) -> list[RangeResult]:
    """Release rows of one part file in user order, a batch of whole users at a time, into ``folder-NNNNN``."""
    filtered = dataset(Path(run) / "filtered", "filtered").to_table(
        filter=_user_range(part.first, None) & (pc.field("user_id") <= part.last)
    )
    filtered = filtered.take(pc.sort_indices(filtered["user_id"]))
    keys = np.asarray(filtered["user_id"].to_pylist(), dtype=object)
    results = []
    for index, sequences in enumerate(_whole_user_batches(part.path, partition_rows)):
        users = sequences["user_id"]
        low, high = np.searchsorted(keys, users[0].as_py(), "left"), np.searchsorted(keys, users[-1].as_py(), "right")
        results.append(_join_and_stage(run, sequences, filtered.slice(low, high - low), f"{folder}-{index:05d}"))
    return results


def merged_bitmaps(results: Iterable[RangeResult]) -> bytes:
    """The OR of the partitions' ``mentioned`` bitmaps."""
    merged: np.ndarray | None = None
    for result in results:
        bits = np.frombuffer(result.mentioned, dtype=np.uint8)
        merged = bits.copy() if merged is None else np.bitwise_or(merged, bits, out=merged)
    return b"" if merged is None else merged.tobytes()


def build_items(run: str, staging: str, mentioned: bytes) -> tuple[int, dict[str, int]]:
    """The catalog rows marked in ``mentioned`` (see :func:`mentioned_bitmap`), written as ``staging/items.parquet``."""
    items = _items_table(run)
    marked = np.unpackbits(np.frombuffer(mentioned, dtype=np.uint8), count=items.num_rows).astype(bool) if items.num_rows else []
    items = items.filter(pa.array(marked, pa.bool_()))
    catalog = catalog_of(items, items["parent_asin"].combine_chunks())
    write_staging(catalog, Path(staging) / f"{ITEMS_SPLIT}{STAGED}")
    return catalog.num_rows, category_counts(catalog)


def write_shard_from(pieces: list[tuple[str, int, int]], path: str, schema: pa.Schema) -> dict[str, Any]:
    """Write one shard from ``(staging file, first row, rows)`` pieces in order (see :func:`release.shards.write_shard`)."""

    def tables() -> Iterable[pa.Table]:
        for source, offset, rows in pieces:
            yield read_staging(source, offset, rows)

    return write_shard(tables, Path(path), schema)


def shard_pieces(files: list[tuple[str, int]], shard_rows: int) -> list[list[tuple[str, int, int]]]:
    """Cut consecutive ``(file, rows)`` into the shards of :func:`release.layout.shard_starts`:
    per shard, the ``(file, first row, rows)`` slices it reads."""
    starts = shard_starts(sum(rows for _, rows in files), shard_rows)
    shards: list[list[tuple[str, int, int]]] = [[] for _ in range(len(starts) - 1)]
    start = 0  # of the file, in the split
    for path, rows in files:
        position = 0
        while position < rows:
            shard = bisect.bisect_right(starts, start + position, hi=len(shards)) - 1
            take = min(rows - position, starts[shard + 1] - start - position)
            shards[shard].append((path, position, take))
            position += take
        start += rows
    return shards


def _map(
    client: Any, function: Callable[..., Any], description: str, *arguments: list[Any], meanwhile: Callable[[], None] | None = None
) -> list[Any]:
    """``function`` over the argument lists, as tasks on ``client`` or, without one, here in turn.

    ``meanwhile`` runs in this process while the tasks run on the cluster (without one: first).
    """
    if client is None:
        if meanwhile is not None:
            meanwhile()
        return [function(*args) for args in track(list(zip(*arguments)), description)]
    from core.progress import gather_with_progress

    futures = client.map(function, *arguments, pure=False)
    if meanwhile is not None:
        try:
            meanwhile()
        except BaseException:
            from distributed import wait

            wait(futures)  # the tasks still read the staging files the caller removes next
            raise
    return gather_with_progress(futures, description)


def _join_partitions(source: DomainSource, staging: Path, partition_rows: int, client: Any) -> list[RangeResult]:
    """Plan and join one domain's partitions (steps 1 and 2 of the module docstring), in release row order."""
    part_files = [str(p) for p in parts(source.run / "sequences")]
    stride = max(1, partition_rows // SAMPLES_PER_PARTITION)
    samples = _map(client, user_sample, f"{source.config}: planning", part_files, [stride] * len(part_files))
    ordered = ordered_parts(samples)
    runs = [str(source.run)] * len(samples)
    if ordered:
        folders = [str(staging / f"{index:05d}") for index in range(len(ordered))]
        found = _map(
            client, build_part, f"{source.config}: joining", runs[: len(ordered)], ordered, folders, [partition_rows] * len(ordered)
        )
        results = [result for part in found for result in part]
    else:
        bounds = range_bounds(samples, stride, partition_rows)
        lows, highs = [None, *bounds], [*bounds, None]
        folders = [str(staging / f"{index:05d}-00000") for index in range(len(lows))]
        results = _map(client, build_range, f"{source.config}: joining", [str(source.run)] * len(lows), lows, highs, folders)
    log.info("%s: %d sequences rows joined in %d partitions", source.config, sum(s.rows for s in samples), len(results))
    rationales = dataset(source.run / "filtered", "filtered").count_rows()
    if (orphans := rationales - sum(r.rationales for r in results)) > 0:
        raise ReleaseError(
            f"the filtered table holds {orphans} rationale(s) for sequences that are not in the sequences table; "
            f"it was built from an older sequences table: rerun `rrec annotate --force` and `rrec filter --force` on {source.run}"
        )
    return sorted(results, key=lambda r: r.folder)


def _stream_domain(
    source: DomainSource,
    release_dir: Path,
    staging: Path,
    shard_rows: int,
    partition_rows: int,
    client: Any,
    while_writing: Callable[[DomainStatistics], None] | None = None,
) -> DomainRelease:
    """Join, catalog and shards of one domain (see the module docstring); ``while_writing`` gets
    the domain's card statistics while its shards are written."""
    results = _join_partitions(source, staging, partition_rows, client)
    mentioned = merged_bitmaps(results)
    ((catalog_rows, categories),) = _map(client, build_items, f"{source.config}: catalog", [str(source.run)], [str(staging)], [mentioned])

    jobs: list[tuple[str, list[tuple[str, int, int]], pa.Schema]] = []
    for split in SPLITS:
        files = [(f"{result.folder}/{split}{STAGED}", result.rows[split]) for result in results]
        pieces = shard_pieces(files, shard_rows)
        jobs += [(f"data/{source.config}/{shard_name(split, i, len(pieces))}", p, RELEASE_ROW) for i, p in enumerate(pieces)]
    pieces = shard_pieces([(str(staging / f"{ITEMS_SPLIT}{STAGED}"), catalog_rows)], shard_rows)
    items_folder = f"data/{source.config}_items"
    jobs += [(f"{items_folder}/{shard_name(ITEMS_SPLIT, i, len(pieces))}", p, ITEMS) for i, p in enumerate(pieces)]
    statistics = results[0].statistics
    for result in results[1:]:
        statistics = statistics.merge(result.statistics)
    # The domain as released, but for the sizes of its data files (known once they are written).
    unsized = DomainRelease(
        config=source.config,
        domain=source.domain,
        splits={split: WrittenTable(RELEASE_ROW, statistics.rows[split], 0) for split in SPLITS},
        items=WrittenTable(ITEMS, catalog_rows, 0),
        stages=source.stages,
        validation=source.validation,
        train_without_rationale=sum(r.train_without_rationale for r in results),
        row_statistics=statistics,
        category_counts=categories,
    )

    names, piece_lists, schemas = zip(*jobs)
    written = _map(
        client,
        write_shard_from,
        f"{source.config}: shards",
        list(piece_lists),
        [str(release_dir / n) for n in names],
        list(schemas),
        meanwhile=None if while_writing is None else functools.partial(while_writing, domain_statistics(unsized)),
    )
    files = dict(zip(names, written))

    def size(prefix: str, schema: pa.Schema, rows: int) -> WrittenTable:
        return WrittenTable(schema, rows, sum(info["nbytes"] for name, info in files.items() if name.startswith(prefix)))

    return replace(
        unsized,
        splits={split: size(f"data/{source.config}/{split}-", RELEASE_ROW, statistics.rows[split]) for split in SPLITS},
        items=size(f"{items_folder}/", ITEMS, catalog_rows),
        files={name: {"sha256": info["sha256"], "bytes": info["bytes"]} for name, info in files.items()},
    )


def stream_release(
    sources: list[DomainSource],
    release_dir: Path,
    shard_rows: int,
    partition_rows: int,
    client: Any = None,
    while_writing: Callable[[DomainStatistics], None] | None = None,
) -> list[DomainRelease]:
    """Write ``data/`` of a release for checked run folders, partition by partition; return the domains.

    The tasks run on ``client`` (a ``distributed.Client``; its workers must see ``release_dir``
    and the run folders at the same paths, as every stage's do) or, without one, in this
    process. Staging files sit beside ``release_dir`` and are removed when done.
    ``while_writing`` is called in this process with each domain's card statistics
    (``datacards.statistics.domain_statistics``) while the cluster writes its shards (the
    publisher draws the card's figures then).
    """
    release_dir = Path(release_dir)
    staging = release_dir.parent / f".{release_dir.name}-partitions"
    try:
        return [
            _stream_domain(source, release_dir, staging / source.config, shard_rows, partition_rows, client, while_writing)
            for source in sources
        ]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
