"""The dataset card (README.md): Hub YAML metadata plus the datasheet, with statistics figures.

The YAML block is produced by ``huggingface_hub.DatasetCardData`` and ``datasets``'
``DatasetInfosDict`` (configs with ``data_files`` per split, ``dataset_info`` with features
and sizes), so the Hub and ``load_dataset`` read exactly what they would write themselves. The
prose comes from the Jinja template ``datacards/template.md``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from huggingface_hub import DatasetCard, DatasetCardData

from core.config import StageSettings
from core.schemas import ITEMS, RELEASE_ROW
from core.stage import code_version
from datacards.figures import render_figures
from datacards.statistics import DomainStatistics, domain_statistics
from release.layout import ITEMS_SPLIT, DomainRelease
from release.registry import version_tag

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
TEMPLATE = Path(__file__).with_name("template.md")
EXAMPLE_LIST_ITEMS = 3

RELEASE_FIELD_DESCRIPTIONS = {
    "user_id": "Anonymised reviewer id from Amazon Reviews 2023.",
    "history": "The user's earlier items, oldest first (parent_asin, title, rating, timestamp in ms), at most `max_history`.",
    "target": "The item the user reviewed next (the label), with categories, store, rating and timestamp.",
    "candidates": "The target plus sampled negatives, shuffled (parent_asin, title).",
    "target_index": "Position of the target in `candidates`.",
    "rationale": "Why the target follows the history, written by the annotator; null when not annotated.",
    "user_preferences": "The annotator's short summary of the user's preferences; null when not annotated.",
    "annotator": "Annotator kind (`openai`, `openai-batch`, `template`).",
    "model": "Model that wrote the rationale.",
    "prompt_version": "Version id of the teacher prompt.",
}
ITEM_FIELD_DESCRIPTIONS = {
    "parent_asin": "Item id (Amazon parent ASIN).",
    "title": "Item title.",
    "main_category": "Main category from the metadata.",
    "categories": "Category path, most general first.",
    "store": "Store or brand.",
    "price": "Price in USD; null when missing.",
    "average_rating": "Average rating shown on the product page.",
    "rating_number": "Number of ratings.",
    "features": "Bullet-point features.",
    "description": "Product description.",
    "details": "Further attributes as a JSON object string.",
}


class CardSettings(StageSettings):
    """Settings of ``rrec card`` (config section ``card``)."""

    pretty_name: str = "Rationale-augmented Amazon Reviews 2023 for sequential recommendation"
    license: str = "other"
    license_name: str = "amazon-reviews-2023"
    license_link: str = "https://amazon-reviews-2023.github.io/"


@dataclass(frozen=True)
class FieldRow:
    name: str
    type: str
    description: str


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` bucket of a row count."""
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
        (1_000_000_000, "100M<n<1B"),
    ]
    for bound, label in bounds:
        if rows < bound:
            return label
    return "n>1T" if rows >= 10**12 else "1B<n<10B" if rows < 10**10 else "10B<n<100B" if rows < 10**11 else "100B<n<1T"


def _download_size(folder: Path) -> int | None:
    files = list(folder.glob("*.parquet"))
    return sum(f.stat().st_size for f in files) if files else None


def _dataset_info(config: str, features: datasets.Features, tables: dict[str, pa.Table], data_dir: Path) -> DatasetInfo:
    splits = SplitDict(
        {split: SplitInfo(name=split, num_bytes=table.nbytes, num_examples=table.num_rows) for split, table in tables.items()}
    )
    return DatasetInfo(
        features=features,
        config_name=config,
        splits=splits,
        dataset_size=sum(table.nbytes for table in tables.values()),
        download_size=_download_size(data_dir),
    )


def card_data(domains: list[DomainRelease], release_dir: Path, settings: CardSettings) -> DatasetCardData:
    """The YAML metadata block: configs with data_files per split and dataset_info with features and sizes."""
    configs: list[dict[str, Any]] = []
    infos = DatasetInfosDict()
    release_features = datasets.Features.from_arrow_schema(RELEASE_ROW)
    item_features = datasets.Features.from_arrow_schema(ITEMS)
    for index, domain in enumerate(domains):
        configs.append(
            {
                "config_name": domain.config,
                "data_files": [{"split": split, "path": f"data/{domain.config}/{split}-*.parquet"} for split in domain.splits],
                **({"default": True} if index == 0 else {}),
            }
        )
        configs.append(
            {
                "config_name": domain.items_config,
                "data_files": [{"split": ITEMS_SPLIT, "path": f"data/{domain.items_config}/{ITEMS_SPLIT}-*.parquet"}],
            }
        )
        infos[domain.config] = _dataset_info(domain.config, release_features, domain.splits, release_dir / "data" / domain.config)
        infos[domain.items_config] = _dataset_info(
            domain.items_config, item_features, {ITEMS_SPLIT: domain.items}, release_dir / "data" / domain.items_config
        )
    total_rows = sum(sum(d.row_counts().values()) for d in domains)
    data = DatasetCardData(
        pretty_name=settings.pretty_name,
        license=settings.license,
        license_name=settings.license_name if settings.license == "other" else None,
        license_link=settings.license_link if settings.license == "other" else None,
        language=["en"],
        task_categories=["text-generation"],
        size_categories=[size_category(total_rows)],
        source_datasets=["McAuley-Lab/Amazon-Reviews-2023"],
        annotations_creators=["machine-generated"],
        tags=["recommendation", "sequential-recommendation", "rationale", "explainable-recommendation", "amazon-reviews"],
        configs=configs,
    )
    infos.to_dataset_card_data(data)
    return data


def _field_rows(schema: pa.Schema, descriptions: dict[str, str]) -> list[FieldRow]:
    return [FieldRow(f.name, str(f.type), descriptions.get(f.name, "")) for f in schema]


def example_record(domain: DomainRelease) -> str:
    """One real released record as JSON, lists cut to a few entries so the card stays readable."""
    split = "train" if domain.splits["train"].num_rows else "test"
    table = domain.splits[split]
    if not table.num_rows:
        return "{}"
    record = dict(domain.row_statistics.first_rows[split])
    for key in ("history", "candidates"):
        values = record[key]
        if len(values) > EXAMPLE_LIST_ITEMS:
            record[key] = [*values[:EXAMPLE_LIST_ITEMS], f"... {len(values) - EXAMPLE_LIST_ITEMS} more"]
    return json.dumps(record, indent=2, ensure_ascii=False)


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "not recorded" if value is None else str(value)


def _reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {n:,}" for reason, n in reasons.items() if n) or "none"


def _config_context(stats: DomainStatistics, figures: dict[str, str]) -> dict[str, Any]:
    annotation = stats.annotation
    tokens = (
        f"{annotation['input_tokens']:,} input and {annotation['output_tokens']:,} output tokens"
        if isinstance(annotation.get("input_tokens"), int) and isinstance(annotation.get("output_tokens"), int)
        else "token counts not recorded"
    )
    cost = f"USD {float(annotation['cost_usd']):.4f}" if annotation.get("cost_usd") is not None else "not recorded"
    dropped = (
        f"{stats.train_without_rationale:,} train sequence(s) without a passing rationale are not released."
        if stats.train_without_rationale
        else ""
    )
    judge_scores: list[tuple[str, Any]] = []
    judge_mean = "n/a"
    if stats.judge:
        distribution = stats.judge.get("score_distribution") or {}
        judge_scores = [(str(score), distribution.get(str(score), distribution.get(score, 0))) for score in range(4)]
        if stats.judge.get("mean_score") is not None:
            judge_mean = f"{float(stats.judge['mean_score']):.2f}"
    return {
        "stats": stats,
        "figures": figures,
        "tokens": tokens,
        "cost": cost,
        "filter_kept": f"{_number(stats.filter_passed)} of {_number(stats.annotated)} annotated rationales",
        "filter_rate": "n/a" if stats.filter_rate is None else f"{100 * stats.filter_rate:.1f}%",
        "dropped": dropped,
        "judge_scores": judge_scores,
        "judge_mean": judge_mean,
        "source_rows_in": _number(stats.source.get("ingest_rows_in")),
        "source_rows_out": ", ".join(f"{k}: {v:,}" for k, v in stats.source.get("ingest_rows_out", {}).items()) or "not recorded",
        "source_rejects": _reasons(stats.source.get("ingest_rejects", {})),
        "sequence_rejects": _reasons(stats.source.get("sequences_rejects", {})),
    }


def build_card(
    domains: list[DomainRelease],
    release_dir: Path,
    version: str,
    settings: CardSettings | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write ``README.md`` and the statistics figures of a release into ``release_dir``.

    ``repo_id`` (``ORG/NAME``) adds a Hub loading snippet. Data files already written under
    ``release_dir/data`` give the card its download sizes; without them the sizes are omitted.
    """
    settings = settings or CardSettings()
    release_dir = Path(release_dir)
    release_dir.mkdir(parents=True, exist_ok=True)
    tag = version_tag(version)
    configs = []
    for domain in domains:
        stats = domain_statistics(domain)
        configs.append(_config_context(stats, render_figures(stats, release_dir)))
    example_domain = next((d for d in domains if d.splits["train"].num_rows), domains[0])
    card = DatasetCard.from_template(
        card_data(domains, release_dir, settings),
        template_path=str(TEMPLATE),
        pretty_name=settings.pretty_name,
        tag=tag,
        code_version=code_version(),
        repo_id=repo_id,
        domain_list=", ".join(d.domain for d in domains),
        first_config=domains[0].config,
        configs=configs,
        fields=_field_rows(RELEASE_ROW, RELEASE_FIELD_DESCRIPTIONS),
        item_fields=_field_rows(ITEMS, ITEM_FIELD_DESCRIPTIONS),
        example_config=example_domain.config,
        example=example_record(example_domain),
        license_link=settings.license_link if settings.license == "other" else None,
    )
    path = release_dir / CARD_NAME
    card.save(path)
    log.info("wrote dataset card %s", path)
    return path
