"""Row expectations run by Great Expectations' pandas engine on one partition (the reference engine).

:mod:`validation.row_checks` is the default, vectorised engine; this one runs the very same
suite JSON through GX itself (``validate: {row_engine: gx}``) and is what the tests pin the
default to. One ephemeral GX context per partition; GX is imported only when a check runs.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from validation.row_checks import read_partition
from validation.spec import INDEX_COLUMNS, ROW_SCOPE
from validation.summary import CheckResult


def gx_context() -> Any:
    """An ephemeral, quiet GX context (no analytics, no progress bars, docs sites in memory)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults, ProgressBarsConfig

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _examples(result: dict[str, Any], limit: int) -> tuple[Any, ...]:
    indexed = result.get("partial_unexpected_index_list") or []
    if indexed and isinstance(indexed[0], dict):
        return tuple(indexed[:limit])
    return tuple(list(result.get("partial_unexpected_list") or [])[:limit])


def _exception_message(info: dict[str, Any]) -> str | None:
    """The message of an exception GX caught, whether reported flat or per metric."""
    if "raised_exception" in info:
        return info.get("exception_message") if info["raised_exception"] else None
    nested = [_exception_message(v) for v in info.values() if isinstance(v, dict)]
    return next((m for m in nested if m), None)


def pandas_frame(table_name: str, part: str, suite: dict[str, Any]) -> pd.DataFrame:
    """One part file's checked columns as the pandas frame GX's pandas data source reads."""
    arrow = read_partition(table_name, part, suite)
    if table_name == "sequences":
        # Nullable integers stay integers (a missing target timestamp is <NA>, not NaN).
        return arrow.to_pandas(types_mapper={arrow.schema.field("target_timestamp").type: pd.Int64Dtype()}.get)
    return arrow.to_pandas()


def validate_frame(
    frame: pd.DataFrame, table: str, suite: dict[str, Any], parameters: dict[str, Any], examples: int
) -> dict[str, CheckResult]:
    """Run the ``row`` expectations of ``suite`` on one partition with GX; results keyed by name."""
    import great_expectations as gx

    from validation.suites import expectations_from_json

    context = gx_context()
    batch_definition = context.data_sources.add_pandas(table).add_dataframe_asset(table).add_batch_definition_whole_dataframe("partition")
    gx_suite = context.suites.add(gx.ExpectationSuite(name=table, expectations=expectations_from_json(suite, scope=ROW_SCOPE)))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=table, data=batch_definition, suite=gx_suite))
    index_columns = [c for c in INDEX_COLUMNS[table] if c in frame.columns]
    outcome = definition.run(
        batch_parameters={"dataframe": frame},
        expectation_parameters=parameters,
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": examples, "unexpected_index_column_names": index_columns},
    )
    results: dict[str, CheckResult] = {}
    for result in outcome.results:
        details = result.result or {}
        results[result.expectation_config.meta["name"]] = CheckResult(
            success=bool(result.success),
            element_count=int(details.get("element_count", len(frame))),
            unexpected_count=int(details.get("unexpected_count") or 0),
            missing_count=int(details.get("missing_count") or 0),
            examples=_examples(details, examples),
            error=_exception_message(result.exception_info or {}),
        )
    return results


def gx_check_part(part: str, table: str, suite: dict[str, Any], parameters: dict[str, Any], examples: int) -> dict[str, CheckResult]:
    """Dask task: read one part file and run the row expectations with GX."""
    return validate_frame(pandas_frame(table, part, suite), table, suite, parameters, examples)
