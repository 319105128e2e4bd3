"""Run the suites of :mod:`validation.suites` over a run folder with Dask.

GX has no Dask engine, so the work is split the way the data is:

- ``row`` expectations run with GX's pandas data source on each partition (one Parquet part
  file) inside a Dask task, one ephemeral GX context per task; the per-partition results are
  merged (counts summed, the first few unexpected examples kept, in partition order);
- ``table`` expectations need the whole table and are computed with Dask (keys grouped across
  partitions, validation rows joined with test rows per user) or from Parquet footers (columns,
  row counts), then reported in the same result format.

The ``validate`` stage writes ``validation/summary.json`` (the file ``rrec release`` reads:
``critical_failures`` and ``success`` are its contract), one GX validation result per suite in
``validation/results/`` and the GX Data Docs site in ``validation/data_docs/``.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import pandas as pd
import pyarrow.parquet as pq
import pyarrow.types as pat
from distributed import Client

from pipeline.config import StageSettings
from pipeline.progress import gather_with_progress
from pipeline.stage import RunDir, StageError, code_version, hash_path
from pipeline.tables import parts
from validation.derived import (
    EVALUATION_ROWS_META,
    compare_validation_with_test,
    evaluation_key_frame,
    evaluation_rows,
    sequence_row_checks,
)
from validation.suites import (
    CRITICAL,
    EARLIEST_PLAUSIBLE_TIMESTAMP_MS,
    INDEX_COLUMNS,
    ROW_SCOPE,
    TABLE_SCOPE,
    TABLES,
    expectations_from_json,
    load_suite_json,
    suite_file,
)

log = logging.getLogger(__name__)

STAGE = "validate"
OUTPUT = "validation"
SUMMARY_FILE = "summary.json"
DATA_DOCS_DIR = "data_docs"
RESULTS_DIR = "results"
# Used when the run's manifest lacks the sequences settings (DESIGN.md defaults).
DEFAULT_MAX_HISTORY = 50
DEFAULT_NUM_NEGATIVES = 99


class ValidateSettings(StageSettings):
    """Settings of ``rrec validate`` (config section ``validate``)."""

    examples: int = 5
    min_history: int = 1
    rationale_min_chars: int = 20
    rationale_max_chars: int = 3000


def suite_parameters(run: RunDir, settings: ValidateSettings) -> dict[str, Any]:
    """Values of the suites' ``$PARAMETER`` placeholders for this run.

    ``max_history`` and ``num_negatives`` come from the config recorded by the sequences stage
    in the run's manifest, so the checks follow the run rather than the defaults.
    """
    sequences_config = (run.entry("sequences") or {}).get("config") or {}
    if run.table("sequences").exists() and not {"max_history", "num_negatives"} <= sequences_config.keys():
        log.warning(
            "the manifest of %s does not record the sequences settings; checking against max_history=%d, num_negatives=%d",
            run.path,
            DEFAULT_MAX_HISTORY,
            DEFAULT_NUM_NEGATIVES,
        )
    now_ms = int(time.time() * 1000)
    return {
        "earliest_timestamp_ms": EARLIEST_PLAUSIBLE_TIMESTAMP_MS,
        # One day of slack for clock skew between the machine that wrote the data and this one.
        "latest_timestamp_ms": now_ms + 24 * 3600 * 1000,
        "min_history": settings.min_history,
        "max_history": int(sequences_config.get("max_history", DEFAULT_MAX_HISTORY)),
        "num_candidates": 1 + int(sequences_config.get("num_negatives", DEFAULT_NUM_NEGATIVES)),
        "rationale_min_chars": settings.rationale_min_chars,
        "rationale_max_chars": settings.rationale_max_chars,
    }


# -- one partition, inside a Dask task ----------------------------------------------------------
def row_frame(table: str, part: str) -> pd.DataFrame:
    """The scalar columns GX checks for one part file (derived columns for ``sequences``)."""
    arrow = pq.read_table(part)
    if table == "sequences":
        return sequence_row_checks(arrow)
    # GX only sees scalar columns; list columns (categories, features) have no expectations.
    scalar = [f.name for f in arrow.schema if not pat.is_nested(f.type)]
    return arrow.select(scalar).to_pandas()


def _gx_context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults, ProgressBarsConfig

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _examples(result: dict[str, Any], limit: int) -> list[Any]:
    indexed = result.get("partial_unexpected_index_list") or []
    if indexed and isinstance(indexed[0], dict):
        return indexed[:limit]
    return list(result.get("partial_unexpected_list") or [])[:limit]


def validate_frame(frame: pd.DataFrame, table: str, suite: dict[str, Any], parameters: dict[str, Any], examples: int) -> dict[str, dict[str, Any]]:
    """Run the ``row`` expectations of ``suite`` on one partition; results keyed by expectation name.

    Pure apart from GX itself: one ephemeral GX context for the whole partition.
    """
    import great_expectations as gx

    context = _gx_context()
    batch_definition = context.data_sources.add_pandas(table).add_dataframe_asset(table).add_batch_definition_whole_dataframe("partition")
    gx_suite = context.suites.add(gx.ExpectationSuite(name=table, expectations=expectations_from_json(suite, scope=ROW_SCOPE)))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=table, data=batch_definition, suite=gx_suite))
    index_columns = [c for c in INDEX_COLUMNS[table] if c in frame.columns]
    outcome = definition.run(
        batch_parameters={"dataframe": frame},
        expectation_parameters=parameters,
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": examples, "unexpected_index_column_names": index_columns},
    )
    merged: dict[str, dict[str, Any]] = {}
    for result in outcome.results:
        config = result.expectation_config
        details = result.result or {}
        error = result.exception_info.get("exception_message") if result.exception_info.get("raised_exception") else None
        merged[config.meta["name"]] = {
            "success": bool(result.success),
            "kwargs": {k: v for k, v in config.kwargs.items() if k != "batch_id"},
            "element_count": int(details.get("element_count", len(frame))),
            "unexpected_count": int(details.get("unexpected_count") or 0),
            "missing_count": int(details.get("missing_count") or 0),
            "examples": _examples(details, examples),
            "error": error,
        }
    return merged


def validate_part(part: str, table: str, suite: dict[str, Any], parameters: dict[str, Any], examples: int) -> dict[str, dict[str, Any]]:
    """Dask task: read one part file, derive its scalar columns, run the row expectations."""
    return validate_frame(row_frame(table, part), table, suite, parameters, examples)


def merge_partition_results(per_partition: list[dict[str, dict[str, Any]]], examples: int) -> dict[str, dict[str, Any]]:
    """Combine the per-partition results of each expectation into one table-wide result."""
    merged: dict[str, dict[str, Any]] = {}
    for partition in per_partition:
        for name, result in partition.items():
            total = merged.setdefault(
                name,
                {"success": True, "kwargs": result["kwargs"], "element_count": 0, "unexpected_count": 0, "missing_count": 0, "examples": [], "error": None},
            )
            total["success"] = total["success"] and result["success"]
            for count in ("element_count", "unexpected_count", "missing_count"):
                total[count] += result[count]
            total["examples"] = (total["examples"] + result["examples"])[:examples]
            total["error"] = total["error"] or result["error"]
    return merged


# -- whole-table expectations ------------------------------------------------------------------
def key_frame(part: str, table: str, columns: list[str]) -> pd.DataFrame:
    """Dask partition: the key columns of one part file (derived ones included)."""
    if table == "sequences" and columns == ["evaluation_key"]:
        return evaluation_key_frame(pq.read_table(part, columns=["user_id", "split"]))
    if table == "sequences":
        return row_frame(table, part)[columns]
    return pq.read_table(part, columns=columns).to_pandas()


def evaluation_rows_of_part(part: str) -> pd.DataFrame:
    """Dask partition: the validation and test rows of one sequences part file."""
    return evaluation_rows(pq.read_table(part, columns=["user_id", "split", "history", "target"]))


def _first_sorted(frame: pd.DataFrame, by: list[str], n: int) -> pd.DataFrame:
    return frame.sort_values(by).head(n)


def _row_count(frame: dd.DataFrame) -> Any:
    # ``frame.shape[0]`` comes back as None after some dask-expr rewrites; summing lengths does not.
    return frame.map_partitions(len, meta=(None, "int64")).sum()


def _duplicate_keys(parts_: list[str], table: str, columns: list[str], examples: int) -> tuple[Any, Any, Any]:
    """Lazy (rows checked, rows whose key repeats, first repeated keys) over the whole table."""
    meta = key_frame(parts_[0], table, columns).iloc[:0]
    keys = dd.from_map(key_frame, parts_, table=table, columns=columns, meta=meta)
    # GX ignores a row only when every key column is missing; do the same.
    keys = keys.dropna(how="all", subset=columns)
    counts = keys.groupby(columns, dropna=False).size().rename("rows").reset_index()
    repeated = counts[counts["rows"] > 1]
    first = repeated.map_partitions(_first_sorted, columns, examples, meta=repeated._meta)
    return _row_count(keys), repeated["rows"].sum(), first


def _validation_test_pairs(parts_: list[str], max_history: int) -> dd.DataFrame:
    rows = dd.from_map(evaluation_rows_of_part, parts_, meta=EVALUATION_ROWS_META)
    validation = rows[rows["split"] == "validation"][["user_id", "history_asins", "target_parent_asin"]].rename(
        columns={"history_asins": "validation_history", "target_parent_asin": "validation_target"}
    )
    test = rows[rows["split"] == "test"][["user_id", "history_asins"]].rename(columns={"history_asins": "test_history"})
    # Two short rows per user: the task-based shuffle handles that volume without the fixed
    # start-up cost of the P2P shuffle extension, which dominates on run-sized tables.
    pairs = validation.merge(test, on="user_id", how="outer", shuffle_method="tasks")
    meta = compare_validation_with_test(pairs._meta, max_history)
    return pairs.map_partitions(compare_validation_with_test, max_history, meta=meta)


def _table_expectation_tasks(
    table: str, parts_: list[str], expectations: list[dict[str, Any]], parameters: dict[str, Any], examples: int
) -> dict[str, tuple[Any, Any, Any]]:
    """Lazy Dask computations of the table-scope expectations that need the data."""
    tasks: dict[str, tuple[Any, Any, Any]] = {}
    pairs = None
    for expectation in expectations:
        kind, kwargs, name = expectation["type"], expectation["kwargs"], expectation["meta"]["name"]
        if kind in ("expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"):
            columns = [kwargs["column"]] if "column" in kwargs else list(kwargs["column_list"])
            tasks[name] = _duplicate_keys(parts_, table, columns, examples)
        elif kind == "expect_column_values_to_be_in_set":
            if pairs is None:
                pairs = _validation_test_pairs(parts_, parameters["max_history"])
            failing = pairs[~pairs[kwargs["column"]]][["user_id"]]
            first = failing.map_partitions(_first_sorted, ["user_id"], examples, meta=failing._meta)
            tasks[name] = (_row_count(pairs), (~pairs[kwargs["column"]]).sum(), first)
    return tasks


def _compute_with_progress(client: Client, collections: list[Any], description: str) -> list[Any]:
    """Compute Dask collections on the cluster, results in order.

    Identical computations (the row count shared by two checks) get the same future key, so
    each key is waited for once and its result handed to every position that asked for it.
    """
    if not collections:
        return []
    futures = client.compute(collections)
    unique = list({f.key: f for f in futures}.values())
    by_key = dict(zip([f.key for f in unique], gather_with_progress(unique, description), strict=True))
    return [by_key[f.key] for f in futures]


def _footer_checks(table: str, parts_: list[str], expectation: dict[str, Any]) -> dict[str, Any] | None:
    """Columns and row counts come from the Parquet footers, without reading any data."""
    kind, kwargs = expectation["type"], expectation["kwargs"]
    if kind == "expect_table_columns_to_match_ordered_list":
        wrong = []
        for part in parts_:
            names = pq.read_schema(part).names
            if names != kwargs["column_list"]:
                wrong.append({"file": Path(part).name, "columns": names})
        observed = wrong[0]["columns"] if wrong else kwargs["column_list"]
        return _result(not wrong, len(parts_), len(wrong), wrong, observed_value=observed)
    if kind == "expect_table_row_count_to_be_between":
        rows = sum(pq.read_metadata(part).num_rows for part in parts_)
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        ok = (low is None or rows >= low) and (high is None or rows <= high)
        return _result(ok, rows, 0 if ok else 1, [] if ok else [{"observed_rows": rows}], observed_value=rows)
    return None


def _result(success: bool, element_count: int, unexpected_count: int, examples: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "success": bool(success),
        "element_count": int(element_count),
        "unexpected_count": int(unexpected_count),
        "missing_count": 0,
        "examples": examples,
        "error": None,
        **extra,
    }


def _records(frame: pd.DataFrame, examples: int) -> list[dict[str, Any]]:
    return json.loads(frame.sort_values(list(frame.columns)).head(examples).to_json(orient="records"))


def validate_table(run: RunDir, table: str, client: Client, parameters: dict[str, Any], examples: int) -> dict[str, Any]:
    """Validate one table of a run folder; the suite's section of ``summary.json``."""
    suite = load_suite_json(table)
    parts_ = [str(p) for p in parts(run.table(table))]
    expectations = suite["expectations"]
    results: dict[str, dict[str, Any]] = {}
    table_scope = [e for e in expectations if e["meta"]["scope"] == TABLE_SCOPE]
    for expectation in table_scope:
        footer_result = _footer_checks(table, parts_, expectation)
        if footer_result is not None:
            results[expectation["meta"]["name"]] = {**footer_result, "kwargs": expectation["kwargs"]}

    columns_ok = all(r["success"] for n, r in results.items() if n.endswith("_columns_match_schema"))
    if columns_ok and parts_:
        futures = client.map(validate_part, parts_, table=table, suite=suite, parameters=parameters, examples=examples, pure=False)
        per_partition = gather_with_progress(futures, f"validating {table} ({len(parts_)} partitions)")
        results.update(merge_partition_results(per_partition, examples))
        lazy = _table_expectation_tasks(table, parts_, [e for e in table_scope if e["meta"]["name"] not in results], parameters, examples)
        names = list(lazy)
        flat = [part for name in names for part in lazy[name]]
        computed = _compute_with_progress(client, flat, f"checking {table} across partitions")
        # Each expectation contributed three results: rows checked, rows unexpected, first examples.
        grouped = [computed[i : i + 3] for i in range(0, len(computed), 3)]
        for name, (checked, unexpected, first) in zip(names, grouped, strict=True):
            expectation = next(e for e in table_scope if e["meta"]["name"] == name)
            results[name] = {**_result(int(unexpected) == 0, checked, unexpected, _records(first, examples)), "kwargs": expectation["kwargs"]}
    reason = "not evaluated: the part files do not have the declared columns" if not columns_ok else "not evaluated: the table has no part files"
    return _suite_summary(table, suite, results, parts_, not_evaluated_reason=reason)


def _suite_summary(table: str, suite: dict[str, Any], results: dict[str, dict[str, Any]], parts_: list[str], not_evaluated_reason: str) -> dict[str, Any]:
    entries = []
    for expectation in suite["expectations"]:
        meta = expectation["meta"]
        result = results.get(meta["name"])
        entry = {
            "name": meta["name"],
            "type": expectation["type"],
            "severity": meta["severity"],
            "scope": meta["scope"],
            "description": expectation.get("description"),
            "kwargs": (result or {}).get("kwargs", expectation["kwargs"]),
        }
        if meta.get("derived"):
            entry["derived"] = meta["derived"]
        if result is None:
            entry.update(success=None, element_count=0, unexpected_count=0, unexpected_percent=None, unexpected_examples=[], error=not_evaluated_reason)
        else:
            checked = result["element_count"] - result["missing_count"]
            entry.update(
                success=result["success"],
                element_count=result["element_count"],
                unexpected_count=result["unexpected_count"],
                unexpected_percent=round(100.0 * result["unexpected_count"] / checked, 4) if checked else 0.0,
                unexpected_examples=result["examples"],
                error=result["error"],
            )
            if "observed_value" in result:
                entry["observed_value"] = result["observed_value"]
        entries.append(entry)
    failed = [e for e in entries if e["success"] is False]
    return {
        "present": True,
        "partitions": len(parts_),
        "rows": next((e.get("observed_value") for e in entries if e["type"] == "expect_table_row_count_to_be_between"), None),
        "all_passed": all(e["success"] for e in entries),
        "success": not any(e["severity"] == CRITICAL for e in failed),
        "critical_failures": sum(e["severity"] == CRITICAL for e in failed),
        "warning_failures": sum(e["severity"] != CRITICAL for e in failed),
        "expectations": entries,
    }


# -- GX validation results and Data Docs --------------------------------------------------------
def _gx_suite_result(table: str, summary: dict[str, Any], run_id: Any) -> Any:
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    results = []
    for entry in summary["expectations"]:
        config = ExpectationConfiguration(
            type=entry["type"],
            kwargs=entry["kwargs"],
            meta={k: entry[k] for k in ("name", "severity", "scope", "derived") if k in entry},
            description=entry["description"],
            severity=entry["severity"],
        )
        values = [e.get(entry["kwargs"].get("column"), e) if isinstance(e, dict) else e for e in entry["unexpected_examples"]]
        results.append(
            ExpectationValidationResult(
                success=bool(entry["success"]),
                expectation_config=config,
                result={
                    "element_count": entry["element_count"],
                    "unexpected_count": entry["unexpected_count"],
                    "unexpected_percent": entry["unexpected_percent"],
                    "partial_unexpected_list": values,
                    **({"observed_value": entry["observed_value"]} if "observed_value" in entry else {}),
                },
                exception_info={"raised_exception": entry["error"] is not None, "exception_message": entry["error"], "exception_traceback": entry["error"]},
            )
        )
    evaluated = len(results)
    passed = sum(1 for r in results if r.success)
    return ExpectationSuiteValidationResult(
        success=summary["all_passed"],
        results=results,
        suite_name=table,
        statistics={
            "evaluated_expectations": evaluated,
            "successful_expectations": passed,
            "unsuccessful_expectations": evaluated - passed,
            "success_percent": 100.0 * passed / evaluated if evaluated else 100.0,
        },
        meta={"run_id": run_id, "batch_spec": {"data_asset_name": table}},
    )


def write_gx_reports(out_dir: Path, run_name: str, suites: dict[str, dict[str, Any]]) -> Path:
    """Write one GX validation result per suite (JSON) and build the Data Docs site; returns its index."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier, ValidationResultIdentifier

    docs_dir = out_dir / DATA_DOCS_DIR
    results_dir = out_dir / RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    context = _gx_context()
    context.add_data_docs_site(
        "run",
        {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    run_id = RunIdentifier(run_name=STAGE, run_time=datetime.datetime.now(datetime.timezone.utc))
    for table, summary in suites.items():
        if not summary["present"]:
            continue
        context.suites.add(gx.ExpectationSuite(name=table, expectations=expectations_from_json(load_suite_json(table))))
        suite_result = _gx_suite_result(table, summary, run_id)
        (results_dir / f"{table}.json").write_text(json.dumps(suite_result.to_json_dict(), indent=2, default=str), encoding="utf-8")
        suite_id = ExpectationSuiteIdentifier(table)
        context.validation_results_store.store_validation_results(suite_result, ValidationResultIdentifier(suite_id, run_id, run_name), suite_id)
    context.build_data_docs(site_names=["run"])
    return docs_dir / "index.html"


# -- the stage ---------------------------------------------------------------------------------
def _input_hashes(run: RunDir, present: list[str]) -> dict[str, str]:
    """Content hashes of the tables to validate (from the manifest where a stage recorded them)."""
    recorded = {
        name: digest
        for entry in run.manifest()["stages"].values()
        for name, digest in entry.get("outputs", {}).items()
    }
    hashes = {table: recorded.get(table) or hash_path(run.table(table)) for table in present}
    hashes.update({f"suite:{t}": hash_path(suite_file(t)) for t in TABLES})
    return hashes


def read_summary(run: Path) -> dict[str, Any]:
    """The ``summary.json`` of a run folder's last validation."""
    path = Path(run) / OUTPUT / SUMMARY_FILE
    if not path.exists():
        raise StageError(f"{path} does not exist; run `rrec validate --run {run}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def run_validation(run: Path, client: Client, force: bool = False, settings: ValidateSettings | None = None) -> dict[str, Any]:
    """Validate every table present in run folder ``run``; returns the summary written to disk.

    A table that does not exist (e.g. ``filtered`` before annotation) is reported as not
    present, not as a failure. The summary's ``critical_failures`` counts failed critical
    expectations and ``success`` is true when there are none (the release gate).
    """
    settings = settings or ValidateSettings()
    run_dir = RunDir(run)
    present = [t for t in TABLES if run_dir.table(t).is_dir()]
    if not present:
        raise StageError(f"run folder {run} has none of the tables {', '.join(TABLES)}; run `rrec ingest --run {run}` first")
    config = settings.model_dump()
    inputs = _input_hashes(run_dir, present)
    fingerprint = run_dir.fingerprint(STAGE, config=config, inputs=inputs)
    if not force and run_dir.is_current(STAGE, fingerprint):
        log.info("validation of %s is up to date (use --force to rerun)", run)
        return read_summary(run)

    parameters = suite_parameters(run_dir, settings)
    suites: dict[str, dict[str, Any]] = {}
    for table in TABLES:
        if table in present:
            suites[table] = validate_table(run_dir, table, client, parameters, settings.examples)
        else:
            suites[table] = {"present": False, "success": True, "all_passed": None, "critical_failures": 0, "warning_failures": 0, "expectations": []}
    critical = sum(s["critical_failures"] for s in suites.values())
    summary = {
        "run": str(run),
        "validated_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "code_version": code_version(),
        "parameters": parameters,
        "success": critical == 0,
        "critical_failures": critical,
        "warning_failures": sum(s["warning_failures"] for s in suites.values()),
        "suites": suites,
        "data_docs": f"{DATA_DOCS_DIR}/index.html",
    }
    with run_dir.stage(STAGE, fingerprint, config=config, inputs=inputs) as out:
        out_dir = out.output_path(OUTPUT, folder=True)
        write_gx_reports(out_dir, run_dir.path.name, suites)
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        out.record(
            rows_in=sum(s.get("rows") or 0 for s in suites.values()),
            critical_failures=critical,
            warning_failures=summary["warning_failures"],
            success=summary["success"],
        )
    return summary
