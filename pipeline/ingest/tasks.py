"""The Dask tasks of ingest: each parses one block and writes its own part files.

A task writes its part of ``interactions`` (reviews) or of the staged ``items`` (metadata, whose
duplicates are dropped once every block is done), its rejects, and last a small marker
``blocks/part-NNNNN.json`` with its counts. A block whose marker exists is complete: a rerun of
a killed ingest with the same fingerprint and block plan skips it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.schemas import INTERACTIONS, ITEMS, REJECTS
from core.tables import part_name, write_part
from pipeline.ingest.blocks import ParsedBlock, parse_meta_block, parse_meta_rows, parse_review_block, parse_review_rows, rejects_table
from pipeline.ingest.sources import SourceFile
from pipeline.ingest.streams import LineBlock, cut_lines, plain_range_chunks, plain_range_start

ITEM_KEYS = pa.schema([("parent_asin", pa.string()), ("line", pa.int64())])
"""Kept metadata rows of one block: their ``parent_asin`` and input line (for the dedupe)."""


@dataclass(frozen=True)
class TableDirs:
    """Where one kind of input writes: its rows, its rejects, and the block markers."""

    rows: str
    rejects: str
    blocks: str


@dataclass
class BlockResult:
    """What a block task reports back (and records in its marker): its counts."""

    part: int
    kind: str
    source_index: int
    lines: int
    kept: int
    rejects_by_reason: dict[str, int]


def marker_path(blocks: Path, part: int) -> Path:
    """The marker of a complete block."""
    return Path(blocks) / part_name(part).replace(".parquet", ".json")


def keys_path(blocks: Path, part: int) -> Path:
    """The item keys of a complete metadata block."""
    return Path(blocks) / part_name(part).replace(".parquet", ".keys.parquet")


def completed_blocks(blocks: Path) -> dict[int, BlockResult]:
    """The blocks a killed attempt completed, by part number."""
    done = {}
    for path in sorted(Path(blocks).glob("part-*.json")):
        result = BlockResult(**json.loads(path.read_text(encoding="utf-8")))
        done[result.part] = result
    return done


def write_result(result: BlockResult, blocks: Path) -> None:
    """Write a block's marker atomically (the last thing its task does)."""
    path = marker_path(blocks, result.part)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    partial.write_text(json.dumps(asdict(result)), encoding="utf-8")
    os.replace(partial, path)


def _merge(parsed: list[ParsedBlock]) -> ParsedBlock:
    return ParsedBlock(
        pa.concat_tables([p.table for p in parsed]),
        pa.concat_tables([p.rejects for p in parsed]),
        sum(p.lines for p in parsed),
        np.concatenate([p.kept_lines for p in parsed]),
    )


def write_block(parsed: ParsedBlock, source: SourceFile, part: int, dirs: TableDirs) -> BlockResult:
    """Write one parsed block's part files, then its marker; returns its counts."""
    schema = INTERACTIONS if source.kind == "reviews" else ITEMS
    if parsed.table.num_rows:
        write_part(parsed.table, Path(dirs.rows), part, schema)
    if parsed.rejects.num_rows:
        write_part(parsed.rejects, Path(dirs.rejects), part, REJECTS)
    if source.kind == "meta":
        keys = pa.table({"parent_asin": parsed.table.column("parent_asin"), "line": pa.array(parsed.kept_lines, pa.int64())})
        pq.write_table(keys, keys_path(Path(dirs.blocks), part))
    reasons = Counter(parsed.rejects.column("reason").to_pylist())
    result = BlockResult(part, source.kind, source.index, parsed.lines, parsed.table.num_rows, dict(reasons))
    write_result(result, Path(dirs.blocks))
    return result


def _parse_block(block: LineBlock, max_line_bytes: int) -> ParsedBlock:
    if block.source.kind == "reviews":
        return parse_review_block(block, max_line_bytes)
    return parse_meta_block(block, max_line_bytes)


def ingest_line_block(block: LineBlock, part: int, dirs: TableDirs, max_line_bytes: int) -> BlockResult:
    """Parse one streamed block (of a gzip file) and write its part files."""
    return write_block(_parse_block(block, max_line_bytes), block.source, part, dirs)


def ingest_plain_range(
    source: SourceFile,
    nominal_start: int,
    nominal_end: int,
    newlines_before: int,
    part: int,
    dirs: TableDirs,
    block_size: int,
    max_line_bytes: int,
) -> BlockResult:
    """Parse the lines that start in ``[nominal_start, nominal_end)`` of a plain JSONL file.

    ``newlines_before`` is the number of newlines before ``nominal_start``, which numbers the
    range's first line without reading what comes before it.
    """
    start = plain_range_start(source.url, nominal_start, nominal_end)
    if start is None:
        parsed = [_parse_block(LineBlock(source, 1, b""), max_line_bytes)]
    else:
        # Skipping to the first line start passed exactly one newline, unless we were on one.
        first_line = 1 + newlines_before + (1 if start > nominal_start else 0)
        blocks = cut_lines(
            plain_range_chunks(source.url, start, nominal_end, max_line_bytes), source, first_line, block_size, max_line_bytes
        )
        parsed = [_parse_block(block, max_line_bytes) for block in blocks] or [
            _parse_block(LineBlock(source, first_line, b""), max_line_bytes)
        ]
    return write_block(_merge(parsed), source, part, dirs)


def ingest_parquet_row_groups(source: SourceFile, row_groups: list[int], first_row: int, part: int, dirs: TableDirs) -> BlockResult:
    """Parse row groups of a Parquet file (rows numbered from ``first_row``) and write them.

    When the groups cannot be read together, each is read on its own: only the rows of a damaged
    group are rejected (``unreadable_parquet``), whatever ``block_size`` grouped them with.
    """
    parse = parse_review_rows if source.kind == "reviews" else parse_meta_rows
    try:
        with fsspec.open(source.url, "rb") as handle:
            table = pq.ParquetFile(handle).read_row_groups(row_groups)
    except (pa.ArrowException, OSError):
        parsed = []
        with fsspec.open(source.url, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            for group in row_groups:
                count = parquet.metadata.row_group(group).num_rows
                try:
                    parsed.append(parse(parquet.read_row_group(group), source, first_row))
                except (pa.ArrowException, OSError):
                    rejects = [(first_row + i, "unreadable_parquet", "") for i in range(count)]
                    empty = (INTERACTIONS if source.kind == "reviews" else ITEMS).empty_table()
                    parsed.append(ParsedBlock(empty, rejects_table(source, rejects), count))
                first_row += count
        return write_block(_merge(parsed), source, part, dirs)
    return write_block(parse(table, source, first_row), source, part, dirs)
