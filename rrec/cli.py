"""The ``rrec`` command: one subcommand per stage, plus ``rrec run`` for the whole chain.

Each package registers its commands from the module that defines them; heavy imports (Dask
clients, great_expectations, torch) happen inside the command bodies, so ``rrec --help`` stays
fast. The imports below are plain on purpose: the command tree is visible to a reader and to
tools.
"""

from __future__ import annotations

import logging

import typer
from rich.logging import RichHandler

import pipeline.annotate
import pipeline.filter
import pipeline.ingest
import pipeline.judge
import pipeline.sample
import pipeline.sequences
import release.cli
import rrec.chain
import rrec.reproduce.cli
import training.cli
import training.eval_cli
import validation.cli
from core import __version__

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


# In the order of the chain, then releases, training and the whole-chain commands.
for command_module in (
    pipeline.sample,
    pipeline.ingest,
    pipeline.sequences,
    pipeline.annotate,
    pipeline.filter,
    pipeline.judge,
    validation.cli,
    release.cli,
    training.cli,
    training.eval_cli,
    rrec.chain,
    rrec.reproduce.cli,
):
    command_module.register(app)
