"""``rrec run``: the whole chain, from raw reviews to a tagged local release, in one command.

sample (or the configured input files) -> ingest -> sequences -> annotate -> filter -> judge ->
validate, for every domain, then card + release of all domains together. One Dask client
serves every stage. Each stage skips itself when its inputs and settings are unchanged, and
releasing a version whose data is unchanged reports "already released", so rerunning the
command is cheap and safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import Field

from core.cli_common import ConfigOpt, ForceOpt, SchedulerOpt, WorkersOpt, user_errors
from core.config import StageSettings

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
REGISTRY_DIR = "registry"
SAMPLE_DIR = "sample"


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


CHAIN_STAGES = ("ingest", "sequences", "annotate", "filter", "judge", "validate", "release")
"""The stages of ``rrec run`` in order (``--until`` names one of them)."""


@dataclass(frozen=True)
class ChainResult:
    """Where ``rrec run`` put things and what it released (no release when it stopped earlier)."""

    runs: list[Path]
    registry: Path
    tag: str | None
    status: str
    configs: list[str]


def _domain_inputs(out: Path, config: dict[str, Any], settings: RunSettings) -> dict[str, DomainInputs]:
    if settings.inputs:
        return dict(settings.inputs)
    from core.config import section
    from pipeline.sample import SampleSettings, generate_domains

    sample = section(config, "sample", SampleSettings)
    reports = generate_domains(out / SAMPLE_DIR, sample)
    return {r.domain: DomainInputs(reviews=[str(r.reviews_path)], meta=[str(r.meta_path)]) for r in reports}


def run_domain(
    run: Path,
    domain: str,
    inputs: DomainInputs,
    config: dict[str, Any],
    settings: RunSettings,
    client: Any,
    force: bool,
    until: str = "release",
) -> None:
    """Every per-domain stage, in order, into run folder ``run``; the last one is ``until``
    (``release``, not a per-domain stage, runs them all)."""
    from core.config import section
    from pipeline.annotate import AnnotateSettings, run_annotate
    from pipeline.filter import FilterSettings, run_filter
    from pipeline.ingest import IngestSettings, run_ingest
    from pipeline.judge import JudgeSettings, run_judge
    from pipeline.sequences import SequencesSettings, run_sequences

    def validate() -> None:
        from validation.runner import ValidateSettings, run_validation  # great_expectations: 2.5 s to import

        summary = run_validation(run, client, force, section(config, "validate", ValidateSettings))
        log.info("[%s] validation: %d critical failure(s)", domain, summary["critical_failures"])

    stages = {
        "ingest": lambda: run_ingest(
            run,
            section(config, "ingest", IngestSettings, {"reviews": inputs.reviews, "meta": inputs.meta, "domain": domain}),
            client,
            force,
        ),
        "sequences": lambda: run_sequences(run, section(config, "sequences", SequencesSettings), client, force),
        "annotate": lambda: run_annotate(run, section(config, "annotate", AnnotateSettings), client, force),
        "filter": lambda: run_filter(run, section(config, "filter", FilterSettings), client, force),
        "judge": lambda: run_judge(run, section(config, "judge", JudgeSettings), client, force),
        "validate": validate,
    }
    for stage, run_stage in stages.items():
        if stage != "judge" or settings.judge:
            log.info("[%s] %s", domain, stage)
            run_stage()
        if stage == until:
            return


def run_chain(
    out: Path, config_path: Path | None, client: Any, force: bool = False, version: str | None = None, until: str = "release"
) -> ChainResult:
    """Run the whole chain into ``out`` (``out/runs/<Domain>/``, ``out/registry/``) on ``client``.

    The release version comes from the ``release`` section of the config (default ``1.0.0``)
    unless ``version`` is given. A validation with a critical failure stops the chain at the
    release step with an error naming the run folder. ``until`` (one of :data:`CHAIN_STAGES`)
    stops after that stage of every domain, without a release unless it is ``release``.
    """
    if until not in CHAIN_STAGES:
        raise ValueError(f"until must be one of {', '.join(CHAIN_STAGES)}, not {until!r}")
    from core.config import load_config, section

    out = Path(out)
    config = load_config(config_path)
    settings = section(config, "run", RunSettings)
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
        OUT/registry). Finished stages are skipped on a rerun; --force reruns them. --until
        stops earlier, e.g. `--until sequences` builds only the leave-one-out sequences.
        """
        from core.config import common, load_config
        from pipeline.cluster import dask_client

        if until not in CHAIN_STAGES:
            raise typer.BadParameter(f"choose one of {', '.join(CHAIN_STAGES)}", param_hint="--until")
        settings = common(load_config(config), {"workers": workers, "scheduler": scheduler})
        with dask_client(settings.workers, settings.scheduler) as client:
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
        typer.echo("  from datasets import load_dataset")
        typer.echo(f'  ds = load_dataset("{registry}", "{result.configs[0]}")  # the registry\'s working tree is the latest version')
        typer.echo("  # a given version, pulled and checksum-verified first:")
        typer.echo("  from release.loading import load_release")
        typer.echo(f'  ds = load_release("{registry}", "{result.configs[0]}", revision="{result.tag}")')
