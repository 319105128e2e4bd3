"""The rationale-first output format: ``<think>rationale</think><item>title</item>``.

This module owns the tags, their rendering and their parsing. It is the only producer-side
code that ``training`` imports (DESIGN.md, "Rationale-first format").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORMAT_VERSION = "rf-1"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ITEM_OPEN, ITEM_CLOSE = "<item>", "</item>"
SPECIAL_TOKENS = (THINK_OPEN, THINK_CLOSE, ITEM_OPEN, ITEM_CLOSE)

_TAG = re.compile(r"</?(?:think|item)>")
_FULL = re.compile(r"\A\s*<think>(?P<think>.*?)</think>\s*<item>(?P<item>.*?)</item>\s*\Z", re.DOTALL)
_ITEM_ONLY = re.compile(r"\A\s*<item>(?P<item>.*?)</item>\s*\Z", re.DOTALL)


class FormatError(ValueError):
    """Text that cannot be rendered into the format (it would contain a tag of its own)."""


def _check_clean(text: str, what: str) -> str:
    if _TAG.search(text):
        raise FormatError(f"{what} contains a reserved tag ({', '.join(SPECIAL_TOKENS)}): {text[:80]!r}")
    return text.strip()


def render(rationale: str, title: str) -> str:
    """The rationale-first target: ``<think>rationale</think><item>title</item>``."""
    return f"{THINK_OPEN}{_check_clean(rationale, 'rationale')}{THINK_CLOSE}{ITEM_OPEN}{_check_clean(title, 'title')}{ITEM_CLOSE}"


def render_item_only(title: str) -> str:
    """The item-only target of the variants without rationale: ``<item>title</item>``."""
    return f"{ITEM_OPEN}{_check_clean(title, 'title')}{ITEM_CLOSE}"


@dataclass(frozen=True)
class ParsedOutput:
    rationale: str | None
    item: str | None
    well_formed: bool
    error: str | None = None


def parse(text: str, require_think: bool = True) -> ParsedOutput:
    """Parse a model output.

    Well formed means exactly one think block followed by exactly one item block and nothing
    else (or, with ``require_think=False``, also a lone item block). A malformed output still
    yields the first item block it has, if any, so callers can measure validity separately.
    """
    opens = {tag: text.count(tag) for tag in SPECIAL_TOKENS}
    match = _FULL.match(text)
    if match and all(count == 1 for count in opens.values()):
        return ParsedOutput(match["think"].strip(), match["item"].strip(), True)
    if not require_think:
        match = _ITEM_ONLY.match(text)
        if match and opens[ITEM_OPEN] == 1 and opens[ITEM_CLOSE] == 1 and opens[THINK_OPEN] == 0:
            return ParsedOutput(None, match["item"].strip(), True)
    first_item = re.search(r"<item>(.*?)</item>", text, re.DOTALL)
    think = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
    if opens[THINK_OPEN] != 1 or opens[THINK_CLOSE] != 1:
        error = f"expected exactly one think block, found {opens[THINK_OPEN]} opening and {opens[THINK_CLOSE]} closing tags"
    elif opens[ITEM_OPEN] != 1 or opens[ITEM_CLOSE] != 1:
        error = f"expected exactly one item block, found {opens[ITEM_OPEN]} opening and {opens[ITEM_CLOSE]} closing tags"
    else:
        error = "blocks out of order or text outside the blocks"
    return ParsedOutput(
        think.group(1).strip() if think else None,
        first_item.group(1).strip() if first_item else None,
        False,
        error,
    )
