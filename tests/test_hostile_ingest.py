"""`rrec ingest` against the hostile corpus of tests/hostile/ingest/: every line of every file
ends kept or rejected with the reason its manifest names, and the counts add up to the lines in.

The corpus holds the malformed review and metadata lines (bad JSON, not an object, missing, null
or empty required fields, wrong types, out-of-range values, lone surrogates, bytes that are not
UTF-8, an over-long line, NUL bytes, a BOM, CRLF, duplicate keys, deep nesting, markup) and
damaged files (gzip damaged mid-stream, truncated, with trailing garbage or zero padding, a plain
metadata file cut mid-line, an empty file, a format ingest refuses).
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from core.reasons import check_reasons
from core.stage import RunDir
from core.tables import read_table
from pipeline.ingest import LineBlock, SourceFile, parse_meta_block, parse_review_block, register

CORPUS = Path(__file__).resolve().parent / "hostile" / "ingest"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text(encoding="utf-8"))
CASES = {case["file"]: case for case in MANIFEST["cases"]}
READABLE = [name for name, case in CASES.items() if "error" not in case]


def expected_outcomes(case: dict[str, Any]) -> dict[int, str]:
    """Line number -> ``kept`` or reject reason, from the manifest's ranges (``"1-3,7"``)."""
    outcomes = {}
    for outcome, ranges in case["expect"].items():
        for span in ranges.split(","):
            first, _, last = span.partition("-")
            for line in range(int(first), int(last or first) + 1):
                outcomes[line] = outcome
    return outcomes


@pytest.fixture
def rrec() -> typer.Typer:
    """The ``ingest`` command exactly as ``rrec`` registers it."""
    app = typer.Typer()

    @app.callback()
    def _main() -> None:
        """rrec"""

    register(app)
    return app


def ingest(rrec: typer.Typer, run: Path, reviews: Path, meta: Path | None, *options: str) -> Any:
    args = [
        "ingest",
        "--run",
        str(run),
        "--reviews",
        str(reviews),
        "--domain",
        "Hostile",
        "--max-line-bytes",
        str(MANIFEST["max_line_bytes"]),
    ]
    return CliRunner().invoke(rrec, [*args, *(["--meta", str(meta)] if meta else []), *options])


def readable_bytes(path: Path) -> bytes:
    """A file's bytes, decompressed as far as zlib can when it is gzip."""
    data = path.read_bytes()
    if not data.startswith(b"\x1f\x8b"):
        return data
    decoder, out = zlib.decompressobj(wbits=31), []
    for start in range(len(data)):  # byte by byte: a failing call's output is lost
        try:
            out.append(decoder.decompress(data[start : start + 1]))
        except zlib.error:
            break
    return b"".join(out)


def kept_lines(run: Path, case: dict[str, Any], path: Path) -> list[int]:
    """Input lines that became rows: ``src_line`` for reviews; for metadata (whose rows carry no
    line) the lines whose item id the ``items`` rows hold, in order."""
    if case["kind"] == "reviews":
        return read_table(run / "interactions").column("src_line").to_pylist()
    ids = read_table(run / "items").column("parent_asin").to_pylist()
    lines = readable_bytes(path).split(b"\n")
    first_line_of = {}
    for number, content in enumerate(lines, start=1):
        try:
            first_line_of.setdefault(json.loads(content)["parent_asin"], number)
        except (ValueError, KeyError, TypeError, RecursionError):
            continue
    return [first_line_of[item] for item in ids]


@pytest.mark.parametrize("block_size", ["default", "1024"])
@pytest.mark.parametrize("name", READABLE)
def test_every_line_ends_kept_or_rejected_with_its_expected_reason(name, block_size, tmp_path, dask_client, rrec):
    case = CASES[name]
    path = tmp_path / name
    shutil.copy(CORPUS / name, path)
    reviews = path if case["kind"] == "reviews" else CORPUS / MANIFEST["reviews_for_meta_cases"]
    meta = path if case["kind"] == "meta" else None
    options = ["--scheduler", dask_client.scheduler.address, *([] if block_size == "default" else ["--block-size", block_size])]
    result = ingest(rrec, tmp_path / "run", reviews, meta, *options)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output

    run = tmp_path / "run"
    expected = expected_outcomes(case)
    rejects = [r for r in read_table(run / "rejects").to_pylist() if r["source_file"] == str(path)]
    outcomes = {r["line"]: r["reason"] for r in rejects}
    assert len(outcomes) == len(rejects)  # one reject per line at most
    outcomes.update(dict.fromkeys(kept_lines(run, case, path), "kept"))
    assert outcomes == expected

    entry = RunDir(run).entry("ingest")
    [counts] = [f for f in entry["files"] if f["file"] == str(path)]
    assert counts["lines"] == len(expected) == counts["kept"] + counts["rejected"]
    assert counts["rejected"] == len(rejects)
    assert entry["rows_in"] == sum(f["lines"] for f in entry["files"])
    assert entry["rows_out"]["interactions"] + entry["rows_out"]["items"] + entry["rows_out"]["rejects"] == entry["rows_in"]
    check_reasons("ingest", entry["rejects_by_reason"])  # every recorded reason is registered
    damage = [r for r in rejects if r["reason"] in ("corrupt_gzip", "truncated_gzip")]
    assert all(r["raw"].startswith(f"[{r['reason']} at byte ") for r in damage)


@pytest.mark.parametrize("name", ["reviews_malformed.jsonl", "meta_malformed.jsonl"])
def test_each_malformed_line_has_the_same_outcome_inside_a_large_clean_block(name):
    # Inside a large clean block the fast Arrow reader runs first: its checks must give every
    # hostile line the outcome the per-line reference gives it in the corpus run above.
    case = CASES[name]
    expected = expected_outcomes(case)
    lines = (CORPUS / case["file"]).read_bytes().split(b"\n")[:-1]
    if case["kind"] == "reviews":
        clean, parse = (CORPUS / MANIFEST["reviews_for_meta_cases"]).read_bytes() * 600, parse_review_block
    else:
        clean, parse = (
            b"".join(json.dumps({"parent_asin": f"C{i:09d}", "title": "Clean"}).encode() + b"\n" for i in range(600)),
            parse_meta_block,
        )
    source = SourceFile("block.jsonl", "block.jsonl", case["kind"], 0, "jsonl", 0)
    for number, content in enumerate(lines, start=1):
        data = clean[: len(clean) // 2] + content + b"\n" + clean[len(clean) // 2 :]
        parsed = parse(LineBlock(source, 1, data), MANIFEST["max_line_bytes"])
        reasons = [r["reason"] for r in parsed.rejects.to_pylist()]
        outcome = reasons[0] if reasons else "kept"
        # Duplicates are found across blocks by the stage, after the per-block parse.
        wanted = "kept" if expected[number] == "duplicate_parent_asin" else expected[number]
        assert (number, outcome) == (number, wanted), case["what"][str(number)]
        assert parsed.table.num_rows + len(reasons) == 601


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if "error" in case])
def test_a_file_ingest_cannot_read_is_refused_in_one_line(name, tmp_path, rrec):
    result = ingest(rrec, tmp_path / "run", CORPUS / name, None)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and CASES[name]["error"] in lines[0]
    assert not (tmp_path / "run").exists()
