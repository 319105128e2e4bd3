"""How the blocks of every input file reach the Dask workers, in line order, numbered.

Each block gets the next part number, so the tables read back in file and line order. A block
that a killed attempt completed (its marker exists) is not submitted again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from core.schemas import INTERACTIONS, ITEMS
from core.stage import StageError
from pipeline.ingest.blocks import ParsedBlock, rejects_table
from pipeline.ingest.settings import MAX_PARTS, IngestSettings
from pipeline.ingest.sources import SourceFile
from pipeline.ingest.streams import RAW_CHARS, count_newlines, gzip_blocks_ahead
from pipeline.ingest.tasks import BlockResult, TableDirs, ingest_line_block, ingest_parquet_row_groups, ingest_plain_range, write_block

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


class BlockRunner:
    """Submits block tasks with a bound on how many are in flight (streamed blocks hold memory)."""

    def __init__(self, client: Client, progress: Any, task: Any, done: dict[int, BlockResult]):
        self.client = client
        # One block running per worker thread plus a couple queued: enough to keep every worker
        # busy, few enough that streamed blocks waiting on workers stay a small memory cost.
        self.limit = max(1, sum(client.nthreads().values())) + 2
        self.progress = progress
        self.task = task
        self.done = done
        self.in_flight: dict[Any, int] = {}
        self.results: list[BlockResult] = []
        self.next_part = 0

    def part(self) -> int:
        """The next part number."""
        if self.next_part > MAX_PARTS:
            raise StageError(f"more than {MAX_PARTS + 1:,} blocks: raise --block-size (now too small for these inputs)")
        self.next_part += 1
        return self.next_part - 1

    def reuse(self, part: int, source_bytes: int) -> bool:
        """Whether block ``part`` is already complete (then it counts as done here)."""
        if part not in self.done:
            return False
        self.results.append(self.done[part])
        self.progress.advance(self.task, source_bytes)
        return True

    def submit(self, function: Callable[..., BlockResult], *args: Any, source_bytes: int) -> None:
        """Run ``function(*args)`` on the cluster once fewer than ``limit`` tasks are in flight."""
        while len(self.in_flight) >= self.limit:
            self._collect(wait_for_one=True)
        self.in_flight[self.client.submit(function, *args, pure=False)] = source_bytes

    def _collect(self, wait_for_one: bool) -> None:
        from distributed import wait

        done, _ = wait(list(self.in_flight), return_when="FIRST_COMPLETED" if wait_for_one else "ALL_COMPLETED")
        for future in done:
            self.results.append(future.result())
            self.progress.advance(self.task, self.in_flight.pop(future))

    def finish(self) -> list[BlockResult]:
        """Every block's result, in part order, once all are done."""
        if self.in_flight:
            self._collect(wait_for_one=False)
        return sorted(self.results, key=lambda result: result.part)


def count_plain_newlines(client: Client, sources: list[SourceFile], block_size: int) -> dict[tuple[str, int], list[Any]]:
    """Futures of the newline counts of every byte range but the last of each plain file.

    They number the lines of the ranges after them; submitted first, they are cheap.
    """
    return {
        (s.kind, s.index): [
            client.submit(count_newlines, s.url, start, start + block_size, pure=False) for start in range(0, s.size, block_size)[:-1]
        ]
        for s in sources
        if s.format == "jsonl"
    }


def submit_source(
    runner: BlockRunner, source: SourceFile, dirs: TableDirs, settings: IngestSettings, newline_counts: dict[tuple[str, int], Any]
) -> None:
    """Queue the blocks of one file, in line order, each with the next part number."""
    if source.format == "jsonl":
        # Newlines before range i = before range i-1 + newlines in range i-1, added up here as
        # the counting tasks finish: range i waits only for the counts before it, so parsing
        # starts while later ranges are still being counted.
        counts = newline_counts.get((source.kind, source.index), [])
        before = 0
        for i, start in enumerate(range(0, source.size, settings.block_size)):
            end = min(start + settings.block_size, source.size)
            if i:
                before += counts[i - 1].result()
            part = runner.part()
            if not runner.reuse(part, end - start):
                args = (source, start, end, before, part, dirs, settings.block_size, settings.max_line_bytes)
                runner.submit(ingest_plain_range, *args, source_bytes=end - start)
    elif source.format == "gzip":
        # One stream, cut here into bounded blocks that the workers parse in parallel.
        for block in gzip_blocks_ahead(source, settings.block_size, settings.max_line_bytes):
            part = runner.part()
            if not runner.reuse(part, block.source_bytes):
                block_future = runner.client.scatter(block, hash=False)
                runner.submit(ingest_line_block, block_future, part, dirs, settings.max_line_bytes, source_bytes=block.source_bytes)
    else:
        _submit_parquet(runner, source, dirs, settings.block_size)


def _submit_parquet(runner: BlockRunner, source: SourceFile, dirs: TableDirs, block_size: int) -> None:
    try:
        with fsspec.open(source.url, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
    except (pa.ArrowException, OSError) as exc:
        log.warning("%s: unreadable Parquet file (%s); recorded in rejects", source.name, exc)
        empty = (INTERACTIONS if source.kind == "reviews" else ITEMS).empty_table()
        parsed = ParsedBlock(empty, rejects_table(source, [(0, "unreadable_parquet", str(exc)[:RAW_CHARS])]), 1)
        runner.results.append(write_block(parsed, source, runner.part(), dirs))
        return
    total_bytes = max(1, sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)))
    group: list[int] = []
    group_bytes = group_rows = 0
    first_row = 1
    for index in range(metadata.num_row_groups):
        row_group = metadata.row_group(index)
        group.append(index)
        group_bytes += row_group.total_byte_size
        group_rows += row_group.num_rows
        if group_bytes >= block_size or index == metadata.num_row_groups - 1:
            share = source.size * group_bytes // total_bytes
            part = runner.part()
            if not runner.reuse(part, share):
                runner.submit(ingest_parquet_row_groups, source, group, first_row, part, dirs, source_bytes=share)
            first_row += group_rows
            group, group_bytes, group_rows = [], 0, 0
