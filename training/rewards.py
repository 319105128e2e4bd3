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
- :func:`reward_group_std`: not a training signal (weight 0) but a logged measure: the spread
  (population standard deviation) of the weighted total reward within each prompt's group.
  GRPO learns only from groups whose completions score differently; a mean near 0 means the
  policy gets no signal (TRL also logs ``frac_reward_zero_std``, the share of such groups).

Titles may be missing: an item released without metadata has no title (``None``). Such a
candidate or target can never be matched by a generated title, and no reward raises on it.
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


def _matches(item: str | None, titles: Iterable[str | None]) -> bool:
    if not item:
        return False
    titles = [title for title in titles if title]
    if item in titles:
        return True
    key = normalise_title(item)
    return bool(key) and any(normalise_title(title) == key for title in titles)


def _groups(prompt_id: Sequence[str]) -> dict[str, list[int]]:
    """Positions of the completions of each prompt (TRL repeats a prompt once per generation)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(prompt_id):
        groups[group].append(index)
    return groups


def format_reward(completions: Sequence[Any], **_: Any) -> list[float]:
    """1.0 for exactly one think block followed by exactly one item block and nothing else, else 0.0."""
    return [1.0 if parse(completion_text(completion)).well_formed else 0.0 for completion in completions]


def validity_reward(
    completions: Sequence[Any],
    candidate_titles: Sequence[Sequence[str | None]],
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
        valid = _matches(item, candidates) or (bool(item) and normalise_title(item) in catalog_titles)
        rewards.append(1.0 if valid else 0.0)
    return rewards


def catalog_keys(titles: Iterable[str | None]) -> frozenset[str]:
    """Normalised catalog titles for :func:`validity_reward`."""
    return frozenset(normalise_title(title) for title in titles if title)


def hit_reward(completions: Sequence[Any], target_title: Sequence[str | None], **_: Any) -> list[float]:
    """1.0 when the generated item is the target (exact or normalised match), else 0.0."""
    return [
        1.0 if _matches(generated_item(completion), [target]) else 0.0 for completion, target in zip(completions, target_title, strict=True)
    ]


def rank_reward(completions: Sequence[Any], target_title: Sequence[str | None], prompt_id: Sequence[str], **_: Any) -> list[float]:
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
    rewards = [0.0] * len(keys)
    for members in _groups(prompt_id).values():
        wrong = [keys[i] for i in members if not hits[i]]
        counts = Counter(wrong)
        first_seen = {key: position for position, key in reversed(list(enumerate(wrong)))}
        order = sorted(counts, key=lambda key: (key != "", -counts[key], first_seen[key]))
        rank_of = {key: rank for rank, key in enumerate(order, 1)}
        for i in members:
            rewards[i] = 1.0 if hits[i] else -1.0 / math.log2(1 + rank_of[keys[i]])
    return rewards


def weighted_total(
    completions: Sequence[Any],
    target_title: Sequence[str | None],
    candidate_titles: Sequence[Sequence[str | None]],
    prompt_id: Sequence[str],
    weights: Sequence[float],
    catalog_titles: frozenset[str] = frozenset(),
) -> list[float]:
    """The weighted sum of the four rewards per completion, as GRPO totals them (weights in reward order)."""
    parts = [
        format_reward(completions),
        validity_reward(completions, candidate_titles, catalog_titles),
        hit_reward(completions, target_title),
        rank_reward(completions, target_title, prompt_id),
    ]
    return [sum(weight * part[i] for weight, part in zip(weights, parts, strict=True)) for i in range(len(completions))]


def reward_group_std(
    completions: Sequence[Any],
    target_title: Sequence[str | None],
    candidate_titles: Sequence[Sequence[str | None]],
    prompt_id: Sequence[str],
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    catalog_titles: frozenset[str] = frozenset(),
    **_: Any,
) -> list[float]:
    """For each completion, the standard deviation of the weighted total reward within its prompt's group.

    Meant to be passed to ``GRPOTrainer`` with weight 0, so TRL logs its mean
    (``rewards/reward_group_std/mean``) without it changing any advantage. Bind ``weights``
    (the four reward weights) and ``catalog_titles`` with ``functools.partial``.
    """
    totals = weighted_total(completions, target_title, candidate_titles, prompt_id, weights, catalog_titles)
    spread = [0.0] * len(totals)
    for members in _groups(prompt_id).values():
        values = [totals[i] for i in members]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((value - mean) ** 2 for value in values) / len(values))
        for i in members:
            spread[i] = std
    return spread
