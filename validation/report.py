"""The GX validation results and Data Docs site of a validation, rebuilt from its typed summary.

Every expectation is shown with its severity (critical: blocks a release; warning: reported
only) and with who computed it (GX's pandas engine, or rrec's own code on the Dask cluster):
the rendered description starts with both labels, and the expectation's ``meta`` carries
them for anyone reading the JSON results. The site stays under the run's ``validation/``
output (``data_docs/``), with one ``results/<table>.json`` per suite beside it.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from validation.spec import COMPUTED_BY_GX, COMPUTED_BY_LABEL, COMPUTED_BY_RREC, SEVERITY_LABEL, TABLE_SCOPE, load_suite_json
from validation.summary import ExpectationSummary, SuiteSummary, ValidationSummary

DATA_DOCS_DIR = "data_docs"
RESULTS_DIR = "results"
RUN_NAME = "validate"
REPORT_MODULES = (
    "great_expectations",
    "great_expectations.core.run_identifier",
    "great_expectations.data_context.types.resource_identifiers",
    "validation.gx_checks",
    "validation.suites",
)
"""What :func:`write_gx_reports` imports (GX takes seconds): the validate stage and ``rrec run``
import them ahead (:func:`core.runtime.importing_ahead`)."""


def computed_by_label(entry: ExpectationSummary) -> str:
    """Who computed an expectation, in words: GX, or rrec's Dask code (per partition or whole-table)."""
    if entry.computed_by == COMPUTED_BY_GX:
        return COMPUTED_BY_LABEL[COMPUTED_BY_GX]
    if entry.scope == TABLE_SCOPE:
        return f"{COMPUTED_BY_LABEL[COMPUTED_BY_RREC]} (whole table)"
    return f"{COMPUTED_BY_LABEL[COMPUTED_BY_RREC]} (vectorised, per partition)"


def labelled_description(entry: ExpectationSummary) -> str:
    """The description Data Docs render: severity and "computed by" labels, then the rule."""
    return f"[{SEVERITY_LABEL[entry.severity]} · {computed_by_label(entry)}] {entry.description or entry.name}"


def _gx_expectation_result(entry: ExpectationSummary) -> Any:
    from great_expectations.core import ExpectationValidationResult
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    meta = {"name": entry.name, "severity": entry.severity, "scope": entry.scope, "computed_by": entry.computed_by}
    if entry.derived:
        meta["derived"] = entry.derived
    config = ExpectationConfiguration(
        type=entry.type, kwargs=entry.kwargs, meta=meta, description=labelled_description(entry), severity=entry.severity
    )
    column = entry.kwargs.get("column")
    values = [e.get(column, e) if isinstance(e, dict) else e for e in entry.unexpected_examples]
    result: dict[str, Any] = {
        "element_count": entry.element_count,
        "unexpected_count": entry.unexpected_count,
        "unexpected_percent": entry.unexpected_percent,
        "partial_unexpected_list": values,
    }
    if entry.observed_value is not None:
        result["observed_value"] = entry.observed_value
    return ExpectationValidationResult(
        success=bool(entry.success),
        expectation_config=config,
        result=result,
        exception_info={"raised_exception": entry.error is not None, "exception_message": entry.error, "exception_traceback": entry.error},
    )


def gx_suite_result(table: str, suite: SuiteSummary, run_id: Any) -> Any:
    """One suite's summary as a GX ``ExpectationSuiteValidationResult`` (what Data Docs render)."""
    from great_expectations.core import ExpectationSuiteValidationResult

    results = [_gx_expectation_result(entry) for entry in suite.expectations]
    evaluated = len(results)
    passed = sum(1 for r in results if r.success)
    return ExpectationSuiteValidationResult(
        success=bool(suite.all_passed),
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


def write_gx_reports(out_dir: Path, run_name: str, summary: ValidationSummary) -> Path:
    """Write one GX validation result per suite (JSON) and build the Data Docs site; returns its index."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier, ValidationResultIdentifier

    from validation.gx_checks import gx_context
    from validation.suites import expectations_from_json

    docs_dir = Path(out_dir).resolve() / DATA_DOCS_DIR
    results_dir = Path(out_dir) / RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    context = gx_context()
    context.add_data_docs_site(
        "run",
        {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    run_id = RunIdentifier(run_name=RUN_NAME, run_time=datetime.datetime.now(datetime.UTC))
    for table, suite in summary.suites.items():
        if not suite.present:
            continue
        context.suites.add(gx.ExpectationSuite(name=table, expectations=expectations_from_json(load_suite_json(table))))
        suite_result = gx_suite_result(table, suite, run_id)
        (results_dir / f"{table}.json").write_text(json.dumps(suite_result.to_json_dict(), indent=2, default=str), encoding="utf-8")
        suite_id = ExpectationSuiteIdentifier(table)
        context.validation_results_store.store_validation_results(
            suite_result, ValidationResultIdentifier(suite_id, run_id, run_name), suite_id
        )
    context.build_data_docs(site_names=["run"])
    return docs_dir / "index.html"
