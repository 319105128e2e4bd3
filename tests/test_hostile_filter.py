"""Hostile text through the filter (issue 12, points 4 and 7): tests/hostile/filter/cases.json.

Each case is a rationale or user preferences built around a forward, grounded rationale of a
real sequences row; the filter stage must end every row kept (benign cases) or rejected with
the case's reason, and the judge's rule (``hostile_text_reason``) must agree on the text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from annotation_data import make_run

from core.schemas import ANNOTATIONS
from core.stage import RunDir
from core.tables import write_part
from pipeline.annotators.context import contexts_from_rows
from pipeline.filter import REASONS, FilterSettings, reject_reason, run_filter
from pipeline.teacher_prompt import ExampleContext
from pipeline.text_rules.hostile import hostile_text_reason

CORPUS = Path(__file__).parent / "hostile" / "filter" / "cases.json"
CASES: list[dict[str, Any]] = json.loads(CORPUS.read_text())["cases"]


def forward_rationale(context: ExampleContext) -> str:
    """A rationale that passes every rule: two history items quoted first, the target last."""
    first, second = [item.title for item in context.history if item.title][-2:]
    return (
        f'The shopper bought "{first}" and later "{second}", and both of them show a steady taste for the same kind of '
        f'product. That habit makes "{context.target.title}" a fitting next purchase for them.'
    )


def case_texts(case: dict[str, Any], good: str) -> tuple[str, str]:
    """(rationale, user_preferences) of a case, around the forward rationale ``good``."""
    text = case["text"].replace("{good}", good)
    if "repeat" in case:
        text += case["repeat"]["piece"] * case["repeat"]["times"]
    if case["field"] == "rationale":
        return text, "Prefers tea and coffee from the same few stores."
    return good, text


def annotation_row(context: ExampleContext, rationale: str, preferences: str, coherent: bool | None = True) -> dict[str, Any]:
    """An ``annotations`` row for the example ``context``."""
    return {
        "user_id": context.user_id,
        "split": context.split,
        "target_parent_asin": context.target.parent_asin,
        "rationale": rationale,
        "user_preferences": preferences,
        "coherent": coherent,
        "annotator": "test",
        "model": "test",
        "prompt_version": "test",
        "input_tokens": 0,
        "output_tokens": 0,
        "request_hash": f"{context.user_id}|{context.split}",
    }


def write_annotations(run_path: Path, rows: list[dict[str, Any]], rows_per_part: int = 16) -> None:
    """Commit an ``annotate`` stage holding ``rows`` (as the annotate stage writes them)."""
    with RunDir(run_path).stage("annotate", fingerprint="test-annotate", config={"generated": True}) as out:
        folder = out.table_dir("annotations")
        for index, start in enumerate(range(0, len(rows), rows_per_part)):
            write_part(pa.Table.from_pylist(rows[start : start + rows_per_part], schema=ANNOTATIONS), folder, index, ANNOTATIONS)
        out.record(rows_in=len(rows), rows_out={"annotations": len(rows)})


def corpus_contexts(run_path: Path) -> list[ExampleContext]:
    """A run with one sequences row per case; their contexts, in case order."""
    rows = make_run(run_path, users=len(CASES) // 3 + 1)
    return contexts_from_rows(rows, {}, {})[: len(CASES)]


def test_the_corpus_names_registered_reasons_and_benign_texts():
    expected = {case["expect"] for case in CASES}
    assert expected - {None} <= set(REASONS)
    assert {"markup", "script", "event_handler", "prompt_injection", "control_characters", "invisible_characters"} <= expected
    assert {"too_many_characters", "overlong_word"} <= expected
    assert sum(case["expect"] is None for case in CASES) >= 8


@pytest.fixture(scope="module")
def one_context(tmp_path_factory) -> ExampleContext:
    """The context of one real sequences row."""
    return corpus_contexts(tmp_path_factory.mktemp("hostile") / "run")[0]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_each_case_gets_its_reason_from_the_rule_and_the_filter(case, one_context):
    context = one_context
    rationale, preferences = case_texts(case, forward_rationale(context))
    text = rationale if case["field"] == "rationale" else preferences
    assert hostile_text_reason(text) == case["expect"]
    assert reject_reason(annotation_row(context, rationale, preferences), context, FilterSettings()) == case["expect"]


def test_the_filter_stage_ends_every_hostile_row_kept_or_rejected_with_its_reason(tmp_path, dask_client):
    run = tmp_path / "run"
    contexts = corpus_contexts(run)
    rows = [annotation_row(context, *case_texts(case, forward_rationale(context))) for case, context in zip(CASES, contexts, strict=True)]
    write_annotations(run, rows)
    settings = FilterSettings()
    entry = run_filter(run, settings, dask_client)

    kept = pads.dataset(str(run / "filtered")).to_table().to_pylist()
    rejected = pads.dataset(str(run / "filter_rejects")).to_table().to_pylist()
    outcome = {(r["user_id"], r["split"]): None for r in kept} | {(r["user_id"], r["split"]): r["reason"] for r in rejected}
    assert len(kept) + len(rejected) == len(rows) == entry["rows_in"]
    for case, context in zip(CASES, contexts, strict=True):
        assert outcome[(context.user_id, context.split)] == case["expect"], case["name"]
    assert entry["rejects_by_reason"] == {
        reason: sum(case["expect"] == reason for case in CASES) for reason in {c["expect"] for c in CASES} - {None}
    }
    # A 10 MB answer is not stored whole among the rejects.
    assert max(len(r["rationale"]) + len(r["user_preferences"]) for r in rejected) <= 2 * settings.max_chars
