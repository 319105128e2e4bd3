"""The registry of reject reasons: every reason a stage records is a code listed here.

A recorded reason is a code, optionally followed by a colon and a detail naming the field it
concerns (``missing_field:title``, ``wrong_type:price``). The manifest counts reasons as
recorded; the data card and docs describe them from this registry; :func:`check_reasons`
refuses a code nobody registered, so a typo or a new rule without a description fails the stage
(and the tests) instead of reaching a card unexplained.

To add a rule: append one :class:`Reason` to :data:`REASONS` with the stage that records it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Reason:
    """One reject reason: its stable code, the stage that records it, what it means."""

    code: str
    stage: str
    description: str
    takes_detail: bool = False
    """Whether the code is recorded as ``code:detail`` (the detail names a field)."""


REASONS: tuple[Reason, ...] = (
    # ingest: one row of `rejects` per raw line that is not kept
    Reason("empty_line", "ingest", "the line holds only whitespace"),
    Reason("line_too_long", "ingest", "the line is longer than `max_line_bytes` (set aside unparsed)"),
    Reason("invalid_json", "ingest", "the line is not one JSON value"),
    Reason("not_an_object", "ingest", "the JSON value is not an object"),
    Reason("missing_field", "ingest", "a required field is absent, null or empty (detail: the field)", takes_detail=True),
    Reason("wrong_type", "ingest", "a field has a type the schema does not allow (detail: the field)", takes_detail=True),
    Reason("invalid_utf8", "ingest", "a text field holds bytes or escapes that are not valid UTF-8 (detail: the field)", takes_detail=True),
    Reason("out_of_range", "ingest", "a value outside the valid-record ranges of core/records.py (detail: the field)", takes_detail=True),
    Reason(
        "invalid_id",
        "ingest",
        "an item id that does not match the item-id pattern of core/records.py (detail: the field)",
        takes_detail=True,
    ),
    Reason("unreadable_parquet", "ingest", "a Parquet file (line 0) or row group that cannot be read"),
    Reason("truncated_gzip", "ingest", "the gzip file ends before its stream does; every line before the cut is kept"),
    Reason("corrupt_gzip", "ingest", "the gzip stream is damaged from here on; every line before the damage is kept"),
    Reason("duplicate_parent_asin", "ingest", "a second metadata record of an item already kept (the first one wins)"),
    # sequences: counted per interaction in the manifest
    Reason("missing_key", "sequences", "the interaction has no user_id, parent_asin or timestamp"),
    Reason("duplicate_pair", "sequences", "a later review of a (user, item) pair already kept"),
    Reason("kcore", "sequences", "removed by the iterative k-core (user or item with fewer than k interactions)"),
    Reason("not_sampled", "sequences", "the user was not drawn by `sample_users`"),
    # filter: one row of `filter_rejects` per annotation not kept
    Reason("unparsable_output", "filter", "the model did not answer with the requested JSON"),
    Reason("refusal", "filter", "the answer is a refusal"),
    Reason("annotator_incoherent", "filter", "the annotator itself flagged the pairing as incoherent"),
    Reason("empty_rationale", "filter", "the rationale holds only whitespace"),
    Reason("too_short", "filter", "fewer words than `min_words`"),
    Reason("too_long", "filter", "more words than `max_words`"),
    Reason("contains_email", "filter", "an e-mail address in the rationale or the user preferences"),
    Reason("contains_url", "filter", "a link in the rationale or the user preferences"),
    Reason("contains_phone", "filter", "a phone number in the rationale or the user preferences"),
    Reason("leaks_target_asin", "filter", "the target's ASIN appears in the text"),
    Reason("not_english", "filter", "mostly non-Latin letters, or too few English function words"),
    Reason("unknown_product", "filter", "a quoted product name that is neither a history item nor the target"),
    Reason("not_grounded", "filter", "names no history item and no history attribute (store, category)"),
    Reason("unknown_example", "filter", "no sequences row has this key (the sequences changed since annotation)"),
    Reason("too_many_characters", "filter", "an answer text longer than `max_chars` characters (e.g. a 10 MB answer)"),
    Reason("overlong_word", "filter", "a run of more than `max_word_chars` characters without whitespace (blobs, padding)"),
    Reason("control_characters", "filter", "control characters other than tab and line breaks"),
    Reason("invisible_characters", "filter", "zero-width, bidirectional-override or Unicode tag characters"),
    Reason("event_handler", "filter", "an HTML event-handler attribute (`onerror=`) or a `javascript:` URI"),
    Reason("script", "filter", "a `<script>` tag or a script API (`document.cookie`, `eval(`)"),
    Reason("markup", "filter", "an HTML/XML tag, comment, doctype or escaped tag"),
    Reason("prompt_injection", "filter", "a phrase aimed at a model (`ignore all previous instructions`, `you are now`, `system prompt`)"),
    Reason("target_first", "filter", "the rationale names the target item before any history item"),
)

BY_CODE: dict[str, Reason] = {reason.code: reason for reason in REASONS}


class UnknownReasonError(ValueError):
    """A stage recorded a reason code that is not in :data:`REASONS`."""


def code_of(reason: str) -> str:
    """The registered code of a recorded reason (the part before the first colon)."""
    return reason.split(":", 1)[0]


def describe(reason: str) -> str:
    """The description of a recorded reason, with its detail when it has one."""
    code, _, detail = reason.partition(":")
    entry = BY_CODE[code]
    return f"{entry.description} [{detail}]" if detail else entry.description


def check_reasons(stage: str, reasons: Iterable[str]) -> None:
    """Raise :class:`UnknownReasonError` naming every reason not registered for ``stage``."""
    unknown = sorted(
        reason
        for reason in set(reasons)
        if (entry := BY_CODE.get(code_of(reason))) is None or entry.stage != stage or (":" in reason) != entry.takes_detail
    )
    if unknown:
        raise UnknownReasonError(f"stage {stage} recorded reject reason(s) not registered for it in core/reasons.py: {', '.join(unknown)}")


def reasons_of(stage: str) -> tuple[Reason, ...]:
    """The registered reasons of one stage, in registry order."""
    return tuple(reason for reason in REASONS if reason.stage == stage)


def markdown_table(stage: str | None = None) -> str:
    """The registry (or one stage's part of it) as a Markdown table, for docs and cards."""
    rows = [r for r in REASONS if stage is None or r.stage == stage]
    lines = ["| stage | code | meaning |", "|---|---|---|"]
    lines += [f"| {r.stage} | `{r.code}{':FIELD' if r.takes_detail else ''}` | {r.description} |" for r in rows]
    return "\n".join(lines)


def reasons_page() -> str:
    """``docs/reject-reasons.md``: every registered reason, per stage (a test keeps the file equal)."""
    sections = [
        "# Reject reasons",
        "",
        "Every row a stage does not keep is counted under one of these codes (in `manifest.json`, the",
        "`rejects` and `filter_rejects` tables and the data card). Generated from `core/reasons.py`:",
        "`python -m core.reasons > docs/reject-reasons.md`. `:FIELD` marks a code recorded with the field",
        "it concerns (`missing_field:title`).",
    ]
    for stage in dict.fromkeys(r.stage for r in REASONS):
        sections += ["", f"## {stage}", "", markdown_table(stage)]
    return "\n".join(sections) + "\n"


if __name__ == "__main__":
    print(reasons_page(), end="")
