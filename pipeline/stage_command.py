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


def run_stage_command(stage: Stage[Any], run: Path, config: Path | None, force: bool, /, **overrides: Any) -> StageResult:
    """Run ``stage`` into ``run`` as its command does and print its one-line summary.

    ``overrides`` are the command-line options (``None`` means "not given"); ``workers`` and
    ``scheduler`` choose the cluster.
    """
    from pipeline.cluster import dask_client

    settings, common = settings_for(config, stage.name, stage.settings_type, **overrides)
    if not force and stage.is_current(run, settings):
        from core.stage import RunDir

        result = StageResult(stage.name, skipped=True, entry=RunDir(run).require(stage.name))
    else:
        with dask_client(common.workers, common.scheduler) as client:
            result = stage.execute(run, settings, client, force=force)
    typer.echo(stage.report(result))
    return result
