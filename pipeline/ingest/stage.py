"""The ``ingest`` stage on the stage protocol, and its ``rrec ingest`` command.

:class:`IngestStage` declares the raw files as external inputs (their content hashes enter the
fingerprint, with the domain and ``max_line_bytes``; ``block_size`` does not change the output
and is only recorded), maps the block tasks over the cluster, drops duplicate items and records
counts, rejects by reason, per-file figures and the provenance of the input (``source``).

The stage is resumable: every block leaves a marker when its part files are complete, and a
rerun after a kill with the same fingerprint and block size submits only the missing blocks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from core.cli_common import ConfigOpt, ForceOpt, RunOpt, SchedulerOpt, WorkersOpt, user_errors
from core.protocol import Stage, StageContext, StagePlan, StageResult
from core.schemas import INTERACTIONS, ITEMS, REJECTS
from core.stage import RunDir
from core.tables import write_part
from pipeline.ingest.items import ItemFolders, finalize_items
from pipeline.ingest.schedule import BlockRunner, count_plain_newlines, submit_source
from pipeline.ingest.settings import STAGE, IngestSettings
from pipeline.ingest.sources import IngestSources, resolve_sources
from pipeline.ingest.tasks import BlockResult, TableDirs, completed_blocks
from pipeline.stage_command import run_stage_command

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

_PLAN = "block-plan.json"
"""What a resumed attempt must share with the killed one to reuse its blocks."""


class IngestStage(Stage[IngestSettings]):
    """Raw review and metadata files into ``interactions``, ``items`` and ``rejects``."""

    name = STAGE
    settings_type = IngestSettings
    resumable = True

    def resolve(self, run: RunDir, settings: IngestSettings) -> IngestSources:
        # Inputs that match nothing or cannot be fetched fail here, before any cluster starts.
        return resolve_sources(settings)

    def external_inputs(self, run: RunDir, settings: IngestSettings, resolved: IngestSources) -> dict[str, str]:
        return {**resolved.input_hashes, **resolved.sidecar_hashes()}

    def fingerprint_config(self, settings: IngestSettings, resolved: IngestSources) -> dict[str, Any]:
        return {"domain": resolved.domain, "max_line_bytes": settings.max_line_bytes}

    def plan(self, run: RunDir, settings: IngestSettings) -> StagePlan:
        """The protocol's plan, recording every setting (``block_size`` too) in ``config``."""
        plan = super().plan(run, settings)
        return dataclasses.replace(plan, config={**settings.model_dump(mode="json"), "domain": plan.config["domain"]})

    def report(self, result: StageResult) -> str:
        entry = result.entry
        rows = entry["rows_out"]
        line = (
            f"ingest {entry.get('domain')}: {entry['rows_in']:,} lines -> {rows['interactions']:,} interactions, "
            f"{rows['items']:,} items, {rows['rejects']:,} rejects" + (" (up to date, not rerun; --force reruns)" if result.skipped else "")
        )
        if entry["rejects_by_reason"]:
            reasons = sorted(entry["rejects_by_reason"].items(), key=lambda kv: -kv[1])
            line += "\nrejects by reason: " + ", ".join(f"{reason} {count:,}" for reason, count in reasons) + " (rows in the rejects table)"
        return line

    def run(self, ctx: StageContext[IngestSettings]) -> None:
        from core.progress import make_progress

        settings = ctx.settings
        sources: IngestSources = ctx.plan.resolved
        log.info("ingesting %d review file(s) and %d metadata file(s) of %s", len(sources.reviews), len(sources.meta), sources.domain)
        _keep_blocks_of_same_plan(ctx.out.tmp_dir, settings)
        interactions, items, rejects = (ctx.out.table_dir(name) for name in ("interactions", "items", "rejects"))
        staged, blocks = ctx.out.tmp_dir / "staged", ctx.out.tmp_dir / "blocks"
        folders = ItemFolders(staged / "items", staged / "rejects", blocks, items, rejects)
        for folder in (folders.staged_items, folders.staged_rejects, blocks):
            folder.mkdir(parents=True, exist_ok=True)
        dirs = {
            "reviews": TableDirs(str(interactions), str(rejects), str(blocks)),
            "meta": TableDirs(str(folders.staged_items), str(folders.staged_rejects), str(blocks)),
        }
        done = completed_blocks(blocks)
        newline_counts = count_plain_newlines(ctx.client, sources.every, settings.block_size)
        with make_progress() as progress:
            runner = BlockRunner(ctx.client, progress, progress.add_task("ingest", total=sum(s.size for s in sources.every)), done)
            for source in sources.every:
                submit_source(runner, source, dirs[source.kind], settings, newline_counts)
            results = runner.finish()
        duplicates = finalize_items(results, sources.meta, folders)
        for folder, schema in ((interactions, INTERACTIONS), (items, ITEMS), (rejects, REJECTS)):
            if not any(folder.glob("*.parquet")):
                # A table with no rows still gets one (empty) file, so plain readers see its schema.
                write_part(schema.empty_table(), folder, 0, schema)
        _record(ctx.out, results, duplicates, sources, resumed=len(done))


def _keep_blocks_of_same_plan(tmp: Path, settings: IngestSettings) -> None:
    """Empty a resumed temp folder whose blocks were cut with another ``block_size``."""
    plan = {"block_size": settings.block_size, "max_line_bytes": settings.max_line_bytes}
    path = tmp / _PLAN
    if path.exists() and json.loads(path.read_text(encoding="utf-8")) != plan:
        log.info("ingest: the killed attempt used another block size; its blocks are not reused")
        for child in tmp.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    path.write_text(json.dumps(plan), encoding="utf-8")


def _record(out: Any, results: list[BlockResult], duplicates: Counter[int], sources: IngestSources, resumed: int) -> None:
    reasons: Counter[str] = Counter()
    per_source: dict[tuple[str, int], Counter[str]] = {}
    for result in results:
        reasons.update(result.rejects_by_reason)
        stats = per_source.setdefault((result.kind, result.source_index), Counter())
        stats.update({"lines": result.lines, "kept": result.kept, "rejected": sum(result.rejects_by_reason.values())})
    for index, count in duplicates.items():
        reasons["duplicate_parent_asin"] += count
        per_source[("meta", index)].update({"kept": -count, "rejected": count})
    files = [
        {
            "kind": s.kind,
            "file": s.name,
            "format": s.format,
            **{k: per_source.get((s.kind, s.index), Counter())[k] for k in ("lines", "kept", "rejected")},
        }
        for s in sources.every
    ]
    lines = {kind: sum(f["lines"] for f in files if f["kind"] == kind) for kind in ("reviews", "meta")}
    kept = {kind: sum(f["kept"] for f in files if f["kind"] == kind) for kind in ("reviews", "meta")}
    out.record(
        rows_in=lines["reviews"] + lines["meta"],
        rows_out={"interactions": kept["reviews"], "items": kept["meta"], "rejects": sum(reasons.values())},
        rejects_by_reason=dict(reasons),
        domain=sources.domain,
        lines_in=lines,
        files=files,
        blocks=len(results),
        resumed_parts=resumed,
        source=sources.provenance(),
    )
    log.info(
        "ingest done: %s interactions, %s items, %s rejects", *(f"{n:,}" for n in (kept["reviews"], kept["meta"], sum(reasons.values())))
    )


INGEST = IngestStage()


def run_ingest(run: Path | str | RunDir, settings: IngestSettings, client: Client, force: bool = False) -> dict[str, Any]:
    """Ingest review and metadata files into the run folder ``run``; returns the manifest entry.

    ``client`` is a ``distributed.Client``; its workers must see the run folder and the input
    files at the same paths. A rerun whose inputs (content hashes) and settings are unchanged is
    skipped unless ``force``; the returned entry then has ``skipped: True`` (a key of the return
    value only, not of the manifest).
    """
    result = INGEST.execute(run, settings, client, force=force)
    return {**result.entry, "skipped": result.skipped}


def register(app: typer.Typer) -> None:
    """Add ``rrec ingest`` to the ``rrec`` app."""

    @app.command("ingest")
    @user_errors
    def ingest_command(
        run: RunOpt,
        reviews: Annotated[
            list[str] | None,
            typer.Option("--reviews", help="Review file, glob (quoted), fsspec URL or hub:<Domain>; repeat the option for more."),
        ] = None,
        meta: Annotated[list[str] | None, typer.Option("--meta", help="Item metadata file(s), named like --reviews.")] = None,
        domain: Annotated[str | None, typer.Option("--domain", help="Domain name (default: from the file names).")] = None,
        block_size: Annotated[
            int | None, typer.Option("--block-size", help="Bytes of decompressed text per parallel block (default 64 MiB).", min=1024)
        ] = None,
        max_line_bytes: Annotated[
            int | None, typer.Option("--max-line-bytes", help="Longer lines are rejected (default 1 MiB).", min=64)
        ] = None,
        hub_repo: Annotated[str | None, typer.Option("--hub-repo", help="Dataset repo that hub:<Domain> reads.")] = None,
        config: ConfigOpt = None,
        workers: WorkersOpt = None,
        scheduler: SchedulerOpt = None,
        force: ForceOpt = False,
    ) -> None:
        """Read raw Amazon Reviews 2023 files (JSONL, gzip JSONL, Parquet) into interactions, items and rejects.

        Every input line becomes a table row or a rejects row with its file, line and reason.
        A rerun with unchanged inputs and settings is skipped; --force reruns it.
        """
        run_stage_command(
            INGEST,
            run,
            config,
            force,
            reviews=reviews or None,
            meta=meta or None,
            domain=domain,
            block_size=block_size,
            max_line_bytes=max_line_bytes,
            hub_repo=hub_repo,
            workers=workers,
            scheduler=scheduler,
        )
