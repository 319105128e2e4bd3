"""The one LLM send loop of annotate and judge: cache -> dedupe -> send -> merge, one cost accounting.

Both stages turn their rows into :class:`ChatRequest` objects (one per row, keyed by a hash of
model, prompt version, messages and generation parameters) and hand them to
:func:`answer_requests`, which

1. looks every hash up in the run's SQLite answer cache (or takes the lookups the Dask workers
   already made),
2. keeps one request per uncached hash (rows asking the same thing share one answer),
3. sends those through the chat API (:mod:`.openai_chat`) or the Batch API (:mod:`.openai_batch`)
   under one run-wide :class:`Budget` and rate limiter, every answer cached as it arrives,
4. returns every answer it knows by hash, cached and fresh alike.

Costs are counted in one place, :func:`accounting`: the tokens and cost of the answers a stage's
rows use (``input_tokens``, ``output_tokens``, ``cost_usd``: what the output cost, including
answers paid in earlier runs) and what this run paid (``cost_usd_this_run``), with the send
statistics. Both stages record exactly these fields in their manifest entries.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.progress import make_progress
from pipeline.annotators.cache import AnswerCache, CachedAnswer
from pipeline.annotators.limits import Budget
from pipeline.annotators.openai_batch import BatchOptions, run_batches
from pipeline.annotators.openai_chat import ChatOptions, ChatRequest, SendStats, send_requests
from pipeline.annotators.pricing import PriceTable


@dataclass(frozen=True)
class LLMCall:
    """How a stage's requests are answered: options, prices, budget, and chat or Batch API."""

    options: ChatOptions
    prices: PriceTable
    max_cost: float | None
    label: str
    batch: BatchOptions | None = None
    """Send through the Batch API (half price) when set."""
    batch_dir: Path | None = None
    """Where the Batch API's input files are written (required with ``batch``)."""


@dataclass
class LoopResult:
    """Every answer the loop knows (cached and fresh) and what sending did."""

    answers: dict[str, CachedAnswer]
    cache_hits: int
    stats: SendStats = field(default_factory=SendStats)

    def get(self, request_hash: str) -> CachedAnswer | None:
        return self.answers.get(request_hash)


def unique_uncached(requests: Iterable[ChatRequest], cached: Mapping[str, Any]) -> list[ChatRequest]:
    """The requests to send: one per hash not in ``cached``, in first-seen order."""
    return list({r.request_hash: r for r in requests if r.request_hash not in cached}.values())


def answer_requests(
    requests: Sequence[ChatRequest], cache_path: Path, call: LLMCall, cached: Mapping[str, CachedAnswer] | None = None
) -> LoopResult:
    """Answer ``requests`` from the cache or the API (see the module docstring).

    ``cached`` is the cache lookup when the caller made it already (on the Dask workers);
    otherwise the cache is read here. Requests that failed, or that the budget did not allow,
    are absent from the result: the caller leaves their rows pending.
    """
    with AnswerCache(cache_path, reserve_space=True) as cache:
        known = dict(cached) if cached is not None else cache.get_many(r.request_hash for r in requests)
        to_send = unique_uncached(requests, known)
        if not to_send:
            return LoopResult(known, len(known))
        budget = Budget(call.max_cost)
        if call.batch is not None:
            fresh, stats = run_batches(to_send, call.options, call.batch, cache, call.prices, budget, call.batch_dir or cache_path.parent)
        else:
            with make_progress() as progress:
                task = progress.add_task(f"{call.label} with {call.options.model}", total=len(to_send))
                fresh, stats = send_requests(
                    to_send, call.options, cache, call.prices, budget, on_answer=functools.partial(progress.advance, task)
                )
    return LoopResult({**known, **fresh}, len(known), stats)


@dataclass(frozen=True)
class Usage:
    """Tokens and cost of the answers a stage's output rows use."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


def usage_of(answers: Iterable[CachedAnswer | None]) -> Usage:
    """Add up the answers of a stage's rows (one per row; ``None`` for a row left pending)."""
    input_tokens = output_tokens = 0
    cost = 0.0
    for answer in answers:
        if answer is not None:
            input_tokens += answer.input_tokens
            output_tokens += answer.output_tokens
            cost += answer.cost_usd
    return Usage(input_tokens, output_tokens, cost)


def accounting(usage: Usage, result: LoopResult, max_cost: float | None) -> dict[str, Any]:
    """The manifest fields every LLM stage records (the one cost accounting)."""
    stats = result.stats
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cost_usd": round(usage.cost_usd, 6),
        "cost_usd_this_run": round(stats.cost_usd, 6),
        "cache_hits": result.cache_hits,
        "requests_sent": stats.requests_sent,
        "retries": stats.retries,
        "failed_requests": stats.failed,
        "errors": dict(sorted(stats.errors.items())),
        "budget_exhausted": stats.budget_exhausted,
        "max_cost": max_cost,
        "json_mode_fallback": stats.used_json_mode_fallback,
        "send_wall_s": round(stats.send_wall_s, 3),
    }


def offline_accounting() -> dict[str, Any]:
    """The same fields for a stage that asked no model (template annotator, heuristic judge)."""
    return accounting(Usage(), LoopResult({}, 0), None)
