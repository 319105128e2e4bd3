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


def deprecated_alias(name: str, value: Any, old_name: str, old_value: Any) -> Any:
    """The value of option ``name``, or of its deprecated spelling ``old_name`` with a warning on stderr.

    Old spellings keep working for one release. Giving both spellings is an error, since they
    could disagree.
    """
    if old_value is None:
        return value
    if value is not None:
        raise ValueError(f"{old_name} is the old spelling of {name}; give only {name}")
    typer.echo(f"deprecated: {old_name} is renamed {name}; {old_name} will be removed in the next release", err=True)
    return old_value


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
