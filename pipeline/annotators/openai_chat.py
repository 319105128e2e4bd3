"""Chat completions through the ``openai`` SDK: bounded concurrency, limits, retries, cache.

:func:`send_requests` sends a list of :class:`ChatRequest` from one asyncio event loop (see
:mod:`pipeline.annotators.limits` for why that makes the limits run-wide). For each request it
reserves the worst-case cost against the budget, waits for the rate limiter, and posts a chat
completion with structured outputs (a JSON schema) through the SDK client; a server that rejects
``json_schema`` switches the rest of the run to JSON mode. 429, 408/409, 5xx, timeouts and
connection errors are retried with exponential backoff and full jitter, honouring the server's
``Retry-After`` (a 429 pauses the whole run). Each answer is written to the cache as soon as it
arrives. The SDK's own retries are off so that every attempt passes the run's rate limiter.

Every wait is bounded: our own backoff by :data:`MAX_BACKOFF_S`, the server's ``Retry-After``
by ``max_server_wait_s`` (default :data:`MAX_SERVER_WAIT_S`). A server that asks for a longer
wait (``inf``, ``1e9``, a date next year) gets none: the request counts as failed
(``retry_after_too_long``) and stays unanswered, so the stage ends ``complete: false`` and a
rerun sends it again. A negative, ``nan`` or unreadable value is ignored (our own backoff
applies). Answers are read by :func:`pipeline.annotators.completion.read_completion`.

The API key comes only from the ``OPENAI_API_KEY`` environment variable and is handed to the
SDK; nothing here logs, stores or prints it.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import Field

from core.config import StageSettings
from pipeline.annotators.cache import AnswerCache, CachedAnswer, CacheFullError, out_of_space_message
from pipeline.annotators.completion import read_completion
from pipeline.annotators.limits import Budget, RateLimiter
from pipeline.annotators.pricing import ModelPrice, PriceTable

if TYPE_CHECKING:
    import openai  # imported where used: it costs about a second at start-up

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
# A local OpenAI-compatible server (vLLM, Ollama, llama.cpp) accepts any key; the SDK wants one.
LOCAL_SERVER_KEY = "not-needed"
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})  # bad key, no access, unknown model or endpoint
MAX_BACKOFF_S = 60.0
MAX_SERVER_WAIT_S = 120.0
"""Longest ``Retry-After`` honoured; a server asking for more fails the request for this run."""


class AnnotatorConfigError(ValueError):
    """The OpenAI annotator cannot start (e.g. no API key); the message says what to set."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to send: its cache key, messages and estimated input tokens."""

    request_hash: str
    messages: list[dict[str, str]]
    estimated_input_tokens: int


@dataclass(frozen=True)
class ChatOptions:
    """How requests are sent: model, generation parameters and transport limits."""

    model: str
    prompt_version: str
    response_format: dict[str, Any]
    max_tokens: int = 600
    temperature: float = 0.0
    seed: int | None = None
    base_url: str | None = None
    concurrency: int = 16
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    request_timeout_s: float = 60.0
    max_retries: int = 6
    retry_base_s: float = 1.0
    max_server_wait_s: float = MAX_SERVER_WAIT_S

    def generation_params(self) -> dict[str, Any]:
        """The parameters that change an answer (part of the cache key)."""
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "seed": self.seed}


class ChatClientSettings(StageSettings):
    """Settings every command that talks to an OpenAI-compatible server shares (annotate, judge)."""

    base_url: str | None = None
    concurrency: int = Field(16, ge=1)
    max_cost: float | None = Field(None, ge=0)
    requests_per_minute: float | None = Field(500, gt=0)
    tokens_per_minute: float | None = Field(200_000, gt=0)
    request_timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(6, ge=0)
    retry_base_s: float = Field(1.0, ge=0)
    max_server_wait_s: float = Field(MAX_SERVER_WAIT_S, ge=0, description="Longest server-requested wait (Retry-After) honoured.")
    max_prompt_history: int = Field(20, ge=1)
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    seed: int = 42

    def client_options(
        self, model: str, prompt_version: str, response_format: dict[str, Any], max_tokens: int, temperature: float
    ) -> ChatOptions:
        """The request options of one command: its model and format plus the shared transport limits."""
        return ChatOptions(
            model=model,
            prompt_version=prompt_version,
            response_format=response_format,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=self.seed,
            base_url=self.base_url,
            concurrency=self.concurrency,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            request_timeout_s=self.request_timeout_s,
            max_retries=self.max_retries,
            retry_base_s=self.retry_base_s,
            max_server_wait_s=self.max_server_wait_s,
        )


@dataclass
class SendStats:
    """What sending cost and how it went."""

    requests_sent: int = 0
    answered: int = 0
    retries: int = 0
    failed: int = 0
    skipped_for_budget: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    budget_exhausted: bool = False
    used_json_mode_fallback: bool = False
    send_wall_s: float = 0.0
    errors: Counter = field(default_factory=Counter)


def resolve_api_key(base_url: str | None) -> str:
    """The API key from the environment; a custom ``base_url`` may run without one."""
    key = os.environ.get(API_KEY_ENV)
    if key:
        return key
    if base_url:
        return LOCAL_SERVER_KEY
    raise AnnotatorConfigError(
        f"the OpenAI annotator needs an API key: export {API_KEY_ENV}=... in the environment "
        "(never put it in a config file), or pass --base-url for a local OpenAI-compatible server, "
        "or use --annotator template"
    )


def make_async_client(options: ChatOptions) -> openai.AsyncOpenAI:
    import openai

    return openai.AsyncOpenAI(
        api_key=resolve_api_key(options.base_url),
        base_url=options.base_url,
        timeout=options.request_timeout_s,
        max_retries=0,
    )


def retry_after_seconds(headers: Any) -> float | None:
    """The server's requested delay from ``retry-after-ms`` or ``retry-after`` (seconds or date).

    ``None`` when absent or unusable (negative, ``nan``, garbage); may be ``inf`` or huge: the
    caller bounds it.
    """
    if headers is None:
        return None
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is None:
                continue
            seconds = float(email.utils.mktime_tz(parsed) - time.time())
        if seconds == seconds and seconds >= 0:  # not nan, not negative
            return seconds
    return None


def backoff_seconds(attempt: int, base_s: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, base * 2**attempt], capped."""
    return random.uniform(0.0, min(MAX_BACKOFF_S, base_s * 2.0**attempt))


class InvalidResponse(Exception):
    """A 2xx response whose body is not a chat completion object (retried like a 5xx)."""


def _schema_unsupported(exc: openai.APIStatusError) -> bool:
    text = str(exc).lower()
    return exc.status_code in (400, 422) and ("response_format" in text or "json_schema" in text)


class ChatSender:
    """Sends chat requests for one run: one client, limiter, budget and cache."""

    def __init__(
        self,
        options: ChatOptions,
        cache: AnswerCache,
        prices: PriceTable,
        budget: Budget,
        on_answer: Callable[[], None] | None = None,
    ):
        self.options = options
        self.cache = cache
        self.prices = prices
        self.budget = budget
        self.limiter = RateLimiter(options.requests_per_minute, options.tokens_per_minute)
        self.stats = SendStats()
        self.response_format = options.response_format
        self._on_answer = on_answer

    async def _create(self, client: openai.AsyncOpenAI, request: ChatRequest) -> dict[str, Any]:
        """POST one chat completion; the response body as JSON.

        Through the SDK's documented low-level ``client.post`` (same client, auth, timeouts
        and error types as ``chat.completions.create``) with the body as it is and the response
        read as raw JSON: the SDK's recursive transform of the parameters and its parse into
        typed models cost about a third of the client's CPU per request, which at 64 requests
        in flight held the event loop back from sending the next ones.
        """
        body: dict[str, Any] = {
            "model": self.options.model,
            "messages": request.messages,
            "max_tokens": self.options.max_tokens,
            "temperature": self.options.temperature,
            "response_format": self.response_format,
        }
        if self.options.seed is not None:
            body["seed"] = self.options.seed
        self.stats.requests_sent += 1
        content = await client.post("/chat/completions", body=body, cast_to=bytes)
        try:
            completion = json.loads(content)
        except ValueError:
            raise InvalidResponse("the response body is not JSON") from None
        if not isinstance(completion, dict):
            raise InvalidResponse("the response body is not a JSON object")
        return completion

    async def _send_one(self, client: openai.AsyncOpenAI, request: ChatRequest) -> CachedAnswer | None:
        import openai

        worst_case = self.prices.cost(self.options.model, request.estimated_input_tokens, self.options.max_tokens)
        if not self.budget.reserve(worst_case):
            self.stats.skipped_for_budget += 1
            self.stats.budget_exhausted = True
            return None
        attempt = 0
        while True:
            await self.limiter.acquire(request.estimated_input_tokens + self.options.max_tokens)
            try:
                completion = await self._create(client, request)
            except openai.APIStatusError as exc:
                if exc.status_code in FATAL_STATUS:
                    # Every other request would fail the same way: stop the run (answers so far stay cached).
                    raise AnnotatorConfigError(
                        f"the server refused the request with HTTP {exc.status_code}: check {API_KEY_ENV}, "
                        f"the model name ({self.options.model!r}) and --base-url"
                    ) from None
                if self.response_format.get("type") == "json_schema" and _schema_unsupported(exc):
                    log.warning("the server does not support JSON-schema outputs; switching to JSON mode")
                    self.response_format = {"type": "json_object"}
                    self.stats.used_json_mode_fallback = True
                    continue
                error, retryable, delay = (
                    f"http_{exc.status_code}",
                    exc.status_code in RETRYABLE_STATUS,
                    retry_after_seconds(exc.response.headers),
                )
                if delay is not None and delay > self.options.max_server_wait_s:
                    # Waiting that long would stall the run: fail this request now, a rerun retries it.
                    self.stats.errors[error] += 1
                    error, retryable, delay = "retry_after_too_long", False, None
                elif exc.status_code == 429:
                    self.limiter.pause(delay if delay is not None else backoff_seconds(attempt, self.options.retry_base_s))
            except openai.APITimeoutError:
                error, retryable, delay = "timeout", True, None
            except InvalidResponse:
                error, retryable, delay = "invalid_response", True, None
            except openai.APIConnectionError:
                error, retryable, delay = "connection_error", True, None
            else:
                return self._record(request, completion, worst_case)
            self.stats.errors[error] += 1
            if not retryable or attempt >= self.options.max_retries:
                log.warning("request %s failed for good after %d attempt(s): %s", request.request_hash[:12], attempt + 1, error)
                self.stats.failed += 1
                self.budget.settle(worst_case, 0.0)
                return None
            self.stats.retries += 1
            await asyncio.sleep(delay if delay is not None else backoff_seconds(attempt, self.options.retry_base_s))
            attempt += 1

    def _record(self, request: ChatRequest, completion: dict[str, Any], reserved: float) -> CachedAnswer:
        # The cache first: the answer is paid for, nothing may fail before it is stored.
        read = read_completion(
            completion,
            sum(len(m["content"]) for m in request.messages),
            len(request.messages),
            request.estimated_input_tokens,
            self.options.model,
            self.options.max_tokens,
            self.prices,
        )
        answer, cost = read.answer, read.answer.cost_usd
        try:
            self.cache.put(request.request_hash, self.options.model, self.options.prompt_version, answer)
        finally:
            self.budget.settle(reserved, cost)
            self.stats.cost_usd += cost
        self.stats.errors.update(read.notes)
        self.stats.answered += 1
        self.stats.input_tokens += answer.input_tokens
        self.stats.output_tokens += answer.output_tokens
        if self._on_answer is not None:
            self._on_answer()
        return answer

    async def send_all(self, requests: list[ChatRequest]) -> dict[str, CachedAnswer]:
        """Send every request (at most ``concurrency`` at a time); answers by request hash.

        Requests are started in list order; once the budget refuses one, no later request
        starts. Requests that failed for good or were not sent are absent from the result.
        """
        answers: dict[str, CachedAnswer] = {}
        pending = iter(requests)
        client = make_async_client(self.options)

        async def worker() -> None:
            for request in pending:
                if self.cache.out_of_space:
                    break
                if self.budget.exhausted:
                    self.stats.skipped_for_budget += 1
                    continue
                try:
                    answer = await self._send_one(client, request)
                except CacheFullError:
                    self.stats.errors["answer_lost_disk_full"] += 1
                    break
                if answer is not None:
                    answers[request.request_hash] = answer

        try:
            await asyncio.gather(*(worker() for _ in range(max(1, self.options.concurrency))))
        finally:
            await client.close()
        return answers


def send_requests(
    requests: list[ChatRequest],
    options: ChatOptions,
    cache: AnswerCache,
    prices: PriceTable,
    budget: Budget,
    on_answer: Callable[[], None] | None = None,
) -> tuple[dict[str, CachedAnswer], SendStats]:
    """Send ``requests`` from a fresh event loop; returns answers by hash and the run's stats.

    Raises :class:`CacheFullError` once every request in flight has ended if the disk filled
    (the answers that arrived are in the cache).
    """
    sender = ChatSender(options, cache, prices, budget, on_answer)
    started = time.monotonic()
    answers = asyncio.run(sender.send_all(requests))
    sender.stats.send_wall_s = time.monotonic() - started
    sender.stats.budget_exhausted = sender.stats.budget_exhausted or budget.exhausted
    if cache.out_of_space:
        log.warning("the disk filled after %d answer(s) were stored", len(answers))
        raise CacheFullError(out_of_space_message(cache.path.parent))
    return answers, sender.stats
