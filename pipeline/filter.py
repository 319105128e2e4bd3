"""Stage ``filter``: the self-filter that keeps only coherent, grounded, clean rationales.

Every annotation row ends in exactly one of ``filtered`` (kept) or ``filter_rejects`` (with the
first reason that applies, in this order):

``unparsable_output``   the model did not answer with the requested JSON (``coherent`` is null)
``refusal``             the answer is a refusal ("I'm sorry, I can't ...")
``annotator_incoherent`` the annotator itself flagged the pairing as incoherent
``empty_rationale``     nothing but whitespace
``too_short`` / ``too_long``  fewer than ``min_words`` / more than ``max_words`` words
``contains_email`` / ``contains_url`` / ``contains_phone``  personal data or links (rationale
                        or user preferences)
``leaks_target_asin``   the target's ASIN appears in the text
``not_english``         mostly non-Latin letters, or too few English function words
``unknown_product``     a quoted product name that is neither a history item nor the target
``not_grounded``        names no history item and no history attribute (store, category)
``unknown_example``     no sequences row has this key (the sequences changed since annotation)

Counts per reason go to the manifest (``rejects_by_reason``) for the data card.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import typer
from distributed import Client
from pydantic import Field

from core.cli_common import ConfigOpt, ForceOpt, RunOpt, SchedulerOpt, WorkersOpt, user_errors
from core.config import StageSettings
from core.progress import gather_with_progress
from core.protocol import Stage, StageContext
from core.schemas import ANNOTATIONS, FILTER_REJECTS, FILTERED
from core.stage import RunDir
from core.tables import dataset, part_name, parts, read_table, write_part
from pipeline.annotators.context import CONTEXT_COLUMNS, contexts_from_rows, read_item_facts
from pipeline.stage_command import run_stage_command
from pipeline.teacher_prompt import ExampleContext

log = logging.getLogger(__name__)

STAGE = "filter"
REASONS = (
    "unparsable_output",
    "refusal",
    "annotator_incoherent",
    "empty_rationale",
    "too_short",
    "too_long",
    "contains_email",
    "contains_url",
    "contains_phone",
    "leaks_target_asin",
    "not_english",
    "unknown_product",
    "not_grounded",
    "unknown_example",
)

REFUSAL = re.compile(
    r"\b(?:i'?m sorry|i am sorry|i apologi[sz]e|i (?:can(?:no|')t|am unable to|'m unable to|won'?t) "
    r"(?:help|assist|provide|comply|do that|fulfil)|as an ai\b|i must decline)",
    re.IGNORECASE,
)
URL = re.compile(r"(?:https?://|www\.)\S+|\b[a-z0-9-]+\.(?:com|net|org|io|co|us|uk|de|info|biz)\b(?:/\S*)?", re.IGNORECASE)
EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
PHONE = re.compile(r"(?<![\w$.])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?![\w.])")
QUOTED = re.compile(r"[\"“”]([^\"“”]{3,200})[\"“”]")
LETTERS = re.compile(r"[^\W\d_]+")
NORMALISE = re.compile(r"[^a-z0-9]+")
ENGLISH_FUNCTION_WORDS = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "but",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "from",
        "by",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "they",
        "them",
        "their",
        "he",
        "she",
        "his",
        "her",
        "so",
        "both",
        "also",
        "than",
        "more",
        "most",
        "same",
        "which",
        "who",
        "has",
        "have",
        "had",
        "not",
        "no",
        "can",
        "will",
        "would",
        "should",
        "could",
        "into",
        "like",
        "because",
        "since",
        "while",
        "then",
        "there",
        "here",
        "all",
        "any",
        "each",
        "other",
        "such",
        "only",
        "very",
        "just",
        "same",
        "before",
        "after",
    ]
)


class FilterSettings(StageSettings):
    """Settings of ``rrec filter`` (config section ``filter``)."""

    min_words: int = Field(12, ge=1)
    max_words: int = Field(400, ge=1)
    min_function_word_ratio: float = Field(0.12, ge=0, le=1)
    max_non_ascii_letter_ratio: float = Field(0.3, ge=0, le=1)
    min_product_overlap: float = Field(0.6, gt=0, le=1)


def _normalise(text: str) -> str:
    return NORMALISE.sub(" ", text.lower()).strip()


def _tokens(text: str) -> list[str]:
    return _normalise(text).split()


def matches_title(mention: str, titles: list[str], min_overlap: float) -> bool:
    """Whether a quoted mention names one of ``titles`` (prefix, substring or word overlap)."""
    mention_norm = _normalise(mention)
    if not mention_norm:
        return True
    mention_tokens = set(mention_norm.split())
    for title in titles:
        title_norm = _normalise(title)
        if not title_norm:
            continue
        if mention_norm in title_norm or (len(title_norm) >= 8 and title_norm in mention_norm):
            return True
        if len(mention_tokens & set(title_norm.split())) >= min_overlap * len(mention_tokens):
            return True
    return False


def is_english(text: str, settings: FilterSettings) -> bool:
    """Latin script and enough English function words outside quoted titles."""
    prose = QUOTED.sub(" ", text)
    letters = "".join(LETTERS.findall(prose))
    if letters and sum(not ch.isascii() for ch in letters) / len(letters) > settings.max_non_ascii_letter_ratio:
        return False
    words = _tokens(prose)
    if len(words) < 8:
        return True  # too little prose to judge; length rules handle very short texts
    return sum(w in ENGLISH_FUNCTION_WORDS for w in words) / len(words) >= settings.min_function_word_ratio


def is_grounded(rationale: str, context: ExampleContext, settings: FilterSettings) -> bool:
    """Names a history item (quoted or by its first words) or a history store/category."""
    history_titles = [item.title for item in context.history if item.title]
    if any(matches_title(m, history_titles, settings.min_product_overlap) for m in QUOTED.findall(rationale)):
        return True
    text = f" {_normalise(rationale)} "
    for item in context.history:
        lead = " ".join(_tokens(item.title)[:4])
        if len(lead) >= 8 and f" {lead} " in text:
            return True
        attributes = [item.store or "", *item.categories[1:]]
        if any(len(a) >= 3 and f" {_normalise(a)} " in text for a in attributes):
            return True
    return False


def reject_reason(row: dict[str, Any], context: ExampleContext | None, settings: FilterSettings) -> str | None:
    """The first rule an annotation row breaks (see the module docstring), or None to keep it."""
    rationale = row.get("rationale") or ""
    if row.get("coherent") is None:
        return "refusal" if REFUSAL.search(rationale) else "unparsable_output"
    if REFUSAL.search(rationale):
        return "refusal"
    if row["coherent"] is False:
        return "annotator_incoherent"
    if not rationale.strip():
        return "empty_rationale"
    words = len(rationale.split())
    if words < settings.min_words:
        return "too_short"
    if words > settings.max_words:
        return "too_long"
    released_text = f"{rationale}\n{row.get('user_preferences') or ''}"
    # E-mail before URL: the domain of an address would also match the URL rule.
    if EMAIL.search(released_text):
        return "contains_email"
    if URL.search(released_text):
        return "contains_url"
    if PHONE.search(released_text):
        return "contains_phone"
    if row["target_parent_asin"] and row["target_parent_asin"].lower() in rationale.lower():
        return "leaks_target_asin"
    if not is_english(rationale, settings):
        return "not_english"
    if context is None:
        return "unknown_example"
    known_titles = [item.title for item in context.history] + [context.target.title]
    if any(not matches_title(m, known_titles, settings.min_product_overlap) for m in QUOTED.findall(rationale)):
        return "unknown_product"
    if not is_grounded(rationale, context, settings):
        return "not_grounded"
    return None


def filter_rows(
    rows: list[dict[str, Any]], contexts: dict[tuple[str, str, str], ExampleContext], settings: FilterSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split annotation rows into kept rows and rejected rows (with ``reason``)."""
    kept, rejected = [], []
    for row in rows:
        key = (row["user_id"], row["split"], row["target_parent_asin"])
        reason = reject_reason(row, contexts.get(key), settings)
        if reason is None:
            kept.append(row)
        else:
            rejected.append({**row, "reason": reason})
    return kept, rejected


def _contexts_for(run_path: Path, annotations: pa.Table) -> dict[tuple[str, str, str], ExampleContext]:
    users = sorted(set(annotations.column("user_id").to_pylist()))
    sequences = dataset(run_path / "sequences", "sequences").to_table(columns=CONTEXT_COLUMNS, filter=pc.field("user_id").isin(users))
    wanted = set(zip(*(annotations.column(c).to_pylist() for c in ("user_id", "split", "target_parent_asin")), strict=True))
    rows = [r for r in sequences.to_pylist() if (r["user_id"], r["split"], r["target"]["parent_asin"]) in wanted]
    asins = [item["parent_asin"] for row in rows for item in row["history"] or []]
    catalog = read_item_facts(run_path, asins)
    return {context.key: context for context in contexts_from_rows(rows, catalog, {})}


def filter_partition(run_path: str, annotations_file: str, settings: FilterSettings) -> tuple[pa.Table, pa.Table]:
    """Filter one annotations part file: (kept rows, rejected rows)."""
    annotations = pads.dataset(annotations_file, format="parquet", schema=ANNOTATIONS).to_table()
    contexts = _contexts_for(Path(run_path), annotations) if annotations.num_rows else {}
    kept, rejected = filter_rows(annotations.to_pylist(), contexts, settings)
    return pa.Table.from_pylist(kept, schema=FILTERED), pa.Table.from_pylist(rejected, schema=FILTER_REJECTS)


class FilterStage(Stage[FilterSettings]):
    """Self-filter the run's annotations into ``filtered`` and ``filter_rejects``."""

    name = STAGE
    upstream = ("sequences", "annotate")
    settings_type = FilterSettings
    resumable = True

    def run(self, ctx: StageContext[FilterSettings]) -> None:
        files = parts(ctx.run.table("annotations"))
        kept_dir, rejects_dir = ctx.out.table_dir("filtered"), ctx.out.table_dir("filter_rejects")
        done = ctx.out.done_parts("filtered") & ctx.out.done_parts("filter_rejects")
        todo = [(index, f) for index, f in enumerate(files) if part_name(index) not in done]
        futures = [
            ctx.client.submit(
                filter_partition_to_parts, str(ctx.run.path), str(f), str(kept_dir), str(rejects_dir), index, ctx.settings, pure=False
            )
            for index, f in todo
        ]
        gather_with_progress(futures, "filtering rationales")
        reasons: Counter[str] = Counter(read_table(rejects_dir, "filter_rejects", columns=["reason"]).column("reason").to_pylist())
        kept_rows = pads.dataset(str(kept_dir), format="parquet").count_rows()
        rows_in = kept_rows + sum(reasons.values())
        ctx.out.record(
            rows_in=rows_in,
            rows_out={"filtered": kept_rows, "filter_rejects": rows_in - kept_rows},
            rejects_by_reason=dict(reasons),
            keep_rate=round(kept_rows / rows_in, 4) if rows_in else None,
            resumed_parts=len(files) - len(todo),
        )
        log.info("filter: kept %d of %d rationale(s); rejects by reason: %s", kept_rows, rows_in, dict(reasons))


def filter_partition_to_parts(
    run_path: str, annotations_file: str, kept_dir: str, rejects_dir: str, index: int, settings: FilterSettings
) -> None:
    """Filter one annotations part file into part ``index`` of both output tables."""
    kept, rejected = filter_partition(run_path, annotations_file, settings)
    # The kept part last: a partition counts as done only when both parts exist.
    write_part(rejected, Path(rejects_dir), index, FILTER_REJECTS)
    write_part(kept, Path(kept_dir), index, FILTERED)


FILTER = FilterStage()


def run_filter(run: Path | str | RunDir, settings: FilterSettings, client: Client, force: bool = False) -> dict[str, Any]:
    """Self-filter the run's annotations (see :class:`FilterStage`); returns the manifest entry."""
    return FILTER.execute(run, settings, client, force=force).entry


def register(app: typer.Typer) -> None:
    """Add ``rrec filter`` to the CLI."""

    @app.command("filter")
    @user_errors
    def filter_command(
        run: RunOpt,
        config: ConfigOpt = None,
        workers: WorkersOpt = None,
        scheduler: SchedulerOpt = None,
        force: ForceOpt = False,
    ) -> None:
        """Self-filter the annotations: keep coherent, grounded, clean rationales: rrec filter --run DIR.

        Every annotation ends in `filtered` or in `filter_rejects` with a named reason; the
        counts per reason go to manifest.json. Thresholds live in the config section `filter`.
        """
        run_stage_command(FILTER, run, config, force, workers=workers, scheduler=scheduler)
