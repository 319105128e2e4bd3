"""One raw record -> one validated row, or :class:`RecordRejected` with its registered reason.

This is the per-line reference form of ingest: :func:`review_values` and :func:`meta_values`
define what is kept, in which form, and why anything else is rejected. The fast Arrow path
(:mod:`pipeline.ingest.fastpath`) keeps a row only where it provably equals what these give.

The valid-record bounds (rating, timestamps, the item-id pattern) come from
:mod:`core.records`, the definition the validation suites check the tables against: a value
validation would call critical never reaches a table.
"""

from __future__ import annotations

import html
import json
import math
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.records import INVALID_ID, OUT_OF_RANGE, REQUIRED_REVIEW_FIELDS, Bounds, review_bounds, valid_parent_asin
from pipeline.ingest.settings import INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN

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
REQUIRED_REVIEW_KEYS = REQUIRED_REVIEW_FIELDS
"""What makes a review an interaction (what the benchmark scripts read): absent, null or an
empty id rejects the line. The other kept fields (title, text, asin, helpful_vote,
verified_purchase) may be absent or null and are kept as null, as the benchmark scripts keep
such a review; a value of the wrong type still rejects the line."""
REVIEW_IDS = ("parent_asin", "user_id")
"""The ids of a review: an empty string is as missing as null."""
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
    ``wrong_type:<name>``, ``invalid_utf8:<name>``, ``out_of_range:<name>`` (a rating outside
    1-5, a timestamp outside the plausible milliseconds of :mod:`core.records`) and
    ``invalid_id:parent_asin``. Optional fields absent or null are None.
    """
    if not isinstance(record, dict):
        raise RecordRejected("not_an_object")
    values: list[Any] = []
    for name in REVIEW_KEYS:
        value = record.get(name)
        if value is None and name not in REQUIRED_REVIEW_KEYS:
            values.append(None)
            continue
        if value is None or (value == "" and name in REVIEW_IDS):
            raise RecordRejected(f"missing_field:{name}")
        if name == "rating":
            values.append(_within(_finite(value, name), name))
        elif name == "timestamp":
            values.append(_within(_whole(value, name, INT64_MIN, INT64_MAX), name))
        elif name == "helpful_vote":
            values.append(_whole(value, name, INT32_MIN, INT32_MAX))
        elif name == "verified_purchase":
            if not isinstance(value, bool):
                raise RecordRejected(f"wrong_type:{name}")
            values.append(value)
        elif name == "parent_asin":
            values.append(_item_id(value, name))
        else:
            values.append(_text(value, name))
    return tuple(values)


_BOUNDS: tuple[float, dict[str, Bounds]] = (-1.0, {})


def current_review_bounds() -> dict[str, Bounds]:
    """:func:`core.records.review_bounds` of now, computed at most once a second."""
    global _BOUNDS
    now = time.monotonic()
    if now - _BOUNDS[0] >= 1.0:
        _BOUNDS = (now, review_bounds())
    return _BOUNDS[1]


def _within(value: float, name: str) -> Any:
    if not current_review_bounds()[name].contains(value):
        raise RecordRejected(f"{OUT_OF_RANGE}:{name}")
    return value


def _item_id(value: Any, name: str) -> str:
    text = _text(value, name)
    if not valid_parent_asin(text):
        raise RecordRejected(f"{INVALID_ID}:{name}")
    return text


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


def details_json(value: Any) -> str | None:
    """``details`` (a dict, or its JSON text) as the JSON string ``items`` stores; None when absent."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise RecordRejected("wrong_type:details") from None
        except RecursionError:
            raise RecordRejected("invalid_json") from None  # nested deeper than the parser follows
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RecordRejected("wrong_type:details")
    try:
        text = _JSON_TEXT.encode(value)
    except (TypeError, ValueError):
        raise RecordRejected("wrong_type:details") from None
    except RecursionError:
        raise RecordRejected("invalid_json") from None
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

    Only ``parent_asin`` is required, in the form of an item id (``invalid_id:parent_asin``). ``description`` (a list of strings) is joined with
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
        _item_id(parent_asin, "parent_asin"),
        _optional_text(record.get("title"), "title"),
        _optional_text(record.get("main_category"), "main_category"),
        _text_list(record.get("categories"), "categories"),
        _optional_text(record.get("store"), "store"),
        parse_price(record.get("price")),
        None if average_rating is None else _finite(average_rating, "average_rating"),
        _rating_number(record.get("rating_number")),
        _text_list(record.get("features"), "features"),
        _description(record.get("description")),
        details_json(record.get("details")),
    )
