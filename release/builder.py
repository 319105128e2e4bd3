"""The streaming release builder: a release written partition by partition on the Dask cluster.

The in-memory builder (``release.layout.load_domains`` + ``write_data``) holds every row of a
domain in one process. This one writes the same files holding one partition at a time:

1. **plan**: each sequences part file reports its row count and a sample of its sorted user
   ids; the driver cuts the user ids into ranges of about ``partition_rows`` rows;
2. **join**: one task per user range reads the sequences and filtered rows of its users
   (Parquet statistics skip the files and row groups outside the range), joins them with the
   reference :func:`release.layout.join_release_rows`, writes the rows per split into a
   staging folder and returns their :class:`~datacards.statistics.RowStatistics`; a user's
   rows all fall in one range, so the ranges in order are the release's row order;
3. **items**: one task keeps the catalog rows of the items the ranges mention;
4. **shards**: one task per shard reads the slices of the staging files that fall in its rows
   (``shard_rows`` per shard, numbered across the whole split), writes the shard a row group at
   a time and returns its sha256.

The driver holds the plan and the statistics, never rows. The output does not depend on how
the ranges fell (shards are cut by global row number, row groups by row count), so it equals
the in-memory builder's byte for byte (tested). Without a client the same tasks run one after
the other in this process.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from core.progress import track
from core.schemas import ITEMS, RELEASE_ROW, SPLITS
from core.tables import dataset, parts
from datacards.statistics import RowStatistics, category_counts
from release.layout import (
    ITEMS_SPLIT,
    DomainRelease,
    DomainSource,
    WrittenTable,
    catalog_of,
    join_release_rows,
    mentioned_items,
    shard_count,
    shard_name,
    write_shard,
)

log = logging.getLogger(__name__)

# User ids sampled per planned partition: the ranges come out within a few percent of
# partition_rows while the plan stays small (a few thousand ids at 14M reviews).
SAMPLES_PER_PARTITION = 64
_ASINS = "asins.parquet"


@dataclass(frozen=True)
class RangeResult:
    """What one user-range task wrote into its staging folder."""

    index: int
    rows: dict[str, int]
    statistics: RowStatistics
    train_without_rationale: int


def user_sample(path: str, stride: int) -> tuple[int, list[str]]:
    """Row count of one sequences part file and every ``stride``-th of its user ids in sorted order."""
    users = pq.read_table(path, columns=["user_id"])["user_id"]
    ordered = users.take(pc.sort_indices(users))
    return len(users), ordered.take(pa.array(range(0, len(ordered), stride), pa.int64())).to_pylist()


def range_bounds(samples: Iterable[tuple[int, list[str]]], stride: int, partition_rows: int) -> list[str]:
    """User ids that start each range after the first, so that a range holds about ``partition_rows`` rows.

    Each sampled id stands for the ``stride`` rows that follow it in its part's sorted order.
    """
    ids = sorted(user for _, users in samples for user in users)
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


def build_range(run: str, low: str | None, high: str | None, folder: str) -> RangeResult:
    """Release rows of the users in ``[low, high)`` (None: unbounded), written per split into ``folder``."""
    user_filter = _user_range(low, high)
    sequences = dataset(Path(run) / "sequences", "sequences").to_table(filter=user_filter)
    filtered = dataset(Path(run) / "filtered", "filtered").to_table(filter=user_filter)
    splits, dropped = join_release_rows(sequences, filtered)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for split, table in splits.items():
        pq.write_table(table, out / f"{split}.parquet", compression="lz4")
    pq.write_table(pa.table({"parent_asin": mentioned_items(splits.values())}), out / _ASINS, compression="lz4")
    return RangeResult(int(out.name), {s: t.num_rows for s, t in splits.items()}, RowStatistics.of_splits(splits), dropped)


def build_items(run: str, staging: str) -> tuple[int, dict[str, int]]:
    """The catalog of every item the ranges under ``staging`` mention, written as ``staging/items.parquet``."""
    mentioned = pads.dataset(sorted(str(p) for p in Path(staging).glob(f"*/{_ASINS}")), format="parquet").to_table()
    wanted = pc.unique(mentioned["parent_asin"].combine_chunks())
    items = dataset(Path(run) / "items", "items").to_table(filter=pc.field("parent_asin").isin(wanted))
    catalog = catalog_of(items, wanted)
    pq.write_table(catalog, Path(staging) / f"{ITEMS_SPLIT}.parquet", compression="lz4")
    return catalog.num_rows, category_counts(catalog)


def write_shard_from(pieces: list[tuple[str, int, int]], path: str, schema: pa.Schema) -> dict[str, Any]:
    """Write one shard from ``(staging file, first row, rows)`` pieces in order (see :func:`release.layout.write_shard`)."""

    def tables() -> Iterable[pa.Table]:
        for source, offset, rows in pieces:
            yield pq.read_table(source).slice(offset, rows)

    return write_shard(tables(), Path(path), schema)


def shard_pieces(files: list[tuple[str, int]], shard_rows: int) -> list[list[tuple[str, int, int]]]:
    """Cut consecutive ``(file, rows)`` into shards of ``shard_rows`` rows: per shard, the slices it reads."""
    total = sum(rows for _, rows in files)
    shards: list[list[tuple[str, int, int]]] = [[] for _ in range(shard_count(total, shard_rows))]
    start = 0
    for path, rows in files:
        position = 0
        while position < rows:
            shard, within = divmod(start + position, shard_rows)
            take = min(rows - position, shard_rows - within)
            shards[shard].append((path, position, take))
            position += take
        start += rows
    return shards


def _map(client: Any, function: Callable[..., Any], description: str, *arguments: list[Any]) -> list[Any]:
    """``function`` over the argument lists, as tasks on ``client`` or, without one, here in turn."""
    if client is None:
        return [function(*args) for args in track(list(zip(*arguments)), description)]
    from core.progress import gather_with_progress

    return gather_with_progress(client.map(function, *arguments, pure=False), description)


def _stream_domain(
    source: DomainSource, release_dir: Path, staging: Path, shard_rows: int, partition_rows: int, client: Any
) -> DomainRelease:
    """Plan, join, items and shards of one domain (see the module docstring)."""
    part_files = [str(p) for p in parts(source.run / "sequences")]
    stride = max(1, partition_rows // SAMPLES_PER_PARTITION)
    samples = _map(client, user_sample, f"{source.config}: planning", part_files, [stride] * len(part_files))
    bounds = range_bounds(samples, stride, partition_rows)
    lows, highs = [None, *bounds], [*bounds, None]
    folders = [str(staging / f"{index:05d}") for index in range(len(lows))]
    log.info("%s: %d sequences rows in %d user ranges", source.config, sum(n for n, _ in samples), len(lows))
    runs = [str(source.run)] * len(lows)
    results = sorted(_map(client, build_range, f"{source.config}: joining", runs, lows, highs, folders), key=lambda r: r.index)
    ((catalog_rows, categories),) = _map(client, build_items, f"{source.config}: catalog", [str(source.run)], [str(staging)])

    jobs: list[tuple[str, list[tuple[str, int, int]], pa.Schema]] = []
    for split in SPLITS:
        files = [(f"{folder}/{split}.parquet", result.rows[split]) for folder, result in zip(folders, results)]
        pieces = shard_pieces(files, shard_rows)
        jobs += [(f"data/{source.config}/{shard_name(split, i, len(pieces))}", p, RELEASE_ROW) for i, p in enumerate(pieces)]
    pieces = shard_pieces([(str(staging / f"{ITEMS_SPLIT}.parquet"), catalog_rows)], shard_rows)
    items_folder = f"data/{source.config}_items"
    jobs += [(f"{items_folder}/{shard_name(ITEMS_SPLIT, i, len(pieces))}", p, ITEMS) for i, p in enumerate(pieces)]
    names, piece_lists, schemas = zip(*jobs)
    written = _map(
        client, write_shard_from, f"{source.config}: shards", list(piece_lists), [str(release_dir / n) for n in names], list(schemas)
    )
    files = dict(zip(names, written))

    statistics = results[0].statistics
    for result in results[1:]:
        statistics = statistics.merge(result.statistics)

    def size(prefix: str, schema: pa.Schema, rows: int) -> WrittenTable:
        return WrittenTable(schema, rows, sum(info["nbytes"] for name, info in files.items() if name.startswith(prefix)))

    return DomainRelease(
        config=source.config,
        domain=source.domain,
        splits={split: size(f"data/{source.config}/{split}-", RELEASE_ROW, statistics.rows[split]) for split in SPLITS},
        items=size(f"{items_folder}/", ITEMS, catalog_rows),
        stages=source.stages,
        validation=source.validation,
        train_without_rationale=sum(r.train_without_rationale for r in results),
        row_statistics=statistics,
        category_counts=categories,
        files={name: {"sha256": info["sha256"], "bytes": info["bytes"]} for name, info in files.items()},
    )


def stream_release(
    sources: list[DomainSource], release_dir: Path, shard_rows: int, partition_rows: int, client: Any = None
) -> list[DomainRelease]:
    """Write ``data/`` of a release for checked run folders, partition by partition; return the domains.

    The tasks run on ``client`` (a ``distributed.Client``; its workers must see ``release_dir``
    and the run folders at the same paths, as every stage's do) or, without one, in this
    process. Staging files sit beside ``release_dir`` and are removed when done.
    """
    release_dir = Path(release_dir)
    staging = release_dir.parent / f".{release_dir.name}-partitions"
    try:
        return [_stream_domain(source, release_dir, staging / source.config, shard_rows, partition_rows, client) for source in sources]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
