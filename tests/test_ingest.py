"""rrec ingest: every input line ends as a kept row or a recorded reject, whatever the format,
block size or number of workers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest
import typer
from ingest_fixtures import (
    DEFECTS,
    MAX_LINE,
    OPTIONAL_REVIEW_KEYS,
    ingest_app,
    jsonl,
    malformed_corpus,
    meta,
    review,
    rows,
    source,
    without,
)
from typer.testing import CliRunner

from core.schemas import INTERACTIONS, ITEMS, REJECTS
from core.tables import read_table
from pipeline.ingest import (
    META_READER,
    GzipChunks,
    IngestSettings,
    InputError,
    LineBlock,
    LineSlice,
    RecordRejected,
    SourceFile,
    StreamEnd,
    cut_lines,
    domain_from_name,
    expand_inputs,
    gzip_blocks_ahead,
    meta_values,
    parse_meta_block,
    parse_price,
    parse_review_block,
    resolve_sources,
    run_ingest,
    strip_html,
)

# -- per-block functions, without Dask -------------------------------------------------------


def test_each_defect_is_rejected_with_its_line_and_reason_and_valid_lines_are_kept():
    data, expected, valid = malformed_corpus()
    parsed = parse_review_block(LineBlock(source(), 1, data), max_line_bytes=MAX_LINE)

    rejects = parsed.rejects.to_pylist()
    assert {r["line"]: r["reason"] for r in rejects} == expected
    assert parsed.table.column("src_line").to_pylist() == valid
    assert parsed.table.num_rows + len(rejects) == parsed.lines == data.count(b"\n")
    assert all(len(r["raw"]) <= 1000 for r in rejects)
    assert rejects[0]["raw"] == DEFECTS[0][0].decode()
    assert parsed.table.schema == INTERACTIONS and parsed.rejects.schema == REJECTS


@pytest.mark.parametrize("how", ["absent", "null"])
@pytest.mark.parametrize("path", ["fast", "per-line"])
def test_a_review_without_an_optional_field_is_kept_with_a_null(how, path):
    # The benchmark scripts keep such a review (they read only user, item, rating and time).
    lines = 3000 if path == "fast" else 60
    records = [review(i) for i in range(lines)]
    changed = {}
    for n, key in enumerate(OPTIONAL_REVIEW_KEYS):
        i = 10 + n * 7
        records[i] = without(records[i], key) if how == "absent" else {**records[i], key: None}
        changed[i + 1] = key
    records[5] = {**records[5], "user_id": None}  # a required one still rejects
    data = jsonl(records)
    expected = [(6, "missing_field:user_id")]
    if path == "per-line":  # a syntax error keeps the fast reader off this small block
        data += b'{"rating": 5.0, "broken\n'
        expected.append((lines + 1, "invalid_json"))
    parsed = parse_review_block(LineBlock(source(), 1, data), max_line_bytes=MAX_LINE)

    assert [(r["line"], r["reason"]) for r in parsed.rejects.to_pylist()] == expected
    rows = {row["src_line"]: row for row in parsed.table.to_pylist()}
    assert len(rows) == lines - 1
    for line, key in changed.items():
        row, record = rows[line], records[line - 1]
        assert row[OPTIONAL_REVIEW_KEYS[key]] is None
        assert (row["user_id"], row["parent_asin"], row["timestamp"]) == (record["user_id"], record["parent_asin"], record["timestamp"])
        others = [column for other, column in OPTIONAL_REVIEW_KEYS.items() if other != key]
        assert all(row[column] is not None for column in others)


@pytest.mark.parametrize("content,reason", DEFECTS, ids=[reason for _, reason in DEFECTS])
def test_a_lone_defect_in_a_large_clean_block_is_caught(content, reason):
    # Large enough that the fast reader runs on the block first: its checks must catch the defect.
    clean = [review(i) for i in range(600)]
    data = jsonl(clean[:300]) + content + b"\n" + jsonl(clean[300:])
    parsed = parse_review_block(LineBlock(source(), 1, data), MAX_LINE)
    assert [(r["line"], r["reason"]) for r in parsed.rejects.to_pylist()] == [(301, reason)]
    assert parsed.table.num_rows == 600


def test_fast_path_and_line_by_line_path_give_identical_rows():
    records = [review(i) for i in range(1200)]
    clean = parse_review_block(LineBlock(source(), 1, jsonl(records)), MAX_LINE)
    # One bad line in the middle sends its neighbourhood through json.loads line by line.
    dirty_lines = jsonl(records[:600]) + b"{broken\n" + jsonl(records[600:])
    dirty = parse_review_block(LineBlock(source(), 1, dirty_lines), MAX_LINE)

    assert dirty.rejects.column("line").to_pylist() == [601]
    columns = [c for c in INTERACTIONS.names if c != "src_line"]
    assert dirty.table.select(columns).equals(clean.table.select(columns))
    assert dirty.table.column("src_line").to_pylist() == list(range(1, 601)) + list(range(602, 1202))
    first = clean.table.slice(7, 1).to_pylist()[0]
    assert first["rating"] == float(records[7]["rating"]) and isinstance(first["rating"], float)


def test_many_scattered_defects_keep_every_valid_row_in_order():
    records = [review(i) for i in range(1000)]
    bad = {i: ("missing_field:user_id" if i % 3 else "wrong_type:rating") for i in range(5, 1000, 37)}
    lines = [
        json.dumps(review(i, user_id=None) if i in bad and i % 3 else review(i, rating=float("nan")) if i in bad else r).encode()
        for i, r in enumerate(records)
    ]
    parsed = parse_review_block(LineBlock(source(), 1, b"\n".join(lines)), MAX_LINE)
    assert {r["line"] - 1: r["reason"] for r in parsed.rejects.to_pylist()} == bad
    clean = parse_review_block(LineBlock(source(), 1, jsonl(records)), MAX_LINE).table
    assert parsed.table.equals(clean.filter(pa.array([i not in bad for i in range(1000)])))


def test_html_is_stripped_from_review_text():
    texts = pa.array(["plain", "a<br />b<BR>c<br/>d", "<p>x &amp; y</p> &lt;b&gt;", "I <3 it, 5 < 6", "AT&T", "<!-- note -->ok", ""])
    assert strip_html(texts).to_pylist() == ["plain", "a\nb\nc\nd", "x & y <b>", "I <3 it, 5 < 6", "AT&T", "ok", ""]
    parsed = parse_review_block(
        LineBlock(source(), 1, jsonl([review(1, text="Great<br /><br />&quot;really&quot; <b>good</b>")])), MAX_LINE
    )
    assert parsed.table.column("review_text").to_pylist() == ['Great\n\n"really" good']


def test_metadata_is_normalised_from_raw_and_hub_conversion_forms():
    raw_row = meta_values(meta(1))
    hub_row = meta_values(meta(1, price=str(4.5), details=json.dumps({"Brand": "Shop", "Weight": "1 lb"})))
    assert raw_row == hub_row
    row = dict(zip(ITEMS.names, raw_row))
    assert row["description"] == "Line one.\nLine two."
    assert json.loads(row["details"]) == {"Brand": "Shop", "Weight": "1 lb"}
    assert [parse_price(p) for p in ("None", "", "\u2014", " 12.99 ", "$1,299.00", None, 7, float("nan"))] == [
        None,
        None,
        None,
        12.99,
        1299.0,
        None,
        7.0,
        None,
    ]
    block = jsonl(
        [
            meta(1),
            meta(2, price="about five"),
            meta(3, categories="Snacks"),
            without(meta(4), "parent_asin"),
            meta(5, features=None, description=[]),
        ]
    )
    parsed = parse_meta_block(LineBlock(source("meta"), 1, block), MAX_LINE)
    assert {r["line"]: r["reason"] for r in parsed.rejects.to_pylist()} == {
        2: "wrong_type:price",
        3: "wrong_type:categories",
        4: "missing_field:parent_asin",
    }
    assert parsed.table.column("features").to_pylist() == [["Fresh", "Organic"], []]
    assert parsed.table.column("description").to_pylist() == ["Line one.\nLine two.", None]


def meta_corpus() -> tuple[list[bytes], dict[int, str]]:
    """Metadata lines in every form the fast reader meets, with the lines json.loads rejects."""
    nested_details = {"Brand": "Caf\u00e9 \u2615", "Size": {"oz": 12, "ml": 355.0}, "Tags": ["a", "b"], "Empty": None, "Price": 1.50}
    odd = [
        meta(1000, details=nested_details),
        meta(1001, title='The "best" filters \\ mugs', details={"Brand": 'Quote"d'}),  # backslashes: decoded whole
        meta(1002, categories=["Grocery", "details"]),  # "details" as a value, not a key
        meta(1003, images=[{"details": {"x": 1}}]),  # a nested "details" key before the real one
        without(meta(1004, images=[{"details": {"x": 1}}]), "details"),  # only a nested one
        meta(1005, details=None),
        without(meta(1006), "details"),
        meta(1007, details={}),
        meta(1008, description=[], features=None, categories=None, price=None, average_rating=None, rating_number=None),
        meta(1009, description=[""], title=None, store=None, main_category=None),
        meta(1010, price=7, average_rating=4),
        meta(1011, details={"Brand": "Ã©tÃ©", "Emoji": "\U0001f600"}),
    ]
    lines = [json.dumps(r, ensure_ascii=i % 2 == 0).encode() for i, r in enumerate([meta(i) for i in range(400)] + odd)]
    lines.append(json.dumps(meta(1012, details={"A": 1}), separators=(",", ":")).encode())  # compact
    lines.append(json.dumps(meta(1013)).replace('"details": {', '"details"  :  {').encode())
    # The top-level key spelled with an escape, a nested one spelled plainly: found by decoding.
    lines.append(
        json.dumps(meta(1014, images=[{"details": {"x": 1}}])).replace('"details": {"Brand"', '"det\\u0061ils": {"Brand"').encode()
    )
    rejected = {
        len(lines) + 1: (json.dumps(meta(1020, categories=["ok", None])).encode(), "wrong_type:categories"),
        len(lines) + 2: (json.dumps(meta(1021, details={"Brand": "bad \udc80"})).encode(), "invalid_utf8:details"),
        len(lines) + 3: (json.dumps(meta(1022, parent_asin="")).encode(), "missing_field:parent_asin"),
        len(lines) + 4: (json.dumps(meta(1023, rating_number=2**40)).encode(), "wrong_type:rating_number"),
        len(lines) + 5: (json.dumps(meta(1024, title="x")).encode().replace(b'"x"', b'"bad \xff"'), "invalid_utf8:title"),
    }
    lines.extend(content for content, _ in rejected.values())
    lines.extend(json.dumps(meta(i)).encode() for i in range(2000, 2400))
    # Forms the fast reader cannot hold (Hub strings, a float count): their slices go line by line.
    lines.append(json.dumps(meta(1030, details=json.dumps({"Brand": "Hub"}), price="$4.99")).encode())
    lines.append(json.dumps(meta(1031, rating_number=12.0, description="one string")).encode())
    return lines, {line: reason for line, (_, reason) in rejected.items()}


def test_metadata_fast_path_equals_the_per_line_path():
    lines, expected_rejects = meta_corpus()
    parsed = parse_meta_block(LineBlock(source("meta"), 1, b"\n".join(lines) + b"\n"), MAX_LINE)

    # The reference: each line through json.loads and meta_values, the documented semantics.
    reference, reasons = [], {}
    for number, line in enumerate(lines, start=1):
        try:
            reference.append(dict(zip(ITEMS.names, meta_values(json.loads(line.decode("utf-8", "surrogateescape"))))))
        except RecordRejected as bad:
            reasons[number] = bad.reason
    assert reasons == expected_rejects
    assert {r["line"]: r["reason"] for r in parsed.rejects.to_pylist()} == expected_rejects
    assert parsed.table.to_pylist() == pa.Table.from_pylist(reference, schema=ITEMS).to_pylist()
    assert parsed.table.num_rows + parsed.rejects.num_rows == len(lines)
    by_asin = {row["parent_asin"]: row for row in parsed.table.to_pylist()}
    assert json.loads(by_asin["P000001000"]["details"]) == {
        "Brand": "Caf\u00e9 \u2615",
        "Size": {"oz": 12, "ml": 355.0},
        "Tags": ["a", "b"],
        "Empty": None,
        "Price": 1.5,
    }
    assert by_asin["P000001003"]["details"] == json.dumps(meta(0)["details"], ensure_ascii=False)
    assert by_asin["P000001014"]["details"] == by_asin["P000001003"]["details"]
    assert by_asin["P000001004"]["details"] is None and by_asin["P000001007"]["details"] == "{}"
    assert json.loads(by_asin["P000001030"]["details"]) == {"Brand": "Hub"} and by_asin["P000001030"]["price"] == 4.99


def test_the_bulk_metadata_reader_vouches_for_every_record_but_the_defective():
    # Records in the raw files' own form need no line-by-line decoding; the defects it can read
    # it leaves to that path (invalid UTF-8, even escaped, fails the bulk read of its slice).
    corpus, rejects = meta_corpus()
    numbered = [
        (number, line) for number, line in enumerate(corpus[:-2], start=1) if not rejects.get(number, "").startswith("invalid_utf8")
    ]
    lines = [line for _, line in numbered]
    data = b"\n".join(lines) + b"\n"
    raw = pajson.read_json(
        pa.BufferReader(data), parse_options=pajson.ParseOptions(explicit_schema=META_READER.schema, unexpected_field_behavior="ignore")
    )
    starts = np.array([0, *np.cumsum([len(line) + 1 for line in lines])[:-1]])
    table, vouched = META_READER.finish(raw, LineSlice(data, starts, starts + [len(line) for line in lines], 0, len(lines)))

    defective = [number in rejects for number, _ in numbered]
    assert vouched.tolist() == [not bad for bad in defective] and sum(defective) == 3
    kept = [line for line, ok in zip(lines, vouched) if ok]
    assert table.filter(pa.array(vouched)).to_pylist() == [dict(zip(ITEMS.names, meta_values(json.loads(line)))) for line in kept]


def test_cut_lines_numbers_lines_bounds_blocks_and_sets_long_lines_aside():
    lines = [f'{{"n": {i}, "pad": "{"x" * (i % 97)}"}}'.encode() for i in range(500)]
    lines[123] = b"y" * 10_000  # longer than max_line_bytes, arriving in many chunks
    data = b"\n".join(lines)  # no newline after the last line: it is still a line
    chunks = [data[i : i + 300] for i in range(0, len(data), 300)]
    blocks = list(cut_lines(chunks, source(), 1, block_size=2000, max_line_bytes=5000))

    seen: dict[int, bytes] = {}
    for block in blocks:
        assert len(block.data) <= 2000 + 300 + 5000
        for offset, line in enumerate(block.data.split(b"\n")[: block.data.count(b"\n") + (not block.data.endswith(b"\n"))]):
            seen[block.first_line + offset] = line
        for line, reason, raw in block.set_aside:
            assert (line, reason, raw) == (124, "line_too_long", "y" * 1000)
            seen[line] = b"<set aside>"
    assert len(blocks) > 5
    assert sorted(seen) == list(range(1, 501))
    assert all(seen[i + 1] == lines[i] for i in range(500) if i != 123)


def test_truncated_gzip_tail_is_reported_and_complete_lines_are_kept(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    whole = gzip.compress(jsonl([review(i) for i in range(200)]))
    path.write_bytes(whole[: len(whole) * 2 // 3])
    gz = SourceFile(str(path), str(path), "reviews", 0, "gzip", path.stat().st_size)
    chunks = list(GzipChunks(gz, chunk_size=1024))
    assert chunks[-1] == StreamEnd("truncated_gzip", path.stat().st_size)
    blocks = list(cut_lines(chunks, gz, 1, 4096, MAX_LINE))
    parsed = [parse_review_block(b, MAX_LINE) for b in blocks]
    kept = sum(p.table.num_rows for p in parsed)
    rejects = [r for p in parsed for r in p.rejects.to_pylist()]
    assert 50 < kept < 200
    assert [(r["line"], r["reason"]) for r in rejects] == [(kept + 1, "truncated_gzip")]
    assert rejects[0]["raw"].startswith(f"[truncated_gzip at byte {path.stat().st_size:,} of the compressed file] ")

    def stream(raw: bytes) -> list[bytes | StreamEnd]:
        path = tmp_path / "stream.jsonl.gz"
        path.write_bytes(raw)
        return list(GzipChunks(SourceFile(str(path), str(path), "reviews", 0, "gzip", len(raw)), chunk_size=512))

    one, two = gzip.compress(jsonl([review(1)])), gzip.compress(jsonl([review(2)]))
    assert b"".join(stream(one + two + b"\x00" * 64)) == jsonl([review(1), review(2)])  # members, zero padding
    garbage = stream(one + b"trailing garbage")
    assert b"".join(garbage[:-1]) == jsonl([review(1)])
    assert garbage[-1].reason == "corrupt_gzip" and garbage[-1].offset == len(one) + 1  # zlib reads the 2-byte magic at once
    damaged = bytearray(gzip.compress(jsonl([review(i) for i in range(50)]), mtime=0))
    damaged[len(damaged) // 2 : len(damaged) // 2 + 8] = b"\xff" * 8
    end = stream(bytes(damaged))[-1]
    assert isinstance(end, StreamEnd) and end.reason == "corrupt_gzip" and len(damaged) // 2 <= end.offset < len(damaged)


def test_gzip_blocks_prepared_ahead_equal_the_plain_cut_and_stop_cleanly(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl([review(i) for i in range(300)])))
    gz = SourceFile(str(path), str(path), "reviews", 0, "gzip", path.stat().st_size)
    ahead = list(gzip_blocks_ahead(gz, 4096, MAX_LINE))
    direct = list(cut_lines(GzipChunks(gz, chunk_size=4096), gz, 1, 4096, MAX_LINE))
    assert [(b.first_line, b.data) for b in ahead] == [(b.first_line, b.data) for b in direct]
    assert sum(b.source_bytes for b in ahead) == path.stat().st_size
    unfinished = gzip_blocks_ahead(gz, 1024, MAX_LINE, ahead=1)
    next(unfinished)
    unfinished.close()  # the producer thread stops instead of waiting forever on a full queue


def test_domain_comes_from_file_names():
    assert domain_from_name("data/Grocery_and_Gourmet_Food.jsonl.gz") == "Grocery_and_Gourmet_Food"
    assert domain_from_name("file:///x/meta_Office_Products.jsonl") == "Office_Products"
    assert domain_from_name("conv/raw_review_All_Beauty/full-00000-of-00001.parquet") == "All_Beauty"
    assert domain_from_name("hf://datasets/McAuley-Lab/Amazon-Reviews-2023/raw/meta_categories/meta_Books.jsonl") == "Books"


def test_malformed_gzip_corpus_end_to_end(tmp_path, dask_client):
    data, expected, valid = malformed_corpus()
    path = tmp_path / "Grocery_and_Gourmet_Food.jsonl.gz"
    tail = json.dumps(review(500)).encode()[:40]
    whole = gzip.compress(data + tail)
    path.write_bytes(whole[:-8])  # the trailer is lost: the last (partial) line cannot be trusted
    total_lines = data.count(b"\n") + 1

    entry = run_ingest(tmp_path / "run", IngestSettings(reviews=[str(path)], block_size=2048, max_line_bytes=MAX_LINE), dask_client)

    rejects = rows(tmp_path / "run", "rejects")
    assert {r["line"]: r["reason"] for r in rejects} == {**expected, total_lines: "truncated_gzip"}
    assert {r["source_file"] for r in rejects} == {str(path)}
    assert [r["src_line"] for r in rows(tmp_path / "run", "interactions")] == valid
    assert entry["rows_in"] == total_lines == entry["rows_out"]["interactions"] + entry["rows_out"]["rejects"]
    assert entry["files"][0]["kept"] + entry["files"][0]["rejected"] == entry["files"][0]["lines"] == total_lines
    assert entry["rejects_by_reason"]["missing_field:user_id"] == 3  # absent, null (twice)
    assert entry["domain"] == "Grocery_and_Gourmet_Food" and entry["blocks"] > 1


def test_hub_parquet_conversion_with_string_price_and_details(tmp_path, dask_client):
    reviews_dir = tmp_path / "raw_review_All_Beauty"
    meta_dir = tmp_path / "raw_meta_All_Beauty"
    reviews_dir.mkdir()
    meta_dir.mkdir()
    records = [review(i) for i in range(30)]
    records[4] = review(4, user_id=None)
    review_table = pa.Table.from_pylist(records)
    pq.write_table(review_table, reviews_dir / "full-00000-of-00001.parquet", row_group_size=8)
    items = [meta(i) for i in range(6)] + [meta(2, title="Later duplicate")]
    hub_form = [{**m, "price": str(m["price"]) if i != 1 else "None", "details": json.dumps(m["details"])} for i, m in enumerate(items)]
    pq.write_table(pa.Table.from_pylist(hub_form), meta_dir / "full-00000-of-00001.parquet", row_group_size=3)

    (meta_dir / ".gitattributes").write_text("*.parquet filter=lfs\n")  # a folder input skips dot files
    settings = IngestSettings(reviews=[str(reviews_dir / "*.parquet")], meta=[str(meta_dir)], block_size=1024)
    entry = run_ingest(tmp_path / "run", settings, dask_client)

    interactions = rows(tmp_path / "run", "interactions")
    assert [r["src_line"] for r in interactions] == [n for n in range(1, 31) if n != 5]
    assert interactions[0]["rating"] == float(records[0]["rating"])
    items_out = rows(tmp_path / "run", "items")
    assert [i["parent_asin"] for i in items_out] == [f"P{i:09d}" for i in range(6)]
    assert items_out[1]["price"] is None and items_out[0]["price"] == 3.5
    assert items_out[2]["title"] == "Item 2"
    assert json.loads(items_out[0]["details"]) == {"Brand": "Shop", "Weight": "1 lb"}
    reasons = {(r["source_file"].rsplit("/", 2)[-2], r["line"]): r["reason"] for r in rows(tmp_path / "run", "rejects")}
    assert reasons == {("raw_review_All_Beauty", 5): "missing_field:user_id", ("raw_meta_All_Beauty", 7): "duplicate_parent_asin"}
    assert entry["domain"] == "All_Beauty"
    assert entry["rows_out"] == {"interactions": 29, "items": 6, "rejects": 2}


def test_globs_and_file_urls_number_files_in_sorted_order(tmp_path, dask_client):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "Office_Products.part2.jsonl").write_bytes(jsonl([review(i) for i in range(5, 8)]))
    (tmp_path / "Office_Products.part1.jsonl").write_bytes(jsonl([review(i) for i in range(5)]))
    (tmp_path / "meta_Office_Products.jsonl").write_bytes(jsonl([meta(1)]))
    settings = IngestSettings(
        reviews=[str(tmp_path / "**" / "Office_Products.part*.jsonl")],
        meta=[f"file://{tmp_path}/meta_*.jsonl"],
        domain="Office_Products",
    )
    entry = run_ingest(tmp_path / "run", settings, dask_client)

    files = [(f["kind"], f["file"], f["lines"]) for f in entry["files"]]
    assert files == [
        ("reviews", str(tmp_path / "Office_Products.part1.jsonl"), 5),
        ("reviews", str(tmp_path / "b" / "Office_Products.part2.jsonl"), 3),
        ("meta", f"file://{tmp_path}/meta_Office_Products.jsonl", 1),
    ]
    assert [(r["src_file"], r["src_line"]) for r in rows(tmp_path / "run", "interactions")] == [(0, n) for n in range(1, 6)] + [
        (1, n) for n in range(1, 4)
    ]
    assert len(rows(tmp_path / "run", "items")) == 1

    with pytest.raises(InputError, match="no reviews file matches"):
        expand_inputs([str(tmp_path / "nothing*.jsonl")], "reviews", "x/y")
    with pytest.raises(InputError, match="pass --domain"):
        resolve_sources(
            IngestSettings(reviews=[str(tmp_path / "Office_Products.part1.jsonl")], meta=[str(tmp_path / "meta_Office_Products.jsonl")])
        )


def test_real_sample_is_ingested_whole(tmp_path, dask_client, real_reviews):
    entry = run_ingest(tmp_path / "run", IngestSettings(reviews=[str(real_reviews)], domain="All_Beauty"), dask_client)

    assert entry["rows_out"] == {"interactions": 2403, "items": 0, "rejects": 0}
    table = read_table(tmp_path / "run" / "interactions")
    assert table.schema == INTERACTIONS
    assert table.column("src_line").to_pylist() == list(range(1, 2404))
    with gzip.open(real_reviews, "rt") as handle:
        originals = [json.loads(line) for line in handle]
    assert table.column("user_id").to_pylist() == [r["user_id"] for r in originals]
    assert table.column("timestamp").to_pylist() == [r["timestamp"] for r in originals]
    assert sum("<br" in r["text"] for r in originals) > 0
    assert not any("<br" in text for text in table.column("review_text").to_pylist())
    assert sum(r["asin"] != r["parent_asin"] for r in table.to_pylist()) > 0
    assert read_table(tmp_path / "run" / "items").num_rows == 0


@pytest.mark.slow
def test_output_is_the_same_for_any_block_size_worker_count_and_compression(tmp_path, dask_client):
    data, _expected, _valid = malformed_corpus()
    body = (
        jsonl([review(i) for i in range(300)])
        + data
        + b'{"rating": 5, "pad": "'
        + b"z" * 6000
        + b'"}\n'
        + jsonl([review(i) for i in range(300, 340)])
    )
    plain = tmp_path / "plain" / "Grocery_and_Gourmet_Food.jsonl"
    packed = tmp_path / "gz" / "Grocery_and_Gourmet_Food.jsonl.gz"
    plain.parent.mkdir()
    packed.parent.mkdir()
    plain.write_bytes(body)
    packed.write_bytes(gzip.compress(body))
    for folder in (plain.parent, packed.parent):
        (folder / "meta_Grocery_and_Gourmet_Food.jsonl").write_bytes(jsonl([meta(i) for i in range(40)] + [meta(3)]))

    def ingest(path: Path, block_size: int, client: object, name: str) -> dict[str, pa.Table]:
        settings = IngestSettings(reviews=[str(path)], meta=[str(path.parent / "meta_*")], block_size=block_size, max_line_bytes=MAX_LINE)
        entry = run_ingest(tmp_path / name, settings, client)
        assert entry["rows_in"] == body.count(b"\n") + 41
        return {t: read_table(tmp_path / name / t) for t in ("interactions", "items", "rejects")}

    reference = ingest(plain, 64 * 1024 * 1024, dask_client, "one-block")
    assert reference["rejects"].num_rows == len(DEFECTS) + 2  # plus the long line and the duplicate item
    from pipeline.cluster import dask_client as make_client

    with make_client(workers=1) as single:
        assert ingest(packed, 4096, single, "gz-small-blocks-1-worker")["interactions"].equals(reference["interactions"])
    # Blocks smaller than the 6,000-byte line: it crosses block boundaries and is set aside.
    for name, path, block_size in (("plain-small-blocks", plain, 4096), ("gz-small-blocks", packed, 5000)):
        result = ingest(path, block_size, dask_client, name)
        assert result["interactions"].equals(reference["interactions"]), name
        assert result["items"].equals(reference["items"]), name
        columns = ["line", "reason", "raw"]
        assert result["rejects"].select(columns).equals(reference["rejects"].select(columns)), name


# -- the command -----------------------------------------------------------------------------


@pytest.fixture
def rrec() -> typer.Typer:
    """The ``ingest`` command exactly as ``rrec`` registers it."""
    return ingest_app()


def test_cli_rerun_skips_unchanged_inputs_and_force_reruns(tmp_path, dask_client, rrec):
    reviews_path = tmp_path / "Grocery_and_Gourmet_Food.jsonl"
    reviews_path.write_bytes(jsonl([review(i) for i in range(20)]))
    args = ["ingest", "--run", str(tmp_path / "run"), "--reviews", str(reviews_path), "--scheduler", dask_client.scheduler.address]
    runner = CliRunner()

    first = runner.invoke(rrec, args)
    assert first.exit_code == 0, first.output
    assert "20 interactions" in first.output and "up to date" not in first.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    finished = manifest["stages"]["ingest"]["finished_at"]
    fingerprint = manifest["stages"]["ingest"]["fingerprint"]

    again = runner.invoke(rrec, [*args, "--block-size", "4096"])  # block size cannot change the output
    assert again.exit_code == 0 and "up to date" in again.output
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["ingest"]["finished_at"] == finished

    forced = runner.invoke(rrec, [*args, "--force"])
    assert forced.exit_code == 0 and "up to date" not in forced.output
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["ingest"]["fingerprint"] == fingerprint

    reviews_path.write_bytes(jsonl([review(i) for i in range(21)]))
    changed = runner.invoke(rrec, args)
    assert changed.exit_code == 0 and "21 interactions" in changed.output


def test_cli_missing_input_is_one_clear_line(tmp_path, rrec):
    result = CliRunner().invoke(rrec, ["ingest", "--run", str(tmp_path / "run"), "--reviews", str(tmp_path / "absent.jsonl")])
    assert result.exit_code == 2
    assert "no reviews file matches" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_hub_domain_offline_gives_one_clear_line(tmp_path, rrec, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = CliRunner().invoke(rrec, ["ingest", "--run", str(tmp_path / "run"), "--reviews", "hub:All_Beauty"])

    assert result.exit_code == 2
    message = [line for line in result.output.splitlines() if line.strip()]
    assert len(message) == 1 and message[0].startswith("error:")
    assert "raw/review_categories/All_Beauty.jsonl" in message[0] and "HF_HUB_OFFLINE" in message[0]


def test_cli_reads_its_settings_from_the_config_file(tmp_path, dask_client, rrec):
    reviews_path = tmp_path / "Office_Products.jsonl"
    reviews_path.write_bytes(jsonl([review(i) for i in range(12)]) + b"not json\n")
    config = tmp_path / "rrec.yaml"
    config.write_text(f"ingest:\n  reviews: {reviews_path}\n  block_size: 4096\n  domain: Office\n")

    result = CliRunner().invoke(
        rrec, ["ingest", "--run", str(tmp_path / "run"), "--config", str(config), "--scheduler", dask_client.scheduler.address]
    )

    assert result.exit_code == 0, result.output
    assert "ingest Office: 13 lines -> 12 interactions, 0 items, 1 rejects" in result.output
    assert "rejects by reason: invalid_json 1" in result.output
    entry = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["ingest"]
    assert entry["config"]["block_size"] == 4096 and entry["rejects_by_reason"] == {"invalid_json": 1}
