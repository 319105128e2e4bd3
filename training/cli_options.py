"""Options shared by ``rrec train ...``, ``rrec evaluate`` and ``rrec baselines`` (one name per idea).

- ``--dataset PATH_OR_ID``: the release (a local registry, a pulled folder or a Hub dataset id);
- ``--subset NAME``: the dataset subset (the Hub "config", i.e. the domain: ``grocery``);
- ``--revision vX.Y.Z``: the version (default: a local registry's newest);
- ``--config FILE``: the YAML settings file, as for every other ``rrec`` command.

Older releases of these commands used ``--config NAME`` for the subset and ``--settings FILE``
for the YAML file. Both keep working for one release with a deprecation message on stderr:
``--config`` whose value is not an existing file is read as the subset, and ``--settings`` as
``--config``. :func:`dataset_options` sorts them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

DatasetOpt = Annotated[str, typer.Option("--dataset", help="Release to read: a local registry or release folder, or a Hub dataset id.")]
SubsetOpt = Annotated[str | None, typer.Option("--subset", help="Dataset subset (domain), e.g. grocery.")]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Version tag, e.g. v1.0.0 (default: the newest of a local registry).")]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="YAML settings file; command-line options override its values. (Deprecated: a subset name here is read as --subset.)",
    ),
]
SettingsOpt = Annotated[Path | None, typer.Option("--settings", help="Deprecated: use --config FILE.", hidden=True, dir_okay=False)]

_YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class DatasetOptions:
    """The dataset subset and the YAML settings file of one command, old spellings resolved."""

    subset: str
    config_file: Path | None


def _deprecated(message: str) -> None:
    typer.echo(f"deprecated: {message}", err=True)


def dataset_options(subset: str | None, config: str | None, settings: Path | None) -> DatasetOptions:
    """Resolve ``--subset``, ``--config`` and the deprecated ``--settings`` into one subset and one YAML file.

    Raises ``ValueError`` (one line for the user) when the subset is missing or given twice
    with different values, when the YAML file is given twice, or when a ``--config`` value
    that looks like a YAML file does not exist.
    """
    config_file: Path | None = None
    if config is not None:
        path = Path(config).expanduser()
        if path.is_file():
            config_file = path
        elif path.suffix in _YAML_SUFFIXES or "/" in config:
            raise ValueError(f"--config {config}: no such settings file; check the path (the dataset subset is --subset NAME)")
        else:
            _deprecated(f"--config {config} names a dataset subset; use --subset {config} (--config is the YAML settings file)")
            if subset is not None and subset != config:
                raise ValueError(f"the subset is given twice, as --subset {subset} and --config {config}; give it once, with --subset")
            subset = config
    if settings is not None:
        _deprecated(f"--settings {settings}; use --config {settings}")
        if config_file is not None:
            raise ValueError("the settings file is given twice (--config and --settings); give it once, with --config FILE")
        if not settings.is_file():
            raise ValueError(f"--settings {settings}: no such settings file; check the path")
        config_file = settings
    if subset is None:
        raise ValueError("no dataset subset: add --subset NAME (the domain, e.g. --subset grocery)")
    return DatasetOptions(subset, config_file)
