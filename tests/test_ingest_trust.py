"""rrec ingest against hostile and damaged input: the valid-record bounds, damaged compressed
files, provenance of the input, and resuming a killed ingest."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import time
import zlib

import pytest
import typer
from ingest_fixtures import (
    MAX_LINE,
    REPO,
    ingest_app,
    jsonl,
    meta,
    review,
    rows,
    source,
)
from kill_points import kill_when
from sequences_fixtures import tricky_reviews
from typer.testing import CliRunner

from core.hashing import hash_file
from core.records import EARLIEST_TIMESTAMP_MS, FUTURE_SLACK_MS, rating_in_range, review_bounds, timestamp_in_range, valid_parent_asin
from core.stage import RunDir
from core.tables import read_table
from pipeline.ingest import (
    IngestSettings,
    LineBlock,
    SourceFile,
    parse_meta_block,
    parse_review_block,
    run_ingest,
)
from pipeline.sample import SampleSettings, generate_domain


@pytest.fixture
def rrec() -> typer.Typer:
    """The ``ingest`` command exactly as ``rrec`` registers it."""
    return ingest_app()


# -- the valid-record definition (core/records.py) ---------------------------------------------

NOW_MS = int(time.time() * 1000)
OUT_OF_RANGE: list[tuple[dict, str]] = [
    ({"rating": 7.5}, "out_of_range:rating"),
    ({"rating": -1}, "out_of_range:rating"),
    ({"rating": 0.0}, "out_of_range:rating"),
    ({"timestamp": -5}, "out_of_range:timestamp"),
    ({"timestamp": 1_500_000_000}, "out_of_range:timestamp"),  # seconds, not milliseconds
    ({"timestamp": NOW_MS + FUTURE_SLACK_MS + 3_600_000}, "out_of_range:timestamp"),  # tomorrow plus an hour
    ({"timestamp": 253_402_300_799_000}, "out_of_range:timestamp"),  # the year 9999
    ({"parent_asin": "b0-lower"}, "invalid_id:parent_asin"),
    ({"parent_asin": "B0123"}, "invalid_id:parent_asin"),
]
IN_RANGE = [{"rating": 1}, {"rating": 5.0}, {"timestamp": EARLIEST_TIMESTAMP_MS}, {"timestamp": NOW_MS}, {"parent_asin": "0316769177"}]


@pytest.mark.parametrize("path", ["fast", "per-line"])
def test_values_outside_the_valid_record_are_rejected_on_both_paths(path):
    lines = [review(i) for i in range(600 if path == "fast" else 40)]
    expected = {}
    for n, (change, reason) in enumerate(OUT_OF_RANGE):
        lines[3 + 2 * n] = review(3 + 2 * n, **change)
        expected[4 + 2 * n] = reason
    for n, change in enumerate(IN_RANGE):
        lines[30 + n] = review(30 + n, **change)
    data = jsonl(lines)
    if path == "per-line":  # a syntax error keeps the fast reader off this small block
        data += b"{broken\n"
        expected[len(lines) + 1] = "invalid_json"
    parsed = parse_review_block(LineBlock(source(), 1, data), MAX_LINE)

    assert {r["line"]: r["reason"] for r in parsed.rejects.to_pylist()} == expected
    kept = parsed.table.to_pylist()
    assert len(kept) == len(lines) - len(OUT_OF_RANGE)
    bounds = review_bounds()
    assert all(bounds["rating"].contains(r["rating"]) and bounds["timestamp"].contains(r["timestamp"]) for r in kept)
    assert all(valid_parent_asin(r["parent_asin"]) for r in kept)


def test_metadata_with_a_malformed_item_id_is_rejected_on_both_paths():
    lines = [meta(i) for i in range(600)] + [meta(900, parent_asin="not an id")]
    fast = parse_meta_block(LineBlock(source("meta"), 1, jsonl(lines)), MAX_LINE)
    slow = parse_meta_block(LineBlock(source("meta"), 1, jsonl(lines[-5:]) + b"{broken\n"), MAX_LINE)
    assert [(r["line"], r["reason"]) for r in fast.rejects.to_pylist()] == [(601, "invalid_id:parent_asin")]
    assert [r["reason"] for r in slow.rejects.to_pylist()] == ["invalid_id:parent_asin", "invalid_json"]
    assert fast.table.num_rows == 600 and slow.table.num_rows == 4


def test_real_and_generated_item_ids_match_the_pattern(real_reviews, tmp_path):
    # The pattern must not reject real data: every id of the real sample and of the generator fits.
    with gzip.open(real_reviews, "rt") as handle:
        assert all(valid_parent_asin(json.loads(line)["parent_asin"]) for line in handle)
    report = generate_domain(tmp_path, "Office_Products", SampleSettings(users=40))
    with open(report.reviews_path) as handle:
        assert all(valid_parent_asin(json.loads(line)["parent_asin"]) for line in handle)
    assert all(valid_parent_asin(r["parent_asin"]) for r in tricky_reviews(seed=3))  # the exactness corpus
    assert rating_in_range(1) and rating_in_range(5.0) and not rating_in_range(5.5)
    assert timestamp_in_range(NOW_MS) and not timestamp_in_range(1_600_000_000) and not timestamp_in_range(NOW_MS + 2 * FUTURE_SLACK_MS)


# -- damaged compressed input ------------------------------------------------------------------


def damaged_gzip(body: bytes, at: float = 0.5) -> tuple[bytes, int]:
    """``body`` gzip-compressed with bytes overwritten from ``at`` of its length on, so that
    zlib fails there; returns the file and how many whole lines decode before the damage."""
    packed = bytearray(gzip.compress(body, mtime=0))
    start = int(len(packed) * at)
    for shift in range(0, 4000, 7):
        trial = bytearray(packed)
        trial[start + shift : start + shift + 24] = bytes((37 * k + shift) % 256 for k in range(24))
        try:
            gzip.decompress(bytes(trial))
        except (OSError, EOFError, zlib.error):
            decoded = zlib.decompressobj(wbits=31).decompress(bytes(trial[: start + shift]))
            return bytes(trial), decoded.count(b"\n")
    raise AssertionError("no damage found that zlib detects")


@pytest.mark.parametrize("kind", ["reviews", "meta"])
def test_a_damaged_gzip_keeps_every_line_before_the_damage_whatever_the_block_size(tmp_path, dask_client, kind):
    records = [review(i) for i in range(3000)] if kind == "reviews" else [meta(i) for i in range(3000)]
    data, before = damaged_gzip(jsonl(records))
    path = tmp_path / ("Grocery.jsonl.gz" if kind == "reviews" else "meta_Grocery.jsonl.gz")
    path.write_bytes(data)
    reviews = path if kind == "reviews" else tmp_path / "Grocery.jsonl"
    if kind == "meta":
        reviews.write_bytes(jsonl([review(1)]))

    outcomes = []
    for block_size in (65536, IngestSettings.model_fields["block_size"].default, 1 << 30):
        run = tmp_path / f"run-{block_size}"
        settings = IngestSettings(reviews=[str(reviews)], meta=[str(path)] if kind == "meta" else [], block_size=block_size)
        entry = run_ingest(run, settings, dask_client)
        table = read_table(run / ("interactions" if kind == "reviews" else "items"))
        rejects = [r for r in rows(run, "rejects") if r["source_file"] == str(path)]
        outcomes.append((table, [(r["line"], r["reason"], r["raw"]) for r in rejects]))
        file_entry = next(f for f in entry["files"] if f["file"] == str(path))
        assert file_entry["kept"] + file_entry["rejected"] == file_entry["lines"]

    table, rejects = outcomes[0]
    assert all(other[0].equals(table) and other[1] == rejects for other in outcomes[1:])
    assert before > 1000 and table.num_rows >= before  # every line before the damage is kept
    key = "parent_asin"
    assert table.column(key).to_pylist()[:before] == [r[key] for r in records[:before]]
    corrupt = [r for r in rejects if r[1] == "corrupt_gzip"]
    assert len(corrupt) == 1 and corrupt[0][0] == table.num_rows + sum(r[1] != "corrupt_gzip" for r in rejects) + 1
    offset = int(re.search(r"at byte ([\d,]+) of", corrupt[0][2]).group(1).replace(",", ""))
    assert len(data) // 2 <= offset < len(data)


def test_a_truncated_metadata_file_keeps_its_complete_records(tmp_path, dask_client):
    body = jsonl([meta(i) for i in range(200)])
    plain, packed = tmp_path / "plain" / "meta_Shop.jsonl", tmp_path / "gz" / "meta_Shop.jsonl.gz"
    for path, content in ((plain, body[: len(body) - 40]), (packed, gzip.compress(body)[:-300])):
        path.parent.mkdir()
        path.write_bytes(content)
        (path.parent / "Shop.jsonl").write_bytes(jsonl([review(1)]))
        entry = run_ingest(
            tmp_path / f"run-{path.parent.name}", IngestSettings(reviews=[str(path.parent / "Shop.jsonl")], meta=[str(path)]), dask_client
        )
        items = read_table(tmp_path / f"run-{path.parent.name}" / "items")
        reasons = {r["reason"] for r in rows(tmp_path / f"run-{path.parent.name}", "rejects")}
        assert items.column("parent_asin").to_pylist() == [f"P{i:09d}" for i in range(items.num_rows)]
        assert reasons == ({"invalid_json"} if path is plain else {"truncated_gzip"})
        assert items.num_rows >= (199 if path is plain else 150)
        assert entry["lines_in"]["meta"] == items.num_rows + 1


# -- provenance --------------------------------------------------------------------------------


def test_generated_data_is_recorded_as_synthetic_and_local_files_as_real(tmp_path, dask_client):
    settings = SampleSettings(users=30, seed=7)
    generate_domain(tmp_path / "data", "Office_Products", settings)
    data = tmp_path / "data"
    synthetic = run_ingest(
        tmp_path / "synthetic",
        IngestSettings(reviews=[str(data / "Office_Products*")], meta=[str(data / "meta_Office_Products*")]),
        dask_client,
    )
    source = synthetic["source"]
    assert source["kind"] == "synthetic"
    assert source["synthetic"]["generator"] == "rrec sample" and source["synthetic"]["seed"] == 7
    assert [f["name"] for f in source["files"]] == [str(data / "Office_Products.jsonl"), str(data / "meta_Office_Products.jsonl")]
    assert [f["file"] for f in synthetic["files"]] == [f["name"] for f in source["files"]]  # the sidecar is no input

    real_copy = tmp_path / "real" / "Office_Products.jsonl"
    real_copy.parent.mkdir()
    real_copy.write_bytes((data / "Office_Products.jsonl").read_bytes())
    real = run_ingest(tmp_path / "real-run", IngestSettings(reviews=[str(real_copy)]), dask_client)["source"]
    assert real["kind"] == "real" and real["synthetic"] is None
    assert real["files"] == [
        {
            "name": str(real_copy),
            "role": "reviews",
            "bytes": real_copy.stat().st_size,
            "xxh3": hash_file(real_copy),
            "hub_repo": None,
            "hub_revision": None,
        }
    ]
    assert RunDir(tmp_path / "real-run").provenance()["ingest"]["source"] == real


@pytest.mark.slow
def test_hub_input_is_recorded_as_real_with_its_repository_and_revision(tmp_path):
    from hub_loopback import LoopbackHub, Repo

    body = jsonl([review(i) for i in range(25)])
    with LoopbackHub(token="t") as hub:
        repo = Repo("dataset", "McAuley-Lab/Amazon-Reviews-2023", private=False, created_at="2024-01-01T00:00:00.000Z")
        commit = repo.add_commit("main", "upload", {"raw/review_categories/All_Beauty.jsonl": body})
        hub.repos[("dataset", repo.repo_id)] = repo
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), NO_PROXY="127.0.0.1,localhost", PYTHONPATH=str(REPO))
        result = subprocess.run(
            [sys.executable, "-c", INGEST_ONLY, "ingest", "--run", str(tmp_path / "run"), "--reviews", "hub:All_Beauty", "--workers", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    source = RunDir(tmp_path / "run").entry("ingest")["source"]
    assert source["kind"] == "real" and source["synthetic"] is None
    [file] = source["files"]
    assert file["name"] == "hf://datasets/McAuley-Lab/Amazon-Reviews-2023/raw/review_categories/All_Beauty.jsonl"
    assert (file["hub_repo"], file["hub_revision"], file["bytes"]) == ("McAuley-Lab/Amazon-Reviews-2023", commit.oid, len(body))


# -- resuming a killed ingest ------------------------------------------------------------------

INGEST_ONLY = (
    "import sys, typer; from pipeline.ingest import register; app = typer.Typer(); "
    "app.callback()(lambda: None); register(app); app(sys.argv[1:])"
)
"""``rrec ingest`` exactly as registered, without the other subcommands."""


@pytest.mark.slow
def test_a_killed_ingest_resumes_from_its_complete_blocks(tmp_path, dask_client):
    body = jsonl([review(i) for i in range(3000)])
    reviews = tmp_path / "Grocery.jsonl.gz"
    reviews.write_bytes(gzip.compress(body))
    meta_path = tmp_path / "meta_Grocery.jsonl"
    meta_path.write_bytes(jsonl([meta(i) for i in range(300)] + [meta(5)]))
    args = ["--reviews", str(reviews), "--meta", str(meta_path), "--block-size", "16384", "--workers", "1"]
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", INGEST_ONLY, "ingest", "--run", str(run), *args]
    killed = kill_when(command, lambda: len(list(run.glob(".tmp-ingest-*/blocks/part-*.json"))) >= 5, env=env)
    assert killed, "the ingest ended before it could be killed"
    assert RunDir(run).entry("ingest") is None and list(run.glob(".tmp-ingest-*/interactions/*.parquet"))

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = run_ingest(
        tmp_path / "reference", IngestSettings(reviews=[str(reviews)], meta=[str(meta_path)], block_size=16384), dask_client
    )
    entry = RunDir(run).entry("ingest")
    assert entry["resumed_parts"] >= 5 and reference["resumed_parts"] == 0
    assert entry["outputs"] == reference["outputs"]  # the same part files, byte for byte
    assert entry["rows_out"] == reference["rows_out"] and entry["rejects_by_reason"] == {"duplicate_parent_asin": 1}
    assert not list(run.glob(".tmp-*"))


def test_a_resumed_attempt_reuses_blocks_only_when_they_were_cut_the_same_way(tmp_path):
    from pipeline.ingest.stage import _keep_blocks_of_same_plan

    tmp = tmp_path / ".tmp-ingest-resume-x"
    (tmp / "blocks").mkdir(parents=True)
    (tmp / "blocks" / "part-00000.json").write_text("{}")
    same = IngestSettings(reviews=["r.jsonl"], block_size=4096)
    _keep_blocks_of_same_plan(tmp, same)
    _keep_blocks_of_same_plan(tmp, same)
    assert (tmp / "blocks" / "part-00000.json").exists()  # same block size: the blocks stand
    _keep_blocks_of_same_plan(tmp, IngestSettings(reviews=["r.jsonl"], block_size=8192))
    assert [p.name for p in tmp.iterdir()] == ["block-plan.json"]  # other cuts: nothing is reused


def test_a_provenance_sidecar_that_is_not_json_is_refused_in_one_line(tmp_path, rrec):
    reviews_path = tmp_path / "Office_Products.jsonl"
    reviews_path.write_bytes(jsonl([review(1)]))
    (tmp_path / "Office_Products.jsonl.provenance.json").write_text("{not json")
    result = CliRunner().invoke(rrec, ["ingest", "--run", str(tmp_path / "run"), "--reviews", str(reviews_path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not a JSON provenance record" in lines[0]
    assert not (tmp_path / "run").exists()


def test_moving_staged_items_into_place_can_be_repeated_after_a_kill(tmp_path):
    from pipeline.ingest.items import ItemFolders, finalize_items
    from pipeline.ingest.tasks import TableDirs, write_block

    folders = ItemFolders(*(tmp_path / name for name in ("staged_items", "staged_rejects", "blocks", "items", "rejects")))
    for folder in (folders.staged_items, folders.staged_rejects, folders.blocks, folders.items, folders.rejects):
        folder.mkdir()
    dirs = TableDirs(str(folders.staged_items), str(folders.staged_rejects), str(folders.blocks))
    src = SourceFile("meta_X.jsonl", "meta_X.jsonl", "meta", 0, "jsonl", 0)
    blocks = [jsonl([meta(i) for i in range(5)]) + b"{broken\n", jsonl([meta(3), meta(7), meta(1)])]
    results, first = [], 1
    for part, data in enumerate(blocks):
        results.append(write_block(parse_meta_block(LineBlock(src, first, data), MAX_LINE), src, part, dirs))
        first += data.count(b"\n")

    def tables() -> tuple[list[str], list[tuple[int, str]]]:
        items = read_table(folders.items, "items").column("parent_asin").to_pylist()
        rejects = [(r["line"], r["reason"]) for r in read_table(folders.rejects, "rejects").to_pylist()]
        return items, rejects

    # Killed after the first part's rejects were written, before its items moved: repeat from there.
    (folders.staged_items / "part-00000.parquet").rename(tmp_path / "held")
    finalize_items(results[:1], [src], folders)
    (tmp_path / "held").rename(folders.staged_items / "part-00000.parquet")
    assert finalize_items(results, [src], folders) == {0: 2}
    once = tables()
    assert once == (
        [f"P{i:09d}" for i in (0, 1, 2, 3, 4, 7)],
        [(6, "invalid_json"), (7, "duplicate_parent_asin"), (9, "duplicate_parent_asin")],
    )
    finalize_items(results, [src], folders)  # and again after it completed: nothing changes
    assert tables() == once
