"""GRPO reward functions, one per aspect, so ``GRPOTrainer`` logs each separately.

Each function follows TRL's reward signature ``f(completions, **columns) -> list[float]``:
``completions`` are the generated assistant turns (conversational: ``[{"role": "assistant",
"content": ...}]``; plain text is accepted too) and the other arguments are dataset columns of
the prompts (``target_title``, ``candidate_titles``, ``prompt_id``). TRL names the logged
metrics after the functions (``rewards/format_reward/mean``, ...).

- :func:`format_reward`: 1 when the output is exactly one think block then one item block.
- :func:`validity_reward`: 1 when the item maps to a candidate shown in the prompt or to a
  catalog title (exact, then normalised match).
- :func:`hit_reward`: 1 when the item is the target.
- :func:`rank_reward`: rank-aware: 1 for the target; a wrong item is penalised by
  ``-1/log2(1 + r)``, where ``r`` ranks the wrong items of the prompt's group of completions by
  how often the policy produced them. The items the policy puts most mass on are its hardest
  negatives, and pushing those down is what moves HR@1 and NDCG (the idea of the ranking reward
  of ReRe, Tan et al. 2025). An output without an item counts as the hardest negative (r = 1).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from core.rationale_format import parse

_PUNCTUATION = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"\s+")


def normalise_title(title: str) -> str:
    """Title key for lenient matching: Unicode NFKC, case-folded, punctuation dropped, spaces collapsed."""
    text = unicodedata.normalize("NFKC", title).casefold()
    return _SPACES.sub(" ", _PUNCTUATION.sub(" ", text)).strip()


def completion_text(completion: Any) -> str:
    """The text of one completion, conversational (list of messages) or plain."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content") or "" for message in completion if message.get("role") == "assistant")


def generated_item(completion: Any) -> str | None:
    """The title inside the (first) item block of a completion, if any."""
    return parse(completion_text(completion)).item


def _matches(item: str | None, titles: Iterable[str]) -> bool:
    if not item:
        return False
    titles = list(titles)
    if item in titles:
        return True
    key = normalise_title(item)
    return any(normalise_title(title) == key for title in titles)


def format_reward(completions: Sequence[Any], **_: Any) -> list[float]:
    """1.0 for exactly one think block followed by exactly one item block and nothing else, else 0.0."""
    return [1.0 if parse(completion_text(completion)).well_formed else 0.0 for completion in completions]


def validity_reward(
    completions: Sequence[Any],
    candidate_titles: Sequence[Sequence[str]],
    catalog_titles: frozenset[str] = frozenset(),
    **_: Any,
) -> list[float]:
    """1.0 when the generated item maps to a candidate of its prompt or to a catalog title, else 0.0.

    Bind the catalog with ``functools.partial(validity_reward, catalog_titles=...)``; pass the
    titles already normalised with :func:`normalise_title` (see :func:`catalog_keys`).
    """
    rewards = []
    for completion, candidates in zip(completions, candidate_titles, strict=True):
        item = generated_item(completion)
        valid = _matches(item, candidates) or (item is not None and normalise_title(item) in catalog_titles)
        rewards.append(1.0 if valid else 0.0)
    return rewards


def catalog_keys(titles: Iterable[str | None]) -> frozenset[str]:
    """Normalised catalog titles for :func:`validity_reward`."""
    return frozenset(normalise_title(title) for title in titles if title)


def hit_reward(completions: Sequence[Any], target_title: Sequence[str], **_: Any) -> list[float]:
    """1.0 when the generated item is the target (exact or normalised match), else 0.0."""
    return [
        1.0 if _matches(generated_item(completion), [target]) else 0.0 for completion, target in zip(completions, target_title, strict=True)
    ]


def rank_reward(completions: Sequence[Any], target_title: Sequence[str], prompt_id: Sequence[str], **_: Any) -> list[float]:
    """Rank-aware reward: 1.0 for the target, ``-1/log2(1 + r)`` for the r-th most produced wrong item of the group.

    Completions of the same prompt (same ``prompt_id``) form a group. Wrong items are keyed by
    normalised title and ranked by count within the group, ties by first appearance; an output
    without an item is ranked first.
    """
    keys: list[str | None] = []
    hits: list[bool] = []
    for completion, target in zip(completions, target_title, strict=True):
        item = generated_item(completion)
        hit = _matches(item, [target])
        hits.append(hit)
        keys.append(None if hit else (normalise_title(item) if item else ""))
    groups: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(prompt_id):
        groups[group].append(index)
    rewards = [0.0] * len(keys)
    for members in groups.values():
        wrong = [keys[i] for i in members if not hits[i]]
        counts = Counter(wrong)
        first_seen = {key: position for position, key in reversed(list(enumerate(wrong)))}
        order = sorted(counts, key=lambda key: (key != "", -counts[key], first_seen[key]))
        rank_of = {key: rank for rank, key in enumerate(order, 1)}
        for i in members:
            rewards[i] = 1.0 if hits[i] else -1.0 / math.log2(1 + rank_of[keys[i]])
    return rewards
