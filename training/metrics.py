"""Ranking and generation metrics over a row's candidate set, and the results table.

Ranking (leave-one-out, one relevant item per row): every method gives one score per candidate;
the target's rank is the number of candidates that beat it. Ties are broken by candidate
position in the row: a candidate tied with the target counts as ahead of it only if it comes
earlier in the row's ``candidates`` list. The release shuffles candidates with a seed, so this
rule is deterministic and, in expectation, neither optimistic nor pessimistic: a scorer that
gives every candidate the same score behaves exactly like a random ranking, instead of scoring
perfectly (optimistic ties) or never hitting (pessimistic ties).

Generation: a generated title is mapped to a candidate by exact match, then by normalised title
(:func:`normalise_title`). Each output falls in exactly one of three classes: *valid* (its item
block names a real product: a candidate or a catalog item), *hallucinated* (its item block names
no real product) or *missing* (no item block, or an empty one). Generative HR@1 counts outputs that name the
target. When several candidates share the target's title, naming that title counts as naming
the target: a text model cannot tell them apart.

Results are written as JSON (method -> metrics as fractions, DESIGN.md "Command-line contract")
plus a Markdown table laid out like the paper's Table 1 (percentages).
"""

from __future__ import annotations

import json
import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RANKING_KS = (1, 5)
NDCG_K = 5
TABLE_COLUMNS = ("HR@1", "HR@5", "NDCG@5")
# Table labels of the baselines (the JSON keys are the method names of ``rrec baselines``).
METHOD_LABELS = {"random": "Random", "popularity": "Popularity", "sasrec": "SASRec", "shown": "Shown in prompt (chance check)"}

_PUNCTUATION = re.compile(r"[^\w\s]", re.UNICODE)
_SPACES = re.compile(r"\s+")


def target_rank(scores: Sequence[float], target_index: int) -> int:
    """0-based rank of the target among the candidates (0 = ranked first).

    Higher scores rank first; a tie with the target is broken by candidate position (see the
    module docstring). NaN scores are treated as the lowest possible score.
    """
    if not 0 <= target_index < len(scores):
        raise ValueError(f"target_index {target_index} is outside the {len(scores)} candidates")
    target = _finite(scores[target_index])
    rank = 0
    for position, score in enumerate(scores):
        if position == target_index:
            continue
        value = _finite(score)
        if value > target or (value == target and position < target_index):
            rank += 1
    return rank


def _finite(score: float) -> float:
    return -math.inf if math.isnan(score) else float(score)


def hit_at(rank: int, k: int) -> float:
    """1.0 when the target is within the top ``k``, else 0.0."""
    return 1.0 if rank < k else 0.0


def ndcg_at(rank: int, k: int) -> float:
    """NDCG@k with one relevant item: ``1 / log2(rank + 2)`` inside the top ``k``, else 0."""
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0


def ranking_metrics(ranks: Sequence[int]) -> dict[str, float | int]:
    """HR@1, HR@5, NDCG@5 (fractions, means over rows) and ``n`` from 0-based target ranks."""
    n = len(ranks)
    if n == 0:
        raise ValueError("no rows were ranked: the split is empty (or --limit is 0)")
    metrics: dict[str, float | int] = {f"HR@{k}": sum(hit_at(r, k) for r in ranks) / n for k in RANKING_KS}
    metrics[f"NDCG@{NDCG_K}"] = sum(ndcg_at(r, NDCG_K) for r in ranks) / n
    metrics["n"] = n
    return metrics


def candidates_per_row(rows: Iterable[Mapping[str, Any]]) -> int | float:
    """The number of candidates ranked per row, recorded with every method's metrics (key ``candidates``).

    A release gives every row the same count (the target plus ``num_negatives``); when rows
    differ (a catalog too small for the negatives asked for) the mean is recorded, rounded to
    two decimals, and a warning says so.
    """
    counts = [len(row["candidates"]) for row in rows]
    if not counts:
        raise ValueError("no rows were ranked: the split is empty (or --limit is 0)")
    if len(set(counts)) == 1:
        return counts[0]
    log.warning("rows rank between %d and %d candidates; recording the mean", min(counts), max(counts))
    return round(sum(counts) / len(counts), 2)


def normalise_title(title: str) -> str:
    """Title key for loose matching: Unicode NFKC, case-folded, punctuation dropped, spaces collapsed."""
    text = unicodedata.normalize("NFKC", title).casefold()
    text = _PUNCTUATION.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def matching_candidates(generated: str, candidate_titles: Sequence[str]) -> list[int]:
    """Positions of the candidates a generated title names: exact matches, else normalised ones."""
    if not generated.strip():
        return []
    exact = [i for i, title in enumerate(candidate_titles) if title == generated]
    if exact:
        return exact
    key = normalise_title(generated)
    if not key:
        return []
    return [i for i, title in enumerate(candidate_titles) if normalise_title(title) == key]


@dataclass(frozen=True)
class GenerationOutcome:
    """What one greedy generation amounted to, for the generative metrics."""

    well_formed: bool
    has_item: bool
    in_candidates: bool
    real_item: bool
    hit: bool
    matched_index: int | None

    @property
    def hallucinated(self) -> bool:
        return self.has_item and not self.real_item


def judge_generation(
    item: str | None,
    well_formed: bool,
    candidate_titles: Sequence[str],
    target_index: int,
    catalog_keys: frozenset[str] | None = None,
) -> GenerationOutcome:
    """Classify a generated item title against the row's candidates and the catalog.

    ``catalog_keys`` holds :func:`normalise_title` of every catalog title; without it only the
    candidates count as real products.
    """
    if item is None or not item.strip():
        return GenerationOutcome(well_formed, False, False, False, False, None)
    matched = matching_candidates(item, candidate_titles)
    in_candidates = bool(matched)
    real = in_candidates or (catalog_keys is not None and normalise_title(item) in catalog_keys)
    return GenerationOutcome(
        well_formed=well_formed,
        has_item=True,
        in_candidates=in_candidates,
        real_item=real,
        hit=target_index in matched,
        matched_index=matched[0] if matched else None,
    )


def generation_metrics(outcomes: Sequence[GenerationOutcome]) -> dict[str, float]:
    """Generative HR@1, valid / hallucination / well-formed / in-candidates rates (fractions)."""
    n = len(outcomes)
    if n == 0:
        raise ValueError("no generations to score: the split is empty (or --limit is 0)")
    return {
        "gen_HR@1": sum(o.hit for o in outcomes) / n,
        "valid_rate": sum(o.real_item for o in outcomes) / n,
        "hallucination_rate": sum(o.hallucinated for o in outcomes) / n,
        "well_formed_rate": sum(o.well_formed for o in outcomes) / n,
        "in_candidates_rate": sum(o.in_candidates for o in outcomes) / n,
    }


def markdown_table(results: Mapping[str, Mapping[str, Mapping[str, float | int]]]) -> str:
    """The paper's Table 1 layout: one row per method, HR@1 / HR@5 / NDCG@5 in % per domain.

    ``results`` maps domain (dataset config) -> method -> metrics as fractions. Methods appear
    in first-seen order; a method missing for a domain shows a dash.
    """
    domains = list(results)
    methods: list[str] = []
    for per_method in results.values():
        methods.extend(m for m in per_method if m not in methods)
    header = ["Method"] + [f"{domain} {column}" for domain in domains for column in TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for method in methods:
        cells = [METHOD_LABELS.get(method, method)]
        for domain in domains:
            metrics = results[domain].get(method)
            cells.extend(f"{100 * metrics[c]:.2f}" if metrics and c in metrics else "-" for c in TABLE_COLUMNS)
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(f"{d}: n = {_row_count(results[d], 'n')}" for d in domains)
    candidates = ", ".join(f"{d}: {_row_count(results[d], 'candidates')}" for d in domains)
    return "\n".join(lines) + f"\n\nValues in %; {counts} test rows; candidates ranked per row: {candidates}.\n"


def _row_count(per_method: Mapping[str, Mapping[str, float | int]], key: str) -> str:
    counts = sorted({m[key] for m in per_method.values() if key in m})
    return "/".join(str(c) for c in counts) or "?"


def write_results(output: Path, domain: str, new_results: Mapping[str, Mapping[str, float | int]]) -> tuple[Path, Path]:
    """Add methods' metrics to ``output`` (JSON) and rewrite the Markdown table beside it.

    Methods already in an existing ``output`` are kept unless re-evaluated, so ``rrec
    baselines`` and ``rrec evaluate`` runs accumulate into one table. Methods that ranked a
    different number of candidates per row (key ``candidates``) are refused: one table compares
    methods on the same candidate sets. Returns (json, markdown).
    """
    output = Path(output)
    merged: dict[str, dict[str, float | int]] = {}
    if output.exists():
        try:
            merged = json.loads(output.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{output} exists but is not a results JSON file ({exc}); choose another --output") from None
        if not isinstance(merged, dict):
            raise ValueError(f"{output} exists but does not map methods to metrics; choose another --output")
        log.info("adding %s to the results already in %s", ", ".join(new_results), output)
    merged.update({method: dict(metrics) for method, metrics in new_results.items()})
    ranked = {method: metrics["candidates"] for method, metrics in merged.items() if "candidates" in metrics}
    if len(set(ranked.values())) > 1:
        raise ValueError(
            f"{output} would mix methods ranking different candidate sets per row ({ranked}); one table compares methods "
            "on the same candidates: choose another --output"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(merged, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    table_path = output.with_suffix(".md")
    table_path.write_text(f"## {domain}\n\n" + markdown_table({domain: merged}), encoding="utf-8")
    return output, table_path


def iter_titles(candidates: Iterable[Mapping[str, str | None]]) -> list[str]:
    """Candidate titles of a row; a missing title becomes the empty string (it can never match)."""
    return [c.get("title") or "" for c in candidates]
