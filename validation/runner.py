"""Stage ``validate``: check every table of a run folder against its suite, on the Dask cluster.

The suites (:mod:`validation.suites`, checked in as JSON) hold built-in GX expectations, each
with a severity and a scope. How they are computed:

- ``row`` expectations: evaluated per part file on the partition's columns (derived columns
  for the lists of ``sequences``, :mod:`validation.derived`), one Dask task per part or per run
  of consecutive small parts (:class:`validation.whole_table.Layout`), with vectorised
  Arrow kernels (:mod:`validation.row_checks`; ``row_engine: gx`` runs GX's pandas engine
  instead, :mod:`validation.gx_checks`, the reference both are tested against); the
  per-partition results are merged (counts summed, the first examples kept in partition order);
- ``table`` expectations: from the Parquet footers or a map-reduce over futures
  (:mod:`validation.whole_table`).

Every table is submitted before any result is awaited, and GX (needed only by the report) is
imported in a thread meanwhile.

The stage writes ``validation/summary.json`` (:class:`validation.summary.ValidationSummary`;
``rrec release`` reads ``success`` and ``critical_failures``), one GX validation result per
suite in ``validation/results/`` and the Data Docs site in ``validation/data_docs/``
(:mod:`validation.report`). Its upstream chain names the outputs it checked (``ingest``'s
``interactions`` and ``items``, and ``sequences``' and ``filter``'s tables when they exist), so
a table changed after validation makes the validation stale and a release is refused.

Importing this module does not import Great Expectations: the default engine never needs it,
and the report imports it when it renders.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from core.config import StageSettings
from core.hashing import code_version, hash_path
from core.progress import gather_with_progress
from core.protocol import Stage, StageContext, StageResult
from core.records import EARLIEST_TIMESTAMP_MS, latest_timestamp_ms
from core.runtime import importing_ahead
from core.stage import RunDir, StageError
from core.tables import parts
from validation.report import REPORT_MODULES
from validation.report_process import current_report_process, write_report
from validation.row_checks import check_part
from validation.spec import (
    COMPUTED_BY_GX,
    COMPUTED_BY_RREC,
    ROW_SCOPE,
    TABLE_SCOPE,
    TABLE_STAGE,
    TABLES,
    load_suite_json,
    substitute_parameters,
    suite_file,
)
from validation.summary import CheckResult, ExpectationSummary, SuiteSummary, ValidationSummary, merge_results
from validation.whole_table import Layout, WholeTableChecks, footer_check, read_footers, submit_whole_table_checks

log = logging.getLogger(__name__)

STAGE = "validate"
OUTPUT = "validation"
SUMMARY_FILE = "summary.json"
# Used when the run's manifest lacks the sequences settings (DESIGN.md defaults).
DEFAULT_MAX_HISTORY = 50
DEFAULT_NUM_NEGATIVES = 99
UNBOUNDED_HISTORY = 2**31 - 1
COLUMNS_CHECK = "expect_table_columns_to_match_ordered_list"


class ValidateSettings(StageSettings):
    """Settings of ``rrec validate`` (config section ``validate``)."""

    examples: int = 5
    min_history: int = 1
    rationale_min_chars: int = 20
    # The filter keeps up to 400 words; 4000 characters leave room for long words.
    rationale_max_chars: int = 4000
    row_engine: Literal["arrow", "gx"] = Field(
        "arrow", description="Who computes the row expectations: vectorised Arrow kernels (fast) or GX's pandas engine (the reference)."
    )


def suite_parameters(run: RunDir, settings: ValidateSettings, now_ms: int | None = None) -> dict[str, Any]:
    """Values of the suites' ``$PARAMETER`` placeholders for this run.

    The timestamp window is :mod:`core.records`' (ingest enforces the same one).
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
    return {
        "earliest_timestamp_ms": EARLIEST_TIMESTAMP_MS,
        "latest_timestamp_ms": latest_timestamp_ms(now_ms),
        # With every prefix as a train target (official rules), the first one has no history.
        "min_history": 0 if sequences_config.get("train_targets") == "all" else settings.min_history,
        # max_history 0 keeps whole histories (sequences stage): no upper bound then.
        "max_history": int(sequences_config.get("max_history", DEFAULT_MAX_HISTORY)) or UNBOUNDED_HISTORY,
        "num_candidates": 1 + int(sequences_config.get("num_negatives", DEFAULT_NUM_NEGATIVES)),
        "rationale_min_chars": settings.rationale_min_chars,
        "rationale_max_chars": settings.rationale_max_chars,
    }


@dataclass
class PendingTable:
    """One table's checks as submitted to the cluster: footer results now, futures for the rest."""

    table: str
    suite: dict[str, Any]
    partitions: int
    results: dict[str, CheckResult]
    columns_ok: bool
    row_futures: list[Any] = field(default_factory=list)
    whole_table: WholeTableChecks | None = None


def submit_table(
    run: RunDir, table: str, client: Any, parameters: dict[str, Any], examples: int, row_engine: str = "arrow"
) -> PendingTable:
    """Check the footers of one table and submit its row and whole-table checks; nothing is awaited."""
    suite = load_suite_json(table)
    parts_ = [str(p) for p in parts(run.table(table))]
    table_scope = [e for e in suite["expectations"] if e["meta"]["scope"] == TABLE_SCOPE]
    footers = read_footers(parts_)
    results = {e["meta"]["name"]: r for e in table_scope if (r := footer_check(table, footers, e)) is not None}
    columns_ok = all(results[e["meta"]["name"]].success for e in table_scope if e["type"] == COLUMNS_CHECK)
    pending = PendingTable(table, suite, len(parts_), results, columns_ok)
    if columns_ok and parts_:
        task = check_part if row_engine == "arrow" else _gx_task()
        layout = Layout.of(footers)
        pending.row_futures = client.map(
            check_group, layout.groups, task=task, table=table, suite=suite, parameters=parameters, examples=examples, pure=False
        )
        remaining = [e for e in table_scope if e["meta"]["name"] not in results]
        pending.whole_table = submit_whole_table_checks(client, table, layout, remaining, parameters, examples)
    return pending


def collect_table(pending: PendingTable, parameters: dict[str, Any], examples: int, row_engine: str = "arrow") -> SuiteSummary:
    """Wait for the checks of one submitted table; its suite summary."""
    table, results = pending.table, dict(pending.results)
    if pending.whole_table is not None:
        per_group = gather_with_progress(pending.row_futures, f"validating {table} ({pending.partitions} partitions)")
        results.update(merge_results([r for group in per_group for r in group], examples))
        results.update(pending.whole_table.results(table, examples))
    reason = (
        "not evaluated: the part files do not have the declared columns"
        if not pending.columns_ok
        else "not evaluated: the table has no part files"
    )
    row_by = COMPUTED_BY_GX if row_engine == "gx" else COMPUTED_BY_RREC
    expectations = [
        ExpectationSummary.of(
            e,
            substitute_parameters(e["kwargs"], parameters),
            row_by if e["meta"]["scope"] == ROW_SCOPE else COMPUTED_BY_RREC,
            results.get(e["meta"]["name"]),
            reason,
        )
        for e in pending.suite["expectations"]
    ]
    rows = next((e.observed_value for e in expectations if e.type == "expect_table_row_count_to_be_between"), None)
    return SuiteSummary(present=True, expectations=expectations, partitions=pending.partitions, rows=rows)


def validate_table(
    run: RunDir, table: str, client: Any, parameters: dict[str, Any], examples: int, row_engine: str = "arrow"
) -> SuiteSummary:
    """Validate one table of a run folder on the cluster behind ``client``; its suite summary."""
    return collect_table(submit_table(run, table, client, parameters, examples, row_engine), parameters, examples, row_engine)


def check_group(group: list[str], task: Any, **kwargs: Any) -> list[dict[str, CheckResult]]:
    """Dask task: the row checks ``task`` of each part file of ``group``, one result per part, in order."""
    return [task(part, **kwargs) for part in group]


def _gx_task() -> Any:
    from validation.gx_checks import gx_check_part

    return gx_check_part


def present_tables(run: RunDir) -> list[str]:
    """The tables of ``run`` that a completed stage wrote (in :data:`TABLES` order)."""
    present = []
    for table in TABLES:
        entry = run.entry(TABLE_STAGE[table])
        if entry is not None and table in entry.get("outputs", {}) and run.table(table).is_dir():
            present.append(table)
    return present


class ValidateStage(Stage[ValidateSettings]):
    """Check every table present in a run folder against its suite; write summary and Data Docs."""

    name = STAGE
    upstream = ("ingest",)
    optional_upstream = ("sequences", "filter")
    settings_type = ValidateSettings

    def external_inputs(self, run: RunDir, settings: ValidateSettings, resolved: Any = None) -> dict[str, str]:
        """The suite files: editing a suite makes the validation stale."""
        return {f"suite:{table}": hash_path(suite_file(table)) for table in TABLES}

    def consumed_outputs(self, run: RunDir, stage: str) -> dict[str, str]:
        """Only the tables validated (ingest's ``rejects`` is not checked)."""
        return {name: digest for name, digest in run.require(stage)["outputs"].items() if name in TABLES}

    def preflight(self, run: RunDir, settings: ValidateSettings) -> None:
        """Refuse a run folder without tables, or whose table-writing stages are stale."""
        if not present_tables(run):
            raise StageError(f"run folder {run.path} has none of the tables {', '.join(TABLES)}; run `rrec ingest --run {run.path}` first")
        stale = run.stale_stages()
        for stage in self.optional_upstream:
            if stage in stale:
                raise StageError(
                    f"stage '{stage}' of {run.path} is stale ({stale[stage]}); rerun it before validate: `rrec {stage} --run {run.path}`"
                )

    def run(self, ctx: StageContext[ValidateSettings]) -> None:
        settings, run = ctx.settings, ctx.run
        # The report needs GX (seconds to import): `rrec run` has a helper process import it
        # at low priority from the start (validation.report_process); without one, it is
        # imported here while the cluster checks the tables.
        with importing_ahead(() if current_report_process() else REPORT_MODULES):
            summary = self._checked(run, settings, ctx.client)
        out_dir = ctx.out.output_path(OUTPUT, folder=True)
        write_report(out_dir, run.path.name, summary)
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary.to_json(), indent=2, default=str) + "\n", encoding="utf-8")
        ctx.out.record(
            rows_in=summary.rows,
            critical_failures=summary.critical_failures,
            warning_failures=summary.warning_failures,
            success=summary.success,
        )

    def _checked(self, run: RunDir, settings: ValidateSettings, client: Any) -> ValidationSummary:
        """Every present table checked against its suite (absent ones marked so)."""
        parameters = suite_parameters(run, settings)
        # Every table is submitted before any is awaited: the cluster never idles between tables.
        pending = {
            table: submit_table(run, table, client, parameters, settings.examples, settings.row_engine) for table in present_tables(run)
        }
        suites = {
            table: collect_table(pending[table], parameters, settings.examples, settings.row_engine)
            if table in pending
            else SuiteSummary.absent()
            for table in TABLES
        }
        return ValidationSummary(
            run=str(run.path),
            validated_at=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            code_version=code_version(),
            parameters=parameters,
            suites=suites,
            data_docs="data_docs/index.html",
        )

    def report(self, result: StageResult) -> str:
        """One line: rows checked, critical failures and warnings."""
        if result.skipped:
            return super().report(result)
        entry = result.entry
        return (
            f"validate: {entry.get('rows_in') or 0:,} rows checked; "
            f"{entry.get('critical_failures', 0)} critical failure(s), {entry.get('warning_failures', 0)} warning(s)"
        )


VALIDATE = ValidateStage()


def read_summary(run: Path | str) -> ValidationSummary:
    """The typed summary of a run folder's last validation."""
    path = Path(run) / OUTPUT / SUMMARY_FILE
    if not path.exists():
        raise StageError(f"{path} does not exist; run `rrec validate --run {run}` first")
    return ValidationSummary.from_json(json.loads(path.read_text(encoding="utf-8")))


def run_validation(run: Path | str, client: Any, force: bool = False, settings: ValidateSettings | None = None) -> dict[str, Any]:
    """Validate run folder ``run`` (see :class:`ValidateStage`); returns ``summary.json`` as written.

    Kept for callers of the dict form; :func:`read_summary` gives the typed summary.
    """
    VALIDATE.execute(run, settings or ValidateSettings(), client, force=force)
    return read_summary(Path(run)).to_json()
