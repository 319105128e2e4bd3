"""Statistics of one released domain, shown in the dataset card as tables and figures.

The numbers come from the released rows, counted partition by partition: :class:`RowStatistics`
holds counts that add up (rows, users, value counts of history and rationale lengths), so the
streaming release builder computes one per partition on the workers and merges them in the
driver, and the in-memory builder computes one over the whole tables; both give the same card.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
# Splits whose history lengths are counted: the test split has one row per user with the
# longest history; train stands in when a release has no test rows.
HISTORY_SPLITS = ("test", "train")


@dataclass(frozen=True)
class Distribution:
    """Summary of a numeric sample, kept as value counts (empty samples give zeros and ``n == 0``)."""

    counts: dict[int, int]
    n: int
    mean: float
    median: float
    minimum: int
    maximum: int
    p95: float

    @classmethod
    def of(cls, values: list[int]) -> Distribution:
        """The distribution of a list of values."""
        return cls.of_counts(dict(Counter(int(v) for v in values)))

    @classmethod
    def of_counts(cls, counts: dict[int, int]) -> Distribution:
        """The distribution of a sample given as ``{value: how often}`` (exact median and percentile)."""
        counts = {int(v): int(n) for v, n in sorted(counts.items()) if n}
        if not counts:
            return cls({}, 0, 0.0, 0.0, 0, 0, 0.0)
        array = np.repeat(np.fromiter(counts, dtype=np.int64), np.fromiter(counts.values(), dtype=np.int64))
        return cls(
            counts=counts,
            n=int(array.size),
            mean=float(array.mean()),
            median=float(np.median(array)),
            minimum=int(array[0]),
            maximum=int(array[-1]),
            p95=float(np.percentile(array, 95)),
        )


def _value_counts(values: pa.Array | pa.ChunkedArray) -> dict[int, int]:
    counted = pc.value_counts(values) if len(values) else pa.array([], pa.struct([("values", pa.int64()), ("counts", pa.int64())]))
    return {int(v): int(n) for v, n in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist())}


def _add(first: dict[Any, int], second: dict[Any, int]) -> dict[Any, int]:
    total = Counter(first)
    total.update(second)
    return dict(total)


@dataclass(frozen=True)
class RowStatistics:
    """Counts over a run of released rows that add up across partitions of disjoint users.

    ``first_rows`` holds the first row of each split (for the card's example record); merging
    keeps the earlier partition's, so partitions are merged in release row order.
    """

    rows: dict[str, int]
    users: dict[str, int]
    history_lengths: dict[str, dict[int, int]]
    rationale_words: dict[int, int]
    first_rows: dict[str, dict[str, Any]]

    @classmethod
    def of_splits(cls, splits: dict[str, pa.Table]) -> RowStatistics:
        """The statistics of release rows (``RELEASE_ROW`` tables by split)."""
        return cls(
            rows={split: table.num_rows for split, table in splits.items()},
            users={split: pc.count_distinct(table["user_id"]).as_py() for split, table in splits.items()},
            history_lengths={
                split: _value_counts(pc.list_value_length(splits[split]["history"])) for split in HISTORY_SPLITS if split in splits
            },
            rationale_words=word_counts(splits["train"]["rationale"]) if "train" in splits else {},
            first_rows={split: table.slice(0, 1).to_pylist()[0] for split, table in splits.items() if table.num_rows},
        )

    def merge(self, later: RowStatistics) -> RowStatistics:
        """These counts plus those of ``later``, a partition of other users that follows this one."""
        return RowStatistics(
            rows=_add(self.rows, later.rows),
            users=_add(self.users, later.users),
            history_lengths={
                split: _add(self.history_lengths.get(split, {}), later.history_lengths.get(split, {}))
                for split in {*self.history_lengths, *later.history_lengths}
            },
            rationale_words=_add(self.rationale_words, later.rationale_words),
            first_rows={**later.first_rows, **self.first_rows},
        )


def word_counts(texts: pa.Array | pa.ChunkedArray) -> dict[int, int]:
    """How many of the non-empty ``texts`` have each number of words (``len(text.split())``), in first-seen order.

    Plain Python on purpose: a regular expression in Arrow that splits exactly as ``str.split()``
    (every ``str.isspace()`` character) measured three times slower than this.
    """
    return dict(Counter(len(text.split()) for text in texts.to_pylist() if text))


def category_counts(items: pa.Table) -> dict[str, int]:
    """Catalog items per category (:func:`category_of`) of an ``items`` table, in first-seen order.

    Computed in Arrow, column-wise, with the rules of :func:`category_of`.
    """
    categories = items["categories"].combine_chunks() if items.num_rows else pa.array([], items.schema.field("categories").type)
    main = pc.if_else(pc.fill_null(pc.equal(items["main_category"], ""), True), UNCATEGORISED, items["main_category"])
    chosen = main.combine_chunks() if isinstance(main, pa.ChunkedArray) else main
    lengths = pc.fill_null(pc.list_value_length(categories), 0)
    for position, mask in ((0, pc.equal(lengths, 1)), (1, pc.greater_equal(lengths, 2))):
        if pc.any(mask).as_py():
            chosen = pc.replace_with_mask(chosen, mask, pc.list_element(categories.filter(mask), position))
    if not len(chosen):
        return {}
    counted = pc.value_counts(chosen)
    return dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()))


class ReleasedDomain(Protocol):
    """What the card statistics read of a released domain (``release.layout.DomainRelease``)."""

    config: str
    domain: str
    stages: dict[str, dict[str, Any]]
    train_without_rationale: int
    row_statistics: RowStatistics
    category_counts: dict[str, int]

    def row_counts(self) -> dict[str, int]: ...

    @property
    def catalog_items(self) -> int: ...


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


def domain_statistics(domain: ReleasedDomain) -> DomainStatistics:
    """Compute the card statistics of one released domain from its row statistics and run manifest."""
    rows = domain.row_statistics
    history_split = "test" if rows.rows.get("test") else "train"
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
        users={split: rows.users.get(split, 0) for split in domain.row_counts()},
        catalog_items=domain.catalog_items,
        history_length=Distribution.of_counts(rows.history_lengths.get(history_split, {})),
        rationale_words=Distribution.of_counts(rows.rationale_words),
        items_per_category=sorted(domain.category_counts.items(), key=lambda kv: (-kv[1], kv[0])),
        filter_reasons=dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        annotated=annotated,
        filter_passed=passed,
        filter_rate=rate,
        train_without_rationale=domain.train_without_rationale,
        annotation=_annotation_extras(domain.stages.get("annotate")),
        judge=_judge_extras(domain.stages.get("judge")),
        source=source,
    )
