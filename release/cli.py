"""``rrec release``, ``rrec card`` and ``rrec pull`` (heavy imports stay inside the commands).

``rrec card`` lives here, not in ``datacards``: it reads run folders the way a release does
(``release.layout``), and ``datacards`` sits below ``release`` in the layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.cli_common import ConfigOpt, SchedulerOpt, WorkersOpt, deprecated_alias, settings_for, user_errors

RunsOpt = Annotated[
    list[Path],
    typer.Option("--runs", help="Run folders, one per domain: `--runs A B` or `--runs A --runs B`."),
]
# Lets `--runs A B C` (e.g. a shell glob) work: click options take one value, the rest arrive as extra arguments.
MANY_VALUES = {"allow_extra_args": True}


def collect_runs(runs: list[Path], ctx: typer.Context) -> list[Path]:
    """The ``--runs`` values plus the extra values that followed them; each must be a folder."""
    extra = [Path(arg) for arg in ctx.args]
    unknown = [str(p) for p in extra if str(p).startswith("-")]
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; see --help")
    collected = [*runs, *extra]
    missing = [str(p) for p in collected if not p.is_dir()]
    if missing:
        raise ValueError(f"run folder(s) {', '.join(missing)} do not exist; pass folders made by `rrec run` or the stage commands")
    return collected


def print_load_hint(source: str, tag: str, configs: list[str]) -> None:
    """Tell the user how to load what was just released or pulled."""
    typer.echo("Load it with:")
    typer.echo("  from release.loading import load_release")
    for config in configs:
        typer.echo(f'  {config} = load_release("{source}", "{config}", revision="{tag}")')


def register(app: typer.Typer) -> None:
    """Add ``rrec release``, ``rrec card`` and ``rrec pull`` to the CLI.

    Long only in declarations: each command's options are typer annotations (their help texts
    are the commands' --help), and each body is a few calls (release_runs, build_card, pull_release).
    """

    @app.command("release", context_settings=MANY_VALUES)
    @user_errors
    def release_command(
        ctx: typer.Context,
        runs: RunsOpt,
        registry: Annotated[Path, typer.Option("--registry", help="Local registry folder (a git repository; created if missing).")],
        version: Annotated[
            str | None, typer.Option("--version", help="Semantic version X.Y.Z to publish (default from config: 1.0.0).")
        ] = None,
        push: Annotated[
            bool | None, typer.Option("--push/--no-push", help="Also publish to the Hugging Face Hub (token from HF_TOKEN).")
        ] = None,
        repo_id: Annotated[str | None, typer.Option("--repo-id", help="Hub dataset repository ORG/NAME for --push.")] = None,
        private: Annotated[bool | None, typer.Option("--private/--public", help="Create the Hub repository as private.")] = None,
        shard_rows: Annotated[int | None, typer.Option("--shard-rows", help="Rows per Parquet shard.", min=1)] = None,
        allow_older: Annotated[
            bool | None,
            typer.Option(
                "--allow-older/--no-allow-older",
                help="Publish a version lower than the newest as a tag only (the working tree and CHANGELOG stay at the newest).",
            ),
        ] = None,
        max_memory_gb: Annotated[
            float | None,
            typer.Option(
                "--max-memory-gb",
                help="Refuse a release whose rows would need more memory (GiB; default: the memory available now).",
                min=0.001,
            ),
        ] = None,
        config: ConfigOpt = None,
        workers: WorkersOpt = None,
        scheduler: SchedulerOpt = None,
    ) -> None:
        """Release validated run folders as one versioned dataset (a config per domain).

        Refuses runs whose validation is missing or failed a critical expectation. Writes the
        sharded Parquet layout, item catalogs, dataset card with figures, CHANGELOG and a
        manifest with the sha256 of every file, then commits and tags vX.Y.Z in the local
        registry. An existing version is refused unless its data is unchanged.
        """
        from core.config import common, load_config, section
        from datacards.card import CardSettings
        from release.publish import ReleaseSettings, release_runs
        from release.registry import Registry

        run_dirs = collect_runs(runs, ctx)
        settings, _ = settings_for(
            config,
            "release",
            ReleaseSettings,
            version=version,
            push=push,
            repo_id=repo_id,
            private=private,
            shard_rows=shard_rows,
            allow_older=allow_older,
            max_memory_gb=max_memory_gb,
        )
        card_settings = section(load_config(config), "card", CardSettings)
        common_settings = common(load_config(config), {"workers": workers, "scheduler": scheduler})
        from pipeline.cluster import dask_client

        # The release builder maps its joins, statistics and shards over the cluster (DESIGN:
        # the same --workers/--scheduler as every stage).
        with dask_client(common_settings.workers, common_settings.scheduler) as client:
            result = release_runs(run_dirs, registry, settings, card_settings, client)
        if result.status == "already_released":
            typer.echo(
                f"{result.tag} is already released in {result.registry} with the same data (commit {result.commit[:12]}); nothing to do."
            )
        else:
            newest = Registry(result.registry).newest()
            where = "" if newest == result.tag else f" as a tag only; the working tree stays at the newest version {newest}"
            typer.echo(f"Released {result.tag} into {result.registry} (commit {result.commit[:12]}){where}.")
            for config_name, counts in sorted(result.manifest["row_counts"].items()):
                typer.echo(f"  {config_name}: " + ", ".join(f"{split} {n:,}" for split, n in counts.items()))
        configs = sorted(c for c in result.manifest["row_counts"] if not c.endswith("_items"))
        print_load_hint(str(result.registry), result.tag, configs)
        if result.hub_commit:
            typer.echo(f"Pushed {result.tag} to the Hub dataset {settings.repo_id} (commit {result.hub_commit[:12]}); from the Hub:")
            typer.echo("  from datasets import load_dataset")
            for config_name in configs:
                typer.echo(f'  {config_name} = load_dataset("{settings.repo_id}", "{config_name}", revision="{result.tag}")')

    @app.command("card", context_settings=MANY_VALUES)
    @user_errors
    def card_command(
        ctx: typer.Context,
        runs: RunsOpt,
        out: Annotated[Path, typer.Option("--out", help="Folder for README.md and figures/ (created if missing).")],
        version: Annotated[str, typer.Option("--version", help="Version the card describes (X.Y.Z).")] = "1.0.0",
        repo_id: Annotated[str | None, typer.Option("--repo-id", help="Hub dataset id ORG/NAME for the loading snippet.")] = None,
        pretty_name: Annotated[str | None, typer.Option("--pretty-name", help="Human-readable dataset name.")] = None,
        license: Annotated[str | None, typer.Option("--license", help="Hub license id of the release (default: other).")] = None,
        config: ConfigOpt = None,
    ) -> None:
        """Build the dataset card (README.md with Hub YAML metadata and datasheet) and its figures.

        Reads validated run folders (one per domain). `rrec release` builds the same card inside
        every release; this command previews it.
        """
        from datacards.card import CardSettings, build_card
        from release.layout import load_domains, sized_as_released
        from release.publish import ReleaseSettings
        from release.registry import version_tag

        settings, _ = settings_for(config, "card", CardSettings, pretty_name=pretty_name, license=license)
        release_settings, _ = settings_for(config, "release", ReleaseSettings, version=version)
        tag = version_tag(version)
        # The sizes a release of these runs records (its shards' row groups), not the in-memory tables'.
        domains = [sized_as_released(d, release_settings.shard_rows) for d in load_domains(collect_runs(runs, ctx))]
        path = build_card(domains, out, tag, settings, repo_id=repo_id)
        typer.echo(f"Wrote the dataset card {path} and its figures in {path.parent / 'figures'}.")

    @app.command("pull")
    @user_errors
    def pull_command(
        source: Annotated[str, typer.Argument(help="A local registry folder or a Hub dataset id ORG/NAME.")],
        out: Annotated[Path, typer.Option("--out", help="Folder to write the release into (new or empty).")],
        revision: Annotated[str | None, typer.Option("--revision", help="Version tag to fetch, e.g. v1.0.0 (required).")] = None,
        version: Annotated[
            str | None, typer.Option("--version", help="Deprecated spelling of --revision (removed in the next release).", hidden=True)
        ] = None,
    ) -> None:
        """Download a released version and verify every file's sha256 against its manifest.

        A tampered, missing or unlisted file is refused and nothing is written to --out.
        Hub access uses HF_TOKEN from the environment for private repositories; with
        HF_HUB_OFFLINE=1 only a local registry can be pulled.
        """
        from release.checksums import read_manifest
        from release.pull import pull_release

        tag = deprecated_alias("--revision", revision, "--version", version)
        if tag is None:
            raise ValueError("say which version to pull: --revision vX.Y.Z")
        folder = pull_release(source, tag, out)
        manifest = read_manifest(folder)
        typer.echo(f"Pulled {manifest['tag']} into {folder}: {len(manifest['files'])} files verified.")
        typer.echo("Load it with:")
        typer.echo("  from datasets import load_dataset")
        for config_name in sorted(manifest["row_counts"]):
            if not config_name.endswith("_items"):
                typer.echo(f'  {config_name} = load_dataset("{folder}", "{config_name}")')
