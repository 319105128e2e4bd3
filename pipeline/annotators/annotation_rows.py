"""Annotation rows, built per partition on the Dask workers (plain functions, testable without Dask).

The template annotator finishes a partition here and writes its part file
(:func:`template_partition_to_part`). For the OpenAI annotators a partition's prompts are
built and looked up in the answer cache here (:func:`prepare_partition`); the rows of cached
answers are built on the worker too, so a cached rerun leaves the driver only the writing.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from core.schemas import ANNOTATIONS
from core.tables import write_part
from pipeline.annotators import template
from pipeline.annotators.cache import CACHE_FILE, AnswerCache, CachedAnswer, request_hash
from pipeline.annotators.context import PartitionSpec, load_contexts, load_partition_contexts, paused_gc, read_partition
from pipeline.annotators.openai_chat import ChatOptions, ChatRequest
from pipeline.annotators.pricing import estimate_tokens
from pipeline.annotators.template_columns import TemplateAnswers, template_answers
from pipeline.teacher_prompt import PROMPT_VERSION, AnswerParseError, ExampleContext, TeacherAnswer, build_messages, parse_answer

MAX_STORED_RAW_CHARS = 4000
"""Longest raw answer text kept as the rationale of an unparsable answer (the filter rejects it)."""


def template_request_hash(context: ExampleContext, seed: int, answer: TeacherAnswer) -> str:
    """A stable id of a template annotation: the example (version, seed, key, history items)
    and the text written for it (building the prompt's JSON document for this cost a quarter
    of the template's time)."""
    asins = [item.parent_asin for item in context.history]
    payload = "\x1f".join([template.TEMPLATE_VERSION, str(seed), *context.key, *asins, answer.rationale, answer.user_preferences])
    return hashlib.sha256(payload.encode()).hexdigest()


def template_rows(contexts: list[ExampleContext], seed: int) -> list[dict[str, Any]]:
    """Annotation rows of the template annotator for a list of contexts."""
    return template_table(contexts, seed).to_pylist()


def template_table(contexts: list[ExampleContext], seed: int) -> pa.Table:
    """The :data:`ANNOTATIONS` table of the template annotator for a list of contexts.

    Built column by column: a dict per row and ``Table.from_pylist`` cost more than the hashes.
    """
    answers = template.annotate_many(contexts, seed)
    return _annotations_table(
        [context.user_id for context in contexts],
        [context.split for context in contexts],
        [context.target.parent_asin for context in contexts],
        TemplateAnswers(
            [answer.user_preferences for answer in answers],
            [answer.rationale for answer in answers],
            [answer.coherent for answer in answers],
            [template_request_hash(context, seed, answer) for context, answer in zip(contexts, answers, strict=True)],
        ),
    )


def annotate_partition_with_template(run_path: str, spec: PartitionSpec, seed: int) -> pa.Table:
    """The template annotations of one partition: from its columns (:mod:`template_columns`),
    or from its contexts where that path does not apply (the reference, equal where both do)."""
    with paused_gc(freeze=True):  # the worker caches keep growing: never rescanned
        sequences = read_partition(spec)
        answers = template_answers(Path(run_path), sequences, seed)
        if answers is None:
            return template_table(load_contexts(Path(run_path), sequences, review_titles=False), seed)
        return answers_table(sequences, answers)


def answers_table(sequences: pa.Table, answers: TemplateAnswers) -> pa.Table:
    """The :data:`ANNOTATIONS` table of :func:`template_answers` for ``sequences`` (the columns of
    :func:`template_table`)."""
    target_asins = pc.struct_field(sequences.column("target"), "parent_asin")
    return _annotations_table(sequences.column("user_id"), sequences.column("split"), target_asins, answers)


def _annotations_table(user_ids: Any, splits: Any, target_asins: Any, answers: TemplateAnswers) -> pa.Table:
    """The template's :data:`ANNOTATIONS` rows from their keys (lists or Arrow columns) and answers."""
    count = len(answers.rationales)
    columns = {
        "user_id": user_ids,
        "split": splits,
        "target_parent_asin": target_asins,
        "rationale": answers.rationales,
        "user_preferences": answers.user_preferences,
        "coherent": answers.coherent,
        "annotator": pa.repeat("template", count),
        "model": pa.repeat(template.TEMPLATE_VERSION, count),
        "prompt_version": pa.repeat(template.TEMPLATE_VERSION, count),
        "input_tokens": pa.repeat(0, count),
        "output_tokens": pa.repeat(0, count),
        "request_hash": answers.request_hashes,
    }
    return pa.Table.from_pydict(columns, schema=ANNOTATIONS)


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
    cache_path = Path(run_path) / CACHE_FILE
    cached: dict[str, CachedAnswer] = {}
    if cache_path.exists():  # a dry run before any answer must not create the cache
        with AnswerCache(cache_path) as cache:
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


def template_partition_to_part(run_path: str, spec: PartitionSpec, seed: int, folder: str) -> int:
    """Annotate one partition with the template and write its part file; returns its rows."""
    table = annotate_partition_with_template(run_path, spec, seed)
    write_part(table, Path(folder), spec.index, ANNOTATIONS)
    return table.num_rows


def template_partitions_to_parts(run_path: str, specs: list[PartitionSpec], seed: int, folder: str) -> int:
    """Annotate consecutive partitions (of one sequences part file) in turn, one part file each; returns their rows.

    One task per run of partitions: the worker reads their sequences file once (see
    :func:`pipeline.cluster.consecutive_chunks`). Each part is written whole as it completes,
    so a kill keeps the finished ones.
    """
    return sum(template_partition_to_part(run_path, spec, seed, folder) for spec in specs)
