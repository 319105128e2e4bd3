"""A small word-level chat model sized for a CPU, and its supervised fine-tuning with TRL.

The model is the project's tiny Gemma-3 text model (:func:`training.models.build_tiny_model`)
over a word-level tokenizer: every word and punctuation mark of the world's prompts, titles and
rationales is one token, so a title is three tokens and a rationale a few dozen. Training is
``trl.SFTTrainer`` on the student prompts of :mod:`training.prompts` (loss on the assistant
turn only), the same chat examples ``rrec train sft`` builds (:func:`training.data.to_chat_examples`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from core.rationale_format import SPECIAL_TOKENS
from training.data import to_chat_examples
from training.models import (
    BOS,
    END_OF_TURN,
    EOS,
    PAD,
    START_OF_TURN,
    TINY_CHAT_TEMPLATE,
    UNK,
    TinyModelSettings,
    build_tiny_model,
    write_training_config,
)
from training.prompts import PromptSettings, build_user_turn, system_prompt

log = logging.getLogger(__name__)

MODEL_NAME = "reproduce-word-gemma3"
# Words every tokenizer needs besides the corpus: the chat template's role names, and the probe
# word transformers' stop-string matching tokenizes to learn how tokens decode.
_FIXED_WORDS = ("user", "model", "abcdef")


class WordModelSettings(BaseModel):
    """Size and training schedule of the word-level model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    max_steps: int = Field(500, ge=1, description="Optimizer steps of each SFT run.")
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(3e-3, gt=0.0)
    history_k: int = Field(8, ge=1, description="History items in the prompt.")


def word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``texts`` with the chat markers and rationale tags as tokens.

    Words and runs of punctuation are tokens (split on whitespace and word boundaries);
    decoding joins tokens with single spaces, which gives back every title of the world.
    """
    vocabulary: dict[str, int] = {}
    for token in (PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN):
        vocabulary[token] = len(vocabulary)
    splitter = pre_tokenizers.Whitespace()
    for word in _FIXED_WORDS:
        vocabulary.setdefault(word, len(vocabulary))
    for text in texts:
        for word, _ in splitter.pre_tokenize_str(text):
            vocabulary.setdefault(word, len(vocabulary))
    backend = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token=UNK))
    backend.pre_tokenizer = splitter
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in (PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN)]
    )
    backend.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=END_OF_TURN,  # the end of an assistant turn is where generation stops
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[START_OF_TURN, EOS],
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def tokenizer_texts(rows: datasets.Dataset, titles: Iterable[str], prompts: PromptSettings) -> list[str]:
    """Every text the model reads or writes: system prompts, user turns, rationales, catalog titles."""
    texts = [system_prompt(rationale, False) for rationale in (True, False)]
    texts += [build_user_turn(row, prompts) for row in rows]
    texts += [row["rationale"] for row in rows if row.get("rationale")]
    texts += list(titles)
    return texts


def train_word_model(
    rows: datasets.Dataset,
    tokenizer: PreTrainedTokenizerFast,
    *,
    with_rationale: bool,
    settings: WordModelSettings,
    seed: int,
    output_dir: Path,
) -> tuple[Any, PreTrainedTokenizerFast]:
    """Train a fresh word-level model on ``rows`` (rationale first, or item only) and save it.

    ``output_dir`` becomes a full model folder with its tokenizer and ``training_config.json``
    (so ``rrec train grpo`` and ``training.models.load_for_inference`` read it like any SFT run).
    """
    from trl import SFTConfig, SFTTrainer

    prompts = PromptSettings(history_k=settings.history_k, num_candidates=0, seed=seed)
    examples = to_chat_examples(rows, prompts, with_rationale)
    tiny = TinyModelSettings(
        hidden_size=settings.hidden_size, num_layers=settings.num_layers, num_heads=settings.num_heads, max_positions=1024
    )
    model = build_tiny_model(tokenizer, tiny, seed)
    args = SFTConfig(
        output_dir=str(output_dir / "checkpoints"),
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, settings.max_steps // 20),
        max_length=1024,
        completion_only_loss=True,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=max(1, settings.max_steps // 5),
        seed=seed,
        data_seed=seed,
        report_to="none",
        dataloader_pin_memory=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=examples.dataset, processing_class=tokenizer)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_training_config(
        output_dir,
        {
            "stage": "sft",
            "variant": "A" if with_rationale else "C",
            "with_rationale": with_rationale,
            "base_model": MODEL_NAME,
            "adapter": False,
            "settings": {**settings.model_dump(), **prompts.model_dump(), "model": MODEL_NAME},
            "rows": {"train": len(examples.dataset), "skipped_without_rationale": examples.skipped_without_rationale},
            "train_loss": losses,
            "parameters": model.num_parameters(),
        },
    )
    log.info(
        "trained %s (%s) in %d steps, loss %s", output_dir, "rationale first" if with_rationale else "item only", settings.max_steps, losses
    )
    return trainer.model, tokenizer
