"""``rrec validate``: run the Great Expectations suites over a run folder."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from core.cli_common import ConfigOpt, ForceOpt, RunOpt, SchedulerOpt, WorkersOpt, settings_for, user_errors

EXIT_CRITICAL_FAILURE = 1


def print_summary(summary: dict[str, Any]) -> None:
    """A rich table: one line per suite, then one per failed expectation."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    suites = Table(title=f"Validation of {summary['run']}")
    for column in ("suite", "rows", "expectations", "passed", "critical failures", "warnings"):
        suites.add_column(column, justify="left" if column == "suite" else "right")
    for name, suite in summary["suites"].items():
        if not suite["present"]:
            suites.add_row(name, "-", "-", "table not present", "0", "0")
            continue
        entries = suite["expectations"]
        passed = sum(1 for e in entries if e["success"])
        critical = f"[red]{suite['critical_failures']}[/red]" if suite["critical_failures"] else "0"
        warnings = f"[yellow]{suite['warning_failures']}[/yellow]" if suite["warning_failures"] else "0"
        suites.add_row(name, str(suite["rows"]), str(len(entries)), str(passed), critical, warnings)
    console.print(suites)

    failures = [(t, e) for t, s in summary["suites"].items() for e in s["expectations"] if e["success"] is not True]
    if failures:
        details = Table(title="Failed or not evaluated expectations")
        for column in ("expectation", "severity", "unexpected", "examples / error"):
            details.add_column(column, overflow="fold")
        for _, entry in failures:
            shown = entry["error"] or ", ".join(str(x) for x in entry["unexpected_examples"][:3])
            details.add_row(entry["name"], entry["severity"], str(entry["unexpected_count"]), shown)
        console.print(details)
    verdict = "[green]passed[/green]" if summary["success"] else f"[red]{summary['critical_failures']} critical failure(s)[/red]"
    console.print(f"Validation {verdict}; report: {summary['run']}/validation/{summary['data_docs']}")


def register(app: typer.Typer) -> None:
    """Add ``rrec validate`` to the ``rrec`` app."""

    @app.command("validate")
    @user_errors
    def validate(
        run: RunOpt,
        config: ConfigOpt = None,
        workers: WorkersOpt = None,
        scheduler: SchedulerOpt = None,
        force: ForceOpt = False,
        examples: Annotated[int | None, typer.Option("--examples", min=0, help="Unexpected values kept per failed expectation.")] = None,
        min_history: Annotated[int | None, typer.Option("--min-history", min=0, help="Shortest history a sequence may have.")] = None,
        rationale_min_chars: Annotated[
            int | None, typer.Option("--rationale-min-chars", min=1, help="Shortest rationale accepted, in characters.")
        ] = None,
        rationale_max_chars: Annotated[
            int | None, typer.Option("--rationale-max-chars", min=1, help="Longest rationale accepted, in characters.")
        ] = None,
    ) -> None:
        """Check every table of a run folder against its Great Expectations suite.

        Writes RUN/validation/summary.json (per suite and expectation: severity, success,
        unexpected count, examples; plus critical_failures) and the GX Data Docs HTML in
        RUN/validation/data_docs/. Exits with status 1 when a critical expectation fails, which
        also makes `rrec release` refuse the run. A missing table (e.g. `filtered` before
        annotation) is reported as not present.
        """
        from pipeline.cluster import dask_client
        from validation.runner import ValidateSettings, run_validation

        settings, common = settings_for(
            config,
            "validate",
            ValidateSettings,
            examples=examples,
            min_history=min_history,
            rationale_min_chars=rationale_min_chars,
            rationale_max_chars=rationale_max_chars,
            workers=workers,
            scheduler=scheduler,
        )
        with dask_client(common.workers, common.scheduler) as client:
            summary = run_validation(run, client, force=force, settings=settings)
        print_summary(summary)
        if summary["critical_failures"]:
            raise typer.Exit(EXIT_CRITICAL_FAILURE)
