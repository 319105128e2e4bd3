"""The student prompt: how a released row becomes the chat turns a recommender model sees.

The system turn states the output format (rationale first, ``<think>..</think><item>..</item>``,
or item only, ``<item>..</item>``); the user turn lists the last K history items with their
ratings and, optionally, candidates from the row's candidate list. The assistant turn (the
training target) comes from :func:`build_completion`.

Evaluation protocol (DESIGN.md): every method ranks exactly the row's candidates, and the prompt
shows exactly that set or none at all. The default shows none. A prompt that lists a subset
drawn around the target (``0 < num_candidates < len(candidates)``) hands the model a shortlist
that always holds the answer: a scorer that only knows which titles are listed beats every
real method. Such prompts can still train a model, but :func:`check_candidate_protocol`
refuses them for evaluation.

The teacher prompt that writes the rationales lives in ``pipeline/`` and has its own version;
this one is :data:`STUDENT_PROMPT_VERSION`, recorded with every trained model.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.rationale_format import ITEM_CLOSE, ITEM_OPEN, THINK_CLOSE, THINK_OPEN, render, render_item_only

STUDENT_PROMPT_VERSION = "student-1"

_ROLE = "You are a recommender system. Read the user's purchase history and recommend the one item they will buy next."
_RATIONALE_FORMAT = (
    f"First explain your reasoning inside {THINK_OPEN}{THINK_CLOSE}, then give the title of the recommended item "
    f"inside {ITEM_OPEN}{ITEM_CLOSE}. Answer exactly as {THINK_OPEN}reasoning{THINK_CLOSE}{ITEM_OPEN}item title{ITEM_CLOSE}."
)
_ITEM_ONLY_FORMAT = (
    f"Do not explain. Answer only with the title of the recommended item inside {ITEM_OPEN}{ITEM_CLOSE}, "
    f"exactly as {ITEM_OPEN}item title{ITEM_CLOSE}."
)
_WITH_CANDIDATES = "Choose the item from the candidate list and copy its title exactly."


class PromptSettings(BaseModel):
    """How much of a row the prompt shows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    history_k: int = Field(10, ge=1, description="Last K history items shown (most recent last).")
    num_candidates: int = Field(
        0, ge=0, description="Candidates shown: 0 = no list (default); at least the row's count = every candidate of the row."
    )
    seed: int = 42


def _row_rng(seed: int, user_id: str) -> random.Random:
    # A content hash, not hash(): the draw must not change between processes or Python runs.
    digest = hashlib.blake2b(f"{seed}:{user_id}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def select_candidates(row: dict[str, Any], settings: PromptSettings) -> list[dict[str, str]]:
    """The candidates shown in the prompt: the target plus ``num_candidates - 1`` of the row's negatives.

    Seeded by ``(settings.seed, user_id)``. With ``num_candidates`` at least the row's candidate
    count, every candidate is shown in the released (already shuffled) order; with 0, none.
    """
    candidates = list(row["candidates"])
    if settings.num_candidates == 0:
        return []
    if settings.num_candidates >= len(candidates):
        return candidates
    target_index = row["target_index"]
    negatives = candidates[:target_index] + candidates[target_index + 1 :]
    rng = _row_rng(settings.seed, row["user_id"])
    shown = [candidates[target_index], *rng.sample(negatives, settings.num_candidates - 1)]
    rng.shuffle(shown)
    return shown


def check_candidate_protocol(settings: PromptSettings, candidate_counts: Iterable[int]) -> None:
    """Refuse prompt settings that would show a subset of some row's candidates.

    Under the evaluation protocol the prompt lists none of the row's candidates or all of them,
    so the likelihood ranking over every candidate is not helped by a shortlist that holds the
    target. Raises ``ValueError`` naming the setting and the fix.
    """
    if settings.num_candidates == 0:
        return
    largest = max(candidate_counts, default=0)
    if settings.num_candidates < largest:
        raise ValueError(
            f"the prompt would list {settings.num_candidates} of the {largest} candidates ranked per row, the target always "
            "among them, so a model could score by copying a listed title (every method must rank the same candidates, "
            f"and the prompt shows all of them or none); pass --num-candidates 0 (no list) or --num-candidates {largest} (all)"
        )


def _format_rating(rating: float | None) -> str:
    return "" if rating is None else f" (rated {rating:g}/5)"


def display_title(item: dict[str, Any]) -> str:
    """An item's title, or its id for the items Amazon released without metadata."""
    return item.get("title") or f"untitled item {item['parent_asin']}"


def build_user_turn(row: dict[str, Any], settings: PromptSettings) -> str:
    """The user turn: last K history items (oldest first) and the candidate list, if any."""
    history = list(row["history"])[-settings.history_k :]
    lines = ["Purchase history, oldest first:"]
    lines += [f"{index}. {display_title(event)}{_format_rating(event.get('rating'))}" for index, event in enumerate(history, 1)]
    candidates = select_candidates(row, settings)
    if candidates:
        lines += ["", "Candidates:"]
        lines += [f"- {display_title(candidate)}" for candidate in candidates]
    lines += ["", "Which item will the user buy next?"]
    return "\n".join(lines)


def system_prompt(infer_rationale: bool, with_candidates: bool) -> str:
    """The system turn: the role, the output format and, with candidates, to copy a title."""
    parts = [_ROLE, _RATIONALE_FORMAT if infer_rationale else _ITEM_ONLY_FORMAT]
    if with_candidates:
        parts.append(_WITH_CANDIDATES)
    return " ".join(parts)


def build_messages(row: dict[str, Any], settings: PromptSettings, infer_rationale: bool) -> list[dict[str, str]]:
    """System and user turns for one released row.

    ``infer_rationale`` selects the rationale-first answer format; otherwise the model is asked
    for the item alone (variant B at inference, variant C during training).
    """
    return [
        {"role": "system", "content": system_prompt(infer_rationale, settings.num_candidates > 0)},
        {"role": "user", "content": build_user_turn(row, settings)},
    ]


def build_completion(row: dict[str, Any], with_rationale: bool) -> str:
    """The assistant turn of a training example: rationale first, or the item alone.

    Raises ``ValueError`` for a rationale target on a row without a rationale (validation and
    test rows are released without one unless they were annotated), and for a target without
    a title (an item released without metadata: there is nothing to name).
    """
    title = row["target"]["title"]
    if not title:
        raise ValueError(
            f"row of user {row['user_id']} has a target without a title ({row['target']['parent_asin']}); it cannot be a target"
        )
    if not with_rationale:
        return render_item_only(title)
    rationale = row.get("rationale")
    if not rationale:
        raise ValueError(f"row of user {row['user_id']} has no rationale; it cannot be a rationale-first target")
    return render(rationale, title)
