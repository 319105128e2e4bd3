"""The Great Expectations suites of the pipeline tables, one per table.

The suites are built here and kept as JSON beside this module (``validation/suites/<table>.json``,
regenerated with ``python -m validation.suites``; a test keeps both in sync). Every expectation
is a built-in GX expectation whose ``meta`` says:

- ``name``: a stable identifier used in ``summary.json`` and in the tests;
- ``severity``: ``critical`` (blocks a release) or ``warning`` (reported only);
- ``scope``: ``row`` expectations run on each partition inside a Dask task (by
  :mod:`validation.row_checks`, vectorised, or by GX's pandas engine, the reference:
  :mod:`validation.gx_checks`); ``table`` expectations need the whole table (uniqueness of
  keys, row counts, rows that must agree with other rows) and are computed by
  :mod:`validation.whole_table` with Dask, reported in the same result format;
- ``derived`` (when present): the column is not stored but computed per partition by
  :mod:`validation.derived` from list/struct columns GX cannot inspect (e.g. the length of
  ``history`` or whether ``history`` is chronological); a boolean derived column is expected
  to be true on every row.

Values that depend on the run (``max_history``, ``num_negatives``, "now") are GX suite
parameters (``{"$PARAMETER": name}``) filled in by the runner from the run's manifest and the
``validate`` settings, so the JSON does not change from run to run. The bounds of the critical
expectations (rating range, timestamp window, item id pattern) come from :mod:`core.records`,
the definition of a valid record that ingest enforces too.

GX is imported here: the stage imports :mod:`validation.spec` instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

from core.records import RATING_MAX, RATING_MIN
from validation.spec import (
    CRITICAL,
    EMAIL_REGEX,
    INDEX_COLUMNS,
    PHONE_REGEX,
    ROW_SCOPE,
    SCHEMAS,
    SUITES_DIR,
    TABLE_SCOPE,
    TABLES,
    URL_REGEX,
    WARNING,
    load_suite_json,
    suite_file,
)
from validation.suite_builders import expect, not_null, param, parent_asin_format, table_basics, timestamp_plausible, true_on_every_row

__all__ = [
    "CRITICAL",
    "EMAIL_REGEX",
    "INDEX_COLUMNS",
    "PHONE_REGEX",
    "ROW_SCOPE",
    "SCHEMAS",
    "SUITES_DIR",
    "SUITE_BUILDERS",
    "TABLES",
    "TABLE_SCOPE",
    "URL_REGEX",
    "WARNING",
    "expectations_from_json",
    "load_suite_json",
    "suite_file",
    "suite_json",
    "write_suite_files",
]


def interactions_suite() -> gx.ExpectationSuite:
    """Expectations of the ``interactions`` table (one row per kept review)."""
    return gx.ExpectationSuite(
        name="interactions",
        expectations=[
            *table_basics("interactions"),
            expect(
                gxe.ExpectCompoundColumnsToBeUnique,
                "interactions_source_rows_unique",
                CRITICAL,
                "Each source line (src_file, src_line) is ingested at most once across the whole table.",
                scope=TABLE_SCOPE,
                column_list=["src_file", "src_line"],
            ),
            not_null("interactions", "user_id"),
            not_null("interactions", "parent_asin"),
            parent_asin_format("interactions_parent_asin_format", "parent_asin", "parent_asin matches ^[A-Z0-9]{10}$."),
            not_null("interactions", "rating"),
            expect(
                gxe.ExpectColumnValuesToBeBetween,
                "interactions_rating_in_range",
                CRITICAL,
                "Star ratings are between 1 and 5 (core/records.py).",
                column="rating",
                min_value=RATING_MIN,
                max_value=RATING_MAX,
            ),
            not_null("interactions", "timestamp"),
            timestamp_plausible("interactions_timestamp_plausible", "timestamp"),
            expect(
                gxe.ExpectColumnValuesToBeBetween,
                "interactions_helpful_vote_non_negative",
                WARNING,
                "Helpful votes are never negative.",
                column="helpful_vote",
                min_value=0,
            ),
        ],
    )


def items_suite() -> gx.ExpectationSuite:
    """Expectations of the ``items`` table (one row per parent_asin with metadata)."""
    return gx.ExpectationSuite(
        name="items",
        expectations=[
            *table_basics("items"),
            expect(
                gxe.ExpectColumnValuesToBeUnique,
                "items_parent_asin_unique",
                CRITICAL,
                "Each parent_asin has one row across the whole catalog.",
                scope=TABLE_SCOPE,
                column="parent_asin",
            ),
            not_null("items", "parent_asin"),
            parent_asin_format("items_parent_asin_format", "parent_asin", "parent_asin matches ^[A-Z0-9]{10}$."),
            not_null("items", "title", severity=WARNING),
            expect(
                gxe.ExpectColumnValuesToBeBetween,
                "items_average_rating_in_range",
                WARNING,
                "Average ratings, where known, are between 1 and 5.",
                column="average_rating",
                min_value=1,
                max_value=5,
            ),
            expect(
                gxe.ExpectColumnValuesToBeBetween,
                "items_rating_number_non_negative",
                WARNING,
                "Rating counts are never negative.",
                column="rating_number",
                min_value=0,
            ),
            expect(
                gxe.ExpectColumnValuesToBeBetween,
                "items_price_non_negative",
                WARNING,
                "Prices, where known, are never negative.",
                column="price",
                min_value=0,
            ),
        ],
    )


def sequences_suite() -> gx.ExpectationSuite:
    """Expectations of the ``sequences`` table (leave-one-out examples with candidates).

    A declarative list, long because the table has many rules.

    Long only as a declarative list: one entry per expectation, each with its severity and description.
    """
    return gx.ExpectationSuite(
        name="sequences",
        expectations=[
            *table_basics("sequences"),
            expect(
                gxe.ExpectColumnValuesToBeUnique,
                "sequences_one_row_per_user_and_evaluation_split",
                CRITICAL,
                "Each user has at most one validation row and one test row across the whole table.",
                scope=TABLE_SCOPE,
                derived="user_id and split of validation and test rows (null on train rows, which GX ignores)",
                column="evaluation_key",
            ),
            true_on_every_row(
                "sequences_validation_history_is_test_history_minus_last",
                "validation_history_matches_test",
                "A user's validation history equals the test history minus its last item (compared on "
                "the suffix both keep after truncation to max_history).",
                derived="joins each user's validation and test rows across the table with Dask",
                scope=TABLE_SCOPE,
            ),
            true_on_every_row(
                "sequences_validation_target_is_last_test_history_item",
                "validation_target_matches_test",
                "A user's validation target is the last item of the test history.",
                derived="joins each user's validation and test rows across the table with Dask",
                scope=TABLE_SCOPE,
            ),
            not_null("sequences", "user_id"),
            expect(
                gxe.ExpectColumnValuesToBeInSet,
                "sequences_split_known",
                CRITICAL,
                "split is train, validation or test.",
                column="split",
                value_set=["train", "validation", "test"],
            ),
            not_null("sequences", "split"),
            parent_asin_format(
                "sequences_target_parent_asin_format",
                "target_parent_asin",
                "The target's parent_asin matches ^[A-Z0-9]{10}$ (derived column: target.parent_asin).",
            ),
            timestamp_plausible("sequences_target_timestamp_plausible", "target_timestamp", derived="target.timestamp"),
            expect(
                gxe.ExpectColumnValuesToBeBetween,
                "sequences_history_length_in_bounds",
                CRITICAL,
                "History length is between min_history and max_history, checked on the list length "
                "itself (GX's length expectation lets empty lists pass).",
                derived="number of items in history",
                column="history_length",
                min_value=param("min_history"),
                max_value=param("max_history"),
            ),
            true_on_every_row(
                "sequences_history_chronological",
                "history_chronological",
                "History timestamps never decrease.",
                derived="history timestamps are non-decreasing",
            ),
            true_on_every_row(
                "sequences_history_before_target",
                "history_before_target",
                "Every history timestamp is at most the target's timestamp.",
                derived="max(history.timestamp) <= target.timestamp",
            ),
            true_on_every_row(
                "sequences_target_in_candidates_once_at_index",
                "target_once_at_index",
                "The target occurs exactly once among the candidates, at target_index.",
                derived="candidates[target_index] is the target and no other candidate is",
            ),
            true_on_every_row(
                "sequences_candidates_unique",
                "candidates_unique",
                "No candidate appears twice in a row's candidate list.",
                derived="distinct candidate parent_asins == number of candidates",
            ),
            true_on_every_row(
                "sequences_candidates_not_in_history",
                "candidates_not_in_history",
                "No candidate is an item of the user's history.",
                derived="candidate parent_asins and history parent_asins are disjoint",
            ),
            expect(
                gxe.ExpectColumnValuesToBeBetween,
                "sequences_candidate_count",
                CRITICAL,
                "Each row has exactly 1 + num_negatives candidates.",
                derived="number of items in candidates",
                column="candidate_count",
                min_value=param("num_candidates"),
                max_value=param("num_candidates"),
            ),
        ],
    )


def filtered_suite() -> gx.ExpectationSuite:
    """Expectations of the ``filtered`` table (rationales kept by the self-filter).

    A declarative list, long because the table has many rules.

    Long only as a declarative list: one entry per expectation, each with its severity and description.
    """
    return gx.ExpectationSuite(
        name="filtered",
        expectations=[
            *table_basics("filtered"),
            expect(
                gxe.ExpectCompoundColumnsToBeUnique,
                "filtered_one_rationale_per_example",
                CRITICAL,
                "Each example (user_id, split, target_parent_asin) has one rationale across the whole table.",
                scope=TABLE_SCOPE,
                column_list=["user_id", "split", "target_parent_asin"],
            ),
            not_null("filtered", "rationale"),
            expect(
                gxe.ExpectColumnValuesToMatchRegex,
                "filtered_rationale_not_blank",
                CRITICAL,
                "Rationales contain at least one non-space character.",
                column="rationale",
                regex=r"\S",
            ),
            expect(
                gxe.ExpectColumnValueLengthsToBeBetween,
                "filtered_rationale_length_in_bounds",
                CRITICAL,
                "Rationale length in characters is between rationale_min_chars and rationale_max_chars.",
                column="rationale",
                min_value=param("rationale_min_chars"),
                max_value=param("rationale_max_chars"),
            ),
            not_null("filtered", "coherent"),
            expect(
                gxe.ExpectColumnValuesToBeInSet,
                "filtered_coherent_true",
                CRITICAL,
                "Every released rationale was judged coherent.",
                column="coherent",
                value_set=[True],
            ),
            expect(
                gxe.ExpectColumnValuesToNotMatchRegex,
                "filtered_rationale_no_email",
                CRITICAL,
                "Rationales contain no e-mail address.",
                column="rationale",
                regex=EMAIL_REGEX,
            ),
            expect(
                gxe.ExpectColumnValuesToNotMatchRegex,
                "filtered_rationale_no_phone",
                CRITICAL,
                "Rationales contain no phone number.",
                column="rationale",
                regex=PHONE_REGEX,
            ),
            expect(
                gxe.ExpectColumnValuesToNotMatchRegex,
                "filtered_rationale_no_url",
                CRITICAL,
                "Rationales contain no URL.",
                column="rationale",
                regex=URL_REGEX,
            ),
            expect(
                gxe.ExpectColumnValuesToNotMatchRegexList,
                "filtered_user_preferences_no_contact_details",
                CRITICAL,
                "User preference summaries (released with the rationale) contain no e-mail, phone or URL.",
                column="user_preferences",
                regex_list=[EMAIL_REGEX, PHONE_REGEX, URL_REGEX],
            ),
            not_null("filtered", "prompt_version", severity=WARNING),
        ],
    )


SUITE_BUILDERS = {
    "interactions": interactions_suite,
    "items": items_suite,
    "sequences": sequences_suite,
    "filtered": filtered_suite,
}


def suite_json(suite: gx.ExpectationSuite) -> dict[str, Any]:
    """The checked-in JSON form of a suite: without ids or the GX version, so it is stable."""
    data = suite.to_json_dict()
    return {
        "name": data["name"],
        "expectations": [{k: v for k, v in e.items() if k != "id"} for e in data["expectations"]],
        "meta": {"built_by": "validation.suites"},
    }


def write_suite_files(folder: Path = SUITES_DIR) -> list[Path]:
    """Regenerate ``<folder>/<table>.json`` from the builders; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for table, build in SUITE_BUILDERS.items():
        path = folder / f"{table}.json"
        path.write_text(json.dumps(suite_json(build()), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written


def expectations_from_json(data: dict[str, Any], scope: str | None = None) -> list[gxe.Expectation]:
    """GX expectation objects of a suite's JSON, optionally only those of one ``scope``."""
    return [
        ExpectationConfiguration(**config).to_domain_obj()
        for config in data["expectations"]
        if scope is None or config["meta"]["scope"] == scope
    ]


if __name__ == "__main__":
    for written_path in write_suite_files():
        print(written_path)
