"""Statistics of one released domain, shown in the dataset card as tables and figures."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from release.layout import DomainRelease

UNCATEGORISED = "(uncategorised)"
# Sizes the sequences stage records in its manifest entry, with the card's wording.
SEQUENCE_SIZES = {
    "users_before_kcore": "users before k-core",
    "users_after_kcore": "users after k-core",
    "items_before_kcore": "items before k-core",
    "items_after_kcore": "items after k-core",
    "kcore_rounds": "k-core rounds until stable",
    "interactions_out": "interactions in the sequences",
    "items_without_metadata": "catalog items without metadata",
}


@dataclass(frozen=True)
class Distribution:
    """Summary of a numeric sample (empty samples give zeros and ``n == 0``)."""

    values: list[int]
    n: int
    mean: float
    median: float
    minimum: int
    maximum: int
    p95: float

    @classmethod
    def of(cls, values: list[int]) -> Distribution:
        if not values:
            return cls([], 0, 0.0, 0.0, 0, 0, 0.0)
        array = np.asarray(values)
        return cls(
            values=list(values),
            n=len(values),
            mean=float(array.mean()),
            median=float(np.median(array)),
            minimum=int(array.min()),
            maximum=int(array.max()),
            p95=float(np.percentile(array, 95)),
        )


@dataclass(frozen=True)
class DomainStatistics:
    """What the card says about one config; every number comes from the released rows or the run manifest."""

    config: str
    domain: str
    rows: dict[str, int]
    users: dict[str, int]
    catalog_items: int
    history_length: Distribution
    rationale_words: Distribution
    items_per_category: list[tuple[str, int]]
    filter_reasons: dict[str, int]
    annotated: int | None
    filter_passed: int | None
    filter_rate: float | None
    train_without_rationale: int
    annotation: dict[str, Any] = field(default_factory=dict)
    judge: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)


def category_of(categories: list[str] | None, main_category: str | None) -> str:
    """The category an item is counted under.

    Amazon category paths start with the domain itself (``Grocery & Gourmet Food > Snacks >
    Chips``), so the second level is the first informative one; shorter paths fall back to
    their first level, then to ``main_category``.
    """
    if categories and len(categories) >= 2:
        return categories[1]
    if categories:
        return categories[0]
    return main_category or UNCATEGORISED


def _annotation_extras(entry: dict[str, Any] | None) -> dict[str, Any]:
    keys = ("annotator", "model", "prompt_version", "input_tokens", "output_tokens", "cost_usd", "splits")
    return {key: entry[key] for key in keys if entry and key in entry}


def _judge_extras(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    if not entry:
        return None
    keys = ("judge", "score_distribution", "mean_score", "sample_size")
    return {key: entry.get(key) for key in keys}


def filter_summary(filter_entry: dict[str, Any] | None) -> tuple[int | None, int | None, float | None, dict[str, int]]:
    """Annotated rows in, rows that passed, share rejected and rejects by reason of the filter stage."""
    if not filter_entry:
        return None, None, None, {}
    reasons = {str(k): int(v) for k, v in (filter_entry.get("rejects_by_reason") or {}).items()}
    annotated = filter_entry.get("rows_in")
    passed = (filter_entry.get("rows_out") or {}).get("filtered")
    if annotated is None and passed is not None:
        annotated = passed + sum(reasons.values())
    rate = (annotated - passed) / annotated if annotated and passed is not None else None
    return annotated, passed, rate, reasons


def domain_statistics(domain: DomainRelease) -> DomainStatistics:
    """Compute the card statistics of one released domain."""
    # The test split has exactly one row per user with the longest history: one value per user.
    history_rows = domain.splits["test"] if domain.splits["test"].num_rows else domain.splits["train"]
    history_lengths = pc.list_value_length(history_rows["history"]).to_pylist()
    rationales = [r for r in domain.splits["train"]["rationale"].to_pylist() if r]
    categories = Counter(
        category_of(cats, main) for cats, main in zip(domain.items["categories"].to_pylist(), domain.items["main_category"].to_pylist())
    )
    annotated, passed, rate, reasons = filter_summary(domain.stages.get("filter"))
    ingest = domain.stages.get("ingest") or {}
    sequences = domain.stages.get("sequences") or {}
    source = {
        "inputs": {Path(name).name: digest for name, digest in sorted((ingest.get("inputs") or {}).items())},
        "ingest_rows_in": ingest.get("rows_in"),
        "ingest_rows_out": ingest.get("rows_out") or {},
        "ingest_rejects": ingest.get("rejects_by_reason") or {},
        "sequences_config": sequences.get("config") or {},
        "sequences_rows_out": sequences.get("rows_out") or {},
        "sequences_rejects": sequences.get("rejects_by_reason") or {},
        "sequences_sizes": {label: sequences[key] for key, label in SEQUENCE_SIZES.items() if sequences.get(key) is not None},
    }
    return DomainStatistics(
        config=domain.config,
        domain=domain.domain,
        rows=domain.row_counts(),
        users={split: pc.count_distinct(table["user_id"]).as_py() for split, table in domain.splits.items()},
        catalog_items=domain.items.num_rows,
        history_length=Distribution.of([int(n) for n in history_lengths]),
        rationale_words=Distribution.of([len(r.split()) for r in rationales]),
        items_per_category=sorted(categories.items(), key=lambda kv: (-kv[1], kv[0])),
        filter_reasons=dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        annotated=annotated,
        filter_passed=passed,
        filter_rate=rate,
        train_without_rationale=domain.train_without_rationale,
        annotation=_annotation_extras(domain.stages.get("annotate")),
        judge=_judge_extras(domain.stages.get("judge")),
        source=source,
    )
