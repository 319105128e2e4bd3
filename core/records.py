"""One definition of a valid record, shared by ingest (which rejects what breaks it) and the
validation suites (which check the tables against the same bounds).

Every bound a critical expectation checks is defined here once, so a value that validation
would call critical never reaches a table: ingest rejects the line with a registered reason
(``out_of_range:<field>``, ``missing_field:<field>``, ``wrong_type:<field>``) instead.

Timestamps are epoch milliseconds. The Amazon Reviews 2023 data starts in 1996; anything before
July 1995 (for instance a timestamp written in seconds, which reads as January 1970 in
milliseconds) is out of range, and so is anything later than the moment of the check plus
:data:`FUTURE_SLACK_MS` (one day, for clocks and time zones of the source systems).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

PARENT_ASIN_PATTERN = r"^[A-Z0-9]{10}$"
"""Amazon's item ids: ten upper-case letters or digits (ASINs, and ISBN-10s of books, whose check
digit may be ``X``). Checked against every id of the real-record sample and of ``rrec sample``."""
PARENT_ASIN = re.compile(PARENT_ASIN_PATTERN)

EARLIEST_TIMESTAMP_MS = 804_556_800_000
"""1995-07-01T00:00:00Z: before Amazon's first review."""
FUTURE_SLACK_MS = 24 * 3600 * 1000
"""How far past the moment of the check a timestamp may lie."""

RATING_MIN, RATING_MAX = 1.0, 5.0

OUT_OF_RANGE = "out_of_range"
"""Reject code (``core/reasons.py``) of a value outside its bounds, recorded as ``out_of_range:<field>``."""
INVALID_ID = "invalid_id"
"""Reject code of an item id that does not match :data:`PARENT_ASIN_PATTERN` (``invalid_id:parent_asin``)."""

REQUIRED_REVIEW_FIELDS = ("rating", "parent_asin", "user_id", "timestamp")
"""Fields a review must carry (non-null, non-empty) to be kept; the others may be null."""
REQUIRED_ITEM_FIELDS = ("parent_asin",)


@dataclass(frozen=True)
class Bounds:
    """Inclusive bounds of a numeric field (``None``: open on that side)."""

    low: float | None
    high: float | None

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies within the bounds."""
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


def latest_timestamp_ms(now_ms: int | None = None) -> int:
    """The latest plausible timestamp at ``now_ms`` (default: now)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return now + FUTURE_SLACK_MS


def review_bounds(now_ms: int | None = None) -> dict[str, Bounds]:
    """Bounds of the numeric review fields that a critical expectation checks."""
    return {
        "rating": Bounds(RATING_MIN, RATING_MAX),
        "timestamp": Bounds(EARLIEST_TIMESTAMP_MS, latest_timestamp_ms(now_ms)),
    }


def valid_parent_asin(value: str) -> bool:
    """Whether ``value`` has the form of an Amazon item id."""
    return PARENT_ASIN.match(value) is not None


def rating_in_range(value: float) -> bool:
    """Whether a star rating lies within [:data:`RATING_MIN`, :data:`RATING_MAX`]."""
    return RATING_MIN <= value <= RATING_MAX


def timestamp_in_range(value: int, now_ms: int | None = None) -> bool:
    """Whether a timestamp is plausible epoch milliseconds at ``now_ms`` (seconds are not)."""
    return EARLIEST_TIMESTAMP_MS <= value <= latest_timestamp_ms(now_ms)
