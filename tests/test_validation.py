"""Great Expectations suites and `rrec validate`: a good run passes, every planted defect is caught.

The good run folder is built directly with the stage contract (``RunDir.stage`` + ``write_part``):
internally consistent tables of a few hundred rows, each table in two part files so the
whole-table checks (duplicates, validation vs test rows) really cross partitions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner
from validation_fixtures import (
    DEFECTS,
    MAX_HISTORY,
    N_USERS,
    NUM_NEGATIVES,
    _good_rows,
    _train_row,
    _write_table_only,
    write_run,
)

from core.schemas import INTERACTIONS, SEQUENCES
from core.stage import RunDir
from validation.derived import compare_validation_with_test
from validation.runner import ValidateSettings, run_validation, suite_parameters, validate_table
from validation.suites import SUITES_DIR, TABLES, load_suite_json, write_suite_files


def test_every_expectation_has_a_planted_defect() -> None:
    names = {e["meta"]["name"] for t in TABLES for e in load_suite_json(t)["expectations"]}
    assert names == set(DEFECTS)


def test_checked_in_suites_match_their_builders(tmp_path: Path) -> None:
    for regenerated in write_suite_files(tmp_path):
        checked_in = SUITES_DIR / regenerated.name
        assert json.loads(regenerated.read_text()) == json.loads(checked_in.read_text()), (
            f"{checked_in} is stale: run `python -m validation.suites`"
        )


def test_every_expectation_has_a_severity_and_scope() -> None:
    for table in TABLES:
        for expectation in load_suite_json(table)["expectations"]:
            assert expectation["meta"]["severity"] in ("critical", "warning")
            assert expectation["meta"]["scope"] in ("row", "table")


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_planted_defect_fails_exactly_its_expectation(defect: str, tmp_path: Path, dask_client) -> None:
    table, plant = DEFECTS[defect]
    tables = json.loads(json.dumps(_good_rows()))
    plant(tables)
    _write_table_only(tmp_path / "run", table, tables[table])
    run = RunDir(tmp_path / "run")
    summary = validate_table(run, table, dask_client, suite_parameters(run, ValidateSettings()), examples=3)

    failed = {e.name for e in summary.expectations if e.success is False}
    assert failed == {defect}
    entry = next(e for e in summary.expectations if e.name == defect)
    assert entry.unexpected_count >= 1
    assert entry.unexpected_examples, "a failure must show at least one offending value or key"
    assert summary.success is (entry.severity != "critical")


def test_part_file_with_a_wrong_column_type_fails_the_schema_check(tmp_path: Path, dask_client) -> None:
    tables = _good_rows()
    for row in tables["interactions"][0] + tables["interactions"][1]:
        row["timestamp"] = str(row["timestamp"])
    as_text = pa.schema([pa.field("timestamp", pa.string()) if f.name == "timestamp" else f for f in INTERACTIONS])
    _write_table_only(tmp_path / "run", "interactions", tables["interactions"], schema=as_text)
    run = RunDir(tmp_path / "run")

    summary = validate_table(run, "interactions", dask_client, suite_parameters(run, ValidateSettings()), examples=3)

    schema_check = summary.expectations[0]
    assert schema_check.name == "interactions_columns_match_schema" and schema_check.success is False
    assert schema_check.unexpected_examples[0]["unexpected_types"] == {"timestamp": "string"}
    assert all(e.success is None for e in summary.expectations[2:]), "row checks must not run on a wrong schema"


def test_max_history_zero_means_whole_histories(tmp_path: Path, dask_client) -> None:
    tables = _good_rows(max_history=0)
    long_row = _train_row(tables)
    first = long_row["history"][0]
    long_row["history"] = [dict(first, parent_asin=f"C{k:09d}", timestamp=first["timestamp"] - k) for k in range(60, 0, -1)]
    _write_table_only(tmp_path / "run", "sequences", tables["sequences"], max_history=0)
    run = RunDir(tmp_path / "run")

    summary = validate_table(run, "sequences", dask_client, suite_parameters(run, ValidateSettings()), examples=3)

    assert summary.all_passed, [e for e in summary.expectations if not e.success]


def test_good_run_passes_every_suite(good_run: Path, dask_client) -> None:
    summary = run_validation(good_run, dask_client, force=True)

    assert summary["success"] is True
    assert summary["critical_failures"] == 0
    assert summary["warning_failures"] == 0
    for table in TABLES:
        suite = summary["suites"][table]
        assert suite["present"] and suite["all_passed"], [e for e in suite["expectations"] if not e["success"]]
    assert summary["suites"]["sequences"]["rows"] == 3 * N_USERS
    assert summary["parameters"]["max_history"] == MAX_HISTORY
    assert summary["parameters"]["num_candidates"] == 1 + NUM_NEGATIVES
    on_disk = json.loads((good_run / "validation" / "summary.json").read_text())
    assert on_disk["critical_failures"] == 0 and on_disk["success"] is True
    assert RunDir(good_run).entry("validate")["critical_failures"] == 0


def test_data_docs_show_each_suite(good_run: Path, dask_client) -> None:
    run_validation(good_run, dask_client)
    docs = good_run / "validation" / "data_docs"
    index = (docs / "index.html").read_text()
    pages = list((docs / "validations").rglob("*.html"))
    assert {p.relative_to(docs / "validations").parts[0] for p in pages} == set(TABLES)
    assert "sequences" in index
    result = json.loads((good_run / "validation" / "results" / "sequences.json").read_text())
    assert result["success"] is True and len(result["results"]) == len(load_suite_json("sequences")["expectations"])


def test_unchanged_run_is_not_revalidated(good_run: Path, dask_client) -> None:
    run_validation(good_run, dask_client)
    first = RunDir(good_run).entry("validate")["finished_at"], (good_run / "validation" / "summary.json").read_text()
    run_validation(good_run, dask_client)
    assert (RunDir(good_run).entry("validate")["finished_at"], (good_run / "validation" / "summary.json").read_text()) == first


def test_missing_filtered_table_is_reported_not_failed(tmp_path: Path, dask_client) -> None:
    tables = _good_rows()
    del tables["filtered"]
    run = write_run(tmp_path / "Grocery", tables)

    summary = run_validation(run, dask_client)

    assert summary["suites"]["filtered"]["present"] is False
    assert summary["success"] is True and summary["critical_failures"] == 0


def test_run_folder_without_tables_is_a_clear_error(tmp_path: Path, dask_client) -> None:
    from core.stage import StageError

    with pytest.raises(StageError, match="rrec ingest"):
        run_validation(tmp_path / "empty", dask_client)


def test_validation_history_comparison_follows_truncation() -> None:
    import pandas as pd

    pairs = pd.DataFrame(
        {
            "user_id": ["short", "exactly_full", "truncated", "too_long", "wrong_item", "missing_test"],
            # With max_history 3: short is a b c d; exactly_full is a b c d (test history just
            # fits); truncated is a..f, so both histories are cut and only their overlap agrees.
            # too_long has an item before "a" although the test history was not cut.
            "validation_history": ["a", "a b", "b c d", "x a", "a x", "a b"],
            "validation_target": ["b", "c", "e", "b", "c", "c"],
            "test_history": ["a b", "a b c", "c d e", "a b", "a b c", None],
        }
    )
    flags = compare_validation_with_test(pairs, max_history=3)
    assert flags["validation_history_matches_test"].tolist() == [True, True, True, False, False, False]
    assert flags["validation_target_matches_test"].tolist() == [True, True, True, True, True, False]


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("Write to jane.doe@example.com", "EMAIL_REGEX"),
        ("Call (555) 123-4567 now", "PHONE_REGEX"),
        ("or +1 555.123.4567", "PHONE_REGEX"),
        ("see www.example.com/deal", "URL_REGEX"),
        ("see HTTPS://example.org", "URL_REGEX"),
    ],
)
def test_contact_detail_patterns_find_contact_details(text: str, pattern: str) -> None:
    import validation.suites as suites

    assert re.search(getattr(suites, pattern), text)


def test_contact_detail_patterns_leave_ordinary_rationales_alone() -> None:
    from validation.suites import EMAIL_REGEX, PHONE_REGEX, URL_REGEX

    ordinary = (
        "Rated 4.5 out of 5 since 2019, the 12-pack at $12.99 (about 1.08 per bar) fits a user who "
        "bought 3 boxes of granola; model 1234-5678 and size 10.5 are unrelated to contact details."
    )
    assert not any(re.search(p, ordinary) for p in (EMAIL_REGEX, PHONE_REGEX, URL_REGEX))


def test_sequence_checks_treat_null_lists_as_empty() -> None:
    from validation.derived import sequence_row_checks

    row = _good_rows()["sequences"][0][0]
    broken = dict(row, history=None, candidates=None)
    frame = sequence_row_checks(pa.Table.from_pylist([row, broken], schema=SEQUENCES))
    assert frame["history_length"].tolist() == [len(row["history"]), 0]
    assert frame["candidate_count"].tolist() == [1 + NUM_NEGATIVES, 0]
    assert frame["target_once_at_index"].tolist() == [True, False]


# -- the command ------------------------------------------------------------------------------------
def _cli(args: list[str]):
    from rrec.cli import app

    return CliRunner().invoke(app, args)


def test_cli_exits_zero_on_a_good_run(good_run: Path, dask_client) -> None:
    result = _cli(["validate", "--run", str(good_run), "--scheduler", dask_client.scheduler.address, "--force"])
    assert result.exit_code == 0, result.output
    assert "sequences" in result.output
    assert json.loads((good_run / "validation" / "summary.json").read_text())["critical_failures"] == 0


def test_cli_exits_one_on_a_critical_failure_after_writing_the_summary(tmp_path: Path, dask_client) -> None:
    tables = _good_rows()
    tables["filtered"][0][0]["coherent"] = False
    run = write_run(tmp_path / "Grocery", tables)

    result = _cli(["validate", "--run", str(run), "--scheduler", dask_client.scheduler.address])

    assert result.exit_code == 1, result.output
    assert "filtered_coherent_true" in result.output
    summary = json.loads((run / "validation" / "summary.json").read_text())
    assert summary["critical_failures"] == 1 and summary["success"] is False
    failed = [e for e in summary["suites"]["filtered"]["expectations"] if e["success"] is False]
    assert [e["name"] for e in failed] == ["filtered_coherent_true"]
    assert failed[0]["unexpected_examples"][0]["user_id"] == tables["filtered"][0][0]["user_id"]
    failed_page = next((run / "validation" / "data_docs" / "validations" / "filtered").rglob("*.html")).read_text()
    assert "coherent" in failed_page


def test_cli_reports_a_missing_run_folder_in_one_line(tmp_path: Path, dask_client) -> None:
    result = _cli(["validate", "--run", str(tmp_path / "nowhere"), "--scheduler", dask_client.scheduler.address])
    assert result.exit_code == 2
    assert "rrec ingest" in result.output and "Traceback" not in result.output


def test_validate_accepts_a_relative_run_folder(good_run, dask_client, monkeypatch):
    """`rrec run --out demo-out` passes relative paths: Data Docs must still be written."""
    monkeypatch.chdir(good_run.parent)
    summary = run_validation(Path(good_run.name), dask_client, force=True)
    assert summary["critical_failures"] == 0
    assert (good_run / "validation" / "data_docs" / "index.html").exists()


@pytest.mark.parametrize("seed", range(5))
def test_sorted_candidate_rules_agree_with_the_hashed_ones(seed: int) -> None:
    """The matrix fast path (equal candidate counts) flags exactly the rows the hashing path flags,
    with repeats, missing items (code -2) and candidates that are in the history planted."""
    import numpy as np

    from validation.derived import _candidate_rules_hashed, _candidate_rules_sorted

    rng = np.random.default_rng(seed)
    n_rows, width = 300, 7
    codes = rng.integers(-2, 40, size=(n_rows, width))
    history_lengths = rng.integers(0, 5, size=n_rows)
    history_rows = np.repeat(np.arange(n_rows), history_lengths)
    history_codes = rng.integers(-2, 60, size=len(history_rows))
    stride = np.int64(60 + 3)
    history_keys = history_rows * stride + history_codes + 2
    rows = np.repeat(np.arange(n_rows), width)
    sorted_flags = _candidate_rules_sorted(codes, history_keys, stride)
    hashed_flags = _candidate_rules_hashed(n_rows, rows * stride + codes.ravel() + 2, rows, history_keys)
    for fast, reference in zip(sorted_flags, hashed_flags, strict=True):
        assert fast.tolist() == reference.tolist()
    assert not sorted_flags[0].all() and not sorted_flags[1].all()


def test_results_do_not_depend_on_the_task_and_bucket_sizes(tmp_path: Path, dask_client, monkeypatch) -> None:
    """A task and a bucket per part file gives the same summary as one of each for the table: counts
    and first examples, with whole-table and row defects of sequences planted at once."""
    import validation.whole_table as whole_table

    tables = json.loads(json.dumps(_good_rows()))
    for defect in (
        "sequences_validation_history_is_test_history_minus_last",
        "sequences_validation_target_is_last_test_history_item",
        "sequences_one_row_per_user_and_evaluation_split",
        "sequences_candidates_unique",
        "sequences_history_chronological",
    ):
        DEFECTS[defect][1](tables)
    _write_table_only(tmp_path / "run", "sequences", tables["sequences"])
    run = RunDir(tmp_path / "run")
    parameters = suite_parameters(run, ValidateSettings())
    one = validate_table(run, "sequences", dask_client, parameters, examples=3)
    monkeypatch.setattr(whole_table, "ROWS_PER_BUCKET", 1)
    monkeypatch.setattr(whole_table, "ROWS_PER_TASK", 1)
    assert whole_table.Layout.of(whole_table.read_footers(sorted(str(p) for p in (run.path / "sequences").glob("*.parquet")))).buckets == 2
    many = validate_table(run, "sequences", dask_client, parameters, examples=3)
    assert [e.to_json() for e in one.expectations] == [e.to_json() for e in many.expectations]
    assert sum(e.success is False for e in one.expectations if e.scope == "table") >= 2
    assert sum(e.success is False for e in one.expectations if e.scope == "row") >= 2


def test_dictionary_read_items_give_the_string_read_results(tmp_path: Path, monkeypatch) -> None:
    """Reading the history and candidate items dictionary-encoded changes no derived column, with
    repeated, shared and missing items and null lists planted across two row groups."""
    import pyarrow.parquet as pq

    import validation.derived as derived

    rows = [r for part in _good_rows()["sequences"] for r in part]
    first, second, third = (json.loads(json.dumps(r)) for r in rows[:3])
    first["candidates"][1]["parent_asin"] = first["candidates"][2]["parent_asin"]
    second["candidates"][0]["parent_asin"] = None
    second["candidates"][3]["parent_asin"] = None
    second["history"][0]["parent_asin"] = None
    third["candidates"][2]["parent_asin"] = third["history"][-1]["parent_asin"]
    planted = [first, second, third, dict(rows[3], history=None, candidates=None), *rows[4:]]
    path = str(tmp_path / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(planted, schema=SEQUENCES), path, row_group_size=len(planted) // 2)
    # Tiny test pages carry more header than data: let the footer test accept them.
    monkeypatch.setattr(derived, "DICTIONARY_BYTES_PER_VALUE", 10**6)
    as_dictionary = derived.read_fields(path, derived.SEQUENCE_CHECK_FIELDS, derived.SEQUENCE_DICTIONARY_LISTS)
    assert pa.types.is_dictionary(as_dictionary.schema.field("candidates").type.value_type.field("parent_asin").type)
    as_strings = derived.sequence_check_columns(derived.read_fields(path, derived.SEQUENCE_CHECK_FIELDS))
    assert derived.sequence_check_columns(as_dictionary).equals(as_strings)
    assert as_strings.column("candidates_unique").to_pylist()[:2] == [False, False]
    assert as_strings.column("candidates_not_in_history").to_pylist()[2] is False


@pytest.mark.parametrize("dictionary", [False, True])
def test_derived_columns_do_not_depend_on_the_slices(dictionary: bool, tmp_path: Path, monkeypatch) -> None:
    """The sequences checks compute a part's derived columns a slice of rows at a time (bounded
    memory); cut every 2 rows, every 3 rows or not at all, with repeated, missing and
    in-history candidates, null lists and an unordered history planted on both sides of the cuts,
    the columns are the same."""
    import pyarrow.parquet as pq

    import validation.derived as derived

    rows = [json.loads(json.dumps(r)) for part in _good_rows()["sequences"] for r in part]
    assert len(rows) >= 7
    rows[1]["candidates"][1]["parent_asin"] = rows[1]["candidates"][2]["parent_asin"]
    rows[2]["candidates"][0]["parent_asin"] = None
    rows[3]["candidates"][2]["parent_asin"] = rows[3]["history"][-1]["parent_asin"]
    rows[4] = dict(rows[4], history=None, candidates=None)
    rows[5]["history"] = list(reversed(rows[5]["history"]))
    rows[6]["target_index"] = len(rows[6]["candidates"]) + 3
    path = str(tmp_path / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=SEQUENCES), path)
    monkeypatch.setattr(derived, "DICTIONARY_BYTES_PER_VALUE", 10**6)
    table = derived.read_fields(path, derived.SEQUENCE_CHECK_FIELDS, derived.SEQUENCE_DICTIONARY_LISTS if dictionary else frozenset())
    whole = derived.sequence_check_columns(table, slice_rows=len(rows))
    for slice_rows in (2, 3):
        assert derived.sequence_check_columns(table, slice_rows=slice_rows).equals(whole)
    rules = ("candidates_unique", "candidates_not_in_history", "history_chronological", "target_once_at_index")
    failed = {rule: [i for i, ok in enumerate(whole.column(rule).to_pylist()) if not ok] for rule in rules}
    planted = {"candidates_unique": 1, "candidates_not_in_history": 3, "history_chronological": 5, "target_once_at_index": 6}
    assert all(row in failed[rule] for rule, row in planted.items()), failed
    assert whole.column("history_length")[4].as_py() == 0


@pytest.mark.parametrize(("dictionary_page_limit", "read_as_dictionary"), [(1 << 20, True), (16, False)])
def test_plain_pages_are_read_as_strings(dictionary_page_limit: int, read_as_dictionary: bool, tmp_path: Path) -> None:
    """Items in dictionary pages are read as a dictionary; a writer that fell back to plain pages (a
    catalogue bigger than a dictionary page) is read as strings, which Arrow does several times
    faster than rebuilding a dictionary."""
    import pyarrow.parquet as pq

    from validation.derived import read_fields

    item = pa.struct([("parent_asin", pa.string())])
    candidates = [[{"parent_asin": f"B{(row * 7 + k) % 50:09d}"} for k in range(10)] for row in range(3000)]
    path = str(tmp_path / "part-00000.parquet")
    pq.write_table(pa.table({"candidates": pa.array(candidates, pa.list_(item))}), path, dictionary_pagesize_limit=dictionary_page_limit)
    table = read_fields(path, {"candidates": frozenset({"parent_asin"})}, frozenset({"candidates"}))
    assert pa.types.is_dictionary(table.schema.field("candidates").type.value_type.field("parent_asin").type) is read_as_dictionary
    assert table.cast(pa.schema([("candidates", pa.list_(item))])).column("candidates").to_pylist() == candidates
