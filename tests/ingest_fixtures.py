"""Records, corpora and the command of the ingest tests (shared by the test modules of ingest)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import typer

from core.tables import read_table
from pipeline.ingest import (
    SourceFile,
    register,
)

REPO = Path(__file__).resolve().parent.parent

REVIEW_KEYS = ["rating", "title", "text", "images", "asin", "parent_asin", "user_id", "timestamp", "helpful_vote", "verified_purchase"]
KEPT_REVIEW_KEYS = ["rating", "title", "text", "asin", "parent_asin", "user_id", "timestamp", "helpful_vote", "verified_purchase"]
REQUIRED_REVIEW_KEYS = ["rating", "parent_asin", "user_id", "timestamp"]
OPTIONAL_REVIEW_KEYS = {
    "title": "review_title",
    "text": "review_text",
    "asin": "asin",
    "helpful_vote": "helpful_vote",
    "verified_purchase": "verified_purchase",
}


def review(i: int, **changes: object) -> dict:
    """A valid raw review in the Amazon 2023 key order, varied enough to exercise the parsers."""
    rng = random.Random(i)
    record = {
        "rating": float(rng.randint(1, 5)) if i % 7 else rng.randint(1, 5),
        "title": rng.choice(["Great", "Meh", "Caf\u00e9 cr\u00e8me", 'Not "bad"', ""]),
        "text": rng.choice(["Works well.", "Nice<br />would buy again", "AT&amp;T &lt;3", "Emoji \U0001f600 ok", "a\\b\tc"]),
        "images": [{"small_image_url": f"https://img/{i}.jpg", "attachment_type": "IMAGE"}] if i % 3 == 0 else [],
        "asin": f"B{i % 50:09d}",
        "parent_asin": f"P{i % 40:09d}",
        "user_id": f"U{i % 30:027d}",
        "timestamp": 1_500_000_000_000 + i * 1000,
        "helpful_vote": i % 4,
        "verified_purchase": i % 2 == 0,
    }
    record.update(changes)
    return record


def meta(i: int, **changes: object) -> dict:
    record = {
        "main_category": "Grocery",
        "title": f"Item {i}",
        "average_rating": 4.5,
        "rating_number": 10 + i,
        "features": ["Fresh", "Organic"],
        "description": ["Line one.", "Line two."],
        "price": 3.5 + i,
        "images": [],
        "videos": [],
        "store": "Shop",
        "categories": ["Grocery & Gourmet Food", "Snacks"],
        "details": {"Brand": "Shop", "Weight": "1 lb"},
        "parent_asin": f"P{i:09d}",
        "bought_together": None,
    }
    record.update(changes)
    return record


def jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def source(kind: str = "reviews", name: str = "test.jsonl", index: int = 0) -> SourceFile:
    return SourceFile(name=name, url=name, kind=kind, index=index, format="jsonl", size=0)


def without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


# Every defect of the issue, one per line, between valid lines; (line content, expected reason).
DEFECTS: list[tuple[bytes, str]] = [
    (b'{"rating": 5.0, "title": "x"', "invalid_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (b"", "empty_line"),
    (b"   \t", "empty_line"),
    *[(json.dumps(without(review(900 + n), key)).encode(), f"missing_field:{key}") for n, key in enumerate(REQUIRED_REVIEW_KEYS)],
    *[(json.dumps(review(910 + n, **{key: None})).encode(), f"missing_field:{key}") for n, key in enumerate(REQUIRED_REVIEW_KEYS)],
    (json.dumps(review(920, user_id=None)).encode(), "missing_field:user_id"),
    (json.dumps(review(921, parent_asin="")).encode(), "missing_field:parent_asin"),
    (json.dumps(review(922, rating="5")).encode(), "wrong_type:rating"),
    (json.dumps(review(923, rating=True)).encode(), "wrong_type:rating"),
    (json.dumps(review(924, timestamp=1.5e12)).encode(), "wrong_type:timestamp"),
    (json.dumps(review(925, timestamp="1500000000000")).encode(), "wrong_type:timestamp"),
    (json.dumps(review(926, helpful_vote=2**40)).encode(), "wrong_type:helpful_vote"),
    (json.dumps(review(927, verified_purchase="yes")).encode(), "wrong_type:verified_purchase"),
    (json.dumps(review(928, title=["list"])).encode(), "wrong_type:title"),
    (json.dumps(review(929, user_id=12345)).encode(), "wrong_type:user_id"),
    (json.dumps(review(930, text={"html": "no"})).encode(), "wrong_type:text"),
    (json.dumps(review(931)).replace('"rating": ', '"rating": NaN, "x": ').encode(), "wrong_type:rating"),
    (json.dumps(review(932, text="bad \udc80 text"), ensure_ascii=True).encode(), "invalid_utf8:text"),
    (json.dumps(review(934, text="BYTES")).encode().replace(b"BYTES", b"bad \xff byte"), "invalid_utf8:text"),
    (json.dumps(review(933, title="x" * 3000)).encode(), "line_too_long"),
]
MAX_LINE = 2048


def malformed_corpus() -> tuple[bytes, dict[int, str], list[int]]:
    """Valid and defective lines interleaved: (bytes, {line: reason}, valid line numbers)."""
    lines, expected, valid = [], {}, []
    for n, (content, reason) in enumerate(DEFECTS):
        lines.append(json.dumps(review(n)).encode())
        valid.append(len(lines))
        lines.append(content)
        expected[len(lines)] = reason
    # A valid line whose ignored fields hold what the fast reader and json.loads both accept.
    lines.append(
        json.dumps(review(98)).replace('"images": []', '"images": [NaN, Infinity, "\\u00e9"]').encode().replace(b"\\u00e9", b"\xff")
    )
    valid.append(len(lines))
    return b"\n".join(lines) + b"\n", expected, valid


def rows(run: Path, table: str) -> list[dict]:
    return read_table(run / table).to_pylist()


def ingest_app() -> typer.Typer:
    """The ``ingest`` command exactly as ``rrec`` registers it."""
    app = typer.Typer()

    @app.callback()
    def _main() -> None:
        """rrec"""

    register(app)
    return app
