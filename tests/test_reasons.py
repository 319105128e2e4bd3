"""The reject-reason registry: every stage records registered codes only."""

from __future__ import annotations

import pytest

from core.reasons import REASONS, UnknownReasonError, check_reasons, code_of, describe, markdown_table
from core.stage import STAGE_ORDER


def test_every_registered_reason_is_unique_described_and_belongs_to_a_stage() -> None:
    codes = [r.code for r in REASONS]
    assert len(codes) == len(set(codes))
    assert all(r.description and r.stage in STAGE_ORDER for r in REASONS)


def test_a_recorded_reason_with_a_field_detail_is_known_by_its_code() -> None:
    check_reasons("ingest", ["missing_field:title", "invalid_json"])
    assert code_of("wrong_type:price") == "wrong_type"
    assert "price" in describe("wrong_type:price")


@pytest.mark.parametrize(
    ("stage", "reason"),
    [
        ("filter", "no_such_rule"),  # a typo or an unregistered rule
        ("sequences", "invalid_json"),  # registered, but for another stage
        ("ingest", "invalid_json:rating"),  # a detail on a code that takes none
        ("ingest", "missing_field"),  # no detail on a code that needs one
    ],
)
def test_unregistered_reasons_are_refused(stage: str, reason: str) -> None:
    with pytest.raises(UnknownReasonError, match=reason):
        check_reasons(stage, [reason])


def test_the_registry_renders_for_docs() -> None:
    table = markdown_table("filter")
    assert "`not_grounded`" in table and "`kcore`" not in table


def test_the_docs_page_of_reasons_is_generated_from_the_registry() -> None:
    from pathlib import Path

    from core.reasons import reasons_page

    page = Path(__file__).resolve().parents[1] / "docs" / "reject-reasons.md"
    assert page.read_text(encoding="utf-8") == reasons_page(), "regenerate: python -m core.reasons > docs/reject-reasons.md"
