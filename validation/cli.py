"""``rrec validate``: run the suites over a run folder and print what failed."""

from __future__ import annotations

from typing import Annotated

import typer

from core.cli_common import ConfigOpt, ForceOpt, RunOpt, SchedulerOpt, WorkersOpt, user_errors
from validation.summary import ValidationSummary

EXIT_CRITICAL_FAILURE = 1


def print_summary(summary: ValidationSummary) -> None:
    """A rich table: one line per suite, then one per failed or not evaluated expectation."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    suites = Table(title=f"Validation of {summary.run}")
    for column in ("suite", "rows", "expectations", "passed", "critical failures", "warnings"):
        suites.add_column(column, justify="left" if column == "suite" else "right")
    for name, suite in summary.suites.items():
        if not suite.present:
            suites.add_row(name, "-", "-", "table not present", "0", "0")
            continue
        passed = sum(1 for e in suite.expectations if e.success)
        critical = f"[red]{suite.critical_failures}[/red]" if suite.critical_failures else "0"
        warnings = f"[yellow]{suite.warning_failures}[/yellow]" if suite.warning_failures else "0"
        suites.add_row(name, str(suite.rows), str(len(suite.expectations)), str(passed), critical, warnings)
    console.print(suites)

    failures = [e for s in summary.suites.values() for e in s.expectations if e.success is not True]
    if failures:
        details = Table(title="Failed or not evaluated expectations")
        details.add_column("expectation", no_wrap=True)
        for column in ("severity", "computed by", "unexpected", "examples / error"):
            details.add_column(column, overflow="fold")
        for entry in failures:
            shown = entry.error or ", ".join(str(x) for x in entry.unexpected_examples[:3])
            details.add_row(entry.name, entry.severity, entry.computed_by, str(entry.unexpected_count), shown)
        console.print(details)
    verdict = "[green]passed[/green]" if summary.success else f"[red]{summary.critical_failures} critical failure(s)[/red]"
    console.print(f"Validation {verdict}; report: {summary.run}/validation/{summary.data_docs}")


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
        row_engine: Annotated[
            str | None,
            typer.Option("--row-engine", help="arrow (default: vectorised, on the cluster) or gx (Great Expectations' pandas engine)."),
        ] = None,
    ) -> None:
        """Check every table of a run folder against its Great Expectations suite.

        Writes RUN/validation/summary.json (per suite and expectation: severity, who computed
        it, success, unexpected count, examples; plus critical_failures) and the GX Data Docs
        HTML in RUN/validation/data_docs/. Exits with status 1 when a critical expectation
        fails, which also makes `rrec release` refuse the run. A missing table (e.g. `filtered`
        before annotation) is reported as not present.
        """
        from pipeline.stage_command import run_stage_command
        from validation.runner import VALIDATE, read_summary

        run_stage_command(
            VALIDATE,
            run,
            config,
            force,
            examples=examples,
            min_history=min_history,
            rationale_min_chars=rationale_min_chars,
            rationale_max_chars=rationale_max_chars,
            row_engine=row_engine,
            workers=workers,
            scheduler=scheduler,
        )
        summary = read_summary(run)
        print_summary(summary)
        if summary.critical_failures:
            raise typer.Exit(EXIT_CRITICAL_FAILURE)
