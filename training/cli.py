"""``rrec train sft | grpo | variants``: train rationale-first recommenders on a released version.

Heavy imports (torch, transformers, trl) happen inside the commands so ``rrec --help`` stays fast.
As for ``rrec evaluate``: ``--subset NAME`` is the dataset subset (domain), ``--revision`` the
version and ``--config FILE`` the YAML settings file (sections ``sft``, ``grpo``, ``evaluate``);
the old ``--config NAME`` / ``--settings FILE`` spellings still work with a deprecation message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from core.cli_common import user_errors
from core.config import load_config, section
from training.cli_options import ConfigOpt, DatasetOpt, RevisionOpt, SettingsOpt, SubsetOpt, dataset_options

OutputOpt = Annotated[Path, typer.Option("--output", help="Folder for the trained model, checkpoints and training_config.json.")]
ReportToOpt = Annotated[str | None, typer.Option(help="Where to log training: none (default) or tensorboard (when installed).")]
PushOpt = Annotated[str | None, typer.Option("--push-to-hub", help="Push the trained model with a model card to this Hub repo ORG/NAME.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in OUTPUT/checkpoints.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Delete OUTPUT and train from scratch.")]

train_app = typer.Typer(
    name="train",
    help="Train rationale-first recommenders (SFT, GRPO, the A/B/C variants) on a released dataset version.",
    no_args_is_help=True,
)


_NOT_SETTINGS = {"sft_model", "dataset", "subset", "config", "output", "revision", "settings_file", "resume", "force", "push_to_hub"}


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _check_push(repo_id: str | None) -> None:
    if repo_id:
        from training.hub_push import check_push_target

        check_push_target(repo_id)


def _push(model_dir: Path, repo_id: str | None) -> None:
    if repo_id:
        from training.hub_push import push_model

        commit = push_model(model_dir, repo_id)
        typer.echo(f"pushed to {repo_id} (commit {commit[:12]})")


def _settings(settings_file: Path | None, name: str, model: type, overrides: dict[str, Any]) -> Any:
    return section(load_config(settings_file), name, model, overrides)


@train_app.command("sft")
@user_errors
def sft_command(
    dataset: DatasetOpt,
    output: OutputOpt,
    subset: SubsetOpt = None,
    revision: RevisionOpt = None,
    config: ConfigOpt = None,
    settings_file: SettingsOpt = None,
    model: Annotated[str | None, typer.Option(help="Hub id or local folder of the base model, or 'tiny' (offline, CPU).")] = None,
    variant: Annotated[str | None, typer.Option(help="A or B: train with rationales; C: item-only targets.")] = None,
    full: Annotated[bool | None, typer.Option("--full/--lora", help="Full fine-tuning instead of a LoRA adapter.")] = None,
    merge: Annotated[bool | None, typer.Option("--merge/--no-merge", help="Save the adapter merged into the base.")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    lora_alpha: Annotated[int | None, typer.Option(help="LoRA alpha.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Training epochs.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps (-1: run the epochs).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per device and step.")] = None,
    gradient_accumulation: Annotated[int | None, typer.Option(help="Steps to accumulate per optimizer step.")] = None,
    eval_steps: Annotated[int | None, typer.Option(help="Evaluate and checkpoint every N steps.")] = None,
    early_stopping_patience: Annotated[int | None, typer.Option(help="Evaluations without improvement before stopping (0: never).")] = None,
    max_length: Annotated[int | None, typer.Option(help="Longest tokenised example.")] = None,
    history_k: Annotated[int | None, typer.Option(help="History items shown in the prompt.")] = None,
    num_candidates: Annotated[int | None, typer.Option(help="Candidates shown in the prompt (0: none).")] = None,
    limit_train: Annotated[int | None, typer.Option(help="Use only the first N train rows.")] = None,
    limit_eval: Annotated[int | None, typer.Option(help="Use only the first N evaluation rows.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    report_to: ReportToOpt = None,
    tiny_vocab_size: Annotated[int | None, typer.Option(help="Tiny model: tokenizer vocabulary size.", min=300)] = None,
    tiny_hidden_size: Annotated[int | None, typer.Option(help="Tiny model: hidden size.", min=8)] = None,
    tiny_num_layers: Annotated[int | None, typer.Option(help="Tiny model: transformer layers.", min=1)] = None,
    tiny_num_heads: Annotated[int | None, typer.Option(help="Tiny model: attention heads.", min=1)] = None,
    push_to_hub: PushOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
) -> None:
    """Supervised fine-tuning (TRL SFTTrainer, LoRA by default), loss on the assistant turn only.

    Evaluates on the validation split, checkpoints, stops early and resumes (--resume).

    Writes the adapter (or full model), tokenizer and training_config.json to --output.
    """
    # Every other option is a settings field of the same name.
    overrides = {key: value for key, value in locals().items() if key not in _NOT_SETTINGS}
    from training.sft import SFTSettings, run_sft

    options = dataset_options(subset, config, settings_file)
    _check_push(push_to_hub)
    settings = _settings(options.config_file, "sft", SFTSettings, overrides)
    result = run_sft(dataset, options.subset, revision, output, settings, resume=resume, force=force)
    before = "n/a" if result.eval_loss_before is None else f"{result.eval_loss_before:.4f}"
    typer.echo(f"SFT variant {settings.variant}: {result.global_step} steps, eval loss {before} -> {result.eval_loss_after:.4f}")
    typer.echo(f"eval loss on item tokens {_loss(result.eval_item_loss)}, on rationale tokens {_loss(result.eval_rationale_loss)}")
    typer.echo(f"model saved in {result.output_dir}")
    _push(result.output_dir, push_to_hub)


@train_app.command("grpo")
@user_errors
def grpo_command(
    sft_model: Annotated[Path, typer.Option("--sft-model", help="Output folder of `rrec train sft` to start from.")],
    dataset: DatasetOpt,
    output: OutputOpt,
    subset: SubsetOpt = None,
    revision: RevisionOpt = None,
    config: ConfigOpt = None,
    settings_file: SettingsOpt = None,
    format_weight: Annotated[float | None, typer.Option(help="Weight of the format reward.")] = None,
    validity_weight: Annotated[float | None, typer.Option(help="Weight of the validity reward.")] = None,
    hit_weight: Annotated[float | None, typer.Option(help="Weight of the hit reward.")] = None,
    rank_weight: Annotated[float | None, typer.Option(help="Weight of the rank-aware reward.")] = None,
    num_generations: Annotated[int | None, typer.Option(help="Completions per prompt (the GRPO group).")] = None,
    max_completion_length: Annotated[int | None, typer.Option(help="Longest generated answer, in tokens.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    beta: Annotated[float | None, typer.Option(help="KL coefficient against the SFT policy.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Completions per device and step (multiple of --num-generations).")] = None,
    limit_train: Annotated[int | None, typer.Option(help="Use only the first N train rows.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    report_to: ReportToOpt = None,
    push_to_hub: PushOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
) -> None:
    """GRPO (TRL GRPOTrainer) from an SFT checkpoint with format, validity, hit and rank-aware rewards.

    Each reward is logged separately (rewards/<name>/mean); the weights are configurable.
    """
    overrides = {key: value for key, value in locals().items() if key not in _NOT_SETTINGS}
    from training.grpo import GRPOSettings, run_grpo

    options = dataset_options(subset, config, settings_file)
    _check_push(push_to_hub)
    settings = _settings(options.config_file, "grpo", GRPOSettings, overrides)
    result = run_grpo(sft_model, dataset, options.subset, revision, output, settings, resume=resume, force=force)
    typer.echo(f"GRPO: {result.global_step} steps; last reward means {json.dumps(result.rewards)}")
    if result.skipped_without_title:
        typer.echo(f"left out {result.skipped_without_title} train rows whose target has no title")
    typer.echo(f"model saved in {result.output_dir}")
    _push(result.output_dir, push_to_hub)


@train_app.command("variants")
@user_errors
def variants_command(
    dataset: DatasetOpt,
    output: OutputOpt,
    subset: SubsetOpt = None,
    revision: RevisionOpt = None,
    config: ConfigOpt = None,
    settings_file: SettingsOpt = None,
    model: Annotated[str | None, typer.Option(help="Hub id or local folder of the base model, or 'tiny'.")] = None,
    full: Annotated[bool | None, typer.Option("--full/--lora", help="Full fine-tuning instead of LoRA.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop each training after N optimizer steps.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Training epochs.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N test rows.")] = None,
    grpo: Annotated[bool, typer.Option("--grpo/--no-grpo", help="Also train A further with GRPO: the SFT+GRPO row.")] = True,
    grpo_max_steps: Annotated[int | None, typer.Option(help="Stop GRPO after N optimizer steps.")] = None,
    force: ForceOpt = False,
) -> None:
    """Train variants A (with rationales) and C (without) once, evaluate A, B, C and SFT+GRPO; print one table.

    Writes OUTPUT/A, OUTPUT/C and OUTPUT/A_grpo (models), OUTPUT/variants.json, variants.md,
    generations_*.parquet. A and C train and are checked on the same rows; the table reports
    each model's loss on item tokens apart from rationale tokens.

    SFT settings come from the `sft` section of --config FILE, GRPO settings from `grpo`,
    evaluation settings from `evaluate`.
    """
    from rich.console import Console
    from rich.markdown import Markdown

    from training.evaluate import EvalSettings
    from training.grpo import GRPOSettings
    from training.sft import SFTSettings
    from training.variants import markdown_table, run_variants

    options = dataset_options(subset, config, settings_file)
    loaded = load_config(options.config_file)
    sft_overrides = {"model": model, "full": full, "max_steps": max_steps, "epochs": epochs, "learning_rate": learning_rate}
    settings = section(loaded, "sft", SFTSettings, sft_overrides)
    eval_settings = section(loaded, "evaluate", EvalSettings, {"limit": limit})
    grpo_settings = section(loaded, "grpo", GRPOSettings, {"max_steps": grpo_max_steps}) if grpo else None
    results = run_variants(dataset, options.subset, revision, output, settings, eval_settings, force=force, grpo_settings=grpo_settings)
    Console().print(Markdown(markdown_table(results)))
    typer.echo(json.dumps(results, indent=2, sort_keys=True))


def register(app: typer.Typer) -> None:
    """Add the ``train`` command group to ``rrec``."""
    app.add_typer(train_app, name="train")
