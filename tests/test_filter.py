"""The self-filter: every named reason, and every row ending in exactly one output table."""

from __future__ import annotations

import pyarrow.dataset as pads
import pytest
from annotation_data import make_run

from pipeline.annotate import AnnotateSettings, run_annotate
from pipeline.filter import REASONS, FilterSettings, reject_reason, run_filter
from pipeline.teacher_prompt import ExampleContext, ItemFacts

TEA = ("Grocery & Gourmet Food", "Beverages", "Coffee, Tea & Cocoa", "Tea")
CONTEXT = ExampleContext(
    user_id="U1",
    split="train",
    history=(
        ItemFacts("B00HIST001", "Leaf & Kettle Earl Grey Black Tea, 2 Pack", TEA, "Leaf & Kettle", 6.0, (), 5.0),
        ItemFacts("B00HIST002", "Leaf & Kettle Chamomile Herbal Tea, 24 Count", TEA, "Leaf & Kettle", 5.0, (), 4.0),
    ),
    target=ItemFacts("B00TARGET1", "Leaf & Kettle Jasmine Green Tea, 6 Pack", TEA, "Leaf & Kettle"),
)
GOOD = (
    'The shopper bought "Leaf & Kettle Earl Grey Black Tea" and "Leaf & Kettle Chamomile Herbal Tea", both from the same '
    'store as the target. "Leaf & Kettle Jasmine Green Tea" continues that habit of buying tea from this brand.'
)


def _row(rationale: str, coherent: bool | None = True, preferences: str = "Likes tea.") -> dict:
    return {
        "user_id": "U1",
        "split": "train",
        "target_parent_asin": "B00TARGET1",
        "rationale": rationale,
        "user_preferences": preferences,
        "coherent": coherent,
    }


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (_row(GOOD), None),
        (_row('{"rationale": "cut', coherent=None), "unparsable_output"),
        (_row("I'm sorry, but I can't help with that.", coherent=None), "refusal"),
        (_row(GOOD + " I cannot assist with more detail.", coherent=True), "refusal"),
        (_row(GOOD, coherent=False), "annotator_incoherent"),
        (_row("   "), "empty_rationale"),
        (_row('Bought "Leaf & Kettle Earl Grey Black Tea" before.'), "too_short"),
        (_row(GOOD + " More tea." * 200), "too_long"),
        (_row(GOOD + " See https://example.com/tea for details."), "contains_url"),
        (_row(GOOD + " Contact the shopper at jane.doe@example.org please."), "contains_email"),
        (_row(GOOD, preferences="Call them on (555) 123-4567 about tea."), "contains_phone"),
        (_row(GOOD + " Its code is B00TARGET1 in the catalog."), "leaks_target_asin"),
        (
            _row(
                'Der Kunde kaufte "Leaf & Kettle Earl Grey Black Tea" und mag Tee sehr gerne, deshalb passt dieser Tee gut zu seinen Käufen.'
            ),
            "not_english",
        ),
        (
            _row('Покупатель купил "Leaf & Kettle Earl Grey Black Tea" и поэтому он купит этот чай снова очень скоро, как и раньше.'),
            "not_english",
        ),
        (_row(GOOD + ' It is also like "Acme Turbo Blender 3000 Pro" that the shopper may own.'), "unknown_product"),
        (
            _row("The shopper likes good things and this is a good thing, so it is a sensible purchase for the shopper to make now."),
            "not_grounded",
        ),
    ],
)
def test_each_rule_rejects_with_its_named_reason(row, reason):
    assert reject_reason(row, CONTEXT, FilterSettings()) == reason
    assert reason is None or reason in REASONS


def test_history_attributes_ground_a_rationale_without_titles():
    row = _row("The shopper keeps buying from Leaf & Kettle and their tea choices are consistent, so this purchase fits well.")
    assert reject_reason(row, CONTEXT, FilterSettings()) is None


def test_a_row_without_its_sequence_is_rejected_not_dropped():
    assert reject_reason(_row(GOOD), None, FilterSettings()) == "unknown_example"


def test_every_annotation_ends_in_exactly_one_table_with_counts_in_the_manifest(tmp_path, dask_client):
    run = tmp_path / "run"
    make_run(run, users=24)
    run_annotate(run, AnnotateSettings(partition_rows=7, splits="train,validation"), dask_client)
    entry = run_filter(run, FilterSettings(), dask_client)
    annotations = pads.dataset(str(run / "annotations")).to_table().to_pylist()
    kept = pads.dataset(str(run / "filtered")).to_table().to_pylist()
    rejected = pads.dataset(str(run / "filter_rejects")).to_table().to_pylist()

    def key(r):
        return (r["user_id"], r["split"], r["target_parent_asin"])

    assert len(kept) + len(rejected) == len(annotations) == entry["rows_in"] == 48
    assert {key(r) for r in kept}.isdisjoint({key(r) for r in rejected})
    assert {key(r) for r in kept} | {key(r) for r in rejected} == {key(r) for r in annotations}
    counts: dict[str, int] = {}
    for row in rejected:
        counts[row["reason"]] = counts.get(row["reason"], 0) + 1
    assert entry["rejects_by_reason"] == counts
    assert entry["rows_out"] == {"filtered": len(kept), "filter_rejects": len(rejected)}
    assert run_filter(run, FilterSettings(), dask_client)["finished_at"] == entry["finished_at"]  # unchanged: skipped
