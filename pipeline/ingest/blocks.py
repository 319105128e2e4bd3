"""Blocks of lines (or Parquet rows) into table rows and rejects: pure functions, no Dask.

Per block, :func:`_convert` takes the fast path (:mod:`pipeline.ingest.fastpath`) where it
holds and sends what it cannot vouch for through the per-line reference form
(:mod:`pipeline.ingest.records`); a slice the fast reader cannot parse at all is halved until
the bad lines sit in slices of at most :data:`SMALLEST_FAST_SLICE` lines. So the output never
depends on the block size or the number of workers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from core.runtime import paused_gc
from core.schemas import INTERACTIONS, ITEMS, REJECTS
from pipeline.ingest.fastpath import META_READER, REVIEW_READER, FastReader, LineSlice, review_columns_fit, vouched_reviews
from pipeline.ingest.records import RAW_REVIEW, REVIEW_KEYS, RecordRejected, meta_values, review_values, strip_html
from pipeline.ingest.sources import SourceFile
from pipeline.ingest.streams import RAW_CHARS, LineBlock, raw_text

SMALLEST_FAST_SLICE = 256
"""Below this many lines a slice that failed the fast path is parsed line by line."""


@dataclass
class ParsedBlock:
    """What one block of input became: kept rows, rejects, and how many lines it covered."""

    table: pa.Table
    rejects: pa.Table
    lines: int
    kept_lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Input line of each kept row (used to keep the first of duplicate items)."""


@dataclass
class _Pieces:
    """Kept rows (as tables with their row indexes in the block) and rejects."""

    tables: list[pa.Table] = field(default_factory=list)
    indexes: list[np.ndarray] = field(default_factory=list)
    rejects: list[tuple[int, str, str]] = field(default_factory=list)

    def add_rows(self, table: pa.Table, indexes: np.ndarray) -> None:
        if table.num_rows:
            self.tables.append(table)
            self.indexes.append(indexes)

    def assemble(self, schema: pa.Schema) -> tuple[pa.Table, np.ndarray]:
        """All kept rows in block order, with their indexes."""
        if not self.tables:
            return schema.empty_table(), np.zeros(0, np.int64)
        table, indexes = pa.concat_tables(self.tables), np.concatenate(self.indexes)
        if len(indexes) > 1 and (np.diff(indexes) < 0).any():
            order = np.argsort(indexes, kind="stable")
            table, indexes = table.take(pa.array(order)), indexes[order]
        return table, indexes


FastPath = Callable[[int, int], "tuple[pa.Table, np.ndarray] | None"]
SlowPath = Callable[[np.ndarray, _Pieces], None]


def _convert(lo: int, hi: int, fast: FastPath | None, slow: SlowPath, pieces: _Pieces) -> None:
    """Rows ``lo..hi``: the fast path where it holds, the slow path for what it cannot vouch for.

    ``fast`` returns the parsed rows with a per-row mask of those it vouches for, or None when
    the slice as a whole cannot be read that way (a syntax error somewhere); such a slice is
    halved until the bad lines sit in slices of at most :data:`SMALLEST_FAST_SLICE` lines.
    """
    if hi <= lo:
        return
    result = fast(lo, hi) if fast else None
    if result is not None:
        table, vouched = result
        indexes = np.arange(lo, hi, dtype=np.int64)
        if vouched.all():
            pieces.add_rows(table, indexes)
        else:
            pieces.add_rows(table.filter(pa.array(vouched)), indexes[vouched])
            slow(indexes[~vouched], pieces)
    elif fast is not None and hi - lo > SMALLEST_FAST_SLICE:
        middle = (lo + hi) // 2
        _convert(lo, middle, fast, slow, pieces)
        _convert(middle, hi, fast, slow, pieces)
    else:
        slow(np.arange(lo, hi, dtype=np.int64), pieces)


def _values_table(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    columns = list(zip(*rows)) if rows else [[] for _ in schema]
    return pa.table([pa.array(column, type=f.type) for column, f in zip(columns, schema)], schema=schema)


def _line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, without the newline) of every line of ``data``."""
    newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == 0x0A)
    ends = newlines if not data or data.endswith(b"\n") else np.append(newlines, len(data))
    starts = np.concatenate(([0], newlines + 1))[: len(ends)]
    return starts.astype(np.int64), ends.astype(np.int64)


def _decode_line(line: bytes, max_line_bytes: int) -> Any:
    """The JSON value of one line, or :class:`RecordRejected` with the line-level reason."""
    if len(line) > max_line_bytes:
        raise RecordRejected("line_too_long")
    # Undecodable bytes become lone surrogates: harmless in fields ingest drops, and caught as
    # invalid_utf8:<field> in fields it keeps (the fast path treats them the same way).
    text = line.decode("utf-8", "surrogateescape").lstrip("\ufeff")
    if not text.strip():
        raise RecordRejected("empty_line")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise RecordRejected("invalid_json") from None


MAX_BRACKETS = 500
"""A line with this many ``[`` and ``{`` might nest deeper than ``json.loads`` follows (Python's
recursion limit, 1,000 frames, less the frames of the worker that parses it)."""


def _shallow(data: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per line: whether it holds fewer than :data:`MAX_BRACKETS` brackets.

    ``json.loads`` rejects a line nested deeper than Python's recursion limit (``invalid_json``)
    that the Arrow reader reads, even when the nesting sits in an ignored field; such lines go
    line by line, so both paths agree. Only lines long enough to hold that many are counted
    (few: a review line is typically shorter), in place, without copying them.
    """
    shallow = np.ones(len(starts), bool)
    for index in np.flatnonzero(ends - starts >= MAX_BRACKETS).tolist():
        start, end = int(starts[index]), int(ends[index])
        shallow[index] = data.count(b"[", start, end) + data.count(b"{", start, end) < MAX_BRACKETS
    return shallow


def _parse_lines(
    block: LineBlock, max_line_bytes: int, reader: FastReader | None, values: Callable[[Any], tuple[Any, ...]], schema: pa.Schema
) -> tuple[_Pieces, int]:
    data = block.data
    starts, ends = _line_bounds(data)
    buffer = pa.py_buffer(data)
    first_bytes = np.frombuffer(data, np.uint8)[starts] if len(starts) else np.zeros(0, np.uint8)
    lengths = ends - starts

    def fast_path(lo: int, hi: int) -> tuple[pa.Table, np.ndarray] | None:
        assert reader is not None
        # Each line must start with "{": then one row per line means rows and lines match up.
        if not (first_bytes[lo:hi] == ord("{")).all():
            return None
        begin, end = int(starts[lo]), int(ends[hi - 1])
        try:
            raw = pajson.read_json(
                pa.BufferReader(buffer.slice(begin, end - begin)),
                read_options=pajson.ReadOptions(use_threads=False, block_size=max(end - begin + 1, 1 << 16)),
                parse_options=pajson.ParseOptions(explicit_schema=reader.schema, unexpected_field_behavior="ignore"),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        finished = reader.finish(raw, LineSlice(data, starts, ends, lo, hi)) if raw.num_rows == hi - lo else None
        if finished is None:
            return None
        table, vouched = finished
        return table, vouched & (lengths[lo:hi] <= max_line_bytes) & _shallow(data, starts[lo:hi], ends[lo:hi])

    def slow_path(indexes: np.ndarray, pieces: _Pieces) -> None:
        rows, kept = [], []
        for index in indexes.tolist():
            line = data[starts[index] : ends[index]]
            try:
                rows.append(values(_decode_line(line, max_line_bytes)))
                kept.append(index)
            except RecordRejected as bad:
                pieces.rejects.append((block.first_line + index, bad.reason, raw_text(line)))
        pieces.add_rows(_values_table(rows, schema), np.asarray(kept, dtype=np.int64))

    pieces = _Pieces()
    with paused_gc():
        _convert(0, len(starts), fast_path if reader else None, slow_path, pieces)
    for line, reason, raw in block.set_aside:
        pieces.rejects.append((line, reason, raw))
    return pieces, len(starts) + len(block.set_aside)


def rejects_table(source: SourceFile, rejects: list[tuple[int, str, str]]) -> pa.Table:
    rejects = sorted(rejects)
    return pa.table(
        {
            "source_file": pa.array([source.name] * len(rejects), pa.string()),
            "line": pa.array([r[0] for r in rejects], pa.int64()),
            "reason": pa.array([r[1] for r in rejects], pa.string()),
            "raw": pa.array([r[2] for r in rejects], pa.string()),
        },
        schema=REJECTS,
    )


def _interactions(pieces: _Pieces, source: SourceFile, first_line: int) -> tuple[pa.Table, np.ndarray]:
    raw, indexes = pieces.assemble(RAW_REVIEW)
    lines = indexes + first_line
    table = pa.table(
        {
            "user_id": raw.column("user_id"),
            "parent_asin": raw.column("parent_asin"),
            "asin": raw.column("asin"),
            "rating": pc.cast(raw.column("rating"), pa.float32(), safe=False),
            "timestamp": raw.column("timestamp"),
            "review_title": raw.column("title"),
            "review_text": strip_html(raw.column("text")),
            "helpful_vote": pc.cast(raw.column("helpful_vote"), pa.int32()),
            "verified_purchase": raw.column("verified_purchase"),
            "src_file": pa.array(np.full(len(lines), source.index, np.int32)),
            "src_line": pa.array(lines),
        },
        schema=INTERACTIONS,
    )
    return table, lines


def _items(pieces: _Pieces, first_line: int) -> tuple[pa.Table, np.ndarray]:
    table, indexes = pieces.assemble(ITEMS)
    return table, indexes + first_line


def parse_review_block(block: LineBlock, max_line_bytes: int) -> ParsedBlock:
    """Review lines of one block as ``interactions`` rows and ``rejects`` rows."""
    pieces, lines = _parse_lines(block, max_line_bytes, REVIEW_READER, review_values, RAW_REVIEW)
    table, kept = _interactions(pieces, block.source, block.first_line)
    return ParsedBlock(table, rejects_table(block.source, pieces.rejects), lines, kept)


def parse_meta_block(block: LineBlock, max_line_bytes: int) -> ParsedBlock:
    """Metadata lines of one block as ``items`` rows (duplicates not yet removed) and rejects."""
    pieces, lines = _parse_lines(block, max_line_bytes, META_READER, meta_values, ITEMS)
    table, kept = _items(pieces, block.first_line)
    return ParsedBlock(table, rejects_table(block.source, pieces.rejects), lines, kept)


def row_raw(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=str)[:RAW_CHARS]


def _parse_rows(
    table: pa.Table, first_row: int, fast: FastPath | None, values: Callable[[Any], tuple[Any, ...]], schema: pa.Schema
) -> _Pieces:
    def slow_path(indexes: np.ndarray, pieces: _Pieces) -> None:
        rows, kept = [], []
        for index, record in zip(indexes.tolist(), table.take(pa.array(indexes)).to_pylist()):
            try:
                rows.append(values(record))
                kept.append(index)
            except RecordRejected as bad:
                pieces.rejects.append((first_row + index, bad.reason, row_raw(record)))
        pieces.add_rows(_values_table(rows, schema), np.asarray(kept, dtype=np.int64))

    pieces = _Pieces()
    with paused_gc():
        _convert(0, table.num_rows, fast, slow_path, pieces)
    return pieces


def parse_review_rows(table: pa.Table, source: SourceFile, first_row: int) -> ParsedBlock:
    """Rows of a review Parquet file (``first_row`` is the 1-based number of the first one)."""
    fits = review_columns_fit(table)

    def fast_path(lo: int, hi: int) -> tuple[pa.Table, np.ndarray] | None:
        raw = table.slice(lo, hi - lo).select(list(REVIEW_KEYS)).cast(RAW_REVIEW)
        vouched = vouched_reviews(raw)
        return None if vouched is None else (raw, vouched)

    pieces = _parse_rows(table, first_row, fast_path if fits else None, review_values, RAW_REVIEW)
    interactions, kept = _interactions(pieces, source, first_row)
    return ParsedBlock(interactions, rejects_table(source, pieces.rejects), table.num_rows, kept)


def parse_meta_rows(table: pa.Table, source: SourceFile, first_row: int) -> ParsedBlock:
    """Rows of a metadata Parquet file, e.g. the Hub's conversion with string price and details."""
    pieces = _parse_rows(table, first_row, None, meta_values, ITEMS)
    items, kept = _items(pieces, first_row)
    return ParsedBlock(items, rejects_table(source, pieces.rejects), table.num_rows, kept)
