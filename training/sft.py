"""``rrec train sft``: supervised fine-tuning of a rationale-first recommender with TRL.

A short script over the library: released rows become conversational prompt-completion
examples (:mod:`training.data`), ``trl.SFTTrainer`` trains with the loss on the assistant turn
only (``completion_only_loss``), a PEFT LoRA adapter by default or every weight with ``full``,
evaluates on the validation split, keeps checkpoints, stops early and can resume.

Variants (the paper's three): A and B train with rationales (they differ only at inference),
C trains on item-only targets. By default C trains and is checked on exactly the rows A uses
(rows with a rationale; ``same_rows_as_a``), and after training the loss on the item tokens is
reported apart from the loss on the rationale tokens (:mod:`training.loss_parts`), so A and C
can be compared on the part they share.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
from pydantic import Field

from core.config import StageSettings
from training.data import catalog_config, load_resolved, load_split_with_source, to_chat_examples
from training.loss_parts import completion_losses
from training.models import (
    BASE_MODEL_DIR,
    DEFAULT_MODEL,
    TINY,
    TinyModelSettings,
    build_tiny,
    load_pretrained,
    training_dtype,
    write_run_record,
)
from training.paper_variants import BY_NAME
from training.prompts import PromptSettings, build_user_turn, system_prompt

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"


class SFTSettings(StageSettings):
    """Settings of ``rrec train sft`` (YAML section ``sft``; names equal the command's options)."""

    model: str = Field(DEFAULT_MODEL, description="Hub id or local folder of the base model, or 'tiny'.")
    variant: Literal["A", "B", "C"] = "A"
    full: bool = Field(False, description="Fine-tune every weight instead of a LoRA adapter.")
    merge: bool = Field(False, description="Save the LoRA adapter merged into its base, as a full model.")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    learning_rate: float = Field(2e-4, gt=0.0)
    epochs: float = Field(3.0, gt=0.0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run the epochs).")
    batch_size: int = Field(4, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    activation_checkpointing: bool = Field(True, description="Recompute activations to save memory (ignored for the tiny model).")
    max_length: int = Field(2048, ge=32, description="Longest tokenised example; longer ones are truncated.")
    eval_steps: int = Field(50, ge=1, description="Evaluate and checkpoint every this many steps.")
    early_stopping_patience: int = Field(3, ge=0, description="Evaluations without improvement before stopping (0: never).")
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1)
    limit_train: int | None = Field(None, ge=1, description="Use only the first N train rows.")
    limit_eval: int | None = Field(None, ge=1, description="Use only the first N evaluation rows.")
    eval_holdout: int = Field(64, ge=1, description="Train rows held out for evaluation when the validation split has no rationales.")
    history_k: int = Field(10, ge=1)
    num_candidates: int = Field(0, ge=0, description="Candidates listed in the prompt: 0 = none, or every one (see prompts).")
    seed: int = 42
    same_rows_as_a: bool = Field(True, description="Variant C trains and is checked on the rows A uses (rows with a rationale).")
    loss_parts_rows: int = Field(256, ge=1, description="Evaluation rows on which the item and rationale losses are reported.")
    report_to: str = Field("none", description="Where to log: none, tensorboard (when installed; logs under OUTPUT/checkpoints/runs).")
    tiny_vocab_size: int = Field(1024, ge=300)
    tiny_hidden_size: int = Field(64, ge=8)
    tiny_num_layers: int = Field(2, ge=1)
    tiny_num_heads: int = Field(4, ge=1)

    @property
    def with_rationale(self) -> bool:
        return BY_NAME[self.variant].trained_with_rationale

    def prompt_settings(self) -> PromptSettings:
        return PromptSettings(history_k=self.history_k, num_candidates=self.num_candidates, seed=self.seed)

    def tiny_settings(self) -> TinyModelSettings:
        return TinyModelSettings(
            vocab_size=self.tiny_vocab_size,
            hidden_size=self.tiny_hidden_size,
            num_layers=self.tiny_num_layers,
            num_heads=self.tiny_num_heads,
        )

    @property
    def requires_rationale(self) -> bool:
        """Whether rows without a rationale are left out (always for A/B; for C with ``same_rows_as_a``)."""
        return self.with_rationale or self.same_rows_as_a


@dataclass(frozen=True)
class SFTResult:
    """What a finished SFT run produced."""

    output_dir: Path
    eval_loss_before: float | None
    eval_loss_after: float
    best_checkpoint: str | None
    global_step: int
    resumed_from: str | None
    eval_item_loss: float | None = None
    eval_rationale_loss: float | None = None


def _take(rows: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    return rows.select(range(min(limit, len(rows)))) if limit else rows


def tokenizer_corpus(rows: datasets.Dataset, catalog: datasets.Dataset, prompts: PromptSettings) -> list[str]:
    """The texts the tiny tokenizer is trained on: both system prompts, user turns, rationales, titles."""
    texts = [system_prompt(rationale, candidates) for rationale in (True, False) for candidates in (True, False)]
    texts += [build_user_turn(row, prompts) for row in rows]
    texts += [row["rationale"] for row in rows if row.get("rationale")]
    texts += [title for title in catalog["title"] if title]
    return texts


def _split_eval(
    train_rows: datasets.Dataset, validation_rows: datasets.Dataset, settings: SFTSettings
) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """Train and evaluation rows; without validation rationales, held-out train rows are evaluated instead.

    The fallback applies to every variant that requires rationales (C too, by default), so A
    and C are checked on the same rows.
    """
    if not settings.requires_rationale or any(validation_rows["rationale"]):
        return train_rows, validation_rows, "validation"
    if len(train_rows) <= settings.eval_holdout:
        raise ValueError(
            f"the validation split has no rationales and the train split has only {len(train_rows)} rows, "
            f"not more than eval_holdout={settings.eval_holdout}; lower `sft: eval_holdout` in the --settings file"
        )
    log.warning(
        "the validation split has no rationales: evaluating variant %s on %d held-out train rows instead",
        settings.variant,
        settings.eval_holdout,
    )
    split = train_rows.train_test_split(test_size=settings.eval_holdout, seed=settings.seed)
    return split["train"], split["test"], "train_holdout"


def rows_fingerprint(examples: datasets.Dataset) -> str:
    """A sha256 over the user ids of the examples, in order: equal for two runs on the same rows."""
    return hashlib.sha256("\n".join(examples["user_id"]).encode("utf-8")).hexdigest()


def check_report_to(report_to: str) -> str:
    """The ``report_to`` value for the trainer: ``none`` or an installed integration such as ``tensorboard``."""
    if report_to == "none":
        return report_to
    from transformers.integrations import get_available_reporting_integrations

    available = get_available_reporting_integrations()
    if report_to not in available:
        raise ValueError(
            f"--report-to {report_to}: not installed here (available: {', '.join(available) or 'none'}); "
            f"install it (e.g. pip install {report_to}) or use --report-to none"
        )
    return report_to


def prepare_output_dir(output_dir: Path, resume: bool, force: bool) -> str | None:
    """Check the output folder against --resume/--force; returns the checkpoint to resume from."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = output_dir / CHECKPOINTS_DIR
    if force and output_dir.exists():
        shutil.rmtree(output_dir)
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if resume:
        if last is None:
            raise FileNotFoundError(f"--resume: {checkpoints} has no checkpoint to resume from; start without --resume")
        return last
    if (output_dir / "training_config.json").exists():
        raise ValueError(f"{output_dir} already holds a trained model; choose another --output or add --force to retrain")
    if last is not None:
        raise ValueError(f"{output_dir} has checkpoints of an unfinished run; add --resume to continue or --force to start over")
    return None


def _base_model(settings: SFTSettings, output_dir: Path, train_rows: datasets.Dataset, catalog: datasets.Dataset) -> tuple[Any, Any, str]:
    """The model to fine-tune, its tokenizer and how to name the base in the training record."""
    if settings.model != TINY:
        model, tokenizer = load_pretrained(settings.model)
        return model, tokenizer, settings.model
    base_dir = output_dir / BASE_MODEL_DIR
    if (base_dir / "config.json").exists():
        # Resuming: the checkpoint belongs to this exact tokenizer and initialisation.
        model, tokenizer = load_pretrained(str(base_dir))
    else:
        corpus = tokenizer_corpus(train_rows, catalog, settings.prompt_settings())
        model, tokenizer = build_tiny(corpus, settings.tiny_settings(), settings.seed, base_dir)
    return model, tokenizer, BASE_MODEL_DIR


def _sft_config(settings: SFTSettings, output_dir: Path, tiny: bool) -> Any:
    from trl import SFTConfig

    early_stopping = settings.early_stopping_patience > 0
    return SFTConfig(
        output_dir=str(output_dir / CHECKPOINTS_DIR),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        activation_checkpointing=settings.activation_checkpointing and not tiny,
        dataloader_pin_memory=torch.cuda.is_available(),
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0 if tiny else 0.03,
        max_length=settings.max_length,
        completion_only_loss=True,
        eval_strategy="steps",
        eval_steps=settings.eval_steps,
        save_strategy="steps",
        save_steps=settings.eval_steps,
        save_total_limit=settings.save_total_limit,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=settings.logging_steps,
        bf16=training_dtype() == torch.bfloat16,
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=check_report_to(settings.report_to),
        dataset_num_proc=None,
    )


def run_sft(
    dataset: str,
    config: str,
    revision: str | None,
    output_dir: Path,
    settings: SFTSettings,
    *,
    resume: bool = False,
    force: bool = False,
) -> SFTResult:
    """Fine-tune ``settings.model`` on a released config and save it to ``output_dir``.

    The folder ends up holding the adapter (or the full model with ``full``/``merge``), its
    tokenizer, ``training_config.json`` and ``checkpoints/``; the tiny model's base is kept in
    ``base_model/``. Evaluation uses the validation split (for rationale variants, held-out
    train rows when validation rows carry no rationale).

    Long on purpose, as TRL's own scripts are: one linear script over SFTTrainer (check, load, split, configure, train, evaluate, record) reads best in the order it runs.
    """
    from peft import LoraConfig
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    output_dir = Path(output_dir)
    check_report_to(settings.report_to)
    resume_from = prepare_output_dir(output_dir, resume, force)
    output_dir.mkdir(parents=True, exist_ok=True)

    train_rows, source = load_split_with_source(dataset, config, revision, "train")
    validation_rows = load_resolved(source, "validation")
    catalog = load_resolved(source, "items", catalog_config(config))
    train_rows, eval_rows, eval_source = _split_eval(train_rows, validation_rows, settings)
    prompts = settings.prompt_settings()
    required = settings.requires_rationale
    train = to_chat_examples(_take(train_rows, settings.limit_train), prompts, settings.with_rationale, required)
    evaluation = to_chat_examples(_take(eval_rows, settings.limit_eval), prompts, settings.with_rationale, required)
    if len(train.dataset) == 0 or len(evaluation.dataset) == 0:
        raise ValueError(f"no usable {'train' if len(train.dataset) == 0 else 'evaluation'} rows in {dataset} config {config}")

    model, tokenizer, base_name = _base_model(settings, output_dir, train_rows, catalog)
    tiny = settings.model == TINY
    peft_config = None
    if not settings.full:
        peft_config = LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    callbacks = [EarlyStoppingCallback(settings.early_stopping_patience)] if settings.early_stopping_patience else []
    trainer = SFTTrainer(
        model=model,
        args=_sft_config(settings, output_dir, tiny),
        train_dataset=train.dataset,
        eval_dataset=evaluation.dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    eval_loss_before = None if resume_from else trainer.evaluate()["eval_loss"]
    if resume_from:
        log.info("resuming from %s", resume_from)
    trainer.train(resume_from_checkpoint=resume_from)
    eval_loss_after = trainer.evaluate()["eval_loss"]
    parts = completion_losses(trainer.model, tokenizer, _take(evaluation.dataset, settings.loss_parts_rows))
    log.info("evaluation loss on item tokens %s, on rationale tokens %s", parts.item, parts.rationale)

    _save(trainer, tokenizer, output_dir, settings)
    write_run_record(
        output_dir,
        "sft",
        source.to_dict(),
        trainer,
        resume_from,
        {
            "variant": settings.variant,
            "with_rationale": settings.with_rationale,
            "base_model": base_name,
            "adapter": not settings.full and not settings.merge,
            "settings": settings.model_dump(),
            "rows": {
                "train": len(train.dataset),
                "eval": len(evaluation.dataset),
                "eval_source": eval_source,
                "skipped_without_rationale": train.skipped_without_rationale,
                "skipped_without_title": train.skipped_without_title,
            },
            "eval_loss_before": eval_loss_before,
            "eval_loss_after": eval_loss_after,
            "eval_item_loss": parts.item,
            "eval_rationale_loss": parts.rationale,
            "loss_parts_tokens": {"item": parts.item_tokens, "rationale": parts.rationale_tokens},
            # Which rows, compactly: A and C of one release show the same two fingerprints.
            "rows_fingerprint": {"train": rows_fingerprint(train.dataset), "eval": rows_fingerprint(evaluation.dataset)},
            "best_checkpoint": trainer.state.best_model_checkpoint,
        },
    )
    if eval_loss_before is not None and not math.isnan(eval_loss_before):
        log.info("validation loss %.4f -> %.4f", eval_loss_before, eval_loss_after)
    return SFTResult(
        output_dir,
        eval_loss_before,
        eval_loss_after,
        trainer.state.best_model_checkpoint,
        trainer.state.global_step,
        resume_from,
        parts.item,
        parts.rationale,
    )


def _save(trainer: Any, tokenizer: Any, output_dir: Path, settings: SFTSettings) -> None:
    model = trainer.model
    if settings.merge and not settings.full:
        model = model.merge_and_unload()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
