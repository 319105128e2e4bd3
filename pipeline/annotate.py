"""Stage ``annotate``: a post-hoc rationale for every (history, next item) example.

Input: the ``sequences`` table (by default the train split; ``--splits`` adds validation and
test). Output: the ``annotations`` table, one row per annotated example, keyed by (user_id,
split, target_parent_asin), plus the answer cache ``RUN/annotation_cache.sqlite`` that lives
outside the stage's temp folder and survives kills.

How the work is split: Dask workers build the examples' contexts and prompts and look up the
cache, partition by partition (partitions are fixed slices of the sequences files, so results
do not depend on the cluster). The template annotator finishes the job on the workers. The
OpenAI annotators send the uncached requests from one event loop in this process, so the rate
limits and the ``--max-cost`` budget hold for the whole run (see ``annotators/limits.py``), then
write one output part per partition in input order. A rerun after any kill re-reads every
answer it already received from the cache: no request is repeated, and the output equals an
uninterrupted run's.

A run that stopped early (budget reached, requests that kept failing, a batch still running)
commits what it has with ``complete: false`` in the manifest; the next run does not skip it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.dataset as pads
import typer
from distributed import Client
from pydantic import Field, field_validator

from core.cli_common import ConfigOpt, ForceOpt, RunOpt, SchedulerOpt, WorkersOpt, settings_for, user_errors
from core.config import ConfigError
from core.progress import gather_with_progress
from core.protocol import Stage, StageContext, StageResult
from core.schemas import ANNOTATIONS, SPLITS
from core.stage import RunDir
from core.tables import part_name, write_part
from pipeline.annotators import template
from pipeline.annotators.annotation_rows import (
    PreparedPartition,
    annotate_partition_with_template,
    answer_row,
    chat_request,
    prepare_partition,
    template_partitions_to_parts,
    template_request_hash,
    template_rows,
)
from pipeline.annotators.cache import CACHE_FILE, CachedAnswer, stop_when_full
from pipeline.annotators.context import PartitionSpec, plan_partitions
from pipeline.annotators.openai_batch import BatchOptions
from pipeline.annotators.openai_chat import ChatClientSettings, ChatOptions, resolve_api_key
from pipeline.annotators.pricing import PriceTable
from pipeline.annotators.send_loop import LLMCall, accounting, answer_requests, offline_accounting, unique_uncached, usage_of
from pipeline.annotators.worker_caches import worker_caches_dropped
from pipeline.cluster import consecutive_chunks, worker_count
from pipeline.stage_command import run_stage_command
from pipeline.teacher_prompt import (
    PROMPT_VERSION,
    STRUCTURED_RESPONSE_FORMAT,
)

log = logging.getLogger(__name__)

__all__ = [
    "ANNOTATE",
    "AnnotateSettings",
    "AnnotateStage",
    "PreparedPartition",
    "annotate_partition_with_template",
    "answer_row",
    "chat_request",
    "prepare_partition",
    "register",
    "run_annotate",
    "template_request_hash",
    "template_rows",
]

STAGE = "annotate"
DEFAULT_OPENAI_MODEL = "gpt-4o"
DEFAULT_PARTITION_ROWS = {"template": 16_000, "openai": 2_000, "openai-batch": 2_000}
"""Rows per annotation part by annotator. The template's work per part grows with the distinct
items the part's rows name more than with its rows, the filter remembers title facts per part,
and the filtered table keeps the parts (one per annotation part) that judge and validate read:
at 150k users annotate .. validate took 0.85x the wall and CPU time with 16000-row parts as
with 2000-row ones (``benchmarks/partition_ab.py``, docs/PERFORMANCE.md). An OpenAI part is
written only once all its answers are in (a kill keeps them in the cache either way), so its
parts stay small."""


class AnnotateSettings(ChatClientSettings):
    """Settings of ``rrec annotate`` (config section ``annotate``)."""

    annotator: Literal["template", "openai", "openai-batch"] = "template"
    model: str | None = Field(None, description="Model name; default gpt-4o (OpenAI) or the template version.")
    limit: int | None = Field(None, ge=0)
    dry_run: bool = False
    splits: list[str] = Field(default_factory=lambda: ["train"])
    max_output_tokens: int = Field(600, ge=16)
    temperature: float = Field(0.0, ge=0, le=2)
    partition_rows: int | None = Field(
        None,
        ge=1,
        description="Rows per annotation part (the unit of work and of resumption); "
        "default 16000 for the template annotator, 2000 for the OpenAI annotators.",
    )
    batch_poll_interval_s: float = Field(30.0, gt=0)
    batch_wait_s: float = Field(24 * 3600.0, ge=0)

    @field_validator("splits", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        unknown = [s for s in value if s not in SPLITS]
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; choose from {', '.join(SPLITS)}")
        return value

    @property
    def resolved_model(self) -> str:
        if self.model:
            return self.model
        return template.TEMPLATE_VERSION if self.annotator == "template" else DEFAULT_OPENAI_MODEL

    @property
    def rows_per_partition(self) -> int:
        """``partition_rows``, or the annotator's default (:data:`DEFAULT_PARTITION_ROWS`)."""
        return self.partition_rows or DEFAULT_PARTITION_ROWS[self.annotator]

    @property
    def prompt_version(self) -> str:
        return template.TEMPLATE_VERSION if self.annotator == "template" else PROMPT_VERSION

    def chat_options(self) -> ChatOptions:
        return self.client_options(
            self.resolved_model, PROMPT_VERSION, STRUCTURED_RESPONSE_FORMAT, self.max_output_tokens, self.temperature
        )

    def output_config(self) -> dict[str, Any]:
        """The settings that change the output table (the stage fingerprint's config)."""
        return {
            "annotator": self.annotator,
            "model": self.resolved_model,
            "prompt_version": self.prompt_version,
            "splits": sorted(self.splits),
            "limit": self.limit,
            "max_cost": self.max_cost,
            "max_output_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "max_prompt_history": self.max_prompt_history,
            "partition_rows": self.rows_per_partition,
            "seed": self.seed,
        }


# -- the stage ---------------------------------------------------------------------------


def _price_check(settings: AnnotateSettings, prices: PriceTable) -> None:
    if settings.annotator != "template" and settings.max_cost is not None and prices.price(settings.resolved_model) is None:
        raise ConfigError(
            f"--max-cost needs a price for model {settings.resolved_model!r}: add it under annotate.prices "
            "in the config file (input_per_million, output_per_million in USD)"
        )


def _dry_run_report(settings: AnnotateSettings, prepared: list[PreparedPartition], prices: PriceTable) -> dict[str, Any]:
    rows = sum(len(p.requests) for p in prepared)
    cached = {h for p in prepared for h in p.cached}
    to_send = unique_uncached((r for p in prepared for r in p.requests), cached)
    input_tokens = sum(r.estimated_input_tokens for r in to_send)
    output_tokens = len(to_send) * settings.max_output_tokens
    batch = settings.annotator == "openai-batch"
    return {
        "dry_run": True,
        "annotator": settings.annotator,
        "model": settings.resolved_model,
        "rows": rows,
        "cached_rows": sum(1 for p in prepared for r in p.requests if r.request_hash in cached),
        "requests_to_send": len(to_send),
        "estimated_input_tokens": input_tokens,
        "max_output_tokens": output_tokens,
        "max_cost_usd": round(prices.cost(settings.resolved_model, input_tokens, output_tokens, batch=batch), 6),
    }


def _plan(run: RunDir, settings: AnnotateSettings) -> tuple[list[PartitionSpec], bool]:
    """The partitions to annotate, and whether ``--limit`` left selected rows out."""
    specs = plan_partitions(run.table("sequences"), settings.splits, settings.rows_per_partition, settings.limit)
    if settings.limit is None:
        return specs, False
    probe = plan_partitions(run.table("sequences"), settings.splits, settings.rows_per_partition, settings.limit + 1)
    return specs, sum(len(spec.row_indices) for spec in probe) > settings.limit


class AnnotateStage(Stage[AnnotateSettings]):
    """Write a rationale for every selected sequences row into table ``annotations``.

    Resumable: a killed template run keeps the part files its workers completed; a killed
    OpenAI run keeps every answer it received in the cache (its parts are written at the end).
    """

    name = STAGE
    upstream = ("sequences",)
    optional_upstream = ("ingest",)
    settings_type = AnnotateSettings
    resumable = True

    def consumed_outputs(self, run: RunDir, stage: str) -> dict[str, str]:
        outputs = dict(run.require(stage)["outputs"])
        # Of ingest, only the items and interactions tables enrich the prompts.
        return {k: v for k, v in outputs.items() if k in ("items", "interactions")} if stage == "ingest" else outputs

    def fingerprint_config(self, settings: AnnotateSettings, resolved: Any = None) -> dict[str, Any]:
        return settings.output_config()

    def preflight(self, run: RunDir, settings: AnnotateSettings) -> None:
        _price_check(settings, PriceTable(settings.prices))
        if settings.annotator != "template" and not settings.dry_run:
            resolve_api_key(settings.base_url)  # fail before any work when the key is missing

    def report(self, result: StageResult) -> str:
        entry = result.entry
        if result.skipped:
            return result.summary()
        line = (
            f"annotated {entry['rows_out']['annotations']} of {entry['rows_in']} row(s) with {entry['annotator']} "
            f"({entry['model']}): {entry['input_tokens']} input / {entry['output_tokens']} output tokens, "
            f"${entry['cost_usd']:.4f}, {entry['cache_hits']} cache hit(s), {entry['requests_sent']} request(s) sent"
        )
        return line + ("" if entry.get("complete", True) else f"; {entry['rows_pending']} row(s) pending, rerun to continue")

    def dry_run(self, run: Path | str | RunDir, settings: AnnotateSettings, client: Any) -> dict[str, Any]:
        """What a run would send and spend; sends and writes nothing."""
        run = run if isinstance(run, RunDir) else RunDir(Path(run).resolve())
        prices = PriceTable(settings.prices)
        _price_check(settings, prices)
        self.plan(run, settings)  # the upstream checks
        specs, _ = _plan(run, settings)
        if settings.annotator == "template":
            rows = sum(len(spec.row_indices) for spec in specs)
            return _dry_run_report(settings, [], prices) | {"rows": rows, "max_output_tokens": 0}
        return _dry_run_report(settings, self._prepare(run, settings, specs, client, "building prompts"), prices)

    def run(self, ctx: StageContext[AnnotateSettings]) -> None:
        settings = ctx.settings
        specs, limited = _plan(ctx.run, settings)
        with stop_when_full(ctx.run.path), worker_caches_dropped(ctx.client):
            if settings.annotator == "template":
                self._run_template(ctx, specs)
            else:
                self._run_llm(ctx, specs)
        # A --limit that left rows out is a partial run too: the whole split is not annotated.
        ctx.out.record(limited=limited, complete=bool(ctx.out.extra["complete"]) and not limited)

    def can_skip(self, settings: AnnotateSettings, entry: dict[str, Any]) -> bool:
        # A --limit run stands when every row it selected is annotated (same limit, same rows).
        return bool(entry.get("complete", True) or (entry.get("limited") and entry.get("rows_pending") == 0))

    def _common(self, settings: AnnotateSettings, rows_in: int) -> dict[str, Any]:
        return {
            "annotator": settings.annotator,
            "model": settings.resolved_model,
            "prompt_version": settings.prompt_version,
            "splits": sorted(settings.splits),
            "rows_in": rows_in,
        }

    def _run_template(self, ctx: StageContext[AnnotateSettings], specs: list[PartitionSpec]) -> None:
        settings = ctx.settings
        folder = ctx.out.table_dir("annotations")
        done = ctx.out.done_parts("annotations")
        todo = [spec for spec in specs if part_name(spec.index) not in done]
        chunks = consecutive_chunks(todo, worker_count(ctx.client), lambda a, b: a.file == b.file)
        futures = [
            ctx.client.submit(template_partitions_to_parts, str(ctx.run.path), chunk, settings.seed, str(folder), pure=False)
            for chunk in chunks
        ]
        gather_with_progress(futures, f"annotating (template, {len(todo)} partitions)")
        rows_out = pads.dataset(str(folder), format="parquet").count_rows() if specs else 0
        rows_in = sum(len(spec.row_indices) for spec in specs)
        ctx.out.record(
            rows_out={"annotations": rows_out},
            **self._common(settings, rows_in),
            **offline_accounting(),
            resumed_parts=len(specs) - len(todo),
            rows_pending=rows_in - rows_out,
            complete=rows_in == rows_out,
        )

    def _prepare(
        self, run: RunDir, settings: AnnotateSettings, specs: list[PartitionSpec], client: Any, label: str
    ) -> list[PreparedPartition]:
        options = settings.chat_options()
        futures = [
            client.submit(prepare_partition, str(run.path), spec, options, settings.max_prompt_history, settings.annotator, pure=False)
            for spec in specs
        ]
        return gather_with_progress(futures, label)

    def _run_llm(self, ctx: StageContext[AnnotateSettings], specs: list[PartitionSpec]) -> None:
        settings, run = ctx.settings, ctx.run
        prepared = self._prepare(run, settings, specs, ctx.client, "building prompts")
        rows_in = sum(len(spec.row_indices) for spec in specs)
        cached = {h: a for p in prepared for h, a in p.cached.items()}
        batch = settings.annotator == "openai-batch"
        call = LLMCall(
            options=settings.chat_options(),
            prices=PriceTable(settings.prices),
            max_cost=settings.max_cost,
            label="annotating",
            batch=BatchOptions(poll_interval_s=settings.batch_poll_interval_s, wait_s=settings.batch_wait_s) if batch else None,
            batch_dir=run.path / "annotation_batches",
        )
        log.info("annotate: %d row(s), %d answer(s) cached", rows_in, len(cached))
        result = answer_requests([r for p in prepared for r in p.requests], run.path / CACHE_FILE, call, cached=cached)
        folder = ctx.out.table_dir("annotations")
        used: list[CachedAnswer | None] = []
        for partition in prepared:
            rows = []
            for key, request, row in zip(partition.keys, partition.requests, partition.rows, strict=True):
                answer = result.get(request.request_hash)
                used.append(answer)
                if answer is not None:
                    rows.append(row or answer_row(key, request, answer, settings.annotator, call.options.model))
            write_part(pa.Table.from_pylist(rows, schema=ANNOTATIONS), folder, partition.index, ANNOTATIONS)
        rows_out = sum(answer is not None for answer in used)
        pending = rows_in - rows_out
        ctx.out.record(
            rows_out={"annotations": rows_out},
            **self._common(settings, rows_in),
            **accounting(usage_of(used), result, settings.max_cost),
            rows_pending=pending,
            complete=pending == 0,
        )
        if pending:
            log.warning(
                "annotate: %d row(s) not annotated (%s); rerun to continue, cached answers are not requested again",
                pending,
                "budget reached" if result.stats.budget_exhausted else f"{result.stats.failed} request(s) failed",
            )


ANNOTATE = AnnotateStage()


def run_annotate(run: Path | str | RunDir, settings: AnnotateSettings, client: Client, force: bool = False) -> dict[str, Any]:
    """Annotate the selected splits of the run's sequences; returns the manifest entry.

    With ``settings.dry_run`` nothing is sent or written: the result says how many rows would be
    annotated, how many are cached, and the tokens and (upper-bound) cost it would spend.
    """
    if settings.dry_run:
        return ANNOTATE.dry_run(run, settings, client)
    return ANNOTATE.execute(run, settings, client, force=force).entry


# -- command line ------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add ``rrec annotate`` to the CLI."""

    @app.command("annotate")
    @user_errors
    def annotate_command(
        run: RunOpt,
        config: ConfigOpt = None,
        workers: WorkersOpt = None,
        scheduler: SchedulerOpt = None,
        force: ForceOpt = False,
        annotator: Annotated[
            str | None, typer.Option("--annotator", help="template (offline, default), openai, or openai-batch (Batch API, half price).")
        ] = None,
        model: Annotated[str | None, typer.Option("--model", help="Model name (default gpt-4o for the OpenAI annotators).")] = None,
        base_url: Annotated[
            str | None,
            typer.Option("--base-url", help="OpenAI-compatible server URL (vLLM, Ollama, llama.cpp), e.g. http://localhost:8000/v1."),
        ] = None,
        concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="Requests in flight at once (whole run).")] = None,
        limit: Annotated[int | None, typer.Option("--limit", min=0, help="Annotate only the first N selected rows.")] = None,
        max_cost: Annotated[
            float | None, typer.Option("--max-cost", min=0, help="Stop cleanly once this many USD (estimated) would be exceeded.")
        ] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Print rows, tokens and cost it would spend; send and write nothing.")
        ] = False,
        splits: Annotated[str | None, typer.Option("--splits", help="Comma-separated splits to annotate (default: train).")] = None,
    ) -> None:
        """Write a rationale for every (history, next item) example: rrec annotate --run DIR.

        The OpenAI annotators read OPENAI_API_KEY from the environment. Answers are cached in
        RUN/annotation_cache.sqlite: a killed run resumes without repeating any answered request.
        """
        options = {
            "annotator": annotator,
            "model": model,
            "base_url": base_url,
            "concurrency": concurrency,
            "limit": limit,
            "max_cost": max_cost,
            "splits": splits,
            "workers": workers,
            "scheduler": scheduler,
        }
        if not dry_run:
            run_stage_command(ANNOTATE, run, config, force, **options)
            return
        from pipeline.cluster import dask_client

        settings, cluster = settings_for(config, STAGE, AnnotateSettings, dry_run=True, **options)
        with dask_client(cluster.workers, cluster.scheduler) as client:
            result = ANNOTATE.dry_run(run, settings, client)
        typer.echo(
            f"dry run ({result['annotator']}, {result['model']}): {result['rows']} row(s), {result['cached_rows']} cached, "
            f"{result['requests_to_send']} request(s) to send, ~{result['estimated_input_tokens']} input tokens, "
            f"at most {result['max_output_tokens']} output tokens, at most ${result['max_cost_usd']:.4f}"
        )
