"""Great Expectations suites and `rrec validate`: a good run passes, every planted defect is caught.

The good run folder is built directly with the stage contract (``RunDir.stage`` + ``write_part``):
internally consistent tables of a few hundred rows, each table in two part files so the
whole-table checks (duplicates, validation vs test rows) really cross partitions.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from core.schemas import FILTERED, INTERACTIONS, ITEMS, SEQUENCES
from core.stage import RunDir
from core.tables import write_part
from validation.derived import compare_validation_with_test
from validation.runner import ValidateSettings, run_validation, suite_parameters, validate_table
from validation.suites import SUITES_DIR, TABLES, load_suite_json, write_suite_files

MAX_HISTORY = 4
NUM_NEGATIVES = 7
N_USERS = 24
N_ITEMS = 60
BASE_TS = 1_600_000_000_000  # 2020-09-13, in milliseconds
DAY_MS = 86_400_000
SCHEMAS = {"interactions": INTERACTIONS, "items": ITEMS, "sequences": SEQUENCES, "filtered": FILTERED}
STAGE_OF = {"interactions": "ingest", "items": "ingest", "sequences": "sequences", "filtered": "filter"}


def _asin(i: int) -> str:
    return f"B{i:09d}"


def _good_rows(seed: int = 7, max_history: int = MAX_HISTORY) -> dict[str, list[list[dict[str, Any]]]]:
    """Rows of every table, already split into two partitions per table (max_history 0: no cut)."""
    rng = random.Random(seed)
    catalog = [_asin(i) for i in range(N_ITEMS)]
    titles = {a: f"Item {a[-3:]} organic snack" for a in catalog}
    items = [
        {
            "parent_asin": a,
            "title": titles[a],
            "main_category": "Grocery",
            "categories": ["Grocery", "Snacks"],
            "store": "Acme",
            "price": 3.5 + i % 7,
            "average_rating": 4.2,
            "rating_number": 10 + i,
            "features": ["tasty"],
            "description": "A snack.",
            "details": "{}",
        }
        for i, a in enumerate(catalog)
    ]
    interactions, sequences, filtered = [], [], []
    line = 0
    for u in range(N_USERS):
        user = f"U{u:04d}"
        length = 4 + u % 6  # 4..9 items: some histories are truncated to MAX_HISTORY, some not
        bought = rng.sample(catalog, length)
        stamps = [BASE_TS + u * DAY_MS + k * DAY_MS for k in range(length)]
        for asin, ts in zip(bought, stamps, strict=True):
            interactions.append(
                {
                    "user_id": user,
                    "parent_asin": asin,
                    "asin": asin,
                    "rating": float(rng.randint(1, 5)),
                    "timestamp": ts,
                    "review_title": "Good",
                    "review_text": "Tasty and fresh.",
                    "helpful_vote": rng.randint(0, 3),
                    "verified_purchase": True,
                    "src_file": 0,
                    "src_line": line,
                }
            )
            line += 1
        others = [a for a in catalog if a not in bought]
        for split, target_pos in (("train", length - 3), ("validation", length - 2), ("test", length - 1)):
            history = [
                {"parent_asin": bought[k], "title": titles[bought[k]], "rating": 4.0, "timestamp": stamps[k]} for k in range(target_pos)
            ][-max_history if max_history else 0 :]
            target = bought[target_pos]
            candidates = [target, *rng.sample(others, NUM_NEGATIVES)]
            rng.shuffle(candidates)
            sequences.append(
                {
                    "user_id": user,
                    "split": split,
                    "history": history,
                    "target": {
                        "parent_asin": target,
                        "title": titles[target],
                        "categories": ["Grocery"],
                        "store": "Acme",
                        "rating": 5.0,
                        "timestamp": stamps[target_pos],
                    },
                    "candidates": [{"parent_asin": c, "title": titles[c]} for c in candidates],
                    "target_index": candidates.index(target),
                }
            )
            if split == "train":
                filtered.append(
                    {
                        "user_id": user,
                        "split": split,
                        "target_parent_asin": target,
                        "rationale": f"The user keeps buying organic snacks such as {titles[history[-1]['parent_asin']]}, so {titles[target]} fits.",
                        "user_preferences": "Prefers organic snacks from small brands.",
                        "coherent": True,
                        "annotator": "template",
                        "model": "template-v1",
                        "prompt_version": "teacher-v1",
                        "input_tokens": 120,
                        "output_tokens": 40,
                        "request_hash": f"h{u}",
                    }
                )
    half = N_USERS // 2
    return {
        "interactions": [interactions[: len(interactions) // 2], interactions[len(interactions) // 2 :]],
        "items": [items[: N_ITEMS // 2], items[N_ITEMS // 2 :]],
        # Validation rows in one part, test rows in the other: the comparison must cross partitions.
        "sequences": [[r for r in sequences if r["split"] != "test"], [r for r in sequences if r["split"] == "test"]],
        "filtered": [filtered[:half], filtered[half:]],
    }


def write_run(path: Path, tables: dict[str, list[list[dict[str, Any]]]]) -> Path:
    """Write tables into a run folder through the real stage contract, one stage per producer."""
    run = RunDir(path)
    by_stage: dict[str, list[str]] = {}
    for table in tables:
        by_stage.setdefault(STAGE_OF[table], []).append(table)
    for stage, names in by_stage.items():
        config = {"max_history": MAX_HISTORY, "num_negatives": NUM_NEGATIVES} if stage == "sequences" else {}
        with run.stage(stage, fingerprint=f"test-{stage}", config=config) as out:
            for table in names:
                folder = out.table_dir(table)
                for index, rows in enumerate(tables[table]):
                    write_part(pa.Table.from_pylist(rows, schema=SCHEMAS[table]), folder, index, SCHEMAS[table])
                out.record(rows_out={table: sum(len(r) for r in tables[table])})
    return path


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("good") / "Grocery", _good_rows())


# -- planted defects: one per expectation ---------------------------------------------------------
Tables = dict[str, list[list[dict[str, Any]]]]


def _first(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    return next(r for r in rows if all(r[k] == v for k, v in match.items()))


def _set(table: str, column: str, value: Any) -> Callable[[Tables], None]:
    def plant(t: Tables) -> None:
        row = t[table][0][0] if table != "sequences" else _first(t[table][0], split="train")
        row[column] = value

    return plant


def _duplicate_across_parts(table: str, pick: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None) -> Callable[[Tables], None]:
    def plant(t: Tables) -> None:
        source, other = (1, 0) if table == "sequences" else (0, 1)
        row = pick(t[table][source]) if pick else t[table][source][0]
        t[table][other].append(json.loads(json.dumps(row)))

    return plant


def _empty(table: str) -> Callable[[Tables], None]:
    def plant(t: Tables) -> None:
        t[table] = [[], []]

    return plant


def _train_row(t: Tables, min_history: int = 1) -> dict[str, Any]:
    return next(r for r in t["sequences"][0] if r["split"] == "train" and len(r["history"]) >= min_history)


def _unused_item(t: Tables, row: dict[str, Any]) -> str:
    user = row["user_id"]
    used = {i["parent_asin"] for i in t["interactions"][0] + t["interactions"][1] if i["user_id"] == user}
    used |= {c["parent_asin"] for c in row["candidates"]}
    return next(_asin(i) for i in range(N_ITEMS) if _asin(i) not in used)


def _validation_history_differs(t: Tables) -> None:
    row = next(r for r in t["sequences"][0] if r["split"] == "validation")
    row["history"][-1]["parent_asin"] = _unused_item(t, row)


def _validation_target_differs(t: Tables) -> None:
    row = next(r for r in t["sequences"][0] if r["split"] == "validation")
    replacement = _unused_item(t, row)
    row["target"]["parent_asin"] = replacement
    row["candidates"][row["target_index"]]["parent_asin"] = replacement


def _target_asin_malformed(t: Tables) -> None:
    row = _train_row(t)
    row["target"]["parent_asin"] = "b0-lower"
    row["candidates"][row["target_index"]]["parent_asin"] = "b0-lower"


def _target_in_future(t: Tables) -> None:
    _train_row(t)["target"]["timestamp"] = int(time.time() * 1000) + 3650 * DAY_MS


def _history_empty(t: Tables) -> None:
    _train_row(t)["history"] = []


def _history_out_of_order(t: Tables) -> None:
    history = _train_row(t, min_history=2)["history"]
    history[0]["timestamp"], history[1]["timestamp"] = history[1]["timestamp"], history[0]["timestamp"]


def _history_after_target(t: Tables) -> None:
    row = _train_row(t)
    row["history"][-1]["timestamp"] = row["target"]["timestamp"] + 1


def _target_index_wrong(t: Tables) -> None:
    row = _train_row(t)
    row["target_index"] = (row["target_index"] + 1) % len(row["candidates"])


def _negatives(row: dict[str, Any]) -> list[int]:
    return [i for i in range(len(row["candidates"])) if i != row["target_index"]]


def _candidate_repeated(t: Tables) -> None:
    row = _train_row(t)
    first, second = _negatives(row)[:2]
    row["candidates"][second] = dict(row["candidates"][first])


def _candidate_in_history(t: Tables) -> None:
    row = _train_row(t)
    row["candidates"][_negatives(row)[0]]["parent_asin"] = row["history"][0]["parent_asin"]


def _candidate_missing(t: Tables) -> None:
    row = _train_row(t)
    dropped = _negatives(row)[-1]
    del row["candidates"][dropped]
    if dropped < row["target_index"]:
        row["target_index"] -= 1


def _rationale(text: str) -> Callable[[Tables], None]:
    return _set("filtered", "rationale", text)


def _drop_column(table: str, column: str) -> Callable[[Tables], None]:
    def plant(t: Tables) -> None:
        t[table] = [[{k: v for k, v in r.items() if k != column} for r in part] for part in t[table]]

    return plant


DEFECTS: dict[str, tuple[str, Callable[[Tables], None]]] = {
    "interactions_columns_match_schema": ("interactions", _drop_column("interactions", "helpful_vote")),
    "interactions_not_empty": ("interactions", _empty("interactions")),
    "interactions_source_rows_unique": ("interactions", _duplicate_across_parts("interactions")),
    "interactions_user_id_not_null": ("interactions", _set("interactions", "user_id", None)),
    "interactions_parent_asin_not_null": ("interactions", _set("interactions", "parent_asin", None)),
    "interactions_parent_asin_format": ("interactions", _set("interactions", "parent_asin", "b00-lower")),
    "interactions_rating_not_null": ("interactions", _set("interactions", "rating", None)),
    "interactions_rating_in_range": ("interactions", _set("interactions", "rating", 6.0)),
    "interactions_timestamp_not_null": ("interactions", _set("interactions", "timestamp", None)),
    "interactions_timestamp_plausible": ("interactions", _set("interactions", "timestamp", BASE_TS // 1000)),
    "interactions_helpful_vote_non_negative": ("interactions", _set("interactions", "helpful_vote", -1)),
    "items_columns_match_schema": ("items", _drop_column("items", "store")),
    "items_not_empty": ("items", _empty("items")),
    "items_parent_asin_unique": ("items", _duplicate_across_parts("items")),
    "items_parent_asin_not_null": ("items", _set("items", "parent_asin", None)),
    "items_parent_asin_format": ("items", _set("items", "parent_asin", "B0123")),
    "items_title_not_null": ("items", _set("items", "title", None)),
    "items_average_rating_in_range": ("items", _set("items", "average_rating", 7.5)),
    "items_rating_number_non_negative": ("items", _set("items", "rating_number", -3)),
    "items_price_non_negative": ("items", _set("items", "price", -1.0)),
    "sequences_columns_match_schema": ("sequences", _drop_column("sequences", "target_index")),
    "sequences_not_empty": ("sequences", _empty("sequences")),
    "sequences_one_row_per_user_and_evaluation_split": (
        "sequences",
        _duplicate_across_parts("sequences", lambda rows: _first(rows, split="test")),
    ),
    "sequences_validation_history_is_test_history_minus_last": ("sequences", _validation_history_differs),
    "sequences_validation_target_is_last_test_history_item": ("sequences", _validation_target_differs),
    "sequences_user_id_not_null": ("sequences", _set("sequences", "user_id", None)),
    "sequences_split_known": ("sequences", _set("sequences", "split", "dev")),
    "sequences_split_not_null": ("sequences", _set("sequences", "split", None)),
    "sequences_target_parent_asin_format": ("sequences", _target_asin_malformed),
    "sequences_target_timestamp_plausible": ("sequences", _target_in_future),
    "sequences_history_length_in_bounds": ("sequences", _history_empty),
    "sequences_history_chronological": ("sequences", _history_out_of_order),
    "sequences_history_before_target": ("sequences", _history_after_target),
    "sequences_target_in_candidates_once_at_index": ("sequences", _target_index_wrong),
    "sequences_candidates_unique": ("sequences", _candidate_repeated),
    "sequences_candidates_not_in_history": ("sequences", _candidate_in_history),
    "sequences_candidate_count": ("sequences", _candidate_missing),
    "filtered_columns_match_schema": ("filtered", _drop_column("filtered", "model")),
    "filtered_not_empty": ("filtered", _empty("filtered")),
    "filtered_one_rationale_per_example": ("filtered", _duplicate_across_parts("filtered")),
    "filtered_rationale_not_null": ("filtered", _rationale(None)),
    "filtered_rationale_not_blank": ("filtered", _rationale(" " * 40)),
    "filtered_rationale_length_in_bounds": ("filtered", _rationale("Fits well.")),
    "filtered_coherent_not_null": ("filtered", _set("filtered", "coherent", None)),
    "filtered_coherent_true": ("filtered", _set("filtered", "coherent", False)),
    "filtered_rationale_no_email": ("filtered", _rationale("Ask jane.doe@example.com why this snack fits the user's taste.")),
    "filtered_rationale_no_phone": ("filtered", _rationale("Call 555-123-4567 to hear why this snack fits the user's taste.")),
    "filtered_rationale_no_url": ("filtered", _rationale("See https://example.org/snacks for why this snack fits the user's taste.")),
    "filtered_user_preferences_no_contact_details": ("filtered", _set("filtered", "user_preferences", "Writes from www.example.com")),
    "filtered_prompt_version_not_null": ("filtered", _set("filtered", "prompt_version", None)),
}


def _write_table_only(
    path: Path, table: str, partitions: list[list[dict[str, Any]]], schema: pa.Schema | None = None, max_history: int = MAX_HISTORY
) -> None:
    """Write one table (possibly missing columns, to plant schema defects) plus the sequences config."""
    run = RunDir(path)
    config = {"max_history": max_history, "num_negatives": NUM_NEGATIVES} if table == "sequences" else {}
    with run.stage(STAGE_OF[table], fingerprint="defect", config=config) as out:
        folder = out.table_dir(table)
        for index, rows in enumerate(partitions):
            schema = schema or SCHEMAS[table]
            if rows and set(rows[0]) != set(schema.names):
                schema = pa.schema([f for f in schema if f.name in rows[0]])
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"part-{index:05d}.parquet")


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
