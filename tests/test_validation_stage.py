"""Validation engines, readable results, the shared valid-record bounds and the validate stage.

The Arrow row engine equals GX's pandas engine; Data Docs label severity and who computed each
expectation; the suites' bounds are core/records.py's; the stage records what it checked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from validation_fixtures import (
    DEFECTS,
    _good_rows,
    _write_table_only,
    write_run,
)

from core.schemas import FILTERED, INTERACTIONS
from core.stage import RunDir
from core.tables import write_part
from validation.runner import ValidateSettings, run_validation, suite_parameters, validate_table
from validation.suites import TABLES, load_suite_json


# -- the vectorised row engine equals GX's pandas engine ---------------------------------------------
def _comparable(summary: Any) -> list[dict[str, Any]]:
    """Expectation entries without who computed them; example values as text (GX writes a
    boolean example as "False" and a missing float as NaN, the Arrow engine as false / null)."""

    def value(v: Any) -> str:
        return "None" if v is None or (isinstance(v, float) and v != v) else str(v)

    entries = []
    for entry in summary.expectations:
        data = entry.to_json()
        data.pop("computed_by")
        data["unexpected_examples"] = [
            {k: value(v) for k, v in e.items()} if isinstance(e, dict) else value(e) for e in data["unexpected_examples"]
        ]
        entries.append(data)
    return entries


ROW_DEFECTS_BY_TABLE = {
    table: [name for name, (t, _) in DEFECTS.items() if t == table and not name.endswith(("_columns_match_schema", "_not_empty"))]
    for table in TABLES
}


@pytest.mark.slow
@pytest.mark.parametrize("table", TABLES)
def test_arrow_row_engine_gives_the_gx_engine_results(table: str, tmp_path: Path, dask_client) -> None:
    tables = json.loads(json.dumps(_good_rows()))
    for name in ROW_DEFECTS_BY_TABLE[table]:
        DEFECTS[name][1](tables)
    _write_table_only(tmp_path / "run", table, tables[table])
    run = RunDir(tmp_path / "run")
    parameters = suite_parameters(run, ValidateSettings())

    arrow = validate_table(run, table, dask_client, parameters, examples=3, row_engine="arrow")
    gx = validate_table(run, table, dask_client, parameters, examples=3, row_engine="gx")

    # Defects planted on the same row may hide each other (rating None, then 6.0); several remain.
    assert len({e.name for e in arrow.expectations if e.success is False}) >= 3
    assert _comparable(arrow) == _comparable(gx)
    row_scope = (
        {e.computed_by for e in arrow.expectations if e.scope == "row"},
        {e.computed_by for e in gx.expectations if e.scope == "row"},
    )
    assert row_scope == ({"rrec_dask"}, {"great_expectations"})


def test_arrow_regex_search_equals_python_re_on_hostile_text() -> None:
    from validation.row_checks import search
    from validation.suites import EMAIL_REGEX, PHONE_REGEX, URL_REGEX

    texts = [
        "Call 555-123-4567 now",
        "é555-123-4567 glued to a letter",  # \b differs between RE2 and re on non-ASCII text
        "\u00a0\u00a0",  # no-break spaces only: blank for re's \s, not for RE2's
        "\x0b\x1c",  # vertical tab, file separator: whitespace for re only
        "www.example.com/ü",
        "ＷＷＷ.example.com",
        "jane.doe@example.com",
        "plain rationale text",
        "",
        None,
    ]
    column = pa.array(texts, type=pa.string())
    for pattern in (r"\S", EMAIL_REGEX, PHONE_REGEX, URL_REGEX, r"(?<=a)b"):  # the last one RE2 cannot compile
        expected = [t is not None and re.search(pattern, t) is not None for t in texts]
        assert search(column, pattern).tolist() == expected, pattern


# -- readable results: severity and who computed each expectation ------------------------------------
def _page_text(run: Path, table: str) -> str:
    import html

    page = next((run / "validation" / "data_docs" / "validations" / table).rglob("*.html")).read_text()
    page = re.sub(r"<(script|style).*?</\1>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def test_data_docs_label_severity_and_who_computed_each_expectation(tmp_path: Path, dask_client) -> None:
    tables = _good_rows()
    tables["filtered"][0][0]["coherent"] = False  # critical, a row check
    tables["items"][0][0]["title"] = None  # warning, a row check
    tables["filtered"][1].append(dict(tables["filtered"][0][1]))  # critical, a whole-table check
    run = write_run(tmp_path / "Grocery", tables)

    summary = run_validation(run, dask_client, settings=ValidateSettings(row_engine="gx"))

    assert summary["critical_failures"] == 2 and summary["warning_failures"] == 1
    filtered, items = _page_text(run, "filtered"), _page_text(run, "items")
    assert (
        "[CRITICAL (blocks a release) · computed by Great Expectations (pandas, per partition)] Every released rationale was judged coherent."
        in filtered
    )
    assert (
        "[CRITICAL (blocks a release) · computed by rrec's Dask code (whole table)] Each example (user_id, split, target_parent_asin)"
        in filtered
    )
    assert (
        "[WARNING (reported, does not block a release) · computed by Great Expectations (pandas, per partition)] `title` is set on every row."
        in items
    )
    by_name = {e["name"]: e for s in summary["suites"].values() for e in s["expectations"]}
    assert by_name["filtered_coherent_true"]["computed_by"] == "great_expectations"
    assert by_name["filtered_one_rationale_per_example"]["computed_by"] == "rrec_dask"


def test_default_engine_labels_row_checks_as_computed_by_rrec(good_run: Path, dask_client) -> None:
    run_validation(good_run, dask_client)
    page = _page_text(good_run, "interactions")
    assert (
        "[CRITICAL (blocks a release) · computed by rrec's Dask code (vectorised, per partition)] Star ratings are between 1 and 5" in page
    )
    assert "[WARNING (reported, does not block a release) · computed by rrec's Dask code (vectorised, per partition)] Helpful votes" in page


# -- one definition of a valid record ------------------------------------------------------------------
def test_suites_critical_bounds_are_core_records_bounds(tmp_path: Path) -> None:
    from core.records import EARLIEST_TIMESTAMP_MS, PARENT_ASIN_PATTERN, RATING_MAX, RATING_MIN, latest_timestamp_ms

    expectations = {e["meta"]["name"]: e for t in TABLES for e in load_suite_json(t)["expectations"]}
    rating = expectations["interactions_rating_in_range"]
    assert (rating["meta"]["severity"], rating["kwargs"]["min_value"], rating["kwargs"]["max_value"]) == (
        "critical",
        RATING_MIN,
        RATING_MAX,
    )
    for name in ("interactions_parent_asin_format", "items_parent_asin_format", "sequences_target_parent_asin_format"):
        assert expectations[name]["kwargs"]["regex"] == PARENT_ASIN_PATTERN
    now_ms = 1_700_000_000_000
    parameters = suite_parameters(RunDir(tmp_path), ValidateSettings(), now_ms=now_ms)
    for name in ("interactions_timestamp_plausible", "sequences_target_timestamp_plausible"):
        kwargs = expectations[name]["kwargs"]
        assert parameters[kwargs["min_value"]["$PARAMETER"]] == EARLIEST_TIMESTAMP_MS
        assert parameters[kwargs["max_value"]["$PARAMETER"]] == latest_timestamp_ms(now_ms)


def test_rows_just_outside_the_core_records_bounds_fail(tmp_path: Path) -> None:
    from core.records import EARLIEST_TIMESTAMP_MS, RATING_MAX, latest_timestamp_ms
    from validation.row_checks import check_partition

    now_ms = 1_700_000_000_000
    rows = [
        dict(_good_rows()["interactions"][0][0], rating=RATING_MAX, timestamp=EARLIEST_TIMESTAMP_MS),
        dict(_good_rows()["interactions"][0][0], rating=RATING_MAX + 0.5, timestamp=EARLIEST_TIMESTAMP_MS - 1),
        dict(_good_rows()["interactions"][0][0], rating=RATING_MAX, timestamp=latest_timestamp_ms(now_ms) + 1),
    ]
    parameters = suite_parameters(RunDir(tmp_path), ValidateSettings(), now_ms=now_ms)
    results = check_partition(
        pa.Table.from_pylist(rows, schema=INTERACTIONS), "interactions", load_suite_json("interactions"), parameters, 5
    )
    assert results["interactions_rating_in_range"].unexpected_count == 1
    assert results["interactions_timestamp_plausible"].unexpected_count == 2


# -- the stage: provenance, fingerprint, imports -------------------------------------------------------
def test_validate_records_the_tables_it_checked_and_goes_stale_when_one_changes(tmp_path: Path, dask_client) -> None:
    tables = _good_rows()
    run = write_run(tmp_path / "Grocery", tables)
    run_validation(run, dask_client)
    entry = RunDir(run).entry("validate")
    assert set(entry["upstream"]) == {"ingest", "sequences", "filter"}
    assert set(entry["upstream"]["ingest"]) == {"interactions", "items"}
    assert {"suite:filtered", "suite:sequences"} <= set(entry["inputs"])
    assert RunDir(run).stale_stages() == {}

    tables["filtered"][0][0]["rationale"] = "The user keeps buying organic snacks, so this organic snack fits well."
    write_run(run, {"filtered": tables["filtered"]})

    assert "validate" in RunDir(run).stale_stages()
    from validation.runner import VALIDATE

    assert not VALIDATE.is_current(run, ValidateSettings())
    run_validation(run, dask_client)
    assert RunDir(run).stale_stages() == {}


def test_validate_refuses_a_run_whose_table_stage_is_stale(tmp_path: Path, dask_client) -> None:
    from core.stage import StageError

    tables = _good_rows()
    run = write_run(tmp_path / "Grocery", {t: tables[t] for t in ("interactions", "items", "sequences")})
    sequences_hash = RunDir(run).entry("sequences")["outputs"]["sequences"]
    with RunDir(run).stage("filter", fingerprint="f", config={}, upstream={"sequences": {"sequences": sequences_hash}}) as out:
        folder = out.table_dir("filtered")
        for index, rows in enumerate(tables["filtered"]):
            write_part(pa.Table.from_pylist(rows, schema=FILTERED), folder, index, FILTERED)
    tables["sequences"][0].pop()
    write_run(run, {"sequences": tables["sequences"]})

    with pytest.raises(StageError, match=r"stage 'filter' .* is stale.*rrec filter --run"):
        run_validation(run, dask_client)


def test_importing_the_stage_does_not_import_great_expectations() -> None:
    import subprocess
    import sys

    code = "import sys, validation.runner, validation.cli; print('great_expectations' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_summary_json_reads_back_into_the_typed_summary(good_run: Path, dask_client) -> None:
    from validation.runner import read_summary

    run_validation(good_run, dask_client)
    on_disk = json.loads((good_run / "validation" / "summary.json").read_text())
    assert read_summary(good_run).to_json() == on_disk


def test_results_do_not_depend_on_the_partitioning(tmp_path: Path, dask_client) -> None:
    tables = json.loads(json.dumps(_good_rows()))
    for name in ROW_DEFECTS_BY_TABLE["sequences"]:
        DEFECTS[name][1](tables)
    rows = tables["sequences"][0] + tables["sequences"][1]
    summaries = []
    for layout, partitions in {"one": [rows], "five": [rows[i::5] for i in range(5)]}.items():
        _write_table_only(tmp_path / layout, "sequences", partitions)
        run = RunDir(tmp_path / layout)
        summaries.append(validate_table(run, "sequences", dask_client, suite_parameters(run, ValidateSettings()), examples=3))
    one, five = summaries
    assert (one.partitions, five.partitions) == (1, 5)

    # The column check counts part files; every other count is about rows or keys.
    def counts(summary: Any) -> list[tuple[str, Any, int, int]]:
        return [
            (e.name, e.success, e.element_count, e.unexpected_count)
            for e in summary.expectations
            if not e.name.endswith("_columns_match_schema")
        ]

    assert counts(one) == counts(five)
    assert one.critical_failures >= 3
