"""The OpenAI Batch API: half the price, answers within 24 hours.

:func:`run_batches` writes the uncached requests as JSONL (one line per request, ``custom_id``
= request hash), uploads it, creates the batch and records its id in the run's SQLite cache
before polling. It then polls, downloads the output and error files and maps every line back by
``custom_id`` into the cache. A rerun (after a kill, or after ``--batch-wait`` ran out) finds
the recorded id for the same set of requests and resumes polling instead of submitting again.
A batch that failed, expired or was cancelled is forgotten, so the next run submits its
unanswered requests anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.stage import StageError
from pipeline.annotators.cache import AnswerCache, BatchRecord, CachedAnswer
from pipeline.annotators.limits import Budget
from pipeline.annotators.openai_chat import ChatOptions, ChatRequest, SendStats, resolve_api_key
from pipeline.annotators.pricing import PriceTable

if TYPE_CHECKING:
    import openai  # imported where used: it costs about a second at start-up

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS_PER_BATCH = 50_000  # the Batch API's per-file limit
UNFINISHED = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
DEAD = frozenset({"failed", "expired", "cancelled"})


class BatchPending(StageError):
    """A batch has not finished within the wait; rerunning the command resumes it."""


@dataclass(frozen=True)
class BatchOptions:
    poll_interval_s: float = 30.0
    wait_s: float = 24 * 3600.0
    max_requests_per_batch: int = MAX_REQUESTS_PER_BATCH


def batch_key(model: str, request_hashes: list[str]) -> str:
    """Identity of one batch: the model and the exact set of requests in it."""
    digest = hashlib.sha256(model.encode())
    for value in sorted(request_hashes):
        digest.update(value.encode())
    return digest.hexdigest()


def request_line(request: ChatRequest, options: ChatOptions) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": options.model,
        "messages": request.messages,
        "response_format": options.response_format,
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
    }
    if options.seed is not None:
        body["seed"] = options.seed
    return {"custom_id": request.request_hash, "method": "POST", "url": ENDPOINT, "body": body}


def _submit(client: openai.OpenAI, requests: list[ChatRequest], options: ChatOptions, work_dir: Path, key: str) -> BatchRecord:
    work_dir.mkdir(parents=True, exist_ok=True)
    jsonl = work_dir / f"batch-{key[:16]}.jsonl"
    with open(jsonl, "w", encoding="utf-8") as handle:
        for request in requests:
            handle.write(json.dumps(request_line(request, options), ensure_ascii=False) + "\n")
    with open(jsonl, "rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint=ENDPOINT,
        completion_window="24h",
        metadata={"prompt_version": options.prompt_version},
    )
    log.info("submitted batch %s with %d request(s)", batch.id, len(requests))
    return BatchRecord(batch_id=batch.id, input_file_id=uploaded.id, request_count=len(requests))


def _answers_from_output(text: str, options: ChatOptions, prices: PriceTable) -> tuple[dict[str, CachedAnswer], dict[str, str]]:
    answers: dict[str, CachedAnswer] = {}
    errors: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        custom_id = record.get("custom_id")
        response = record.get("response") or {}
        if record.get("error") or response.get("status_code") != 200:
            error = record.get("error") or {}
            errors[custom_id] = str(error.get("code") or f"http_{response.get('status_code')}")
            continue
        body = response.get("body") or {}
        message = (body.get("choices") or [{}])[0].get("message") or {}
        usage = body.get("usage") or {}
        input_tokens, output_tokens = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        answers[custom_id] = CachedAnswer(
            content=message.get("content"),
            refusal=message.get("refusal"),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=prices.cost(options.model, input_tokens, output_tokens, batch=True),
        )
    return answers, errors


def _wait(client: openai.OpenAI, record: BatchRecord, batch_options: BatchOptions) -> Any:
    deadline = time.monotonic() + batch_options.wait_s
    while True:
        batch = client.batches.retrieve(record.batch_id)
        if batch.status not in UNFINISHED:
            return batch
        if time.monotonic() >= deadline:
            raise BatchPending(
                f"batch {record.batch_id} is still {batch.status}; rerun the same command later to resume it "
                "(it will not be submitted again)"
            )
        time.sleep(batch_options.poll_interval_s)


def run_batches(
    requests: list[ChatRequest],
    options: ChatOptions,
    batch_options: BatchOptions,
    cache: AnswerCache,
    prices: PriceTable,
    budget: Budget,
    work_dir: Path,
) -> tuple[dict[str, CachedAnswer], SendStats]:
    """Get answers for ``requests`` through the Batch API, resuming recorded batches."""
    import openai

    stats = SendStats()
    answers: dict[str, CachedAnswer] = {}
    client = openai.OpenAI(
        api_key=resolve_api_key(options.base_url),
        base_url=options.base_url,
        timeout=options.request_timeout_s,
        max_retries=options.max_retries,
    )
    try:
        for start in range(0, len(requests), batch_options.max_requests_per_batch):
            chunk = requests[start : start + batch_options.max_requests_per_batch]
            # The affordable prefix is decided before the batch identity, so a rerun with the
            # same budget finds the batch it submitted last time.
            affordable = []
            for request in chunk:
                worst = prices.cost(options.model, request.estimated_input_tokens, options.max_tokens, batch=True)
                if not budget.reserve(worst):
                    break
                affordable.append(request)
            stats.skipped_for_budget += len(chunk) - len(affordable)
            stats.budget_exhausted = budget.exhausted
            if not affordable:
                break
            key = batch_key(options.model, [r.request_hash for r in affordable])
            record = cache.batch(key)
            if record is None:
                record = _submit(client, affordable, options, work_dir, key)
                cache.record_batch(key, record)
                stats.requests_sent += len(affordable)
            else:
                log.info("resuming batch %s (%d request(s)) instead of submitting again", record.batch_id, record.request_count)
            batch = _wait(client, record, batch_options)
            chunk_answers: dict[str, CachedAnswer] = {}
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    found, errors = _answers_from_output(client.files.content(file_id).text, options, prices)
                    chunk_answers.update(found)
                    for error in errors.values():
                        stats.errors[error] += 1
                    stats.failed += len(errors)
            for request_hash_, answer in chunk_answers.items():
                cache.put(request_hash_, options.model, options.prompt_version, answer)
                stats.answered += 1
                stats.input_tokens += answer.input_tokens
                stats.output_tokens += answer.output_tokens
                stats.cost_usd += answer.cost_usd
            answers.update(chunk_answers)
            if batch.status in DEAD:
                log.warning(
                    "batch %s ended %s; its unanswered requests will be submitted again on the next run", record.batch_id, batch.status
                )
                cache.forget_batch(key)
            if budget.exhausted:
                break
    finally:
        client.close()
    return answers, stats
