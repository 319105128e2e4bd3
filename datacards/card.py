"""The dataset card (README.md): Hub YAML metadata plus the datasheet, with statistics figures.

The YAML block is produced by ``huggingface_hub.DatasetCardData`` and ``datasets``'
``DatasetInfosDict`` (configs with ``data_files`` per split, ``dataset_info`` with features
and sizes), so the Hub and ``load_dataset`` read exactly what they would write themselves. The
prose comes from the Jinja template ``datacards/template.md``. What the card says about the
input, the annotator and the judge follows the run manifests (:mod:`datacards.provenance`):
synthetic data is named as such in the title, template rationales are never called
LLM-written, and a source that was not recorded is never called real.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import datasets
import pyarrow as pa
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from huggingface_hub import DatasetCard, DatasetCardData
from pydantic import Field

from core.config import StageSettings
from core.hashing import code_version
from core.reasons import describe
from core.schemas import ITEMS, ITEMS_SPLIT, RELEASE_ROW
from datacards.figures import render_figures
from datacards.provenance import (
    DomainProvenance,
    annotation_statement,
    domain_provenance,
    judge_statement,
    rebuild_configs,
    source_datasets,
    source_statement,
    title_note,
)
from datacards.statistics import DomainStatistics, ReleasedDomain, domain_statistics

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
    "rationale": "Why the target follows the history, written by the annotator named in `annotator`; null when not annotated.",
    "user_preferences": "The annotator's short summary of the user's preferences; null when not annotated.",
    "annotator": "Annotator kind: `openai` / `openai-batch` (an LLM) or `template` (fixed sentences filled from the history, no LLM).",
    "model": "Model (LLM annotators) or template version that wrote the rationale.",
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
    code_repository: str | None = Field(None, description="address of the code that builds the dataset (the card's Sources)")
    contact: str | None = Field(None, description="who answers questions about the dataset: an e-mail address or an issue tracker")


class CardDomain(ReleasedDomain, Protocol):
    """What the card reads of a released domain (``release.layout.CardDomain``)."""

    splits: Mapping[str, Any]
    items: Any
    validation: dict[str, Any]

    @property
    def items_config(self) -> str: ...


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


def card_data(
    domains: list[CardDomain], release_dir: Path, settings: CardSettings, provenances: list[DomainProvenance], title: str
) -> DatasetCardData:
    """The YAML metadata block: configs with data_files per split and dataset_info with features and sizes.

    ``source_datasets`` names a dataset only for real input; synthetic data is tagged ``synthetic``.
    """
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
    synthetic = any(p.source.kind == "synthetic" for p in provenances)
    data = DatasetCardData(
        pretty_name=title,
        license=settings.license,
        license_name=settings.license_name if settings.license == "other" else None,
        license_link=settings.license_link if settings.license == "other" else None,
        language=["en"],
        task_categories=["text-generation"],
        size_categories=[size_category(total_rows)],
        source_datasets=source_datasets(provenances),
        annotations_creators=["machine-generated"],
        tags=[
            "recommendation",
            "sequential-recommendation",
            "rationale",
            "explainable-recommendation",
            "amazon-reviews",
            *(["synthetic"] if synthetic else []),
        ],
        configs=configs,
    )
    infos.to_dataset_card_data(data)
    return data


def _field_rows(schema: pa.Schema, descriptions: dict[str, str]) -> list[FieldRow]:
    return [FieldRow(f.name, str(f.type), descriptions.get(f.name, "")) for f in schema]


def example_record(domain: CardDomain) -> str:
    """The first released record as JSON, lists cut to a few entries so the card stays readable."""
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
        # Each reason with its meaning from the one registry (core/reasons.py).
        "filter_reasons": [(reason, n, describe(reason)) for reason, n in stats.filter_reasons.items()],
        "target_first": "n/a" if not stats.annotated else f"{100 * stats.filter_reasons.get('target_first', 0) / stats.annotated:.1f}%",
        "dropped": dropped,
        "judge_scores": judge_scores,
        "judge_mean": judge_mean,
        "source_rows_in": _number(stats.source.get("ingest_rows_in")),
        "source_rows_out": ", ".join(f"{k}: {v:,}" for k, v in stats.source.get("ingest_rows_out", {}).items()) or "not recorded",
        "source_rejects": _reasons(stats.source.get("ingest_rejects", {})),
        "sequence_rejects": _reasons(stats.source.get("sequences_rejects", {})),
    }


@dataclass(frozen=True)
class TableCheck:
    """The validation results of one table, by severity (``critical`` failures block a release)."""

    table: str
    critical: int
    critical_failed: int
    warnings: int
    warnings_failed: int
    not_evaluated: int
    failed: list[str]


def validation_checks(validation: dict[str, Any]) -> list[TableCheck]:
    """Per table of a run's ``validation/summary.json``: expectations and failures by severity."""
    checks = []
    for table, suite in (validation.get("suites") or {}).items():
        if not suite.get("present", True):
            continue
        expectations = suite.get("expectations") or []
        critical = [e for e in expectations if e.get("severity") == "critical"]
        warnings = [e for e in expectations if e.get("severity") != "critical"]
        checks.append(
            TableCheck(
                table=table,
                critical=len(critical),
                critical_failed=sum(e.get("success") is False for e in critical),
                warnings=len(warnings),
                warnings_failed=sum(e.get("success") is False for e in warnings),
                not_evaluated=sum(e.get("success") is None for e in expectations),
                failed=[f"{e['name']} ({e.get('severity')})" for e in expectations if e.get("success") is False],
            )
        )
    return checks


def _tag(version: str) -> str:
    if not re.fullmatch(r"v?\d+\.\d+\.\d+", version):
        raise ValueError(f"version {version!r} is not semantic (X.Y.Z, e.g. 1.0.0)")
    return "v" + version.removeprefix("v")


def _commit_of(version: str) -> str | None:
    """The git commit in a code version ``X.Y.Z+g<commit>``, when there is one."""
    return version.split("+g", 1)[1] if "+g" in version else None


def _rebuild(domains: list[CardDomain], provenances: list[DomainProvenance], settings: CardSettings, release: dict[str, Any]) -> Any:
    configs = rebuild_configs(
        provenances, {d.config: d.stages for d in domains}, settings.model_dump(mode="json", exclude_none=True), release
    )
    return [
        {"configs": names, "file": "rebuild.yaml" if len(configs) == 1 else f"rebuild-{i}.yaml", "yaml": text}
        for i, (names, text) in enumerate(configs, 1)
    ]


@dataclass(frozen=True)
class DrawnFigures:
    """A config's figures drawn into a release folder ahead of its card, with the statistics drawn."""

    statistics: DomainStatistics
    figures: dict[str, str]


def draw_figures(statistics: DomainStatistics, release_dir: Path) -> DrawnFigures:
    """Draw one config's figures into ``release_dir`` ahead of the card (for :func:`build_card`'s ``drawn``)."""
    return DrawnFigures(statistics, render_figures(statistics, Path(release_dir)))


def build_card(
    domains: list[CardDomain],
    release_dir: Path,
    version: str,
    settings: CardSettings | None = None,
    repo_id: str | None = None,
    release: dict[str, Any] | None = None,
    drawn: Mapping[str, DrawnFigures] | None = None,
) -> Path:
    """Write ``README.md`` and the statistics figures of a release into ``release_dir``.

    ``repo_id`` (``ORG/NAME``) adds a Hub loading snippet; ``release`` (the ``release`` config
    section, default: just the version) goes into the config that rebuilds the version. Data
    files already written under ``release_dir/data`` give the card its download sizes; without
    them the sizes are omitted. ``drawn`` holds figures already drawn into ``release_dir`` per
    config (:func:`draw_figures`); they are used where their statistics equal the card's.
    """
    settings = settings or CardSettings()
    release_dir = Path(release_dir)
    release_dir.mkdir(parents=True, exist_ok=True)
    tag = _tag(version)
    provenances = [domain_provenance(d.config, d.domain, d.stages) for d in domains]
    note = title_note(provenances)
    # A name that already says synthetic ("... (synthetic demo)") needs no second note.
    named = note == "synthetic data" and "synthetic" in settings.pretty_name.lower()
    title = f"{settings.pretty_name} ({note})" if note and not named else settings.pretty_name
    configs = []
    for domain, provenance in zip(domains, provenances):
        stats = domain_statistics(domain)
        early = (drawn or {}).get(domain.config)
        figures = early.figures if early is not None and early.statistics == stats else render_figures(stats, release_dir)
        context = _config_context(stats, figures)
        context.update(
            provenance=provenance,
            source_statement=source_statement(provenance),
            annotation_statement=annotation_statement(provenance),
            judge_statement=judge_statement(provenance),
            checks=validation_checks(domain.validation),
        )
        configs.append(context)
    example_domain = next((d for d in domains if d.splits["train"].num_rows), domains[0])
    current = code_version()
    card = DatasetCard.from_template(
        card_data(domains, release_dir, settings, provenances, title),
        template_path=str(TEMPLATE),
        title=title,
        settings=settings,
        tag=tag,
        code_version=current,
        code_commit=_commit_of(current),
        repo_id=repo_id,
        domain_list=", ".join(d.domain for d in domains),
        first_config=domains[0].config,
        configs=configs,
        kinds=sorted({p.source.kind for p in provenances}),
        llm_annotated=[p.config for p in provenances if p.annotation.llm],
        template_annotated=[p.config for p in provenances if p.annotation.annotator == "template"],
        rebuild=_rebuild(domains, provenances, settings, release or {"version": tag[1:]}),
        fields=_field_rows(RELEASE_ROW, RELEASE_FIELD_DESCRIPTIONS),
        item_fields=_field_rows(ITEMS, ITEM_FIELD_DESCRIPTIONS),
        example_config=example_domain.config,
        example_synthetic=next(p for p in provenances if p.config == example_domain.config).source.kind == "synthetic",
        example=example_record(example_domain),
        license_link=settings.license_link if settings.license == "other" else None,
    )
    path = release_dir / CARD_NAME
    card.save(path)
    log.info("wrote dataset card %s", path)
    return path
