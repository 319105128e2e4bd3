"""``rrec train grpo``: GRPO on top of an SFT checkpoint with TRL's ``GRPOTrainer``.

The policy starts from a ``rrec train sft`` output folder: an adapter keeps training as the
same adapter (with ``beta > 0`` TRL keeps a frozen copy of it as the reference), a full or
merged model gets a fresh LoRA adapter (or trains every weight with ``full``). Prompts are the
rationale-first student prompts built with the SFT run's prompt settings; the four rewards of
:mod:`training.rewards` are passed as separate functions, weighted by ``*_weight``, and logged
one by one (``rewards/<name>/mean``), with a fifth of weight 0 that logs the spread of the total
reward within each prompt's group (``rewards/reward_group_std/mean``; GRPO learns only from
groups whose completions score differently). Rows whose target has no title (an item without
metadata) cannot be rewarded for naming it: they are left out and counted, as SFT does.
"""

from __future__ import annotations

import functools
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from pydantic import Field

from core.config import StageSettings
from training.data import catalog_config, load_resolved, load_split_with_source
from training.models import (
    BASE_MODEL_DIR,
    TINY,
    adapter_base,
    is_adapter,
    load_for_training,
    read_training_config,
    training_dtype,
    write_run_record,
)
from training.prompts import PromptSettings, build_messages, select_candidates
from training.rewards import catalog_keys, format_reward, hit_reward, rank_reward, reward_group_std, validity_reward
from training.sft import CHECKPOINTS_DIR, check_report_to, prepare_output_dir

log = logging.getLogger(__name__)


class GRPOSettings(StageSettings):
    """Settings of ``rrec train grpo`` (YAML section ``grpo``; names equal the command's options)."""

    format_weight: float = Field(0.5, description="Weight of the format reward.")
    validity_weight: float = Field(0.5, description="Weight of the validity reward.")
    hit_weight: float = Field(1.0, description="Weight of the hit reward.")
    rank_weight: float = Field(0.5, description="Weight of the rank-aware reward.")
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (the GRPO group).")
    report_to: str = Field("none", description="Where to log: none, tensorboard (when installed; logs under OUTPUT/checkpoints/runs).")
    max_completion_length: int = Field(256, ge=4)
    temperature: float = Field(1.0, gt=0.0)
    beta: float = Field(0.0, ge=0.0, description="KL coefficient against the SFT policy (0: no reference model).")
    learning_rate: float = Field(1e-5, gt=0.0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run the epochs).")
    batch_size: int = Field(8, ge=2, description="Completions per device and step; a multiple of --num-generations.")
    gradient_accumulation: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(5, ge=1)
    limit_train: int | None = Field(None, ge=1, description="Use only the first N train rows.")
    activation_checkpointing: bool = Field(True, description="Recompute activations to save memory (ignored for the tiny model).")
    full: bool = Field(False, description="Train every weight of a full SFT model instead of a new LoRA adapter.")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    history_k: int | None = Field(None, ge=1, description="Default: the SFT run's value.")
    num_candidates: int | None = Field(None, ge=0, description="Default: the SFT run's value.")
    seed: int = 42

    def reward_weights(self) -> list[float]:
        """Weights of the four rewards of :func:`reward_functions` (the logged group spread gets 0)."""
        return [self.format_weight, self.validity_weight, self.hit_weight, self.rank_weight]


@dataclass(frozen=True)
class GRPOResult:
    """What a finished GRPO run produced: the folder and the last logged mean of each reward."""

    output_dir: Path
    global_step: int
    rewards: dict[str, float]
    skipped_without_title: int = 0


def prompt_settings_from_sft(sft_record: dict[str, Any], settings: GRPOSettings) -> PromptSettings:
    """The SFT run's prompt settings, overridden by the GRPO settings that are set."""
    recorded = sft_record.get("settings", {})
    return PromptSettings(
        history_k=settings.history_k or recorded.get("history_k", PromptSettings().history_k),
        num_candidates=recorded.get("num_candidates", PromptSettings().num_candidates)
        if settings.num_candidates is None
        else settings.num_candidates,
        seed=recorded.get("seed", settings.seed),
    )


@dataclass(frozen=True)
class GRPOPrompts:
    """GRPO prompts built from released rows, with the rows left out because their target has no title."""

    dataset: datasets.Dataset
    skipped_without_title: int


def to_grpo_prompts(rows: datasets.Dataset, prompts: PromptSettings) -> GRPOPrompts:
    """Rationale-first prompts plus the columns the rewards read (target, shown candidates, group id).

    A row whose target has no title is left out and counted (nothing could name it). Candidate
    titles stay ``None`` for untitled items: the rewards never match them.
    """
    records: dict[str, list[Any]] = {"prompt": [], "target_title": [], "candidate_titles": [], "prompt_id": []}
    untitled = 0
    for index, row in enumerate(rows):
        if not row["target"].get("title"):
            untitled += 1
            continue
        records["prompt"].append(build_messages(row, prompts, infer_rationale=True))
        records["target_title"].append(row["target"]["title"])
        records["candidate_titles"].append([candidate.get("title") for candidate in select_candidates(row, prompts)])
        records["prompt_id"].append(f"{index}:{row['user_id']}")
    if untitled:
        log.warning("left out %d of %d rows whose target has no title (no metadata)", untitled, len(rows))
    return GRPOPrompts(datasets.Dataset.from_dict(records), untitled)


def reward_functions(catalog_titles: list[str | None], weights: list[float] | None = None) -> list[Any]:
    """The four reward functions in the order of :meth:`GRPOSettings.reward_weights`, then the group spread.

    The fifth, :func:`training.rewards.reward_group_std`, is given weight 0 by :func:`run_grpo`:
    it is logged, never learned from. ``weights`` are the four reward weights it totals.
    """
    keys = catalog_keys(catalog_titles)
    spread = functools.partial(reward_group_std, weights=weights or GRPOSettings().reward_weights(), catalog_titles=keys)
    return [format_reward, functools.partial(validity_reward, catalog_titles=keys), hit_reward, rank_reward, spread]


def _record_base(sft_dir: Path, output_dir: Path) -> str:
    """Make the GRPO output's base model resolvable: copy a local tiny base, else name the SFT base or folder."""
    if not is_adapter(sft_dir):
        return str(sft_dir.resolve())
    base = adapter_base(sft_dir)
    if Path(base) == sft_dir / BASE_MODEL_DIR:
        shutil.copytree(base, output_dir / BASE_MODEL_DIR, dirs_exist_ok=True)
        return BASE_MODEL_DIR
    return base


def run_grpo(
    sft_dir: Path,
    dataset: str,
    config: str,
    revision: str | None,
    output_dir: Path,
    settings: GRPOSettings,
    *,
    resume: bool = False,
    force: bool = False,
) -> GRPOResult:
    """Train the SFT model in ``sft_dir`` with GRPO on the train split of a release; save to ``output_dir``.

    Long on purpose, as TRL's own scripts are: one linear script over GRPOTrainer (check, load, configure, train, save, record) reads best in the order it runs.
    """
    from accelerate.utils import is_peft_model
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    sft_dir, output_dir = Path(sft_dir), Path(output_dir)
    if settings.batch_size * settings.gradient_accumulation % settings.num_generations:
        raise ValueError(
            f"--batch-size x --gradient-accumulation ({settings.batch_size * settings.gradient_accumulation}) "
            f"must be a multiple of --num-generations ({settings.num_generations})"
        )
    check_report_to(settings.report_to)
    # The SFT model first: a wrong --sft-model must fail before the output folder is touched.
    model, tokenizer = load_for_training(sft_dir)
    sft_record = read_training_config(sft_dir)
    resume_from = prepare_output_dir(output_dir, resume, force)
    output_dir.mkdir(parents=True, exist_ok=True)

    train_rows, source = load_split_with_source(dataset, config, revision, "train")
    if settings.limit_train:
        train_rows = train_rows.select(range(min(settings.limit_train, len(train_rows))))
    catalog = load_resolved(source, "items", catalog_config(config))
    prompts = prompt_settings_from_sft(sft_record, settings)
    peft_config = None
    if not is_adapter(sft_dir) and not settings.full:
        peft_config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM")
    base_name = _record_base(sft_dir, output_dir)

    args = GRPOConfig(
        output_dir=str(output_dir / CHECKPOINTS_DIR),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        learning_rate=settings.learning_rate,
        activation_checkpointing=settings.activation_checkpointing and sft_record.get("settings", {}).get("model") != TINY,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        beta=settings.beta,
        reward_weights=[*settings.reward_weights(), 0.0],
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        logging_steps=settings.logging_steps,
        bf16=training_dtype() == torch.bfloat16,
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=check_report_to(settings.report_to),
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    grpo_prompts = to_grpo_prompts(train_rows, prompts)
    if len(grpo_prompts.dataset) == 0:
        raise ValueError(f"no train row of {dataset} config {config} has a titled target: GRPO has nothing to reward")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_functions(catalog["title"], settings.reward_weights()),
        args=args,
        train_dataset=grpo_prompts.dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train(resume_from_checkpoint=resume_from)
    if is_peft_model(trainer.model):
        # Only the trained policy: with beta > 0 TRL also holds a frozen "ref" adapter.
        trainer.model.save_pretrained(output_dir, selected_adapters=["default"])
    else:
        trainer.model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)

    reward_means = _last_reward_means(trainer.state.log_history)
    write_run_record(
        output_dir,
        "grpo",
        source.to_dict(),
        trainer,
        resume_from,
        {
            "variant": sft_record.get("variant"),
            "with_rationale": sft_record.get("with_rationale", True),
            "sft_model": str(sft_dir.resolve()),
            "base_model": base_name,
            "adapter": is_adapter(sft_dir) or not settings.full,
            # The prompt actually used, under the names evaluation reads back (history_k, ...).
            "settings": {**settings.model_dump(), "training_seed": settings.seed, **prompts.model_dump()},
            "prompt_settings": prompts.model_dump(),
            "rows": {"train": len(grpo_prompts.dataset), "skipped_without_title": grpo_prompts.skipped_without_title},
            "rewards_last": reward_means,
        },
    )
    log.info("GRPO finished after %d steps; last reward means: %s", trainer.state.global_step, reward_means)
    return GRPOResult(output_dir, trainer.state.global_step, reward_means, grpo_prompts.skipped_without_title)


def _last_reward_means(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged ``rewards/<name>/mean`` of each reward function, the weighted total and its spread.

    ``reward_group_std`` is the mean spread of the total within prompt groups,
    ``frac_reward_zero_std`` TRL's share of groups whose completions all scored the same.
    """
    means: dict[str, float] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith("rewards/") and key.endswith("/mean"):
                means[key.split("/")[1]] = value
            elif key == "reward":
                means["total"] = value
            elif key == "frac_reward_zero_std":
                means[key] = value
    return means
