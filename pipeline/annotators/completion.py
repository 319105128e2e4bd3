"""Reading one chat completion defensively: the same rules for chat answers and Batch API records.

Whatever a server sends, :func:`read_completion` returns a :class:`CachedAnswer` and never raises:

- a body of an odd shape (``choices`` not a list, ``message`` not an object, content not a
  string) gives an answer with no text, which the filter rejects with its reason;
- an answer longer than :data:`MAX_ANSWER_CHARS` characters is cut to that length (and counted
  as ``answer_too_long``): a 10 MB answer is neither stored nor parsed whole, and the cut text is
  no longer the requested JSON, so the filter rejects the row as ``unparsable_output``;
- token counts come from the server's ``usage`` only when they are plausible: present,
  non-negative numbers, no more tokens than characters sent or received (plus a few per
  message), at least one token per :data:`MAX_CHARS_PER_TOKEN` characters, and no more output
  tokens than ``max_tokens``. Otherwise our own count is used (about four characters per token,
  output capped at ``max_tokens``) and counted as ``usage_untrusted``. The recorded cost is
  computed from these counts, so an inflated or missing ``usage`` can neither inflate the
  recorded cost nor let ``--max-cost`` be overrun.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.annotators.cache import CachedAnswer
from pipeline.annotators.pricing import CHARS_PER_TOKEN, PriceTable

MAX_ANSWER_CHARS = 20_000
"""Longest answer text kept (about 33 times the default 600-token answer)."""
MAX_CHARS_PER_TOKEN = 32
"""No tokenizer packs more characters into one token: fewer reported tokens is implausible."""
TOKEN_SLACK_PER_MESSAGE = 8
"""Chat formatting adds a few tokens per message that are no characters of the text."""


@dataclass(frozen=True)
class ReadAnswer:
    """An answer read from a completion, with what had to be corrected (``answer_too_long``,
    ``usage_untrusted``)."""

    answer: CachedAnswer
    notes: tuple[str, ...] = ()


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0 or value == float("inf"):
        return None
    return int(value)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def own_tokens(chars: int) -> int:
    """Our own token count of ``chars`` characters of text (the pre-send estimate's ratio)."""
    return int(chars / CHARS_PER_TOKEN)


def plausible_tokens(reported: int, chars: int, messages: int, ceiling: int | None = None) -> bool:
    """Whether a server's token count fits the characters it covers (see the module docstring)."""
    most = chars + TOKEN_SLACK_PER_MESSAGE * max(messages, 1)
    if ceiling is not None:
        most = min(most, ceiling + TOKEN_SLACK_PER_MESSAGE)
    return chars // MAX_CHARS_PER_TOKEN <= reported <= most


def read_completion(
    completion: Any,
    prompt_chars: int,
    prompt_messages: int,
    estimated_input_tokens: int,
    model: str,
    max_tokens: int,
    prices: PriceTable,
    batch: bool = False,
) -> ReadAnswer:
    """The answer in one chat completion object (a chat response or a batch record's body)."""
    body = completion if isinstance(completion, dict) else {}
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = first.get("message") if isinstance(first.get("message"), dict) else {}
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    content, refusal = _text(message.get("content")), _text(message.get("refusal"))
    notes: list[str] = []
    if (content and len(content) > MAX_ANSWER_CHARS) or (refusal and len(refusal) > MAX_ANSWER_CHARS):
        notes.append("answer_too_long")
        content = content[:MAX_ANSWER_CHARS] if content else content
        refusal = refusal[:MAX_ANSWER_CHARS] if refusal else refusal
    received = len(content or "") + len(refusal or "")
    reported_in, reported_out = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    input_tokens = reported_in if reported_in is not None and plausible_tokens(reported_in, prompt_chars, prompt_messages) else None
    output_tokens = reported_out if reported_out is not None and plausible_tokens(reported_out, received, 1, max_tokens) else None
    if input_tokens is None or output_tokens is None:
        notes.append("usage_untrusted")
    input_tokens = estimated_input_tokens if input_tokens is None else input_tokens
    output_tokens = min(own_tokens(received), max_tokens) if output_tokens is None else output_tokens
    cost = prices.cost(model, input_tokens, output_tokens, batch=batch)
    return ReadAnswer(CachedAnswer(content, refusal, input_tokens, output_tokens, cost), tuple(notes))
