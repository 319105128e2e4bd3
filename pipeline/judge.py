"""Stage ``judge``: score a sample of kept rationales 0-3, the paper's quality protocol.

The scale is the one of Wang et al. (Self-Instruct, 2023), adapted to rationales:

3  valid and satisfying: correct, grounded in named history items, convincingly explains the target
2  acceptable with minor imperfections (partly generic, or one link left implicit)
1  relevant but with significant problems (weak or wrong links, vague)
0  invalid: irrelevant, ungrounded, or contradicts the data

``--judge openai`` asks an LLM (default gpt-4o) with the same client, retries, rate limits,
budget and SQLite cache as the annotator (prompt version :data:`JUDGE_PROMPT_VERSION`).
``--judge heuristic`` (the offline default) is a documented stand-in, not an LLM: it counts the
history items a rationale names and the concrete attributes (store, category, title words)
it cites that the target really shares with the history, and maps them onto the same scale:
0 = names no history item and cites no shared attribute; 1 = only one of the two; 2 = both;
3 = at least two history items, two shared attributes, and the target itself. Its rows and
manifest entry say ``heuristic`` so nobody mistakes it for the paper's judge.

The sample is the ``--sample`` rows of ``filtered`` with the smallest hash of (seed, key):
the same rows whatever the partitioning. Output: table ``judge`` (one row per judged rationale)
and manifest extras ``judge``, ``score_distribution``, ``mean_score``, ``sample_size``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import typer
from distributed import Client
from pydantic import Field

from core.cli_common import ConfigOpt, ForceOpt, RunOpt, SchedulerOpt, WorkersOpt, settings_for, user_errors
from core.config import ConfigError
from core.progress import gather_with_progress
from core.protocol import Stage, StageContext, StageResult
from core.stage import RunDir
from core.tables import part_name, parts, read_table, write_part
from pipeline.annotators.cache import CACHE_FILE, request_hash, stop_when_full
from pipeline.annotators.judging import (
    JUDGE_PROMPT_VERSION,
    JUDGE_RESPONSE_FORMAT,
    JUDGE_SYSTEM_PROMPT,
    JudgeAnswer,
    best_history_match,
    choose_sample,
    heuristic_score,
    judge_messages,
    judge_row,
    load_judge_cases,
    parse_judge_answer,
    score_summary,
)
from pipeline.annotators.openai_chat import ChatClientSettings, ChatOptions, ChatRequest, resolve_api_key
from pipeline.annotators.pricing import PriceTable, estimate_tokens
from pipeline.annotators.send_loop import LLMCall, accounting, answer_requests, offline_accounting, usage_of
from pipeline.annotators.worker_caches import worker_caches_dropped
from pipeline.cluster import consecutive_chunks, worker_count
from pipeline.stage_command import run_stage_command
from pipeline.teacher_prompt import AnswerParseError, ExampleContext
from pipeline.text_rules.hostile import hostile_text_reason

log = logging.getLogger(__name__)

__all__ = [
    "JUDGE",
    "JUDGE_PROMPT_VERSION",
    "JUDGE_RESPONSE_FORMAT",
    "JUDGE_SCHEMA",
    "JUDGE_SYSTEM_PROMPT",
    "JudgeAnswer",
    "JudgeSettings",
    "JudgeStage",
    "best_history_match",
    "choose_sample",
    "heuristic_score",
    "judge_messages",
    "judge_rationale_file",
    "load_judge_cases",
    "parse_judge_answer",
    "register",
    "run_judge",
    "score_cases",
]

STAGE = "judge"
HEURISTIC = "heuristic"
DEFAULT_JUDGE_MODEL = "gpt-4o"
HEURISTIC_NOTE = "heuristic stand-in judge (no LLM); see pipeline/judge.py for its rules"

JUDGE_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("split", pa.string()),
        ("target_parent_asin", pa.string()),
        ("score", pa.int8()),
        ("judge", pa.string()),
        ("explanation", pa.string()),
        ("prompt_version", pa.string()),
        ("input_tokens", pa.int32()),
        ("output_tokens", pa.int32()),
        ("request_hash", pa.string()),
    ]
)


class JudgeSettings(ChatClientSettings):
    """Settings of ``rrec judge`` (config section ``judge``)."""

    judge: Literal["heuristic", "openai"] = HEURISTIC
    sample: int = Field(300, ge=1)
    model: str | None = None
    max_output_tokens: int = Field(300, ge=16)

    @property
    def judge_name(self) -> str:
        return HEURISTIC if self.judge == HEURISTIC else (self.model or DEFAULT_JUDGE_MODEL)

    def chat_options(self) -> ChatOptions:
        return self.client_options(self.judge_name, JUDGE_PROMPT_VERSION, JUDGE_RESPONSE_FORMAT, self.max_output_tokens, 0.0)

    def output_config(self) -> dict[str, Any]:
        return {
            "judge": self.judge_name,
            "sample": self.sample,
            "seed": self.seed,
            "max_cost": self.max_cost,
            "prompt_version": JUDGE_PROMPT_VERSION if self.judge != HEURISTIC else HEURISTIC,
            "max_prompt_history": self.max_prompt_history,
        }


# -- per-partition work -------------------------------------------------------------------


def judge_partition_to_part(
    run_path: str, filtered_file: str, keys: set[tuple[str, str, str]], folder: str, index: int, max_history: int
) -> int:
    """Score one filtered part file's sampled rows with the heuristic judge into part ``index``."""
    rows = [judge_row(row, *_heuristic(row, context)) for row, context in load_judge_cases(run_path, filtered_file, keys)]
    write_part(pa.Table.from_pylist(rows, schema=JUDGE_SCHEMA), Path(folder), index, JUDGE_SCHEMA)
    return len(rows)


def judge_partitions_to_parts(
    run_path: str, files: list[tuple[int, str]], keys: set[tuple[str, str, str]], folder: str, max_history: int
) -> int:
    """:func:`judge_partition_to_part` over consecutive ``(index, filtered part file)`` in turn; returns their rows.

    One task per run of parts: consecutive filtered parts come from the same sequences part
    file, which the worker then reads once (see :func:`pipeline.cluster.consecutive_chunks`).
    """
    return sum(judge_partition_to_part(run_path, file, keys, folder, index, max_history) for index, file in files)


class JudgeStage(Stage[JudgeSettings]):
    """Score a seeded sample of the run's kept rationales into table ``judge``.

    The heuristic judge scores each filtered part file on the Dask workers (resumable: a killed
    run keeps the parts it finished); the LLM judge loads the sampled cases on the workers and
    asks the model through the shared send loop (:mod:`pipeline.annotators.send_loop`).
    """

    name = STAGE
    upstream = ("filter", "sequences")
    optional_upstream = ("ingest",)
    settings_type = JudgeSettings
    resumable = True

    def consumed_outputs(self, run: RunDir, stage: str) -> dict[str, str]:
        outputs = dict(run.require(stage)["outputs"])
        wanted = {"filter": ("filtered",), "ingest": ("items",)}.get(stage)
        return {k: v for k, v in outputs.items() if k in wanted} if wanted else outputs

    def fingerprint_config(self, settings: JudgeSettings, resolved: Any = None) -> dict[str, Any]:
        return settings.output_config()

    def preflight(self, run: RunDir, settings: JudgeSettings) -> None:
        if settings.judge != HEURISTIC and settings.max_cost is not None and PriceTable(settings.prices).price(settings.judge_name) is None:
            raise ConfigError(f"--max-cost needs a price for model {settings.judge_name!r}: add it under judge.prices in the config file")
        if settings.judge != HEURISTIC:
            resolve_api_key(settings.base_url)  # fail before any work when the key is missing

    def report(self, result: StageResult) -> str:
        if result.skipped:
            return result.summary()
        entry = result.entry
        return (
            f"judged {entry['sample_size']} rationale(s) with {entry['judge']}: mean score {entry['mean_score']}, "
            f"distribution {entry['score_distribution']}"
        )

    def run(self, ctx: StageContext[JudgeSettings]) -> None:
        with stop_when_full(ctx.run.path), worker_caches_dropped(ctx.client):
            self._run(ctx)

    def _run(self, ctx: StageContext[JudgeSettings]) -> None:
        settings, run = ctx.settings, ctx.run
        files = parts(run.table("filtered"))
        keys = choose_sample(run.table("filtered"), settings.sample, settings.seed)
        folder = ctx.out.table_dir("judge")
        if settings.judge == HEURISTIC:
            done = ctx.out.done_parts("judge")
            todo = [(index, f) for index, f in enumerate(files) if part_name(index) not in done]
            futures = [
                ctx.client.submit(
                    judge_partitions_to_parts, str(run.path), chunk, keys, str(folder), settings.max_prompt_history, pure=False
                )
                for chunk in consecutive_chunks([(index, str(f)) for index, f in todo], worker_count(ctx.client))
            ]
            gather_with_progress(futures, "judging (heuristic)")
            rows = read_table(folder, columns=["score"]).to_pylist() if files else []
            extras = {**_extras(settings), **offline_accounting(), "note": HEURISTIC_NOTE, "resumed_parts": len(files) - len(todo)}
            rows_in = len(rows)
        else:
            futures = [ctx.client.submit(load_judge_cases, str(run.path), str(f), keys, pure=False) for f in files]
            chunks = gather_with_progress(futures, "loading judge sample")
            scored, extras = score_cases([case for chunk in chunks for case in chunk], settings, run.path / CACHE_FILE)
            rows, start = [], 0
            for index, chunk in enumerate(chunks):
                done_keys = {(c["user_id"], c["split"], c["target_parent_asin"]) for c, _ in chunk}
                part = [r for r in scored[start:] if (r["user_id"], r["split"], r["target_parent_asin"]) in done_keys]
                write_part(pa.Table.from_pylist(part, schema=JUDGE_SCHEMA), folder, index, JUDGE_SCHEMA)
                rows.extend(part)
            rows_in = sum(len(chunk) for chunk in chunks)
        summary = score_summary(rows)
        ctx.out.record(
            rows_in=rows_in,
            rows_out={"judge": len(rows)},
            **extras,
            **summary,
            sample_requested=settings.sample,
            complete=len(rows) == rows_in,
        )


JUDGE = JudgeStage()


def run_judge(run: Path | str | RunDir, settings: JudgeSettings, client: Client, force: bool = False) -> dict[str, Any]:
    """Score a seeded sample of the run's filtered rationales; returns the manifest entry."""
    return JUDGE.execute(run, settings, client, force=force).entry


def judge_rationale_file(run: Path | str | RunDir, rationales: Path, output: Path, settings: JudgeSettings) -> dict[str, Any]:
    """Score rationales written elsewhere (``rrec evaluate`` generations) against a run's sequences.

    ``rationales`` is a Parquet file with the sequence key (user_id, split, target_parent_asin)
    and ``rationale``; the run folder the release was built from supplies each row's history
    and target. Writes the scores to ``output`` (Parquet) and their summary beside it (``.json``);
    the run's own ``judge`` stage is left untouched. This is how the paper's Fig. 1 compares
    the rationales of models with the dataset's.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    run.require("sequences")
    if not Path(rationales).is_file():
        raise FileNotFoundError(f"rationale file {rationales} does not exist (write one with `rrec evaluate --generations FILE`)")
    if settings.judge != HEURISTIC:
        resolve_api_key(settings.base_url)
    keys = choose_sample(Path(rationales), settings.sample, settings.seed)
    cases = load_judge_cases(str(run.path), str(rationales), keys)
    if len(cases) < len(keys):
        log.warning(
            "%d of %d sampled rationales have no matching row in %s/sequences and are not scored",
            len(keys) - len(cases),
            len(keys),
            run.path,
        )
    rows, extras = score_cases(cases, settings, run.path / CACHE_FILE)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=JUDGE_SCHEMA), output)
    summary = {
        "rationales": str(rationales),
        **extras,
        **score_summary(rows),
        "sample_requested": settings.sample,
        "complete": len(rows) == len(cases),
    }
    output.with_suffix(".json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def judge_request(row: dict[str, Any], context: ExampleContext, options: ChatOptions, max_history: int) -> ChatRequest:
    """The chat request that asks the LLM judge to score one row's rationale."""
    messages = judge_messages(row["rationale"], context, max_history)
    return ChatRequest(
        request_hash(options.model, JUDGE_PROMPT_VERSION, messages, options.generation_params()), messages, estimate_tokens(messages)
    )


def _extras(settings: JudgeSettings) -> dict[str, Any]:
    """What the card reads about the judge: its kind (heuristic or LLM), name, model, prompt."""
    llm = settings.judge != HEURISTIC
    return {
        "judge": settings.judge_name,
        "judge_kind": "llm" if llm else HEURISTIC,
        "model": settings.judge_name if llm else None,
        "prompt_version": settings.output_config()["prompt_version"],
    }


def score_cases(
    cases: list[tuple[dict[str, Any], ExampleContext]], settings: JudgeSettings, cache_path: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score (row, context) cases with the heuristic or the LLM judge; rows plus the judge's facts
    and the send loop's accounting (:func:`pipeline.annotators.send_loop.accounting`).

    An LLM answer that fails to arrive leaves its case unscored and absent (the stage is then
    incomplete); an answer that is not ``{score, explanation}`` is kept with a null score.
    """
    if settings.judge == HEURISTIC:
        rows = [judge_row(row, *_heuristic(row, context)) for row, context in cases]
        return rows, {**_extras(settings), **offline_accounting(), "note": HEURISTIC_NOTE}
    options = settings.chat_options()
    requests = [judge_request(row, context, options, settings.max_prompt_history) for row, context in cases]
    call = LLMCall(options=options, prices=PriceTable(settings.prices), max_cost=settings.max_cost, label="judging")
    result = answer_requests(requests, cache_path, call)
    rows, used, unusable = [], [], Counter()
    for (row, _), request in zip(cases, requests, strict=True):
        answer = result.get(request.request_hash)
        used.append(answer)
        if answer is None:
            continue
        try:
            parsed = parse_judge_answer(answer)
        except AnswerParseError as exc:
            unusable["unparsable_output"] += 1
            rows.append(judge_row(row, None, options.model, str(exc), JUDGE_PROMPT_VERSION, answer, request.request_hash))
            continue
        if (reason := hostile_text_reason(parsed.explanation)) is not None:
            # Markup, scripts or instructions in the judge's own text: not stored, not scored.
            unusable[reason] += 1
            explanation = f"judge answer rejected: {reason} (see pipeline/text_rules/hostile.py)"
            rows.append(judge_row(row, None, options.model, explanation, JUDGE_PROMPT_VERSION, answer, request.request_hash))
            continue
        rows.append(judge_row(row, parsed.score, options.model, parsed.explanation, JUDGE_PROMPT_VERSION, answer, request.request_hash))
    extras = {**_extras(settings), **accounting(usage_of(used), result, settings.max_cost)}
    return rows, {**extras, "unusable_answers": dict(sorted(unusable.items()))}


def _heuristic(row: dict[str, Any], context: ExampleContext) -> tuple[int, str, str, str]:
    score, explanation = heuristic_score(row["rationale"], context)
    return score, HEURISTIC, explanation, HEURISTIC


def register(app: typer.Typer) -> None:
    """Add ``rrec judge`` to the CLI."""

    @app.command("judge")
    @user_errors
    def judge_command(
        run: RunOpt,
        config: ConfigOpt = None,
        workers: WorkersOpt = None,
        scheduler: SchedulerOpt = None,
        force: ForceOpt = False,
        sample: Annotated[
            int | None, typer.Option("--sample", min=1, help="How many kept rationales to score (default 300, as in the paper).")
        ] = None,
        judge: Annotated[str | None, typer.Option("--judge", help="heuristic (offline stand-in, default) or openai (LLM judge).")] = None,
        model: Annotated[str | None, typer.Option("--model", help="Judge model for --judge openai (default gpt-4o).")] = None,
        base_url: Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible server URL for the judge.")] = None,
        concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="Requests in flight at once.")] = None,
        max_cost: Annotated[float | None, typer.Option("--max-cost", min=0, help="Stop cleanly before this many USD (estimated).")] = None,
        rationales: Annotated[
            Path | None,
            typer.Option(
                "--rationales",
                help="Score this Parquet file of rationales (e.g. `rrec evaluate --generations`) instead of the run's filtered table.",
            ),
        ] = None,
        output: Annotated[
            Path | None, typer.Option("--output", help="With --rationales: where the scores go (Parquet; summary beside it as .json).")
        ] = None,
    ) -> None:
        """Score a sample of kept rationales 0-3 (Self-Instruct scale): rrec judge --run DIR --sample N.

        The score distribution goes to manifest.json for the data card. Without --judge openai a
        heuristic stand-in judge scores offline and says so in every row it writes. With
        --rationales FILE --output OUT it scores a model's generated rationales against the same
        run's sequences instead (the paper's Fig. 1 comparison).
        """
        options = {
            "sample": sample,
            "judge": judge,
            "model": model,
            "base_url": base_url,
            "concurrency": concurrency,
            "max_cost": max_cost,
            "workers": workers,
            "scheduler": scheduler,
        }
        if rationales is None:
            run_stage_command(JUDGE, run, config, force, **options)
            return
        if output is None:
            raise ValueError("--rationales needs --output OUT.parquet for the scores")
        settings, _ = settings_for(config, STAGE, JudgeSettings, **options)
        entry = judge_rationale_file(run, rationales, output, settings)
        typer.echo(f"scores in {output}, summary in {output.with_suffix('.json')}")
        typer.echo(
            f"judged {entry['sample_size']} rationale(s) with {entry['judge']}: mean score {entry['mean_score']}, "
            f"distribution {entry['score_distribution']}"
        )
