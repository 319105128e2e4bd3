"""One YAML config file for every command, with command-line overrides.

The file has top-level common keys (``seed``, ``workers``, ``scheduler``) and one mapping per
stage (``sample``, ``ingest``, ``sequences``, ``annotate``, ...). Each stage module declares its
own settings model (a subclass of :class:`StageSettings`) whose field names equal the option
names of its command (dashes become underscores), so ``rrec sequences --max-history 20`` and
``sequences: {max_history: 20}`` mean the same thing. Precedence: command line > config file >
packaged defaults (``core/default_config.yaml``) > model defaults.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.yaml")
COMMON_KEYS = ("seed", "workers", "scheduler")
SECTIONS = (
    "sample",
    "ingest",
    "sequences",
    "annotate",
    "filter",
    "judge",
    "validate",
    "card",
    "release",
    "run",
    "sft",
    "grpo",
    "evaluate",
    "baselines",
)
"""Every top-level section a command reads (its name is the ``name`` passed to :func:`section`).

The one registry of section names: a top-level key that is neither a section nor a common key
is an error, so a misspelt ``sequence:`` cannot be silently ignored. A command that reads a new
section adds its name here.
"""


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says what to fix."""


class StageSettings(BaseModel):
    """Base of every stage's settings: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CommonSettings(StageSettings):
    seed: int = 42
    workers: int | None = None
    scheduler: str | None = None


S = TypeVar("S", bound=StageSettings)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def check_sections(config: dict[str, Any], source: Path | str) -> None:
    """Refuse top-level keys that no command reads, naming the known ones (and a likely intended one)."""
    known = (*COMMON_KEYS, *SECTIONS)
    unknown = [str(key) for key in config if key not in known]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise ConfigError(f"config file {source} has unknown top-level section(s) {', '.join(hints)}; the known ones are: {', '.join(known)}")


def load_config(path: Path | None = None) -> dict[str, Any]:
    """Return the packaged defaults merged with the user's config file (if any).

    A top-level key that is not a known section (:data:`SECTIONS`) or common key is a
    :class:`ConfigError`.
    """
    config = _read_yaml(DEFAULT_CONFIG_PATH)
    if path is not None:
        user = _read_yaml(Path(path))
        check_sections(user, path)
        config = _deep_merge(config, user)
    return config


def section(config: dict[str, Any], name: str, model: type[S], overrides: dict[str, Any] | None = None) -> S:
    """Build the settings of stage ``name`` from a loaded config plus command-line overrides.

    ``overrides`` holds option values given on the command line; ``None`` values mean "not
    given" and do not override. Top-level common keys (e.g. ``seed``) fill fields of the same
    name that the section leaves unset.
    """
    if name not in SECTIONS:
        raise ConfigError(f"config section '{name}' is not registered in core.config.SECTIONS; add it there")
    values: dict[str, Any] = {}
    for key in COMMON_KEYS:
        if key in model.model_fields and config.get(key) is not None:
            values[key] = config[key]
    raw_section = config.get(name) or {}
    if not isinstance(raw_section, dict):
        raise ConfigError(f"config section '{name}' must be a mapping, got {type(raw_section).__name__}")
    values.update(raw_section)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{name}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid settings for '{name}': {problems}") from None


def common(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> CommonSettings:
    values = {k: config.get(k) for k in COMMON_KEYS if config.get(k) is not None}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return CommonSettings(**values)
    except ValidationError as exc:
        raise ConfigError(f"invalid common settings: {exc}") from None
