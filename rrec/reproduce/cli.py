"""``rrec reproduce``: the known-answer experiment in one command (heavy imports inside the body)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.cli_common import user_errors


def register(app: typer.Typer) -> None:
    @app.command("reproduce")
    @user_errors
    def reproduce_command(
        out: Annotated[
            Path, typer.Option("--out", help="Output folder: the world's release, models, results.json, results.md, figure.png.")
        ],
        quick: Annotated[bool, typer.Option("--quick", help="A small world and short trainings (about 5 minutes on 2 cores).")] = False,
        seeds: Annotated[
            int | None, typer.Option("--seeds", min=1, help="Training seeds per variant (default: 3, or 1 with --quick).")
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Rebuild the world and retrain everything.")] = False,
    ) -> None:
        """Test the paper's findings (A vs B vs C, GRPO, baselines) on a world whose next item is known.

        Builds a world whose next item follows three stated rules (follow-up family, store
        loyalty, price band), releases it through the whole chain (train_targets: all), trains
        variants A and C with a small word-level model on CPU, evaluates A, B, C, SFT+GRPO,
        random, popularity and SASRec on the whole test split, and repeats A/B/C/SFT+GRPO on a
        control world whose rationales are shuffled across rows. Writes OUT/results.json,
        OUT/results.md and OUT/figure.png (95% bootstrap intervals).
        """
        from rrec.reproduce.experiment import ExperimentSettings, run_experiment

        settings = ExperimentSettings.quick() if quick else ExperimentSettings()
        if seeds is not None:
            settings = settings.model_copy(update={"seeds": seeds})
        results = run_experiment(out, settings, force=force)
        typer.echo((Path(out) / "results.md").read_text(encoding="utf-8"))
        typer.echo(
            f"Wrote {Path(out) / 'results.json'} ({results['n']} test rows, {len(results['seeds'])} seed(s)) and {Path(out) / 'figure.png'}."
        )
