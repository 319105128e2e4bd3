"""``rrec ingest``: raw Amazon Reviews 2023 files into the ``interactions``, ``items`` and ``rejects`` tables.

Every input line ends either as a row of ``interactions`` / ``items`` or as a ``rejects`` row
with its file, line and a short stable reason; the stage never stops on bad data.

Per block of lines the work is a pure function (:func:`parse_review_block`,
:func:`parse_meta_block`, :func:`parse_review_rows`, :func:`parse_meta_rows`). Review blocks take
a fast path first: ``pyarrow.json`` with an explicit schema. Its rows are kept only where they
provably equal what the per-line path gives (one object per line, then per row: no nulls or
empty ids, a finite rating, valid UTF-8, not over-long); the other rows, and slices the reader
cannot parse at all (halved until the bad lines are isolated), go through ``json.loads`` line by
line. So the output never depends on the block size or the number of workers. The Dask layer (:func:`run_ingest`) maps those functions
over byte ranges of plain files, streamed blocks of gzip files and row groups of Parquet files.
"""

from __future__ import annotations

import contextlib
import gc
import html
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq
import typer
from pydantic import Field, field_validator

from core.cli_common import ConfigOpt, ForceOpt, RunOpt, SchedulerOpt, WorkersOpt, settings_for, user_errors
from core.config import StageSettings
from core.schemas import INTERACTIONS, ITEMS, REJECTS
from core.stage import RunDir, StageError, hash_stream
from core.tables import part_name, write_part
from pipeline.readers import (
    RAW_CHARS,
    InputError,
    LineBlock,
    SourceFile,
    count_newlines,
    cut_lines,
    domain_from_name,
    expand_inputs,
    gzip_blocks_ahead,
    plain_range_chunks,
    plain_range_start,
    raw_text,
)

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

STAGE = "ingest"
MIB = 1024 * 1024
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_PARTS = 99_999
SMALLEST_FAST_SLICE = 256
"""Below this many lines a slice that failed the fast path is parsed line by line."""


class IngestSettings(StageSettings):
    """Settings of ``rrec ingest`` (YAML section ``ingest``; option names with underscores)."""

    reviews: list[str] = Field(min_length=1, description="Review files: paths, globs, fsspec URLs or hub:<Domain>.")
    meta: list[str] = Field(default_factory=list, description="Item metadata files, named like reviews.")
    domain: str | None = Field(None, description="Domain name; default: derived from the file names.")
    block_size: int = Field(64 * MIB, ge=1024, description="Bytes of decompressed text per parallel block.")
    max_line_bytes: int = Field(1 * MIB, ge=64, description="Longer lines are rejected as line_too_long.")
    hub_repo: str = Field("McAuley-Lab/Amazon-Reviews-2023", description="Dataset repository that hub:<Domain> reads.")

    @field_validator("reviews", "meta", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


# -- records --------------------------------------------------------------------------------

RAW_REVIEW = pa.schema(
    [
        ("rating", pa.float64()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("asin", pa.string()),
        ("parent_asin", pa.string()),
        ("user_id", pa.string()),
        ("timestamp", pa.int64()),
        ("helpful_vote", pa.int64()),
        ("verified_purchase", pa.bool_()),
    ]
)
"""The review fields ingest keeps, as the raw files hold them."""

REVIEW_KEYS = tuple(RAW_REVIEW.names)
REQUIRED_REVIEW_KEYS = ("rating", "parent_asin", "user_id", "timestamp")
"""What makes a review an interaction (what the benchmark scripts read): absent, null or an
empty id rejects the line. The other kept fields (title, text, asin, helpful_vote,
verified_purchase) may be absent or null and are kept as null, as the benchmark scripts keep
such a review; a value of the wrong type still rejects the line."""
_REVIEW_IDS = ("parent_asin", "user_id")
_NO_PRICE = {"", "none", "null", "nan", "n/a", "na", "-", "\u2013", "\u2014"}

_JSON_TEXT = json.JSONEncoder(ensure_ascii=False)
"""How ``details`` is written: ``json.dumps(value, ensure_ascii=False)``, without building an
encoder per call."""

_HTML_BREAK = r"(?i)<br\s*/?>"
_HTML_TAG = r"</?[A-Za-z][^<>]*>|<!--.*?-->"


class RecordRejected(Exception):
    """A record ingest cannot keep; ``reason`` is the short, stable reject reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def strip_html(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Review text without HTML: ``<br />`` becomes a newline, tags go, entities are unescaped.

    Text without ``<`` or ``&`` is returned unchanged.
    """
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    if len(texts) == 0:
        return texts
    # Most reviews hold no markup: only the few that do go through the regular expressions.
    marked = _rows_with_markup(texts)
    if not pc.any(marked).as_py():
        return texts
    subset = pc.filter(texts, marked)
    subset = pc.replace_substring_regex(subset, _HTML_BREAK, "\n")
    subset = pc.replace_substring_regex(subset, _HTML_TAG, "")
    has_entity = pc.match_substring(subset, "&")
    if pc.any(has_entity).as_py():
        unescaped = [html.unescape(text) for text in pc.filter(subset, has_entity).to_pylist()]
        subset = pc.replace_with_mask(subset, has_entity, pa.array(unescaped, pa.string()))
    return pc.replace_with_mask(texts, marked, subset)


def _rows_with_markup(texts: pa.Array) -> pa.Array:
    """Boolean mask of the strings holding ``<`` or ``&``, found with one scan of the bytes."""
    offsets_buffer, data_buffer = texts.buffers()[1:3]
    if data_buffer is None:
        return pa.array(np.zeros(len(texts), bool))
    offset_type = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, offset_type)[texts.offset : texts.offset + len(texts) + 1]
    data = np.frombuffer(data_buffer, np.uint8)[offsets[0] : offsets[-1]]
    hits = np.flatnonzero((data == ord("<")) | (data == ord("&"))) + offsets[0]
    mask = np.zeros(len(texts), bool)
    mask[np.searchsorted(offsets, hits, side="right") - 1] = True
    return pa.array(mask)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RecordRejected(f"wrong_type:{name}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordRejected(f"invalid_utf8:{name}") from None
    return value


def _whole(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RecordRejected(f"wrong_type:{name}")
    return value


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordRejected(f"wrong_type:{name}")
    try:
        number = float(value)
    except OverflowError:
        raise RecordRejected(f"wrong_type:{name}") from None
    if not math.isfinite(number):
        raise RecordRejected(f"wrong_type:{name}")
    return number


def review_values(record: Any) -> tuple[Any, ...]:
    """The kept fields of one raw review, in :data:`RAW_REVIEW` order, validated.

    Raises ``RecordRejected(reason)`` naming the first problem in field order: ``not_an_object``,
    ``missing_field:<name>`` (a required field absent or null, or an empty id),
    ``wrong_type:<name>``, ``invalid_utf8:<name>``. Optional fields absent or null are None.
    """
    if not isinstance(record, dict):
        raise RecordRejected("not_an_object")
    values: list[Any] = []
    for name in REVIEW_KEYS:
        value = record.get(name)
        if value is None and name not in REQUIRED_REVIEW_KEYS:
            values.append(None)
            continue
        if value is None or (value == "" and name in _REVIEW_IDS):
            raise RecordRejected(f"missing_field:{name}")
        if name == "rating":
            values.append(_finite(value, name))
        elif name == "timestamp":
            values.append(_whole(value, name, INT64_MIN, INT64_MAX))
        elif name == "helpful_vote":
            values.append(_whole(value, name, INT32_MIN, INT32_MAX))
        elif name == "verified_purchase":
            if not isinstance(value, bool):
                raise RecordRejected(f"wrong_type:{name}")
            values.append(value)
        else:
            values.append(_text(value, name))
    return tuple(values)


def parse_price(value: Any) -> float | None:
    """A price as a float, or None when missing.

    Raw files hold a float or null; the Hub's Parquet conversion holds strings such as
    ``'12.99'`` or ``'None'``. ``'$1,299.00'`` reads 1299.0; ``''``, ``'None'``, ``'—'`` read None.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _NO_PRICE:
            return None
        try:
            value = float(text.lstrip("$").replace(",", ""))
        except ValueError:
            raise RecordRejected("wrong_type:price") from None
    if isinstance(value, float) and math.isnan(value):
        return None
    return _finite(value, "price")


def _optional_text(value: Any, name: str) -> str | None:
    return None if value is None else _text(value, name)


def _text_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecordRejected(f"wrong_type:{name}")
    return [_text(item, name) for item in value]


def _description(value: Any) -> str | None:
    if isinstance(value, list):
        value = "\n".join(_text_list(value, "description"))
    return _optional_text(value, "description") or None


def _details(value: Any) -> str | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise RecordRejected("wrong_type:details") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RecordRejected("wrong_type:details")
    try:
        text = _JSON_TEXT.encode(value)
    except (TypeError, ValueError):
        raise RecordRejected("wrong_type:details") from None
    try:
        text.encode("utf-8")  # an escaped lone surrogate ("\ud800") decodes but is no UTF-8
    except UnicodeEncodeError:
        raise RecordRejected("invalid_utf8:details") from None
    return text


def _rating_number(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _whole(value, "rating_number", INT32_MIN, INT32_MAX)


def meta_values(record: Any) -> tuple[Any, ...]:
    """One raw metadata record as a row of ``items`` (in its column order), validated.

    Only ``parent_asin`` is required. ``description`` (a list of strings) is joined with
    newlines, ``details`` (a dict, or a JSON string in the Hub's Parquet conversion) becomes a
    JSON string, missing lists become empty lists. Raises ``RecordRejected(reason)`` like
    :func:`review_values`.
    """
    if not isinstance(record, dict):
        raise RecordRejected("not_an_object")
    parent_asin = record.get("parent_asin")
    if parent_asin is None or parent_asin == "":
        raise RecordRejected("missing_field:parent_asin")
    average_rating = record.get("average_rating")
    if isinstance(average_rating, float) and math.isnan(average_rating):
        average_rating = None  # how Parquet files written from pandas mark a missing float
    return (
        _text(parent_asin, "parent_asin"),
        _optional_text(record.get("title"), "title"),
        _optional_text(record.get("main_category"), "main_category"),
        _text_list(record.get("categories"), "categories"),
        _optional_text(record.get("store"), "store"),
        parse_price(record.get("price")),
        None if average_rating is None else _finite(average_rating, "average_rating"),
        _rating_number(record.get("rating_number")),
        _text_list(record.get("features"), "features"),
        _description(record.get("description")),
        _details(record.get("details")),
    )


# -- blocks ---------------------------------------------------------------------------------


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


def _vouched_reviews(raw: pa.Table) -> np.ndarray | None:
    """Per row: whether the fast path's values are exactly what :func:`review_values` accepts.

    None when the table cannot be checked row by row (a string column with invalid UTF-8).
    """
    vouched = np.ones(raw.num_rows, bool)

    def require(mask: pa.Array | pa.ChunkedArray) -> None:
        nonlocal vouched
        vouched &= pc.fill_null(mask, False).to_numpy(zero_copy_only=False)

    for name in REVIEW_KEYS:
        column = raw.column(name)
        if column.null_count and name in REQUIRED_REVIEW_KEYS:
            require(pc.is_valid(column))
        if pa.types.is_string(column.type):
            try:
                column.validate(full=True)
            except pa.ArrowInvalid:
                return None
            if name in _REVIEW_IDS:
                require(pc.not_equal(column, ""))
    require(pc.is_finite(raw.column("rating")))
    votes = raw.column("helpful_vote")
    require(pc.fill_null(pc.and_(pc.greater_equal(votes, INT32_MIN), pc.less_equal(votes, INT32_MAX)), True))  # null: optional
    return vouched


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


@contextlib.contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Run the per-row conversion of a block without the cyclic garbage collector.

    The per-line path builds millions of small dicts and lists (metadata above all), which
    makes the collector rescan every live object again and again: about a tenth of ingest's
    CPU time, for no garbage (parsed records hold no reference cycles). Reference counting
    still frees everything; the collector runs again after the block.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class FastReader:
    """How pyarrow's JSON reader reads one kind of record in bulk.

    ``schema`` is the explicit schema of the read (other fields are skipped); ``finish`` turns
    the raw rows of lines ``lo..hi`` into rows of the output schema with a per-row mask of
    those it vouches for (exactly what the per-line path would make of them), or returns None
    when the slice as a whole cannot be checked.
    """

    schema: pa.Schema
    finish: Callable[[pa.Table, LineSlice], tuple[pa.Table, np.ndarray] | None]


@dataclass(frozen=True)
class LineSlice:
    """Lines ``lo..hi`` of a block: ``data[starts[i]:ends[i]]`` is line ``i``."""

    data: bytes
    starts: np.ndarray
    ends: np.ndarray
    lo: int
    hi: int

    def line(self, index: int) -> bytes:
        """Line ``lo + index``, without its newline."""
        return self.data[self.starts[self.lo + index] : self.ends[self.lo + index]]


def _finish_reviews(raw: pa.Table, lines: LineSlice) -> tuple[pa.Table, np.ndarray] | None:
    vouched = _vouched_reviews(raw)
    return None if vouched is None else (raw, vouched)


_RAW_META_TYPES = {
    "average_rating": pa.float64(),
    "rating_number": pa.int64(),
    "description": pa.list_(pa.string()),
    # Only whether it is an object: its text is taken from the line (see _details_text).
    "details": pa.struct([]),
}
RAW_META = pa.schema([field.with_type(_RAW_META_TYPES.get(field.name, field.type)) for field in ITEMS])
"""The metadata fields ingest keeps, in the types of the raw files (the fast reader's schema);
a field in another form (a string price or details, a string description) sends its slice
line by line."""

_JSON = json.JSONDecoder()
_DETAILS_KEY = b'"details"'
_KEY_VALUE_SEPARATOR = re.compile(rb"[ \t\r]*:[ \t\r]*")


def _details_text(line: bytes) -> str | None:
    """``details`` of a metadata line whose top-level ``details`` is an object, as
    :func:`meta_values` writes it, decoding only that object where it can be found for sure.

    Without a backslash in the line every key is spelled literally, so a line holding
    ``"details"`` once holds it as the top-level key (a nested one would be a second
    occurrence). Other lines are decoded whole.
    """
    key = line.find(_DETAILS_KEY)
    if key >= 0 and b"\\" not in line and line.find(_DETAILS_KEY, key + 1) < 0:
        separator = _KEY_VALUE_SEPARATOR.match(line, key + len(_DETAILS_KEY))
        if separator:
            return _details(_JSON.raw_decode(line[separator.end() :].decode("utf-8"))[0])
    return _details(json.loads(line.decode("utf-8", "surrogateescape"))["details"])


def _finish_meta(raw: pa.Table, lines: LineSlice) -> tuple[pa.Table, np.ndarray] | None:
    """``items`` rows of a fast-read metadata slice, vouched where they equal :func:`meta_values`."""
    columns = {name: raw.column(name).combine_chunks() for name in RAW_META.names}
    vouched = np.ones(raw.num_rows, bool)

    def require(mask: pa.Array) -> None:
        nonlocal vouched
        vouched &= pc.fill_null(mask, False).to_numpy(zero_copy_only=False)

    for column in columns.values():
        if pa.types.is_string(column.type) or pa.types.is_list(column.type):
            try:
                column.validate(full=True)
            except pa.ArrowInvalid:
                return None
        if pa.types.is_list(column.type):
            values = column.flatten()
            if values.null_count:  # a null in a list rejects the record (wrong_type)
                vouched[pc.list_parent_indices(column).filter(values.is_null()).to_numpy()] = False
    parent_asin = columns["parent_asin"]
    require(pc.and_(parent_asin.is_valid(), pc.not_equal(parent_asin, "")))
    for name in ("price", "average_rating"):
        require(pc.fill_null(pc.is_finite(columns[name]), True))
    rating_number = columns["rating_number"]
    require(pc.fill_null(pc.and_(pc.greater_equal(rating_number, INT32_MIN), pc.less_equal(rating_number, INT32_MAX)), True))

    details: list[str | None] = [None] * raw.num_rows
    for index in np.flatnonzero(vouched & columns["details"].is_valid().to_numpy(zero_copy_only=False)).tolist():
        try:
            details[index] = _details_text(lines.line(index))
        except (RecordRejected, UnicodeDecodeError, ValueError, KeyError):
            vouched[index] = False  # the per-line path gives its reason
    description = pc.binary_join(columns["description"], "\n")
    no_list = pa.scalar([], pa.list_(pa.string()))
    table = pa.table(
        {
            "parent_asin": parent_asin,
            "title": columns["title"],
            "main_category": columns["main_category"],
            "categories": pc.fill_null(columns["categories"], no_list),
            "store": columns["store"],
            "price": columns["price"],
            "average_rating": pc.cast(columns["average_rating"], pa.float32(), safe=False),
            "rating_number": pc.cast(rating_number, pa.int32(), safe=False),
            "features": pc.fill_null(columns["features"], no_list),
            "description": pc.if_else(pc.equal(description, ""), pa.scalar(None, pa.string()), description),
            "details": pa.array(details, pa.string()),
        },
        schema=ITEMS,
    )
    return table, vouched


REVIEW_READER = FastReader(RAW_REVIEW, _finish_reviews)
META_READER = FastReader(RAW_META, _finish_meta)


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
        return table, vouched & (lengths[lo:hi] <= max_line_bytes)

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
    with _without_cyclic_gc():
        _convert(0, len(starts), fast_path if reader else None, slow_path, pieces)
    for line, reason, raw in block.set_aside:
        pieces.rejects.append((line, reason, raw))
    return pieces, len(starts) + len(block.set_aside)


def _rejects_table(source: SourceFile, rejects: list[tuple[int, str, str]]) -> pa.Table:
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
    return ParsedBlock(table, _rejects_table(block.source, pieces.rejects), lines, kept)


def parse_meta_block(block: LineBlock, max_line_bytes: int) -> ParsedBlock:
    """Metadata lines of one block as ``items`` rows (duplicates not yet removed) and rejects."""
    pieces, lines = _parse_lines(block, max_line_bytes, META_READER, meta_values, ITEMS)
    table, kept = _items(pieces, block.first_line)
    return ParsedBlock(table, _rejects_table(block.source, pieces.rejects), lines, kept)


def _row_raw(row: dict[str, Any]) -> str:
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
                pieces.rejects.append((first_row + index, bad.reason, _row_raw(record)))
        pieces.add_rows(_values_table(rows, schema), np.asarray(kept, dtype=np.int64))

    pieces = _Pieces()
    with _without_cyclic_gc():
        _convert(0, table.num_rows, fast, slow_path, pieces)
    return pieces


def _review_columns_fit(table: pa.Table) -> bool:
    """Whether Parquet columns cast to :data:`RAW_REVIEW` without changing their meaning."""
    kinds = {
        "rating": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
        "timestamp": pa.types.is_integer,
        "helpful_vote": pa.types.is_integer,
        "verified_purchase": pa.types.is_boolean,
    }
    for name in REVIEW_KEYS:
        if name not in table.column_names:
            return False
        column_type = table.schema.field(name).type
        if not kinds.get(name, lambda t: pa.types.is_string(t) or pa.types.is_large_string(t))(column_type):
            return False
    return True


def parse_review_rows(table: pa.Table, source: SourceFile, first_row: int) -> ParsedBlock:
    """Rows of a review Parquet file (``first_row`` is the 1-based number of the first one)."""
    fits = _review_columns_fit(table)

    def fast_path(lo: int, hi: int) -> tuple[pa.Table, np.ndarray] | None:
        raw = table.slice(lo, hi - lo).select(list(REVIEW_KEYS)).cast(RAW_REVIEW)
        vouched = _vouched_reviews(raw)
        return None if vouched is None else (raw, vouched)

    pieces = _parse_rows(table, first_row, fast_path if fits else None, review_values, RAW_REVIEW)
    interactions, kept = _interactions(pieces, source, first_row)
    return ParsedBlock(interactions, _rejects_table(source, pieces.rejects), table.num_rows, kept)


def parse_meta_rows(table: pa.Table, source: SourceFile, first_row: int) -> ParsedBlock:
    """Rows of a metadata Parquet file, e.g. the Hub's conversion with string price and details."""
    pieces = _parse_rows(table, first_row, None, meta_values, ITEMS)
    items, kept = _items(pieces, first_row)
    return ParsedBlock(items, _rejects_table(source, pieces.rejects), table.num_rows, kept)


# -- tasks (run on Dask workers; each writes its own part files) -----------------------------


@dataclass(frozen=True)
class TableDirs:
    """Where one kind of input writes: ``interactions`` or ``items``, and ``rejects``."""

    rows: str
    rejects: str


@dataclass
class BlockResult:
    """What a block task reports back: counts, and for metadata the keys of its kept items."""

    part: int
    kind: str
    source_index: int
    lines: int
    kept: int
    rejects_by_reason: dict[str, int]
    item_keys: pa.Table | None = None


def _merge(parsed: list[ParsedBlock]) -> ParsedBlock:
    return ParsedBlock(
        pa.concat_tables([p.table for p in parsed]),
        pa.concat_tables([p.rejects for p in parsed]),
        sum(p.lines for p in parsed),
        np.concatenate([p.kept_lines for p in parsed]),
    )


def _write_block(parsed: ParsedBlock, source: SourceFile, part: int, dirs: TableDirs) -> BlockResult:
    schema = INTERACTIONS if source.kind == "reviews" else ITEMS
    if parsed.table.num_rows:
        write_part(parsed.table, Path(dirs.rows), part, schema)
    if parsed.rejects.num_rows:
        write_part(parsed.rejects, Path(dirs.rejects), part, REJECTS)
    keys = None
    if source.kind == "meta":
        keys = pa.table({"parent_asin": parsed.table.column("parent_asin"), "line": pa.array(parsed.kept_lines, pa.int64())})
    reasons = Counter(parsed.rejects.column("reason").to_pylist())
    return BlockResult(part, source.kind, source.index, parsed.lines, parsed.table.num_rows, dict(reasons), keys)


def _parse_block(block: LineBlock, max_line_bytes: int) -> ParsedBlock:
    if block.source.kind == "reviews":
        return parse_review_block(block, max_line_bytes)
    return parse_meta_block(block, max_line_bytes)


def ingest_line_block(block: LineBlock, part: int, dirs: TableDirs, max_line_bytes: int) -> BlockResult:
    """Parse one streamed block (of a gzip file) and write its part files."""
    return _write_block(_parse_block(block, max_line_bytes), block.source, part, dirs)


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
    return _write_block(_merge(parsed), source, part, dirs)


def ingest_parquet_row_groups(
    source: SourceFile, row_groups: list[int], first_row: int, rows: int, part: int, dirs: TableDirs
) -> BlockResult:
    """Parse row groups of a Parquet file (rows numbered from ``first_row``) and write them."""
    parse = parse_review_rows if source.kind == "reviews" else parse_meta_rows
    try:
        with fsspec.open(source.url, "rb") as handle:
            table = pq.ParquetFile(handle).read_row_groups(row_groups)
    except (pa.ArrowException, OSError):
        # A damaged row group: its rows cannot be read, and each is reported as such.
        rejects = [(first_row + i, "unreadable_parquet", "") for i in range(rows)]
        empty = (INTERACTIONS if source.kind == "reviews" else ITEMS).empty_table()
        return _write_block(ParsedBlock(empty, _rejects_table(source, rejects), rows), source, part, dirs)
    return _write_block(parse(table, source, first_row), source, part, dirs)


def content_hash(url: str) -> str:
    """Content hash of a file's bytes (the same digest as ``core.stage.hash_file`` for local files)."""
    with fsspec.open(url, "rb") as handle:
        return hash_stream(handle)


# -- the stage --------------------------------------------------------------------------------


@dataclass
class IngestSources:
    """The expanded inputs of one ingest run and the domain they belong to."""

    reviews: list[SourceFile]
    meta: list[SourceFile]
    domain: str

    @cached_property
    def input_hashes(self) -> dict[str, str]:
        """Content hash of every input file, keyed ``<kind>[<index>] <name>`` (computed once).

        Files are hashed in parallel threads (hashlib releases the GIL on large buffers) by the
        command process, which reads the inputs anyway (it streams gzip files), so the check
        for an unchanged rerun needs no cluster.
        """
        every = self.reviews + self.meta
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(every)))) as pool:
            digests = list(pool.map(content_hash, [s.url for s in every]))
        return {f"{s.kind}[{s.index}] {s.name}": digest for s, digest in zip(every, digests)}


def resolve_sources(settings: IngestSettings) -> IngestSources:
    """Expand the named inputs (downloading ``hub:`` files) and settle the domain name.

    Raises :class:`pipeline.readers.InputError` with a one-line explanation when an input
    matches nothing, cannot be fetched, or the file names disagree on the domain.
    """
    reviews = expand_inputs(settings.reviews, "reviews", settings.hub_repo)
    meta = expand_inputs(settings.meta, "meta", settings.hub_repo)
    if settings.domain:
        return IngestSources(reviews, meta, settings.domain)
    named = sorted({domain_from_name(source.name) for source in reviews + meta})
    if len(named) != 1:
        raise InputError(f"the input file names suggest several domains ({', '.join(named)}); pass --domain NAME")
    return IngestSources(reviews, meta, named[0])


class _BlockRunner:
    """Submits block tasks with a bound on how many are in flight (streamed blocks hold memory)."""

    def __init__(self, client: Client, progress: Any, task: Any):
        self.client = client
        # One block running per worker thread plus a couple queued: enough to keep every worker
        # busy, few enough that streamed blocks waiting on workers stay a small memory cost.
        self.limit = max(1, sum(client.nthreads().values())) + 2
        self.progress = progress
        self.task = task
        self.in_flight: dict[Any, int] = {}
        self.results: list[BlockResult] = []
        self.next_part = 0

    def part(self) -> int:
        if self.next_part > MAX_PARTS:
            # Part names have five digits; more parts would no longer read back in order.
            raise StageError(f"more than {MAX_PARTS + 1:,} blocks: raise --block-size (now too small for these inputs)")
        self.next_part += 1
        return self.next_part - 1

    def submit(self, function: Callable[..., BlockResult], *args: Any, source_bytes: int) -> None:
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
        if self.in_flight:
            self._collect(wait_for_one=False)
        return sorted(self.results, key=lambda result: result.part)


def _submit_source(
    runner: _BlockRunner, source: SourceFile, dirs: TableDirs, settings: IngestSettings, newline_counts: dict[tuple[str, int], Any]
) -> None:
    """Queue the blocks of one file, in line order, each with the next part number."""
    if source.format == "jsonl":
        # Newlines before range i = before range i-1 + newlines in range i-1, added up here as
        # the counting tasks (submitted first, cheap) finish: range i waits only for the counts
        # before it, so parsing starts while later ranges are still being counted.
        counts = newline_counts.get((source.kind, source.index), [])
        before = 0
        for i, start in enumerate(range(0, source.size, settings.block_size)):
            end = min(start + settings.block_size, source.size)
            if i:
                before += counts[i - 1].result()
            runner.submit(
                ingest_plain_range,
                source,
                start,
                end,
                before,
                runner.part(),
                dirs,
                settings.block_size,
                settings.max_line_bytes,
                source_bytes=end - start,
            )
    elif source.format == "gzip":
        # One stream, cut here into bounded blocks that the workers parse in parallel.
        for block in gzip_blocks_ahead(source, settings.block_size, settings.max_line_bytes):
            block_future = runner.client.scatter(block, hash=False)
            runner.submit(ingest_line_block, block_future, runner.part(), dirs, settings.max_line_bytes, source_bytes=block.source_bytes)
    else:
        _submit_parquet(runner, source, dirs, settings.block_size)


def _submit_parquet(runner: _BlockRunner, source: SourceFile, dirs: TableDirs, block_size: int) -> None:
    try:
        with fsspec.open(source.url, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
    except (pa.ArrowException, OSError) as exc:
        log.warning("%s: unreadable Parquet file (%s); recorded in rejects", source.name, exc)
        rejects = _rejects_table(source, [(0, "unreadable_parquet", str(exc)[:RAW_CHARS])])
        write_part(rejects, Path(dirs.rejects), part := runner.part(), REJECTS)
        runner.results.append(BlockResult(part, source.kind, source.index, 1, 0, {"unreadable_parquet": 1}))
        return
    group: list[int] = []
    group_bytes = group_rows = 0
    first_row = 1
    for index in range(metadata.num_row_groups):
        row_group = metadata.row_group(index)
        group.append(index)
        group_bytes += row_group.total_byte_size
        group_rows += row_group.num_rows
        if group_bytes >= block_size or index == metadata.num_row_groups - 1:
            share = source.size * group_bytes // max(1, _metadata_bytes(metadata))
            runner.submit(ingest_parquet_row_groups, source, group, first_row, group_rows, runner.part(), dirs, source_bytes=share)
            first_row += group_rows
            group, group_bytes, group_rows = [], 0, 0


def _metadata_bytes(metadata: Any) -> int:
    """Uncompressed bytes of all row groups of a Parquet file (for progress shares)."""
    return sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))


def _drop_duplicate_items(results: list[BlockResult], items_dir: Path, rejects_dir: Path, meta: list[SourceFile]) -> Counter[int]:
    """Keep the first item of each parent_asin (in file, line order); reject later ones.

    Returns the number of duplicates per metadata file index.
    """
    keyed = [r for r in results if r.item_keys is not None and r.item_keys.num_rows]
    if not keyed:
        return Counter()
    keys = pa.concat_tables(
        [
            r.item_keys.append_column("part", pa.array(np.full(r.item_keys.num_rows, r.part, np.int64))).append_column(
                "row", pa.array(np.arange(r.item_keys.num_rows))
            )
            for r in keyed
        ]
    ).to_pandas()
    duplicates = keys[keys.duplicated("parent_asin", keep="first")]
    by_source = {r.part: r.source_index for r in keyed}
    dropped: Counter[int] = Counter()
    for part, rows in duplicates.groupby("part"):
        source = meta[by_source[part]]
        items_path = items_dir / part_name(part)
        items = pq.read_table(items_path, schema=ITEMS)
        drop = np.zeros(items.num_rows, bool)
        drop[rows["row"].to_numpy()] = True
        raws = [_row_raw(row) for row in items.filter(pa.array(drop)).to_pylist()]
        new_rejects = [(int(line), "duplicate_parent_asin", raw) for line, raw in zip(rows["line"], raws)]
        kept = items.filter(pa.array(~drop))
        if kept.num_rows:
            write_part(kept, items_dir, part, ITEMS)
        else:
            items_path.unlink()
        rejects_path = rejects_dir / part_name(part)
        if rejects_path.exists():
            old = pq.read_table(rejects_path, schema=REJECTS).to_pylist()
            new_rejects += [(r["line"], r["reason"], r["raw"]) for r in old]
        write_part(_rejects_table(source, new_rejects), rejects_dir, part, REJECTS)
        dropped[source.index] += len(raws)
    return dropped


def _ensure_part(folder: Path, schema: pa.Schema) -> None:
    """A table with no rows still gets one (empty) file, so plain readers see its schema."""
    if not any(folder.glob("*.parquet")):
        write_part(schema.empty_table(), folder, 0, schema)


def ingest_fingerprint(run: Path, settings: IngestSettings, sources: IngestSources) -> str:
    """The fingerprint an ingest of ``sources`` with ``settings`` records in ``run``.

    It holds the input files (names and content hashes), the domain, ``max_line_bytes`` and the
    code version; ``block_size`` and the way inputs were named do not change the output, so
    they are not part of it.
    """
    config = {"domain": sources.domain, "max_line_bytes": settings.max_line_bytes}
    return RunDir(run).fingerprint(STAGE, config, sources.input_hashes)


def ingest_is_current(run: Path, settings: IngestSettings, sources: IngestSources) -> bool:
    """Whether ``run`` already holds a complete ingest of exactly these inputs and settings."""
    return RunDir(run).is_current(STAGE, ingest_fingerprint(run, settings, sources))


def run_ingest(
    run: Path, settings: IngestSettings, client: Client, force: bool = False, sources: IngestSources | None = None
) -> dict[str, Any]:
    """Ingest review and metadata files into the run folder ``run``; returns the manifest entry.

    ``client`` is a ``distributed.Client``; its workers must see the run folder and the input
    files at the same paths. ``sources`` may be passed when already resolved (the command
    resolves them before starting a cluster, so input errors come quickly). A rerun whose
    inputs (content hashes) and settings are unchanged is skipped unless ``force``; the
    returned entry then has ``skipped: True`` (a key of the return value only, not of the
    manifest).
    """
    from core.progress import make_progress

    sources = sources or resolve_sources(settings)
    run_dir = RunDir(run)
    every = sources.reviews + sources.meta
    inputs = sources.input_hashes
    fingerprint = ingest_fingerprint(run, settings, sources)
    if not force and run_dir.is_current(STAGE, fingerprint):
        log.info("ingest is up to date in %s (same inputs and settings); --force reruns it", run)
        return {**(run_dir.entry(STAGE) or {}), "skipped": True}
    log.info("ingesting %d review file(s) and %d metadata file(s) of %s", len(sources.reviews), len(sources.meta), sources.domain)
    config = {**settings.model_dump(), "domain": sources.domain}
    with run_dir.stage(STAGE, fingerprint, config=config, inputs=inputs) as out:
        interactions_dir, items_dir, rejects_dir = (out.table_dir(name) for name in ("interactions", "items", "rejects"))
        dirs = {"reviews": TableDirs(str(interactions_dir), str(rejects_dir)), "meta": TableDirs(str(items_dir), str(rejects_dir))}
        newline_counts = {
            # Newlines per byte range number the lines of the ranges after it (all but the last).
            (s.kind, s.index): [
                client.submit(count_newlines, s.url, start, start + settings.block_size, pure=False)
                for start in range(0, s.size, settings.block_size)[:-1]
            ]
            for s in every
            if s.format == "jsonl"
        }
        with make_progress() as progress:
            runner = _BlockRunner(client, progress, progress.add_task("ingest", total=sum(s.size for s in every)))
            for source in every:
                _submit_source(runner, source, dirs[source.kind], settings, newline_counts)
            results = runner.finish()
        duplicates = _drop_duplicate_items(results, items_dir, rejects_dir, sources.meta)
        for folder, schema in ((interactions_dir, INTERACTIONS), (items_dir, ITEMS), (rejects_dir, REJECTS)):
            _ensure_part(folder, schema)
        _record(out, results, duplicates, sources)
    entry = run_dir.entry(STAGE) or {}
    log.info(
        "ingest done: %s interactions, %s items, %s rejects", *(f"{entry['rows_out'][t]:,}" for t in ("interactions", "items", "rejects"))
    )
    return {**entry, "skipped": False}


def _record(out: Any, results: list[BlockResult], duplicates: Counter[int], sources: IngestSources) -> None:
    reasons: Counter[str] = Counter()
    per_source: dict[tuple[str, int], Counter[str]] = {}
    for result in results:
        reasons.update(result.rejects_by_reason)
        stats = per_source.setdefault((result.kind, result.source_index), Counter())
        stats.update({"lines": result.lines, "kept": result.kept, "rejected": sum(result.rejects_by_reason.values())})
    for index, count in duplicates.items():
        reasons["duplicate_parent_asin"] += count
        per_source[("meta", index)].update({"kept": -count, "rejected": count})
    files = [
        {
            "kind": s.kind,
            "file": s.name,
            "format": s.format,
            **{k: per_source.get((s.kind, s.index), Counter())[k] for k in ("lines", "kept", "rejected")},
        }
        for s in sources.reviews + sources.meta
    ]
    lines = {kind: sum(f["lines"] for f in files if f["kind"] == kind) for kind in ("reviews", "meta")}
    kept = {kind: sum(f["kept"] for f in files if f["kind"] == kind) for kind in ("reviews", "meta")}
    out.record(
        rows_in=lines["reviews"] + lines["meta"],
        rows_out={"interactions": kept["reviews"], "items": kept["meta"], "rejects": sum(reasons.values())},
        rejects_by_reason=dict(reasons),
        domain=sources.domain,
        lines_in=lines,
        files=files,
        blocks=len(results),
    )


# -- command ----------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add ``rrec ingest`` to the ``rrec`` app."""

    @app.command("ingest")
    @user_errors
    def ingest_command(
        run: RunOpt,
        reviews: Annotated[
            list[str] | None,
            typer.Option("--reviews", help="Review file, glob (quoted), fsspec URL or hub:<Domain>; repeat the option for more."),
        ] = None,
        meta: Annotated[list[str] | None, typer.Option("--meta", help="Item metadata file(s), named like --reviews.")] = None,
        domain: Annotated[str | None, typer.Option("--domain", help="Domain name (default: from the file names).")] = None,
        block_size: Annotated[
            int | None, typer.Option("--block-size", help="Bytes of decompressed text per parallel block (default 64 MiB).", min=1024)
        ] = None,
        max_line_bytes: Annotated[
            int | None, typer.Option("--max-line-bytes", help="Longer lines are rejected (default 1 MiB).", min=64)
        ] = None,
        hub_repo: Annotated[str | None, typer.Option("--hub-repo", help="Dataset repo that hub:<Domain> reads.")] = None,
        config: ConfigOpt = None,
        workers: WorkersOpt = None,
        scheduler: SchedulerOpt = None,
        force: ForceOpt = False,
    ) -> None:
        """Read raw Amazon Reviews 2023 files (JSONL, gzip JSONL, Parquet) into interactions, items and rejects.

        Every input line becomes a table row or a rejects row with its file, line and reason.
        A rerun with unchanged inputs and settings is skipped; --force reruns it.
        """
        from pipeline.cluster import dask_client

        settings, common = settings_for(
            config,
            STAGE,
            IngestSettings,
            reviews=reviews or None,
            meta=meta or None,
            domain=domain,
            block_size=block_size,
            max_line_bytes=max_line_bytes,
            hub_repo=hub_repo,
            workers=workers,
            scheduler=scheduler,
        )
        sources = resolve_sources(settings)
        if not force and ingest_is_current(run, settings, sources):
            # Nothing to do: no need to start a cluster.
            entry = {**(RunDir(run).entry(STAGE) or {}), "skipped": True}
        else:
            with dask_client(common.workers, common.scheduler) as client:
                entry = run_ingest(run, settings, client, force=force, sources=sources)
        rows = entry["rows_out"]
        typer.echo(
            f"ingest {entry.get('domain')}: {entry['rows_in']:,} lines -> {rows['interactions']:,} interactions, "
            f"{rows['items']:,} items, {rows['rejects']:,} rejects in {run}"
            + (" (up to date, not rerun; --force reruns)" if entry["skipped"] else "")
        )
        if entry["rejects_by_reason"]:
            reasons = ", ".join(
                f"{reason} {count:,}" for reason, count in sorted(entry["rejects_by_reason"].items(), key=lambda kv: -kv[1])
            )
            typer.echo(f"rejects by reason: {reasons} (rows in {Path(run) / 'rejects'})")
