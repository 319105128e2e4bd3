"""Write the hostile ingest corpus of this folder and its manifest (``manifest.json``).

Run from the repository root: ``.venv/bin/python tests/hostile/ingest/make_corpus.py``. The
output is deterministic; the files are committed, so the tests read them as they are. Each case
names its input file(s) and the expected outcome of every line: ``kept`` or the registered
reject reason (``core/reasons.py``), or a refusal of the whole file (``error``).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
MAX_LINE_BYTES = 4096
"""The cases run with ``--max-line-bytes 4096``, so an over-long line stays small in git."""


def review(i: int, **changes: Any) -> dict[str, Any]:
    """A valid raw review in the Amazon Reviews 2023 key order."""
    record = {
        "rating": float(1 + i % 5),
        "title": f"Review {i}",
        "text": "Works well.<br />Would buy again.",
        "images": [],
        "asin": f"B{i:09d}",
        "parent_asin": f"B{i % 17:09d}",
        "user_id": f"AHOSTILE{i % 11:04d}",
        "timestamp": 1_600_000_000_000 + i * 60_000,
        "helpful_vote": i % 3,
        "verified_purchase": i % 2 == 0,
    }
    record.update(changes)
    return record


def meta(i: int, **changes: Any) -> dict[str, Any]:
    """A valid raw metadata record."""
    record = {
        "main_category": "Grocery",
        "title": f"Item {i}",
        "average_rating": 4.5,
        "rating_number": 10 + i,
        "features": ["Fresh"],
        "description": ["One.", "Two."],
        "price": 3.5,
        "images": [],
        "videos": [],
        "store": "Shop",
        "categories": ["Grocery"],
        "details": {"Brand": "Shop"},
        "parent_asin": f"B{i:09d}",
        "bought_together": None,
    }
    record.update(changes)
    return record


def line(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()


def without(record: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != key}


def malformed_reviews() -> list[tuple[bytes, str, str]]:
    """(line, expected outcome, what it is): every kind of bad review line, and odd good ones."""
    return [
        (line(review(1)), "kept", "a valid review"),
        (b'{"rating": 5.0, "title": "cut', "invalid_json", "JSON cut short"),
        (b"[1, 2, 3]", "not_an_object", "a JSON array"),
        (b'"just a string"', "not_an_object", "a JSON string"),
        (b"", "empty_line", "an empty line"),
        (b" \t ", "empty_line", "whitespace only"),
        (line(without(review(2), "user_id")), "missing_field:user_id", "a required field absent"),
        (line(review(3, rating=None)), "missing_field:rating", "a required field null"),
        (line(review(4, parent_asin="")), "missing_field:parent_asin", "an empty id"),
        (line(review(5, rating="5")), "wrong_type:rating", "a rating as a string"),
        (line(review(6, timestamp=1.6e12)), "wrong_type:timestamp", "a timestamp as a float"),
        (line(review(7, verified_purchase="yes")), "wrong_type:verified_purchase", "a boolean as a string"),
        (line(review(8, user_id=12345)), "wrong_type:user_id", "an id as a number"),
        (line(review(9, helpful_vote=2**40)), "wrong_type:helpful_vote", "a count beyond int32"),
        (line(review(10)).replace(b'"rating": 1.0', b'"rating": NaN'), "wrong_type:rating", "a NaN rating"),
        (line(review(11, rating=7.5)), "out_of_range:rating", "rating 7.5"),
        (line(review(12, rating=-1)), "out_of_range:rating", "rating -1"),
        (line(review(13, timestamp=-5)), "out_of_range:timestamp", "timestamp -5"),
        (line(review(14, timestamp=1_600_000_000)), "out_of_range:timestamp", "a timestamp in seconds"),
        (line(review(15, timestamp=4_102_444_800_000)), "out_of_range:timestamp", "a timestamp in 2100"),
        (line(review(16, parent_asin="b0-lower-x")), "invalid_id:parent_asin", "an item id of the wrong form"),
        (line(review(17, text="bad \udc80 surrogate")), "invalid_utf8:text", "an escaped lone surrogate in a kept field"),
        (line(review(18, text="BYTES")).replace(b"BYTES", b"bad \xff byte"), "invalid_utf8:text", "a byte that is not UTF-8"),
        (line(review(19)).replace(b'"images": []', b'"images": ["\xff\xfe"]'), "kept", "bad bytes in an ignored field"),
        (line(review(20, text="x" * 5000)), "line_too_long", "a line over --max-line-bytes"),
        (line(review(21)).replace(b"Works", b"Wo\x00rks"), "invalid_json", "a raw NUL byte inside a string"),
        (b"\x00\x00\x00", "invalid_json", "a line of NUL bytes"),
        (line(review(22, text="a\x00b")), "kept", "an escaped NUL (\\u0000) in a text"),
        (b"\xef\xbb\xbf" + line(review(23)), "kept", "a byte-order mark before the object"),
        (line(review(24)) + b"\r", "kept", "a CRLF line end"),
        (line(review(25))[:-1] + b', "rating": 9.0}', "out_of_range:rating", "a duplicate key (the last one counts)"),
        (
            line(review(26)).replace(b'"images": []', b'"images": ' + b"[" * 1500 + b"]" * 1500),
            "invalid_json",
            "nesting deeper than a parser follows",
        ),
        (line(review(27, extra={"nested": [1, 2]}, rating=4)), "kept", "unknown keys and an integer rating"),
        (line(review(28, text="<script>alert(1)</script>ok")), "kept", "markup in a text (stripped, kept)"),
    ]


def malformed_meta() -> list[tuple[bytes, str, str]]:
    return [
        (line(meta(1)), "kept", "a valid record"),
        (line(meta(2, price="about five")), "wrong_type:price", "a price that is no number"),
        (line(meta(3, categories="Snacks")), "wrong_type:categories", "a list field as a string"),
        (line(without(meta(4), "parent_asin")), "missing_field:parent_asin", "no item id"),
        (line(meta(5, parent_asin="lowercase1")), "invalid_id:parent_asin", "an item id of the wrong form"),
        (line(meta(6, details={"Brand": "bad \udc80"})), "invalid_utf8:details", "a lone surrogate in details"),
        (line(meta(1, title="Second record of item 1")), "duplicate_parent_asin", "a later record of a kept item"),
        (b"{broken", "invalid_json", "JSON cut short"),
        (
            line(meta(8)).replace(b'"details": {"Brand": "Shop"}', b'"details": {"Brand": ' + b"[" * 1500 + b"]" * 1500 + b"}"),
            "invalid_json",
            "details nested deeper than a parser follows",
        ),
        (line(meta(7, price="$1,299.00", details=json.dumps({"Brand": "Hub"}))), "kept", "the Hub conversion's string forms"),
    ]


def numbered(outcomes: list[str]) -> dict[str, str]:
    """Line numbers per outcome, as ranges: ``{"kept": "1-3,7", "invalid_json": "4"}``."""
    lines: dict[str, list[int]] = {}
    for number, outcome in enumerate(outcomes, start=1):
        lines.setdefault(outcome, []).append(number)
    ranges: dict[str, str] = {}
    for outcome, numbers in lines.items():
        spans: list[list[int]] = []
        for number in numbers:
            if spans and spans[-1][1] == number - 1:
                spans[-1][1] = number
            else:
                spans.append([number, number])
        ranges[outcome] = ",".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)
    return ranges


def damaged(lines: list[bytes]) -> tuple[bytes, int]:
    """``lines`` gzipped, damaged right after the first half: a full flush there starts a new
    deflate block on a byte boundary, and its first byte is set to the reserved block type, which
    zlib detects at once (a random overwrite usually decodes as garbage for a while first).
    Returns the file and the number of lines before the damage."""
    half = len(lines) // 2
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = packer.compress(b"".join(lines[:half])) + packer.flush(zlib.Z_FULL_FLUSH)
    tail = packer.compress(b"".join(lines[half:])) + packer.flush()
    return head + bytes([0b110]) + tail[1:], half


def main() -> None:
    cases: list[dict[str, Any]] = []

    def case(name: str, kind: str, content: bytes, outcomes: list[str], what: list[str] | None = None, **extra: Any) -> None:
        (HERE / name).write_bytes(content)
        entry: dict[str, Any] = {"file": name, "kind": kind, "expect": numbered(outcomes), **extra}
        if what:
            entry["what"] = {str(n): w for n, w in enumerate(what, start=1)}
        cases.append(entry)

    reviews = malformed_reviews()
    case("reviews_malformed.jsonl", "reviews", b"\n".join(r[0] for r in reviews) + b"\n", [r[1] for r in reviews], [r[2] for r in reviews])
    metas = malformed_meta()
    case("meta_malformed.jsonl", "meta", b"\n".join(m[0] for m in metas) + b"\n", [m[1] for m in metas], [m[2] for m in metas])

    review_lines = [line(review(i)) + b"\n" for i in range(400)]
    body = b"".join(review_lines)
    data, before = damaged(review_lines)
    case("reviews_damaged.jsonl.gz", "reviews", data, ["kept"] * before + ["corrupt_gzip"], damage="gzip stream damaged mid-file")
    packed = gzip.compress(body, mtime=0)
    cut = packed[: len(packed) * 2 // 3]
    whole = zlib.decompressobj(wbits=31).decompress(cut).count(b"\n")
    case("reviews_truncated.jsonl.gz", "reviews", cut, ["kept"] * whole + ["truncated_gzip"], damage="gzip file cut at two thirds")
    case(
        "reviews_trailing_garbage.jsonl.gz",
        "reviews",
        packed + b"not gzip",
        ["kept"] * 400 + ["corrupt_gzip"],
        damage="bytes after the last member",
    )
    case("reviews_zero_padded.jsonl.gz", "reviews", packed + b"\x00" * 512, ["kept"] * 400, damage="zero padding after the last member")

    data, before = damaged([line(meta(i)) + b"\n" for i in range(300)])
    case("meta_damaged.jsonl.gz", "meta", data, ["kept"] * before + ["corrupt_gzip"], damage="gzip stream damaged mid-file")
    short_body = b"".join(line(meta(i)) + b"\n" for i in range(40))
    plain_cut = short_body[: len(short_body) - 100]
    case("meta_truncated.jsonl", "meta", plain_cut, ["kept"] * plain_cut.count(b"\n") + ["invalid_json"], damage="plain file cut mid-line")
    case("reviews_empty.jsonl", "reviews", b"", [], damage="an empty file")

    parquet = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([review(i) for i in range(150)]), parquet, row_group_size=50, compression="zstd")
    broken = bytearray(parquet.getvalue())
    text = pq.ParquetFile(io.BytesIO(bytes(broken))).metadata.row_group(1).column(2)  # the `text` column of rows 51-100
    middle = text.data_page_offset + text.total_compressed_size // 2
    broken[middle : middle + 16] = b"\xff" * 16
    outcomes = ["kept"] * 50 + ["unreadable_parquet"] * 50 + ["kept"] * 50
    case("reviews_damaged_row_group.parquet", "reviews", bytes(broken), outcomes, damage="a damaged page in the second of three row groups")
    (HERE / "reviews_not_parquet.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 20)
    cases.append(
        {
            "file": "reviews_not_parquet.parquet",
            "kind": "reviews",
            "expect": {"unreadable_parquet": "0"},
            "damage": "Parquet magic, then garbage",
        }
    )
    (HERE / "reviews_bzip2.jsonl.bz2").write_bytes(bz2.compress(body[:2000]))
    cases.append({"file": "reviews_bzip2.jsonl.bz2", "kind": "reviews", "error": "bzip2-compressed", "damage": "a format ingest refuses"})
    (HERE / "reviews_one_valid.jsonl").write_bytes(line(review(0)) + b"\n")
    manifest = {
        "about": "Hostile inputs of `rrec ingest`: every line of every case ends kept or rejected with the reason named "
        "here (tests/test_hostile_ingest.py). Regenerate with tests/hostile/ingest/make_corpus.py.",
        "max_line_bytes": MAX_LINE_BYTES,
        "reviews_for_meta_cases": "reviews_one_valid.jsonl",
        "cases": cases,
    }
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
