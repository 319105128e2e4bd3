"""The ``rrec`` command: one subcommand per stage, plus ``rrec run`` for the whole chain.

Each package registers its commands from a light module (heavy imports happen inside the
command bodies, so ``rrec --help`` stays fast).
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing

import typer
from rich.logging import RichHandler

from pipeline import __version__

COMMAND_MODULES = (
    "pipeline.sample",
    "pipeline.ingest",
    "pipeline.sequences",
    "pipeline.annotate",
    "pipeline.filter",
    "pipeline.judge",
    "validation.cli",
    "datacards.cli",
    "release.cli",
    "training.cli",
    "training.eval_cli",
    "pipeline.run",
    "reproduce.cli",
)

app = typer.Typer(
    name="rrec",
    help=(
        "rationale-rec: regenerate, validate and publish rationale-augmented recommendation data "
        "from Amazon Reviews 2023, and train rationale-first recommenders on released versions."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rrec {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR.", envvar="RREC_LOG_LEVEL"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    logging.basicConfig(
        level=log_level.upper(),
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(rich_tracebacks=False, show_path=False)],
        force=True,
    )
    for noisy in ("distributed", "httpx", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


_registered = False


def _register_all() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app)


# A Dask worker process started by `multiprocessing` (spawn) re-imports the `rrec` script, and
# so this module; it never runs a command, so it skips importing every command's module (about
# a second of CPU per worker at every cluster start). Its tasks import what they use.
if multiprocessing.parent_process() is None:
    _register_all()


def main() -> None:
    _register_all()
    app()
