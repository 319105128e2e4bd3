"""The fast path: ``pyarrow.json`` (or a Parquet file's own columns) read a whole slice of records
at once, and each row is vouched for only where it equals what the per-line reference form
(:func:`pipeline.ingest.records.review_values`, :func:`~pipeline.ingest.records.meta_values`)
gives for its line. Rows it cannot vouch for go through the reference form, which names their
reject reason; the tests pin one path to the other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.records import PARENT_ASIN_PATTERN
from core.schemas import ITEMS
from pipeline.ingest.records import (
    RAW_REVIEW,
    REQUIRED_REVIEW_KEYS,
    REVIEW_IDS,
    REVIEW_KEYS,
    RecordRejected,
    current_review_bounds,
    details_json,
)
from pipeline.ingest.settings import INT32_MAX, INT32_MIN


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


def vouched_reviews(raw: pa.Table) -> np.ndarray | None:
    """Per row: whether the fast path's values are exactly what :func:`review_values` accepts:
    required fields set, ids non-empty, valid UTF-8, a vote count in int32 range, and the
    valid-record bounds of :mod:`core.records` (rating, timestamp, item-id pattern).

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
            if name in REVIEW_IDS:
                require(pc.not_equal(column, ""))
    rating, timestamp = raw.column("rating"), raw.column("timestamp")
    bounds = current_review_bounds()
    require(pc.is_finite(rating))
    require(pc.and_(pc.greater_equal(rating, bounds["rating"].low), pc.less_equal(rating, bounds["rating"].high)))
    require(pc.and_(pc.greater_equal(timestamp, bounds["timestamp"].low), pc.less_equal(timestamp, bounds["timestamp"].high)))
    require(pc.match_substring_regex(raw.column("parent_asin"), PARENT_ASIN_PATTERN))
    votes = raw.column("helpful_vote")
    require(pc.fill_null(pc.and_(pc.greater_equal(votes, INT32_MIN), pc.less_equal(votes, INT32_MAX)), True))  # null: optional
    return vouched


def _finish_reviews(raw: pa.Table, lines: LineSlice) -> tuple[pa.Table, np.ndarray] | None:
    vouched = vouched_reviews(raw)
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
            return details_json(_JSON.raw_decode(line[separator.end() :].decode("utf-8"))[0])
    return details_json(json.loads(line.decode("utf-8", "surrogateescape"))["details"])


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
    require(pc.and_(parent_asin.is_valid(), pc.match_substring_regex(parent_asin, PARENT_ASIN_PATTERN)))
    for name in ("price", "average_rating"):
        require(pc.fill_null(pc.is_finite(columns[name]), True))
    rating_number = columns["rating_number"]
    require(pc.fill_null(pc.and_(pc.greater_equal(rating_number, INT32_MIN), pc.less_equal(rating_number, INT32_MAX)), True))

    details: list[str | None] = [None] * raw.num_rows
    for index in np.flatnonzero(vouched & columns["details"].is_valid().to_numpy(zero_copy_only=False)).tolist():
        try:
            details[index] = _details_text(lines.line(index))
        except (RecordRejected, UnicodeDecodeError, ValueError, KeyError, RecursionError):
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


def review_columns_fit(table: pa.Table) -> bool:
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
