"""The OpenAI Batch API: half the price, answers within 24 hours.

:func:`run_batches` writes the uncached requests as JSONL (one line per request, ``custom_id``
= request hash), uploads it, creates the batch and records its id in the run's SQLite cache
before polling. It then polls, downloads the output and error files and maps every line back by
``custom_id`` into the cache. A rerun (after a kill, or after ``--batch-wait`` ran out) finds
the recorded id for the same set of requests and resumes polling instead of submitting again.
A batch that failed, expired or was cancelled is forgotten, so the next run submits its
unanswered requests anew.

Output records are read as defensively as chat answers (:mod:`pipeline.annotators.completion`):
a line that is not JSON, names no request of the batch, or carries no completion counts as a
failed request with its reason (``invalid_batch_record``, ``unknown_custom_id``, the record's
error code) while every other record of the file reaches the cache; a completion of an odd
shape, with a null or implausible ``usage`` or a huge answer is kept like a chat answer. So a
bad record can never block a batch's paid answers, and a rerun does not meet it again.
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
from pipeline.annotators.completion import read_completion
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


@dataclass
class BatchOutput:
    """What one output or error file of a batch held: answers, failures, corrections."""

    answers: dict[str, CachedAnswer]
    errors: list[str]
    notes: list[str]


def _record_error(record: dict[str, Any]) -> str | None:
    """The failure a batch record reports (``None`` for a 200 response)."""
    error = record.get("error")
    response = record.get("response") if isinstance(record.get("response"), dict) else {}
    if error:
        code = error.get("code") if isinstance(error, dict) else None
        return str(code) if isinstance(code, (str, int)) and code else "batch_error"
    status = response.get("status_code")
    if status != 200:
        return f"http_{status}" if isinstance(status, int) else "invalid_batch_record"
    if not isinstance(response.get("body"), dict):
        return "invalid_batch_record"
    return None


def _answers_from_output(text: str, requests: dict[str, ChatRequest], options: ChatOptions, prices: PriceTable) -> BatchOutput:
    """Read every line of a batch output or error file; a bad line is a failure, never a crash."""
    output = BatchOutput({}, [], [])
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            output.errors.append("invalid_batch_record")
            continue
        if not isinstance(record, dict):
            output.errors.append("invalid_batch_record")
            continue
        request = requests.get(record.get("custom_id")) if isinstance(record.get("custom_id"), str) else None
        if request is None:
            output.errors.append("unknown_custom_id")
            continue
        error = _record_error(record)
        if error is not None:
            output.errors.append(error)
            continue
        read = read_completion(
            record["response"]["body"],
            sum(len(m["content"]) for m in request.messages),
            len(request.messages),
            request.estimated_input_tokens,
            options.model,
            options.max_tokens,
            prices,
            batch=True,
        )
        output.answers[request.request_hash] = read.answer
        output.notes.extend(read.notes)
    return output


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
            by_hash = {r.request_hash: r for r in affordable}
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    output = _answers_from_output(client.files.content(file_id).text, by_hash, options, prices)
                    for request_hash_, answer in output.answers.items():
                        cache.put(request_hash_, options.model, options.prompt_version, answer)
                        stats.answered += 1
                        stats.input_tokens += answer.input_tokens
                        stats.output_tokens += answer.output_tokens
                        stats.cost_usd += answer.cost_usd
                    answers.update(output.answers)
                    stats.errors.update(output.errors)
                    stats.errors.update(output.notes)
                    stats.failed += len(output.errors)
            for request in affordable:
                budget.settle(prices.cost(options.model, request.estimated_input_tokens, options.max_tokens, batch=True), 0.0)
            budget.spent_usd += sum(answers[r.request_hash].cost_usd for r in affordable if r.request_hash in answers)
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
