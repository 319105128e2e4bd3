"""Stage ``filter``: the self-filter that keeps only coherent, grounded, clean rationales.

Every annotation row ends in exactly one of ``filtered`` (kept) or ``filter_rejects`` (with the
first reason that applies, in this order):

``too_many_characters`` ... ``prompt_injection``  hostile text in the rationale or the user
                        preferences (:mod:`pipeline.text_rules`: length in characters, overlong
                        words, control or invisible characters, event handlers, scripts, markup,
                        phrases aimed at a model)
``unparsable_output``   the model did not answer with the requested JSON (``coherent`` is null)
``refusal``             the answer is a refusal ("I'm sorry, I can't ...")
``annotator_incoherent`` the annotator itself flagged the pairing as incoherent
``empty_rationale``     nothing but whitespace
``too_short`` / ``too_long``  fewer than ``min_words`` / more than ``max_words`` words
``contains_email`` / ``contains_url`` / ``contains_phone``  personal data or links (rationale
                        or user preferences)
``leaks_target_asin``   the target's ASIN appears in the text
``not_english``         mostly non-Latin letters, or too few English function words
``unknown_example``     no sequences row has this key (the sequences changed since annotation)
``unknown_product``     a quoted product name that is neither a history item nor the target
``not_grounded``        names no history item and no history attribute (store, category)
``target_first``        names the target before any history item or attribute (the reasoning
                        should run from the history to the item)

Counts per reason go to the manifest (``rejects_by_reason``) for the data card, with
``target_first_share`` (target-first rejects over rows in).

:func:`reject_reason` is the per-row reference. A partition is filtered by
:func:`reject_reasons`: the same rules in the same order, with the regex families and the word
rules screened for the whole column at once (RE2 in pyarrow; one pass over their union clears
most rows) so a row runs only the rules that can fire (:func:`text_reasons`), the contexts
loaded once per partition by the shared loader for the rows those rules keep, and the grounding
rules scoring each distinct quoted mention once on cached title facts, normalising the text only
as far as they need (:func:`context_reasons`); tests pin it to the reference.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass
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
from core.tables import part_name, parts, read_table, write_part
from pipeline.annotators.context import KEY_COLUMNS, paused_gc
from pipeline.annotators.grounding_contexts import load_grounding_contexts_for_keys
from pipeline.annotators.worker_caches import worker_caches_dropped
from pipeline.cluster import consecutive_chunks, worker_count
from pipeline.stage_command import run_stage_command
from pipeline.teacher_prompt import ExampleContext
from pipeline.text_rules.grounding import EMAIL, PHONE, QUOTED, REFUSAL, URL, is_english, is_grounded, matches_title, names_target_first
from pipeline.text_rules.hostile import (
    HOSTILE_REASONS,
    MAX_CHARS,
    MAX_WORD_CHARS,
    MAY_BE_HOSTILE_RE2,
    MAY_HOLD_EMAIL_RE2,
    MAY_HOLD_PHONE_RE2,
    MAY_HOLD_URL_RE2,
    MAY_REFUSE_RE2,
    has_words_re2,
    hostile_text_reason,
    may_hold_long_word_re2,
)
from pipeline.text_rules.partition import GroundingMemo, grounding_reason

__all__ = ["QUOTED", "REASONS", "FilterSettings", "matches_title", "reject_reason", "reject_reasons", "run_filter"]

log = logging.getLogger(__name__)

STAGE = "filter"
REASONS = (
    *HOSTILE_REASONS,
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
    "unknown_example",
    "unknown_product",
    "not_grounded",
    "target_first",
)


class FilterSettings(StageSettings):
    """Settings of ``rrec filter`` (config section ``filter``)."""

    min_words: int = Field(12, ge=1)
    max_words: int = Field(400, ge=1)
    max_chars: int = Field(MAX_CHARS, ge=1, description="Longest rationale or user preferences, in characters.")
    max_word_chars: int = Field(MAX_WORD_CHARS, ge=1, description="Longest run of characters without whitespace.")
    min_function_word_ratio: float = Field(0.12, ge=0, le=1)
    max_non_ascii_letter_ratio: float = Field(0.3, ge=0, le=1)
    min_product_overlap: float = Field(0.6, gt=0, le=1)


@dataclass(frozen=True)
class Screen:
    """Which rule families may fire on a row (all of them unless a pre-screen proved otherwise):
    the regex families, ``overlong_word``, and ``too_short`` / ``too_long`` (``word_count``)."""

    hostile: bool = True
    refusal: bool = True
    email: bool = True
    url: bool = True
    phone: bool = True
    long_word: bool = True
    word_count: bool = True


FULL_SCREEN = Screen()


def reject_reason(
    row: dict[str, Any], context: ExampleContext | None, settings: FilterSettings, screen: Screen = FULL_SCREEN
) -> str | None:
    """The first rule an annotation row breaks (see the module docstring), or None to keep it.

    ``screen`` lets :func:`reject_reasons` skip regex families its column-wide pre-screen
    ruled out; the default runs every rule (the reference).
    """
    rationale = row.get("rationale") or ""
    reason = _text_reason(rationale, row.get("user_preferences"), row.get("coherent"), row.get("target_parent_asin"), settings, screen)
    return reason if reason is not None else _context_reason(rationale, context, settings)


def _text_reason(
    rationale: str, preferences: str | None, coherent: bool | None, target_asin: str | None, settings: FilterSettings, screen: Screen
) -> str | None:
    """The first rule up to ``not_english`` that a row breaks (the rules that need no context)."""
    for text in (rationale, preferences):
        hostile = hostile_text_reason(
            text,
            max_chars=settings.max_chars,
            max_word_chars=settings.max_word_chars,
            patterns=screen.hostile,
            word_lengths=screen.long_word,
        )
        if hostile is not None:
            return hostile
    refusal = screen.refusal and REFUSAL.search(rationale) is not None
    if coherent is None:
        return "refusal" if refusal else "unparsable_output"
    if refusal:
        return "refusal"
    if coherent is False:
        return "annotator_incoherent"
    if not rationale or rationale.isspace():  # (not rationale.strip(), without copying it)
        return "empty_rationale"
    if screen.word_count:
        words = len(rationale.split())
        if words < settings.min_words:
            return "too_short"
        if words > settings.max_words:
            return "too_long"
    if screen.email or screen.url or screen.phone:
        released_text = f"{rationale}\n{preferences or ''}"
        # E-mail before URL: the domain of an address would also match the URL rule.
        if screen.email and EMAIL.search(released_text):
            return "contains_email"
        if screen.url and URL.search(released_text):
            return "contains_url"
        if screen.phone and PHONE.search(released_text):
            return "contains_phone"
    if target_asin and target_asin.lower() in rationale.lower():
        return "leaks_target_asin"
    if not is_english(rationale, settings.min_function_word_ratio, settings.max_non_ascii_letter_ratio):
        return "not_english"
    return None


def _context_reason(rationale: str, context: ExampleContext | None, settings: FilterSettings) -> str | None:
    if context is None:
        return "unknown_example"
    overlap = settings.min_product_overlap
    known_titles = [item.title for item in context.history] + [context.target.title]
    if any(not matches_title(m, known_titles, overlap) for m in QUOTED.findall(rationale)):
        return "unknown_product"
    if not is_grounded(rationale, context, overlap):
        return "not_grounded"
    if names_target_first(rationale, context, overlap):
        return "target_first"
    return None


def _may_match(text: pa.ChunkedArray, pattern: str) -> pa.ChunkedArray:
    """Per row: whether ``pattern`` (RE2) matches ``text`` (no nulls), or the text is not ASCII."""
    return pc.or_(pc.invert(pc.string_is_ascii(text)), pc.match_substring_regex(text, pattern))


def _families(long_word: str | None) -> list[tuple[str | None, bool]]:
    """The pre-screen of each flag of :class:`Screen` but ``word_count``, in its order, and whether
    it also reads the user preferences (``refusal`` reads only the rationale). None: no screen."""
    return [
        (MAY_BE_HOSTILE_RE2, True),
        (MAY_REFUSE_RE2, False),
        (MAY_HOLD_EMAIL_RE2, True),
        (MAY_HOLD_URL_RE2, True),
        (MAY_HOLD_PHONE_RE2, True),
        (long_word, True),
    ]


def _family_flags(rationale: pa.ChunkedArray, preferences: pa.ChunkedArray, long_word: str | None) -> list[tuple[bool, ...]]:
    """Per row: the flags of :func:`_families`, one RE2 pass per family and text."""
    flags = []
    for pattern, reads_preferences in _families(long_word):
        if pattern is None:
            flags.append([True] * len(rationale))
            continue
        hits = _may_match(rationale, pattern)
        if reads_preferences:
            hits = pc.or_(hits, _may_match(preferences, pattern))
        flags.append(hits.to_pylist())
    return list(zip(*flags, strict=True))


def _union(patterns: list[str]) -> str:
    """An RE2 pattern that matches where any of ``patterns`` does (each keeps its own flags)."""
    return "|".join(f"(?:{pattern})" for pattern in patterns)


@functools.cache
def _screen(flags: tuple[bool, ...]) -> Screen:
    """One shared (frozen) screen per combination of flags: a partition needs a handful."""
    return FULL_SCREEN if all(flags) else Screen(*flags)


def _may_break_word_count(rationale: pa.ChunkedArray, min_words: int, max_words: int) -> list[bool]:
    """Per row: whether ``too_short`` or ``too_long`` may fire, unless RE2 proved an ASCII
    rationale (no nulls) to hold at least ``min_words`` and at most ``max_words`` words.

    Only a text of more than ``2 * max_words`` characters can hold more (each word after the
    first needs a separator): only those are read for it.
    """
    at_least, too_many = has_words_re2(min_words), has_words_re2(max_words + 1)
    if at_least is None or too_many is None:
        return [True] * len(rationale)
    proved = pc.and_(pc.string_is_ascii(rationale), pc.match_substring_regex(rationale, at_least)).to_pylist()
    long_rows = pc.indices_nonzero(pc.greater(pc.utf8_length(rationale), 2 * max_words))
    if len(long_rows):  # (the pattern of max_words repetitions is costly to compile)
        more = pc.match_substring_regex(rationale.take(long_rows), too_many).to_pylist()
        for row, too_long in zip(long_rows.to_pylist(), more, strict=True):
            if too_long:
                proved[row] = False
    return [not known for known in proved]


def screens(annotations: pa.Table, settings: FilterSettings | None = None) -> list[Screen]:
    """The pre-screen of every row: which rule families can fire on it.

    One RE2 pass per text over the union of the families clears most rows at once; the rows it
    does not clear (every row with a non-ASCII text among them) are screened family by family.
    """
    settings = settings or FilterSettings()
    rationale, preferences = (pc.fill_null(annotations.column(name), "") for name in ("rationale", "user_preferences"))
    long_word = may_hold_long_word_re2(settings.max_word_chars)
    families = [(pattern, reads_preferences) for pattern, reads_preferences in _families(long_word) if pattern is not None]
    suspects = pc.indices_nonzero(
        pc.or_(
            _may_match(rationale, _union([pattern for pattern, _ in families])),
            _may_match(preferences, _union([pattern for pattern, reads_preferences in families if reads_preferences])),
        )
    )
    cleared = tuple(pattern is None for pattern, _ in _families(long_word))  # what a row the union misses may still break
    flags = [cleared] * annotations.num_rows
    for row, row_flags in zip(
        suspects.to_pylist(), _family_flags(rationale.take(suspects), preferences.take(suspects), long_word), strict=True
    ):
        flags[row] = row_flags
    word_count = _may_break_word_count(rationale, settings.min_words, settings.max_words)
    return [_screen((*row_flags, may_break)) for row_flags, may_break in zip(flags, word_count, strict=True)]


def reject_reasons(
    annotations: pa.Table, contexts: dict[tuple[str, str, str], ExampleContext], settings: FilterSettings
) -> list[str | None]:
    """The reject reason of every row of an annotations table (None: kept), equal to :func:`reject_reason`.

    The grounding rules score each distinct quoted mention once, on title and attribute facts
    memoised for the partition (:func:`grounding_reason`).
    """
    return context_reasons(annotations, text_reasons(annotations, settings), contexts, settings)


def text_reasons(annotations: pa.Table, settings: FilterSettings) -> list[str | None]:
    """Per row: the first rule up to ``not_english`` it breaks (those need no context), or None."""
    columns = [annotations.column(name).to_pylist() for name in ("rationale", "user_preferences", "coherent", "target_parent_asin")]
    return [
        _text_reason(rationale or "", preferences, coherent, target_asin, settings, screen)
        for rationale, preferences, coherent, target_asin, screen in zip(*columns, screens(annotations, settings), strict=True)
    ]


def context_reasons(
    annotations: pa.Table, reasons: list[str | None], contexts: dict[tuple[str, str, str], ExampleContext], settings: FilterSettings
) -> list[str | None]:
    """``reasons`` (from :func:`text_reasons`) completed by the context rules for the rows they kept."""
    todo = [number for number, reason in enumerate(reasons) if reason is None]
    if not todo:
        return reasons
    rows = annotations.select(["rationale", *KEY_COLUMNS]).take(pa.array(todo, type=pa.int64()))
    columns = [rows.column(name).to_pylist() for name in rows.column_names]
    memo = GroundingMemo()
    reasons = list(reasons)
    for number, rationale, user_id, split, target_asin in zip(todo, *columns, strict=True):
        context = contexts.get((user_id, split, target_asin))
        if context is None:
            reasons[number] = "unknown_example"
        else:
            reasons[number] = grounding_reason(rationale or "", context, memo, settings.min_product_overlap)
    return reasons


def filter_partition(run_path: str, annotations_file: str, settings: FilterSettings) -> tuple[pa.Table, pa.Table]:
    """Filter one annotations part file: (kept rows, rejected rows), both in input order.

    The contexts are loaded only for the rows that pass the text rules (the others never read one).
    """
    annotations = pads.dataset(annotations_file, format="parquet", schema=ANNOTATIONS).to_table()
    with paused_gc(freeze=True):  # many small acyclic objects: collection passes free nothing
        reasons = text_reasons(annotations, settings)
        todo = [number for number, reason in enumerate(reasons) if reason is None]
        keys = annotations.select(KEY_COLUMNS).take(pa.array(todo, type=pa.int64()))
        contexts = load_grounding_contexts_for_keys(Path(run_path), keys) if todo else {}
        reasons_array = pa.array(context_reasons(annotations, reasons, contexts, settings), type=pa.string())
    kept_mask = pc.is_null(reasons_array)
    kept = annotations.filter(kept_mask).cast(FILTERED)
    rejected = annotations.append_column("reason", reasons_array).filter(pc.invert(kept_mask))
    return kept, _bounded(rejected, settings).cast(FILTER_REJECTS)


def _bounded(rejected: pa.Table, settings: FilterSettings) -> pa.Table:
    """Rejected rows with their texts cut to ``max_chars`` characters (a 10 MB answer is not kept whole)."""
    for name in ("rationale", "user_preferences"):
        index = rejected.schema.get_field_index(name)
        rejected = rejected.set_column(index, name, pc.utf8_slice_codeunits(rejected.column(name), 0, settings.max_chars))
    return rejected


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
        # Consecutive annotation parts come from the same sequences part file: a run of them
        # on one worker reads that file once (see consecutive_chunks).
        with worker_caches_dropped(ctx.client):
            futures = [
                ctx.client.submit(
                    filter_parts_to_parts, str(ctx.run.path), chunk, str(kept_dir), str(rejects_dir), ctx.settings, pure=False
                )
                for chunk in consecutive_chunks([(index, str(f)) for index, f in todo], worker_count(ctx.client))
            ]
            gather_with_progress(futures, f"filtering rationales ({len(todo)} partitions)")
        reasons: Counter[str] = Counter(read_table(rejects_dir, "filter_rejects", columns=["reason"]).column("reason").to_pylist())
        kept_rows = pads.dataset(str(kept_dir), format="parquet").count_rows()
        rows_in = kept_rows + sum(reasons.values())
        ctx.out.record(
            rows_in=rows_in,
            rows_out={"filtered": kept_rows, "filter_rejects": rows_in - kept_rows},
            rejects_by_reason=dict(reasons),
            keep_rate=round(kept_rows / rows_in, 4) if rows_in else None,
            target_first_share=round(reasons["target_first"] / rows_in, 4) if rows_in else None,
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


def filter_parts_to_parts(
    run_path: str, indexed_files: list[tuple[int, str]], kept_dir: str, rejects_dir: str, settings: FilterSettings
) -> None:
    """Filter consecutive annotations part files in turn (each written whole as it completes)."""
    for index, annotations_file in indexed_files:
        filter_partition_to_parts(run_path, annotations_file, kept_dir, rejects_dir, index, settings)


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
