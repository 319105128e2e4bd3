"""``rrec train variants``: the paper's three variants trained and evaluated on the same data.

(A) trained with rationales, infers rationale then item; (B) the same model prompted for the
item only; (C) trained on item-only targets, prompted for rationale then item at inference.
A and B share one SFT run, so two trainings give the three rows of one table.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.models import TRAINING_CONFIG
from training.sft import SFTSettings, run_sft

if TYPE_CHECKING:
    from training.evaluate import EvalSettings

log = logging.getLogger(__name__)

METRIC_COLUMNS = (
    ("HR@1", "HR@1"),
    ("HR@5", "HR@5"),
    ("NDCG@5", "NDCG@5"),
    ("gen_HR@1", "gen. HR@1"),
    ("valid_rate", "valid"),
    ("hallucination_rate", "halluc."),
)


@dataclass(frozen=True)
class Variant:
    """One row of the variants table: which SFT run it uses and how it is prompted at inference."""

    name: str
    trained_with_rationale: bool
    infers_rationale: bool

    @property
    def model_variant(self) -> str:
        """The SFT run the variant evaluates (B reuses A's model)."""
        return "A" if self.trained_with_rationale else "C"


VARIANTS = (Variant("A", True, True), Variant("B", True, False), Variant("C", False, True))


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
    header = ["Variant", "Trained with rationale", "Infers rationale", *(label for _, label in METRIC_COLUMNS), "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in VARIANTS:
        metrics = results.get(variant.name)
        if metrics is None:
            continue
        cells = [
            variant.name,
            "yes" if variant.trained_with_rationale else "no",
            "yes" if variant.infers_rationale else "no",
            *(f"{100 * metrics[key]:.2f}" if metrics.get(key) is not None else "-" for key, _ in METRIC_COLUMNS),
            str(metrics.get("n", "-")),
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
) -> dict[str, dict[str, Any]]:
    """Train A and C, evaluate A, B and C; write ``variants.json``, ``variants.md`` and ``generations_<variant>.parquet``.

    Returns ``{"A": metrics, "B": metrics, "C": metrics}`` with the keys of
    ``training.evaluate.evaluate`` (fractions).
    """
    from training.evaluate import evaluate

    output_dir = Path(output_dir)
    model_dirs = train_variant_models(dataset, config, revision, output_dir, settings, force=force)
    results: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        log.info("evaluating variant %s", variant.name)
        # Each variant's generations (rationales included) are kept for `rrec judge`.
        generations = output_dir / f"generations_{variant.name}.parquet"
        results[variant.name] = evaluate(
            model_dirs[variant.model_variant],
            dataset,
            config,
            revision,
            infer_rationale=variant.infers_rationale,
            settings=eval_settings.model_copy(update={"generations": generations}),
        )
    (output_dir / "variants.json").write_text(json.dumps(results, indent=2, sort_keys=True), encoding="utf-8")
    (output_dir / "variants.md").write_text(markdown_table(results), encoding="utf-8")
    return results
