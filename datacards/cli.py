"""``rrec card``: build the dataset card of run folders without releasing them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.cli_common import ConfigOpt, settings_for, user_errors
from release.cli import MANY_VALUES, RunsOpt, collect_runs


def register(app: typer.Typer) -> None:
    @app.command("card", context_settings=MANY_VALUES)
    @user_errors
    def card_command(
        ctx: typer.Context,
        runs: RunsOpt,
        out: Annotated[Path, typer.Option("--out", help="Folder for README.md and figures/ (created if missing).")],
        version: Annotated[str, typer.Option("--version", help="Version the card describes (X.Y.Z).")] = "1.0.0",
        repo_id: Annotated[str | None, typer.Option("--repo-id", help="Hub dataset id ORG/NAME for the loading snippet.")] = None,
        pretty_name: Annotated[str | None, typer.Option("--pretty-name", help="Human-readable dataset name.")] = None,
        license: Annotated[str | None, typer.Option("--license", help="Hub license id of the release (default: other).")] = None,
        config: ConfigOpt = None,
    ) -> None:
        """Build the dataset card (README.md with Hub YAML metadata and datasheet) and its figures.

        Reads validated run folders (one per domain). `rrec release` builds the same card inside
        every release; this command previews it.
        """
        from datacards.card import CardSettings, build_card
        from release.layout import load_domains

        settings, _ = settings_for(config, "card", CardSettings, pretty_name=pretty_name, license=license)
        domains = load_domains(collect_runs(runs, ctx))
        path = build_card(domains, out, version, settings, repo_id=repo_id)
        typer.echo(f"Wrote the dataset card {path} and its figures in {path.parent / 'figures'}.")
