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
import operator
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pyarrow.types as pat
from distributed import Client

from core.config import StageSettings
from core.progress import gather_with_progress
from core.stage import RunDir, StageError, code_version, hash_path
from core.tables import parts
from validation.derived import (
    compare_validation_with_test,
    evaluation_key_frame,
    evaluation_rows,
    pair_validation_with_test,
    sequence_row_checks,
)
from validation.suites import (
    CRITICAL,
    EARLIEST_PLAUSIBLE_TIMESTAMP_MS,
    INDEX_COLUMNS,
    ROW_SCOPE,
    SCHEMAS,
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
UNBOUNDED_HISTORY = 2**31 - 1


class ValidateSettings(StageSettings):
    """Settings of ``rrec validate`` (config section ``validate``)."""

    examples: int = 5
    min_history: int = 1
    rationale_min_chars: int = 20
    # The filter keeps up to 400 words; 4000 characters leave room for long words.
    rationale_max_chars: int = 4000


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
        # With every prefix as a train target (official rules), the first one has no history.
        "min_history": 0 if sequences_config.get("train_targets") == "all" else settings.min_history,
        # max_history 0 keeps whole histories (sequences stage): no upper bound then.
        "max_history": int(sequences_config.get("max_history", DEFAULT_MAX_HISTORY)) or UNBOUNDED_HISTORY,
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


def _exception_message(info: dict[str, Any]) -> str | None:
    """The message of an exception GX caught, whether reported flat or per metric."""
    if "raised_exception" in info:
        return info.get("exception_message") if info["raised_exception"] else None
    nested = [_exception_message(v) for v in info.values() if isinstance(v, dict)]
    return next((m for m in nested if m), None)


def validate_frame(
    frame: pd.DataFrame, table: str, suite: dict[str, Any], parameters: dict[str, Any], examples: int
) -> dict[str, dict[str, Any]]:
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
    results: dict[str, dict[str, Any]] = {}
    for result in outcome.results:
        config = result.expectation_config
        details = result.result or {}
        results[config.meta["name"]] = {
            "success": bool(result.success),
            "kwargs": {k: v for k, v in config.kwargs.items() if k != "batch_id"},
            "element_count": int(details.get("element_count", len(frame))),
            "unexpected_count": int(details.get("unexpected_count") or 0),
            "missing_count": int(details.get("missing_count") or 0),
            "examples": _examples(details, examples),
            "error": _exception_message(result.exception_info or {}),
        }
    return results


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
                {
                    "success": True,
                    "kwargs": result["kwargs"],
                    "element_count": 0,
                    "unexpected_count": 0,
                    "missing_count": 0,
                    "examples": [],
                    "error": None,
                },
            )
            total["success"] = total["success"] and result["success"]
            for count in ("element_count", "unexpected_count", "missing_count"):
                total[count] += result[count]
            total["examples"] = (total["examples"] + result["examples"])[:examples]
            total["error"] = total["error"] or result["error"]
    return merged


# -- whole-table expectations ------------------------------------------------------------------
# Whole-table checks are a map-reduce over Dask futures: each part file is reduced to small
# per-key frames split into hash buckets, and one task per bucket sees every row of its keys.
# Futures of plain functions are used rather than dask.dataframe collections because shipping
# dask-expr graphs to the scheduler hits a race in dask's expression deduplication
# ("Error during deserialization of the task graph") often enough to fail runs.
MAX_BUCKETS = 64


def key_frame(part: str, table: str, columns: list[str]) -> pd.DataFrame:
    """The key columns of one part file (derived ones included).

    Arrow-backed dtypes keep an integer key an integer in every partition, with or without
    nulls, so equal keys hash alike wherever they are.
    """
    if table == "sequences" and columns == ["evaluation_key"]:
        return evaluation_key_frame(pq.read_table(part, columns=["user_id", "split"]))
    if table == "sequences":
        return row_frame(table, part)[columns]
    return pq.read_table(part, columns=columns).to_pandas(types_mapper=pd.ArrowDtype)


def _bucket_of(keys: pd.DataFrame, buckets: int) -> np.ndarray:
    return (pd.util.hash_pandas_object(keys.astype("string"), index=False).to_numpy() % buckets).astype(np.int64)


def key_count_buckets(part: str, table: str, columns: list[str], buckets: int) -> list[pd.DataFrame]:
    """Map step: how often each key occurs in one part file, split into hash buckets."""
    keys = key_frame(part, table, columns)
    # GX ignores a row only when every key column is missing; do the same.
    keys = keys.dropna(how="all", subset=columns)
    counts = keys.groupby(columns, dropna=False, sort=False).size().rename("rows").reset_index()
    bucket = _bucket_of(counts[columns], buckets)
    return [counts[bucket == b] for b in range(buckets)]


def repeated_keys(pieces: list[pd.DataFrame], columns: list[str], examples: int) -> tuple[int, int, pd.DataFrame]:
    """Reduce step: (rows checked, rows whose key repeats, first repeated keys) of one bucket."""
    counts = pd.concat(pieces, ignore_index=True).groupby(columns, dropna=False)["rows"].sum().reset_index()
    repeated = counts[counts["rows"] > 1]
    return int(counts["rows"].sum()), int(repeated["rows"].sum()), repeated.sort_values(columns).head(examples)


def evaluation_row_buckets(part: str, buckets: int) -> list[pd.DataFrame]:
    """Map step: the validation and test rows of one sequences part file, bucketed by user."""
    rows = evaluation_rows(pq.read_table(part, columns=["user_id", "split", "history", "target"]))
    bucket = _bucket_of(rows[["user_id"]], buckets)
    return [rows[bucket == b] for b in range(buckets)]


def compare_bucket(
    pieces: list[pd.DataFrame], max_history: int, columns: list[str], examples: int
) -> dict[str, tuple[int, int, pd.DataFrame]]:
    """Reduce step: per flag column, (users checked, users failing, first failing users) of one bucket."""
    flags = compare_validation_with_test(pair_validation_with_test(pd.concat(pieces, ignore_index=True)), max_history)
    out = {}
    for column in columns:
        failing = flags.loc[~flags[column], ["user_id"]]
        out[column] = (len(flags), len(failing), failing.sort_values("user_id").head(examples))
    return out


def _submit_bucketed_reduce(client: Client, mapped: list[Any], buckets: int, reducer: Any, **reducer_kwargs: Any) -> list[Any]:
    """Send bucket ``b`` of every mapped partition to one ``reducer`` task; one future per bucket."""
    return [
        client.submit(reducer, [client.submit(operator.getitem, m, b, pure=False) for m in mapped], pure=False, **reducer_kwargs)
        for b in range(buckets)
    ]


def _merge_buckets(per_bucket: list[tuple[int, int, pd.DataFrame]], examples: int) -> dict[str, Any]:
    checked = sum(b[0] for b in per_bucket)
    unexpected = sum(b[1] for b in per_bucket)
    first = pd.concat([b[2] for b in per_bucket], ignore_index=True)
    return _result(unexpected == 0, checked, unexpected, _records(first, examples))


@dataclass
class WholeTableChecks:
    """Submitted whole-table checks: reduce futures per check, collected with :meth:`results`."""

    uniqueness: dict[str, tuple[dict[str, Any], list[Any]]]
    cross_row: dict[str, tuple[str, dict[str, Any]]]
    cross_row_futures: list[Any]

    def results(self, table: str, examples: int) -> dict[str, dict[str, Any]]:
        names = list(self.uniqueness)
        futures = [f for name in names for f in self.uniqueness[name][1]] + self.cross_row_futures
        done = iter(gather_with_progress(futures, f"checking {table} across partitions"))
        results = {}
        for name in names:
            kwargs, bucket_futures = self.uniqueness[name]
            per_bucket = [next(done) for _ in bucket_futures]
            results[name] = {**_merge_buckets(per_bucket, examples), "kwargs": kwargs}
        cross_row_buckets = list(done)
        for column, (name, kwargs) in self.cross_row.items():
            results[name] = {**_merge_buckets([b[column] for b in cross_row_buckets], examples), "kwargs": kwargs}
        return results


def submit_whole_table_checks(
    client: Client, table: str, parts_: list[str], expectations: list[dict[str, Any]], parameters: dict[str, Any], examples: int
) -> WholeTableChecks:
    """Start the table-scope expectations that need the data (key uniqueness, validation vs test rows)."""
    buckets = max(1, min(len(parts_), MAX_BUCKETS))
    uniqueness: dict[str, tuple[dict[str, Any], list[Any]]] = {}
    cross_row: dict[str, tuple[str, dict[str, Any]]] = {}
    for expectation in expectations:
        kind, kwargs, name = expectation["type"], expectation["kwargs"], expectation["meta"]["name"]
        if kind in ("expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"):
            columns = [kwargs["column"]] if "column" in kwargs else list(kwargs["column_list"])
            mapped = client.map(key_count_buckets, parts_, table=table, columns=columns, buckets=buckets, pure=False)
            uniqueness[name] = (kwargs, _submit_bucketed_reduce(client, mapped, buckets, repeated_keys, columns=columns, examples=examples))
        elif kind == "expect_column_values_to_be_in_set":
            cross_row[kwargs["column"]] = (name, kwargs)
    cross_row_futures = []
    if cross_row:
        mapped = client.map(evaluation_row_buckets, parts_, buckets=buckets, pure=False)
        cross_row_futures = _submit_bucketed_reduce(
            client, mapped, buckets, compare_bucket, max_history=parameters["max_history"], columns=list(cross_row), examples=examples
        )
    return WholeTableChecks(uniqueness, cross_row, cross_row_futures)


def _footer_checks(table: str, parts_: list[str], expectation: dict[str, Any]) -> dict[str, Any] | None:
    """Columns and row counts come from the Parquet footers, without reading any data."""
    kind, kwargs = expectation["type"], expectation["kwargs"]
    if kind == "expect_table_columns_to_match_ordered_list":
        declared = SCHEMAS[table]
        wrong = []
        for part in parts_:
            found = pq.read_schema(part)
            if found.names != kwargs["column_list"]:
                wrong.append({"file": Path(part).name, "columns": found.names})
                continue
            # Names alone would let e.g. a string timestamp through; the Arrow types must agree too.
            types = {f.name: str(f.type) for f in found if not f.type.equals(declared.field(f.name).type)}
            if types:
                wrong.append({"file": Path(part).name, "columns": found.names, "unexpected_types": types})
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

    columns_ok = all(
        results[e["meta"]["name"]]["success"] for e in table_scope if e["type"] == "expect_table_columns_to_match_ordered_list"
    )
    if columns_ok and parts_:
        # Everything is submitted before anything is awaited, so the cluster works on all at once.
        row_futures = client.map(validate_part, parts_, table=table, suite=suite, parameters=parameters, examples=examples, pure=False)
        remaining = [e for e in table_scope if e["meta"]["name"] not in results]
        whole_table = submit_whole_table_checks(client, table, parts_, remaining, parameters, examples)
        per_partition = gather_with_progress(row_futures, f"validating {table} ({len(parts_)} partitions)")
        results.update(merge_partition_results(per_partition, examples))
        results.update(whole_table.results(table, examples))
    reason = (
        "not evaluated: the part files do not have the declared columns" if not columns_ok else "not evaluated: the table has no part files"
    )
    return _suite_summary(table, suite, results, parts_, not_evaluated_reason=reason)


def _suite_summary(
    table: str, suite: dict[str, Any], results: dict[str, dict[str, Any]], parts_: list[str], not_evaluated_reason: str
) -> dict[str, Any]:
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
            entry.update(
                success=None,
                element_count=0,
                unexpected_count=0,
                unexpected_percent=None,
                unexpected_examples=[],
                error=not_evaluated_reason,
            )
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
                exception_info={
                    "raised_exception": entry["error"] is not None,
                    "exception_message": entry["error"],
                    "exception_traceback": entry["error"],
                },
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
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(docs_dir).resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    run_id = RunIdentifier(run_name=STAGE, run_time=datetime.datetime.now(datetime.UTC))
    for table, summary in suites.items():
        if not summary["present"]:
            continue
        context.suites.add(gx.ExpectationSuite(name=table, expectations=expectations_from_json(load_suite_json(table))))
        suite_result = _gx_suite_result(table, summary, run_id)
        (results_dir / f"{table}.json").write_text(json.dumps(suite_result.to_json_dict(), indent=2, default=str), encoding="utf-8")
        suite_id = ExpectationSuiteIdentifier(table)
        context.validation_results_store.store_validation_results(
            suite_result, ValidationResultIdentifier(suite_id, run_id, run_name), suite_id
        )
    context.build_data_docs(site_names=["run"])
    return docs_dir / "index.html"


# -- the stage ---------------------------------------------------------------------------------
def _input_hashes(run: RunDir, present: list[str]) -> dict[str, str]:
    """Content hashes of the tables to validate (from the manifest where a stage recorded them)."""
    recorded = {name: digest for entry in run.manifest()["stages"].values() for name, digest in entry.get("outputs", {}).items()}
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
    run_dir = RunDir(Path(run).resolve())  # Dask workers may run in another folder
    present = [t for t in TABLES if run_dir.table(t).is_dir()]
    if not present:
        raise StageError(f"run folder {run} has none of the tables {', '.join(TABLES)}; run `rrec ingest --run {run}` first")
    config = settings.model_dump()
    inputs = _input_hashes(run_dir, present)
    fingerprint = run_dir.fingerprint(STAGE, config=config, inputs=inputs)
    if not force and run_dir.is_current(STAGE, fingerprint):
        log.info("validation of %s is up to date (use --force to rerun)", run)
        return read_summary(run)

    # Validation runs inside the stage: the run folder is locked against concurrent writers
    # while its tables are read, and the manifest's wall time covers the whole check.
    with run_dir.stage(STAGE, fingerprint, config=config, inputs=inputs) as out:
        parameters = suite_parameters(run_dir, settings)
        suites: dict[str, dict[str, Any]] = {}
        for table in TABLES:
            if table in present:
                suites[table] = validate_table(run_dir, table, client, parameters, settings.examples)
            else:
                suites[table] = {
                    "present": False,
                    "success": True,
                    "all_passed": None,
                    "critical_failures": 0,
                    "warning_failures": 0,
                    "expectations": [],
                }
        critical = sum(s["critical_failures"] for s in suites.values())
        summary = {
            "run": str(run),
            "validated_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "code_version": code_version(),
            "parameters": parameters,
            "success": critical == 0,
            "critical_failures": critical,
            "warning_failures": sum(s["warning_failures"] for s in suites.values()),
            "suites": suites,
            "data_docs": f"{DATA_DOCS_DIR}/index.html",
        }
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
