"""The tail every stage command shares: settings, the no-cluster checks, a cluster, execute.

A stage command declares its options and calls :func:`run_stage_command`; a stage that is
already current is reported without starting a Dask cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from core.cli_common import settings_for
from core.protocol import Stage, StageResult
from core.stage import RunDir


def run_stage_command(stage: Stage[Any], run: Path, config: Path | None, force: bool, /, **overrides: Any) -> StageResult:
    """Run ``stage`` into ``run`` as its command does and print its one-line summary.

    ``overrides`` are the command-line options (``None`` means "not given"); ``workers`` and
    ``scheduler`` choose the cluster.
    """
    from pipeline.cluster import dask_client

    settings, common = settings_for(config, stage.name, stage.settings_type, **overrides)
    run_dir = RunDir(Path(run).resolve())
    stage.preflight(run_dir, settings)
    plan = stage.plan(run_dir, settings)  # once: raw inputs are expanded and hashed a single time
    if not force and stage.is_current(run_dir, settings, plan):
        result = StageResult(stage.name, skipped=True, entry=run_dir.require(stage.name))
    else:
        with dask_client(common.workers, common.scheduler) as client:
            result = stage.execute(run_dir, settings, client, force=force, plan=plan)
    typer.echo(stage.report(result))
    return result
