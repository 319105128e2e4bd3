"""Options shared by every stage command (DESIGN.md, "Command-line contract").

A command module declares its options with these aliases so names, help texts and defaults
agree everywhere, then calls :func:`settings_for` to merge config file and overrides.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from core.config import CommonSettings, ConfigError, S, common, load_config, section

RunOpt = Annotated[Path, typer.Option("--run", help="Run folder of one domain (created if missing).")]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="YAML config file; command-line options override its values.", exists=True, dir_okay=False),
]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="Local Dask worker processes (default: one per core).", min=1)]
SchedulerOpt = Annotated[
    str | None,
    typer.Option("--scheduler", help="Address of an existing Dask scheduler (tcp://HOST:PORT) instead of a local cluster."),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rerun even if inputs and settings are unchanged.")]

log = logging.getLogger("rrec")
F = TypeVar("F", bound=Callable[..., Any])


def settings_for(config_path: Path | None, name: str, model: type[S], /, **overrides: Any) -> tuple[S, CommonSettings]:
    """Stage settings and common settings (seed, workers, scheduler) for one command."""
    config = load_config(config_path)
    common_keys = {k: overrides.pop(k) for k in ("workers", "scheduler", "seed") if k in overrides and k not in model.model_fields}
    return section(config, name, model, overrides), common(config, common_keys)


def user_errors(func: F) -> F:
    """Turn expected, user-fixable errors into one clear line and exit status 2, no traceback."""
    from core.stage import StageError

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, StageError, FileNotFoundError, ValueError) as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.exception("failed")
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
