"""``rrec train variants``: the paper's three variants trained and evaluated on the same data.

(A) trained with rationales, infers rationale then item; (B) the same model prompted for the
item only; (C) trained on item-only targets, prompted for rationale then item at inference.
A and B share one SFT run, so two trainings give the three rows of one table. A fourth row,
``SFT+GRPO``, is variant A trained further with GRPO (:mod:`training.grpo`) and evaluated as A.

A and C train and are checked on the same rows (``SFTSettings.same_rows_as_a``); each row of
the table also carries its model's evaluation loss on item tokens (``eval_item_loss``) and on
rationale tokens (``eval_rationale_loss``), so the part A and C share can be compared directly.
Every row ranks the same candidates (the evaluation protocol of :mod:`training.evaluate`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.models import TRAINING_CONFIG, read_training_config
from training.paper_variants import VARIANTS, Variant
from training.sft import SFTSettings, run_sft

if TYPE_CHECKING:
    from training.evaluate import EvalSettings
    from training.grpo import GRPOSettings

log = logging.getLogger(__name__)

METRIC_COLUMNS = (
    ("HR@1", "HR@1"),
    ("HR@5", "HR@5"),
    ("NDCG@5", "NDCG@5"),
    ("gen_HR@1", "gen. HR@1"),
    ("valid_rate", "valid"),
    ("hallucination_rate", "halluc."),
)
LOSS_COLUMNS = (("eval_item_loss", "item loss"), ("eval_rationale_loss", "rationale loss"))
GRPO_ROW = "SFT+GRPO"
GRPO_DIR = "A_grpo"


# Variant A's model trained further with GRPO, prompted as A.
GRPO_VARIANT = Variant(GRPO_ROW, True, True)


def train_variant_models(
    dataset: str, config: str, revision: str | None, output_dir: Path, settings: SFTSettings, *, force: bool = False
) -> dict[str, Path]:
    """Train A (with rationales) and C (item-only) into ``output_dir/A`` and ``output_dir/C``.

    A folder that already holds a finished model is reused unless ``force``.
    """
    model_dirs = {}
    for variant in ("A", "C"):
        model_dir = Path(output_dir) / variant
        if not force and (model_dir / TRAINING_CONFIG).exists():
            log.info("variant %s: reusing the trained model in %s (--force retrains)", variant, model_dir)
        else:
            run_sft(dataset, config, revision, model_dir, settings.model_copy(update={"variant": variant}), force=force)
        model_dirs[variant] = model_dir
    return model_dirs


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """The variants table in Markdown, metrics in percent (as the paper's Table 1)."""
    header = ["Variant", "Trained with rationale", "Infers rationale", *(label for _, label in METRIC_COLUMNS)]
    header += [*(label for _, label in LOSS_COLUMNS), "n", "candidates"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in (*VARIANTS, GRPO_VARIANT):
        metrics = results.get(variant.name)
        if metrics is None:
            continue
        cells = [
            variant.name,
            "yes" if variant.trained_with_rationale else "no",
            "yes" if variant.infers_rationale else "no",
            *(f"{100 * metrics[key]:.2f}" if metrics.get(key) is not None else "-" for key, _ in METRIC_COLUMNS),
            *(f"{metrics[key]:.3f}" if metrics.get(key) is not None else "-" for key, _ in LOSS_COLUMNS),
            str(metrics.get("n", "-")),
            str(metrics.get("candidates", "-")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_variants(
    dataset: str,
    config: str,
    revision: str | None,
    output_dir: Path,
    settings: SFTSettings,
    eval_settings: EvalSettings,
    *,
    force: bool = False,
    grpo_settings: GRPOSettings | None = None,
) -> dict[str, dict[str, Any]]:
    """Train A and C (and, with ``grpo_settings``, GRPO on A); evaluate every row of the table.

    Writes ``variants.json``, ``variants.md`` and ``generations_<variant>.parquet`` into
    ``output_dir``. Returns ``{"A": metrics, "B": metrics, "C": metrics[, "SFT+GRPO": metrics]}``
    with the keys of ``training.evaluate.evaluate`` (fractions) plus the model's
    ``eval_item_loss`` and ``eval_rationale_loss`` (from its SFT run).
    """
    from training.evaluate import evaluate

    output_dir = Path(output_dir)
    model_dirs = train_variant_models(dataset, config, revision, output_dir, settings, force=force)
    rows: list[tuple[Variant, Path]] = [(variant, model_dirs[variant.model_variant]) for variant in VARIANTS]
    if grpo_settings is not None:
        rows.append((GRPO_VARIANT, train_grpo_on_a(dataset, config, revision, output_dir, model_dirs["A"], grpo_settings, force=force)))
    results: dict[str, dict[str, Any]] = {}
    for variant, model_dir in rows:
        log.info("evaluating variant %s", variant.name)
        # Each variant's generations (rationales included) are kept for `rrec judge`.
        generations = output_dir / f"generations_{variant.name.replace('+', '_')}.parquet"
        metrics = evaluate(
            model_dir,
            dataset,
            config,
            revision,
            infer_rationale=variant.infers_rationale,
            settings=eval_settings.model_copy(update={"generations": generations}),
        )
        sft_record = read_training_config(model_dirs[variant.model_variant])
        results[variant.name] = {**metrics, **{key: sft_record.get(key) for key, _ in LOSS_COLUMNS}}
    (output_dir / "variants.json").write_text(json.dumps(results, indent=2, sort_keys=True), encoding="utf-8")
    (output_dir / "variants.md").write_text(markdown_table(results), encoding="utf-8")
    return results


def train_grpo_on_a(
    dataset: str, config: str, revision: str | None, output_dir: Path, a_dir: Path, settings: GRPOSettings, *, force: bool = False
) -> Path:
    """GRPO from variant A's model into ``output_dir/A_grpo`` (reused when finished, unless ``force``)."""
    from training.grpo import run_grpo

    grpo_dir = Path(output_dir) / GRPO_DIR
    if not force and (grpo_dir / TRAINING_CONFIG).exists():
        log.info("SFT+GRPO: reusing the trained model in %s (--force retrains)", grpo_dir)
    else:
        run_grpo(a_dir, dataset, config, revision, grpo_dir, settings, force=force)
    return grpo_dir
