"""The loss on item tokens reported apart from the loss on rationale tokens.

A rationale-first completion is ``<think>rationale</think><item>title</item>``; SFT's loss mixes
both parts, so a variant trained with rationales (A) and one trained without (C) cannot be
compared by their overall loss: A's is dominated by the (longer) rationale. This module scores
a trained model on chat examples and splits the mean token negative log-likelihood of the
assistant turn at the ``<item>`` tag: the *item* part is the item block and whatever closes the
turn, the *rationale* part everything before it (nothing for item-only completions). A's item
loss is conditioned on the reference rationale (teacher forcing), C's on the prompt alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from core.rationale_format import ITEM_OPEN


@dataclass(frozen=True)
class CompletionLosses:
    """Mean token NLL of the item part and of the rationale part (None when no token had one)."""

    item: float | None
    rationale: float | None
    item_tokens: int
    rationale_tokens: int


def _parts(tokenizer: Any, prompt: list[dict[str, str]], completion: list[dict[str, str]]) -> tuple[list[int], int, int]:
    """Token ids of the whole chat, where the assistant turn starts and where its item block starts."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template([*prompt, *completion], tokenize=False)
    item_char = full_text.find(ITEM_OPEN, len(prompt_text))
    if item_char < 0:
        item_char = len(full_text)
    encoded = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    answer_start = next((i for i, (start, _) in enumerate(offsets) if start >= len(prompt_text)), len(offsets))
    item_start = next((i for i, (start, _) in enumerate(offsets) if start >= item_char), len(offsets))
    return encoded["input_ids"], answer_start, item_start


@torch.no_grad()
def completion_losses(model: Any, tokenizer: Any, examples: Iterable[dict[str, Any]]) -> CompletionLosses:
    """Split the assistant-turn loss of ``examples`` (``prompt``/``completion`` chat rows) at ``<item>``."""
    model.eval()
    sums = {"item": 0.0, "rationale": 0.0}
    counts = {"item": 0, "rationale": 0}
    for example in examples:
        ids, answer_start, item_start = _parts(tokenizer, example["prompt"], example["completion"])
        if answer_start >= len(ids) or answer_start == 0:
            continue
        input_ids = torch.tensor([ids], device=model.device)
        logprobs = model(input_ids=input_ids).logits[0, :-1].float().log_softmax(-1)
        # Token t is predicted at position t - 1.
        nll = -logprobs.gather(-1, input_ids[0, 1:, None]).squeeze(-1)
        for name, start, stop in (("rationale", answer_start, item_start), ("item", item_start, len(ids))):
            if stop > start:
                sums[name] += float(nll[start - 1 : stop - 1].sum())
                counts[name] += stop - start
    return CompletionLosses(
        item=sums["item"] / counts["item"] if counts["item"] else None,
        rationale=sums["rationale"] / counts["rationale"] if counts["rationale"] else None,
        item_tokens=counts["item"],
        rationale_tokens=counts["rationale"],
    )
