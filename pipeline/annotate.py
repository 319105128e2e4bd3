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

import dataclasses
import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
import typer
from distributed import Client
from pydantic import Field, field_validator

from core.cli_common import ConfigOpt, ForceOpt, RunOpt, SchedulerOpt, WorkersOpt, settings_for, user_errors
from core.config import ConfigError
from core.progress import gather_with_progress, make_progress
from core.schemas import ANNOTATIONS, SPLITS
from core.stage import RunDir
from core.tables import write_part
from pipeline.annotators import template
from pipeline.annotators.cache import CACHE_FILE, AnswerCache, CachedAnswer, request_hash
from pipeline.annotators.context import PartitionSpec, load_partition_contexts, plan_partitions
from pipeline.annotators.limits import Budget
from pipeline.annotators.openai_batch import BatchOptions, run_batches
from pipeline.annotators.openai_chat import ChatClientSettings, ChatOptions, ChatRequest, SendStats, resolve_api_key, send_requests
from pipeline.annotators.pricing import PriceTable, estimate_tokens
from pipeline.teacher_prompt import (
    PROMPT_VERSION,
    STRUCTURED_RESPONSE_FORMAT,
    AnswerParseError,
    ExampleContext,
    build_messages,
    data_document,
    parse_answer,
)

log = logging.getLogger(__name__)

STAGE = "annotate"
MAX_STORED_RAW_CHARS = 4000
DEFAULT_OPENAI_MODEL = "gpt-4o"


class AnnotateSettings(ChatClientSettings):
    """Settings of ``rrec annotate`` (config section ``annotate``)."""

    annotator: Literal["template", "openai", "openai-batch"] = "template"
    model: str | None = Field(None, description="Model name; default gpt-4o (OpenAI) or the template version.")
    limit: int | None = Field(None, ge=0)
    dry_run: bool = False
    splits: list[str] = Field(default_factory=lambda: ["train"])
    max_output_tokens: int = Field(600, ge=16)
    temperature: float = Field(0.0, ge=0, le=2)
    partition_rows: int = Field(2000, ge=1)
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
            "partition_rows": self.partition_rows,
            "seed": self.seed,
        }


# -- per-partition work (runs on Dask workers; plain functions, testable without Dask) ------


def template_request_hash(context: ExampleContext, seed: int, max_history: int) -> str:
    """A stable id of a template annotation: what it saw and how it was phrased."""
    payload = f"{template.TEMPLATE_VERSION}|{seed}|{context.user_id}|{data_document(context, max_history)}"
    return hashlib.sha256(payload.encode()).hexdigest()


def template_rows(contexts: list[ExampleContext], seed: int, max_history: int) -> list[dict[str, Any]]:
    """Annotation rows of the template annotator for a list of contexts."""
    rows = []
    for context in contexts:
        answer = template.annotate(context, seed)
        rows.append(
            {
                "user_id": context.user_id,
                "split": context.split,
                "target_parent_asin": context.target.parent_asin,
                "rationale": answer.rationale,
                "user_preferences": answer.user_preferences,
                "coherent": answer.coherent,
                "annotator": "template",
                "model": template.TEMPLATE_VERSION,
                "prompt_version": template.TEMPLATE_VERSION,
                "input_tokens": 0,
                "output_tokens": 0,
                "request_hash": template_request_hash(context, seed, max_history),
            }
        )
    return rows


def annotate_partition_with_template(run_path: str, spec: PartitionSpec, seed: int, max_history: int) -> pa.Table:
    """The template annotations of one partition."""
    contexts = load_partition_contexts(Path(run_path), spec)
    return pa.Table.from_pylist(template_rows(contexts, seed, max_history), schema=ANNOTATIONS)


@dataclass(frozen=True)
class PreparedPartition:
    """One partition's requests (in row order) and the answers the cache already holds."""

    index: int
    keys: list[tuple[str, str, str]]
    requests: list[ChatRequest]
    cached: dict[str, CachedAnswer]
    rows: list[dict[str, Any] | None]
    """The annotation row of each cached answer, built on the worker; None where the answer
    has yet to come (a cached rerun leaves the driver only the writing)."""


def chat_request(context: ExampleContext, options: ChatOptions, max_history: int) -> ChatRequest:
    """The chat request that annotates one example."""
    messages = build_messages(context, max_history)
    return ChatRequest(
        request_hash=request_hash(options.model, options.prompt_version, messages, options.generation_params()),
        messages=messages,
        estimated_input_tokens=estimate_tokens(messages),
    )


def prepare_partition(
    run_path: str, spec: PartitionSpec, options: ChatOptions, max_history: int, annotator: str = "openai"
) -> PreparedPartition:
    """Build one partition's prompts and look them up in the run's cache (read only)."""
    contexts = load_partition_contexts(Path(run_path), spec)
    requests = [chat_request(context, options, max_history) for context in contexts]
    with AnswerCache(Path(run_path) / CACHE_FILE) as cache:
        cached = cache.get_many(r.request_hash for r in requests)
    keys = [c.key for c in contexts]
    rows = [
        answer_row(key, request, cached[request.request_hash], annotator, options.model) if request.request_hash in cached else None
        for key, request in zip(keys, requests, strict=True)
    ]
    # Answered requests travel back without their messages: a cached rerun moves keys, not prompts.
    requests = [dataclasses.replace(r, messages=[]) if r.request_hash in cached else r for r in requests]
    return PreparedPartition(spec.index, keys, requests, cached, rows)


def answer_row(key: tuple[str, str, str], request: ChatRequest, answer: CachedAnswer, annotator: str, model: str) -> dict[str, Any]:
    """An annotation row from a model answer.

    A refusal or an answer that is not the requested JSON is kept with ``coherent`` null and the
    raw text as rationale, so the filter can reject it with its reason instead of losing it.
    """
    row: dict[str, Any] = {
        "user_id": key[0],
        "split": key[1],
        "target_parent_asin": key[2],
        "annotator": annotator,
        "model": model,
        "prompt_version": PROMPT_VERSION,
        "input_tokens": answer.input_tokens,
        "output_tokens": answer.output_tokens,
        "request_hash": request.request_hash,
        "user_preferences": None,
        "coherent": None,
    }
    if answer.refusal:
        return {**row, "rationale": answer.refusal[:MAX_STORED_RAW_CHARS]}
    try:
        parsed = parse_answer(answer.content)
    except AnswerParseError:
        return {**row, "rationale": (answer.content or "")[:MAX_STORED_RAW_CHARS]}
    return {**row, "rationale": parsed.rationale, "user_preferences": parsed.user_preferences, "coherent": parsed.coherent}


# -- the stage ---------------------------------------------------------------------------


def _input_hashes(run: RunDir) -> dict[str, str]:
    inputs = run.upstream_hashes("sequences")
    ingest = run.entry("ingest")
    if ingest is not None:
        # The items and interactions tables enrich the prompts when they exist.
        inputs.update({f"ingest/{name}": digest for name, digest in ingest["outputs"].items() if name in ("items", "interactions")})
    return inputs


def _price_check(settings: AnnotateSettings, prices: PriceTable) -> None:
    if settings.annotator != "template" and settings.max_cost is not None and prices.price(settings.resolved_model) is None:
        raise ConfigError(
            f"--max-cost needs a price for model {settings.resolved_model!r}: add it under annotate.prices "
            "in the config file (input_per_million, output_per_million in USD)"
        )


def _dry_run_report(settings: AnnotateSettings, prepared: list[PreparedPartition], prices: PriceTable) -> dict[str, Any]:
    rows = sum(len(p.requests) for p in prepared)
    to_send = {r.request_hash: r for p in prepared for r in p.requests if r.request_hash not in p.cached}
    input_tokens = sum(r.estimated_input_tokens for r in to_send.values())
    output_tokens = len(to_send) * settings.max_output_tokens
    batch = settings.annotator == "openai-batch"
    return {
        "dry_run": True,
        "annotator": settings.annotator,
        "model": settings.resolved_model,
        "rows": rows,
        "cached_rows": rows - sum(1 for p in prepared for r in p.requests if r.request_hash in to_send),
        "requests_to_send": len(to_send),
        "estimated_input_tokens": input_tokens,
        "max_output_tokens": output_tokens,
        "max_cost_usd": round(prices.cost(settings.resolved_model, input_tokens, output_tokens, batch=batch), 6),
    }


def _send(
    settings: AnnotateSettings, run: RunDir, requests: list[ChatRequest], cache: AnswerCache, prices: PriceTable
) -> tuple[dict[str, CachedAnswer], SendStats]:
    budget = Budget(settings.max_cost)
    options = settings.chat_options()
    if not requests:
        return {}, SendStats()
    if settings.annotator == "openai-batch":
        batch_options = BatchOptions(poll_interval_s=settings.batch_poll_interval_s, wait_s=settings.batch_wait_s)
        return run_batches(requests, options, batch_options, cache, prices, budget, run.path / "annotation_batches")
    with make_progress() as progress:
        task = progress.add_task(f"annotating with {options.model}", total=len(requests))
        return send_requests(requests, options, cache, prices, budget, on_answer=functools.partial(progress.advance, task))


def run_annotate(run: Path | str | RunDir, settings: AnnotateSettings, client: Client, force: bool = False) -> dict[str, Any]:
    """Annotate the selected splits of the run's sequences; returns the manifest entry.

    With ``settings.dry_run`` nothing is sent or written: the result says how many rows would be
    annotated, how many are cached, and the tokens and (upper-bound) cost it would spend.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    run.require("sequences")
    prices = PriceTable(settings.prices)
    _price_check(settings, prices)
    inputs = _input_hashes(run)
    config = settings.output_config()
    fingerprint = run.fingerprint(STAGE, config=config, inputs=inputs)
    entry = run.entry(STAGE)
    if not force and not settings.dry_run and run.is_current(STAGE, fingerprint) and entry and entry.get("complete", True):
        log.info("annotate: inputs and settings unchanged, skipping (use --force to rerun)")
        return entry
    specs = plan_partitions(run.table("sequences"), settings.splits, settings.partition_rows, settings.limit)
    rows_in = sum(len(spec.row_indices) for spec in specs)
    run_path = str(run.path)

    if settings.annotator == "template":
        if settings.dry_run:
            return {
                "dry_run": True,
                "annotator": "template",
                "model": settings.resolved_model,
                "rows": rows_in,
                "cached_rows": 0,
                "requests_to_send": 0,
                "estimated_input_tokens": 0,
                "max_output_tokens": 0,
                "max_cost_usd": 0.0,
            }
        with run.stage(STAGE, fingerprint, config=config, inputs=inputs) as out:
            futures = [
                client.submit(annotate_partition_with_template, run_path, spec, settings.seed, settings.max_prompt_history, pure=False)
                for spec in specs
            ]
            folder = out.table_dir("annotations")
            tables = gather_with_progress(futures, "annotating (template)")
            for spec, table in zip(specs, tables, strict=True):
                write_part(table, folder, spec.index, ANNOTATIONS)
            out.record(
                rows_in=rows_in,
                rows_out={"annotations": sum(t.num_rows for t in tables)},
                annotator="template",
                model=settings.resolved_model,
                prompt_version=settings.prompt_version,
                splits=sorted(settings.splits),
                input_tokens=0,
                output_tokens=0,
                cost_usd=0.0,
                cache_hits=0,
                requests_sent=0,
                complete=True,
            )
        return run.require(STAGE)

    options = settings.chat_options()
    if not settings.dry_run:
        resolve_api_key(settings.base_url)  # fail before any work when the key is missing
    futures = [
        client.submit(prepare_partition, run_path, spec, options, settings.max_prompt_history, settings.annotator, pure=False)
        for spec in specs
    ]
    if settings.dry_run:
        return _dry_run_report(settings, gather_with_progress(futures, "building prompts"), prices)
    with run.stage(STAGE, fingerprint, config=config, inputs=inputs) as out:
        prepared: list[PreparedPartition] = gather_with_progress(futures, "building prompts")
        to_send = list({r.request_hash: r for p in prepared for r in p.requests if r.request_hash not in p.cached}.values())
        cache_hits = sum(len(p.cached) for p in prepared)
        log.info("annotate: %d row(s), %d answer(s) cached, %d request(s) to send", rows_in, cache_hits, len(to_send))
        with AnswerCache(run.path / CACHE_FILE) as cache:
            answers, stats = _send(settings, run, to_send, cache, prices)
        folder = out.table_dir("annotations")
        rows_out = input_tokens = output_tokens = 0
        cost = 0.0
        for partition in prepared:
            rows = []
            for key, request, row in zip(partition.keys, partition.requests, partition.rows, strict=True):
                answer = partition.cached.get(request.request_hash) or answers.get(request.request_hash)
                if answer is None:
                    continue
                rows.append(row or answer_row(key, request, answer, settings.annotator, options.model))
                input_tokens += answer.input_tokens
                output_tokens += answer.output_tokens
                cost += answer.cost_usd
            write_part(pa.Table.from_pylist(rows, schema=ANNOTATIONS), folder, partition.index, ANNOTATIONS)
            rows_out += len(rows)
        pending = rows_in - rows_out
        out.record(
            rows_in=rows_in,
            rows_out={"annotations": rows_out},
            annotator=settings.annotator,
            model=options.model,
            prompt_version=PROMPT_VERSION,
            splits=sorted(settings.splits),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=round(cost, 6),
            cost_usd_this_run=round(stats.cost_usd, 6),
            cache_hits=cache_hits,
            requests_sent=stats.requests_sent,
            retries=stats.retries,
            failed_requests=stats.failed,
            errors=dict(stats.errors),
            budget_exhausted=stats.budget_exhausted,
            max_cost=settings.max_cost,
            json_mode_fallback=stats.used_json_mode_fallback,
            send_wall_s=round(stats.send_wall_s, 3),
            rows_pending=pending,
            complete=pending == 0,
        )
    if pending:
        log.warning(
            "annotate: %d row(s) not annotated (%s); rerun to continue, cached answers are not requested again",
            pending,
            "budget reached" if stats.budget_exhausted else f"{stats.failed} request(s) failed",
        )
    return run.require(STAGE)


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
        from pipeline.cluster import dask_client

        settings, cluster = settings_for(
            config,
            STAGE,
            AnnotateSettings,
            annotator=annotator,
            model=model,
            base_url=base_url,
            concurrency=concurrency,
            limit=limit,
            max_cost=max_cost,
            dry_run=dry_run or None,
            splits=splits,
            workers=workers,
            scheduler=scheduler,
        )
        with dask_client(cluster.workers, cluster.scheduler) as client:
            result = run_annotate(run, settings, client, force=force)
        if result.get("dry_run"):
            typer.echo(
                f"dry run ({result['annotator']}, {result['model']}): {result['rows']} row(s), {result['cached_rows']} cached, "
                f"{result['requests_to_send']} request(s) to send, ~{result['estimated_input_tokens']} input tokens, "
                f"at most {result['max_output_tokens']} output tokens, at most ${result['max_cost_usd']:.4f}"
            )
            return
        typer.echo(
            f"annotated {result['rows_out']['annotations']} of {result['rows_in']} row(s) with {result['annotator']} "
            f"({result['model']}): {result['input_tokens']} input / {result['output_tokens']} output tokens, "
            f"${result['cost_usd']:.4f}, {result['cache_hits']} cache hit(s), {result['requests_sent']} request(s) sent"
            + ("" if result.get("complete", True) else f"; {result['rows_pending']} row(s) pending, rerun to continue")
        )
