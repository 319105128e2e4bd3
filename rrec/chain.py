"""``rrec run``: the whole chain, from raw reviews to a tagged local release, in one command.

sample (or the configured input files) -> ingest -> sequences -> annotate -> filter -> judge ->
validate for every domain, then card + release of all domains together: a loop over the
declared stages (:data:`CHAIN`), each run through the one stage protocol
(:meth:`core.protocol.Stage.execute`). One Dask client serves every stage. A stage whose
settings, code and consumed outputs are unchanged skips itself, so a rerun does exactly the
stale work; releasing a version whose data is unchanged reports "already released".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import Field

from core.cli_common import ConfigOpt, ForceOpt, SchedulerOpt, WorkersOpt, user_errors
from core.config import StageSettings, load_config, section
from core.names import check_config_names
from core.protocol import Stage, StageResult
from core.runtime import importing_ahead
from core.stage import RunDir
from pipeline.annotate import ANNOTATE
from pipeline.filter import FILTER
from pipeline.ingest import INGEST
from pipeline.judge import JUDGE
from pipeline.sequences import SEQUENCES
from validation.report_process import report_process
from validation.runner import VALIDATE

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
REGISTRY_DIR = "registry"
SAMPLE_DIR = "sample"

CHAIN: tuple[Stage[Any], ...] = (INGEST, SEQUENCES, ANNOTATE, FILTER, JUDGE, VALIDATE)
"""The per-domain stages of ``rrec run``, in order."""
RELEASE_MODULES = ("release.publish", "datacards.card", "datacards.figures")
"""What the release step imports (matplotlib for the card's figures among them)."""
CHAIN_STAGES = (*(stage.name for stage in CHAIN), "release")
"""What ``--until`` may name: a per-domain stage, or ``release`` (the whole chain)."""


class DomainInputs(StageSettings):
    """Raw files of one domain (paths, globs or URLs as ``rrec ingest`` accepts them)."""

    reviews: list[str] = Field(min_length=1)
    meta: list[str] = Field(default_factory=list)


class RunSettings(StageSettings):
    """Settings of ``rrec run`` itself (config section ``run``)."""

    inputs: dict[str, DomainInputs] | None = Field(
        None, description="Raw files per domain; when absent, `rrec sample` generates the domains of the `sample` section."
    )
    judge: bool = Field(True, description="Run the judge stage (its scores go into the card).")


@dataclass(frozen=True)
class ChainResult:
    """Where ``rrec run`` put things and what it released (no release when it stopped earlier)."""

    runs: list[Path]
    registry: Path
    tag: str | None
    status: str
    configs: list[str]


def check_domains(config: dict[str, Any]) -> list[str]:
    """The chain's domain names, checked before any work (no escape from ``out``, no collision)."""
    from pipeline.sample import SampleSettings

    settings = section(config, "run", RunSettings)
    domains = list(settings.inputs) if settings.inputs else section(config, "sample", SampleSettings).domains
    check_config_names(domains)
    return domains


def _domain_inputs(out: Path, config: dict[str, Any], settings: RunSettings) -> dict[str, DomainInputs]:
    if settings.inputs:
        return dict(settings.inputs)
    from pipeline.sample import SampleSettings, generate_domains

    reports = generate_domains(out / SAMPLE_DIR, section(config, "sample", SampleSettings))
    return {r.domain: DomainInputs(reviews=[str(r.reviews_path)], meta=[str(r.meta_path)]) for r in reports}


def validation_due(out: Path, domains: list[str], force: bool, until: str) -> bool:
    """Whether ``rrec run`` will (most likely) validate some domain: ``until`` reaches validate and
    a domain's run folder has no current validation. A cheap guess from the manifests (no input
    is hashed), used only to start the report's helper process (:mod:`validation.report_process`)."""
    if until not in ("validate", "release"):
        return False
    if force:
        return True
    for domain in domains:
        run = RunDir(out / RUNS_DIR / domain)
        if run.entry(VALIDATE.name) is None or VALIDATE.name in run.stale_stages():
            return True
    return False


def domain_stages(domain: str, inputs: DomainInputs, config: dict[str, Any], settings: RunSettings) -> Iterator[tuple[Stage[Any], Any]]:
    """Each per-domain stage with its settings (config section plus the domain's inputs)."""
    for stage in CHAIN:
        if stage is JUDGE and not settings.judge:
            continue
        overrides = {"reviews": inputs.reviews, "meta": inputs.meta, "domain": domain} if stage is INGEST else None
        yield stage, section(config, stage.name, stage.settings_type, overrides)


def run_domain(
    run: Path,
    domain: str,
    inputs: DomainInputs,
    config: dict[str, Any],
    settings: RunSettings,
    client: Any,
    force: bool,
    until: str = "release",
) -> list[StageResult]:
    """Every per-domain stage, in order, into run folder ``run``; the last one is ``until``
    (``release``, not a per-domain stage, runs them all)."""
    results = []
    for stage, stage_settings in domain_stages(domain, inputs, config, settings):
        log.info("[%s] %s", domain, stage.name)
        results.append(stage.execute(run, stage_settings, client, force=force))
        if stage.name == until:
            break
    return results


def run_chain(
    out: Path, config_path: Path | None, client: Any, force: bool = False, version: str | None = None, until: str = "release"
) -> ChainResult:
    """Run the whole chain into ``out`` (``out/runs/<Domain>/``, ``out/registry/``) on ``client``.

    The release version comes from the ``release`` section of the config (default ``1.0.0``)
    unless ``version`` is given. Domain names are checked before any work (no path can escape
    ``out``, no two domains share a release config). A validation with a critical failure stops
    the chain at the release step with an error naming the run folder. ``until`` (one of
    :data:`CHAIN_STAGES`) stops after that stage of every domain, without a release unless it is
    ``release``.
    """
    if until not in CHAIN_STAGES:
        raise ValueError(f"until must be one of {', '.join(CHAIN_STAGES)}, not {until!r}")
    out = Path(out)
    config = load_config(config_path)
    settings = section(config, "run", RunSettings)
    check_domains(config)
    if until == "release":  # checked before any stage runs
        from datacards.card import CardSettings
        from release.publish import ReleaseSettings, release_runs

        release_settings = section(config, "release", ReleaseSettings, {"version": version})
        card_settings = section(config, "card", CardSettings)
    runs = []
    for domain, inputs in _domain_inputs(out, config, settings).items():
        run = out / RUNS_DIR / domain
        run_domain(run, domain, inputs, config, settings, client, force, until)
        runs.append(run)
    if until != "release":
        return ChainResult(runs=runs, registry=out / REGISTRY_DIR, tag=None, status=f"stopped_after_{until}", configs=[])
    log.info("release %s of %d domain(s)", release_settings.version, len(runs))
    result = release_runs(runs, out / REGISTRY_DIR, release_settings, card_settings, client)
    configs = sorted(c for c in result.manifest["row_counts"] if not c.endswith("_items"))
    return ChainResult(runs=runs, registry=result.registry, tag=result.tag, status=result.status, configs=configs)


def register(app: typer.Typer) -> None:
    """Add ``rrec run`` to the CLI."""

    @app.command("run")
    @user_errors
    def run_command(
        out: Annotated[
            Path, typer.Option("--out", help="Output folder: run folders in OUT/runs/<Domain>/, the release registry in OUT/registry/.")
        ],
        config: ConfigOpt = None,
        version: Annotated[
            str | None, typer.Option("--version", help="Release version X.Y.Z (default: release.version of the config, else 1.0.0).")
        ] = None,
        workers: WorkersOpt = None,
        scheduler: SchedulerOpt = None,
        force: ForceOpt = False,
        until: Annotated[
            str,
            typer.Option(
                "--until", help=f"Stop after this stage of every domain ({', '.join(CHAIN_STAGES)}); no release before 'release'."
            ),
        ] = "release",
    ) -> None:
        """Run the whole chain and release every domain as one versioned local dataset.

        sample (or run.inputs of the config) -> ingest -> sequences -> annotate -> filter ->
        judge -> validate per domain, then the dataset card and the release (git tag vX.Y.Z in
        OUT/registry). Finished stages are skipped on a rerun, and a stage whose inputs changed
        reruns with everything after it; --force reruns them all. --until stops earlier, e.g.
        `--until sequences` builds only the leave-one-out sequences.
        """
        from core.config import common
        from pipeline.cluster import dask_client

        if until not in CHAIN_STAGES:
            raise typer.BadParameter(f"choose one of {', '.join(CHAIN_STAGES)}", param_hint="--until")
        loaded = load_config(config)
        domains = check_domains(loaded)  # before a cluster starts
        settings = common(loaded, {"workers": workers, "scheduler": scheduler})
        # What the card needs (matplotlib) imports from the start on, in a thread; the
        # validation report's GX (seconds) in a low-priority helper process that writes it.
        ahead = RELEASE_MODULES if until == "release" else ()
        with (
            report_process(validation_due(out, domains, force, until)),
            importing_ahead(ahead),
            dask_client(settings.workers, settings.scheduler) as client,
        ):
            result = run_chain(out, config, client, force=force, version=version, until=until)
        if result.tag is None:
            typer.echo(f"Stopped after {until}. Run folders: {', '.join(str(r) for r in result.runs)}")
            return
        registry = result.registry
        if result.status == "already_released":
            typer.echo(f"{result.tag} was already released with the same data in {registry}.")
        else:
            typer.echo(f"Released {result.tag} ({', '.join(result.configs)}) into the local registry {registry} (git tag {result.tag}).")
        typer.echo(f"Run folders: {', '.join(str(r) for r in result.runs)}")
        typer.echo("Load it:")
        typer.echo("  from release.loading import load_release")
        typer.echo(f'  ds = load_release("{registry}", "{result.configs[0]}", revision="{result.tag}")  # that version, checksums verified')
