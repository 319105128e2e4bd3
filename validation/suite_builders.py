"""Helpers that build the suites' expectations: every one carries ``meta`` (name, severity, scope,
what a derived column is) and a description, so :mod:`validation.suites` reads as a list of rules.
"""

from __future__ import annotations

from typing import Any

import great_expectations.expectations as gxe

from validation.spec import CRITICAL, PARENT_ASIN_REGEX, ROW_SCOPE, SCHEMAS, TABLE_SCOPE


def param(name: str) -> dict[str, str]:
    """A GX suite parameter, filled in per run by :func:`validation.runner.suite_parameters`."""
    return {"$PARAMETER": name}


def expect(
    expectation: type[gxe.Expectation],
    name: str,
    severity: str,
    description: str,
    scope: str = ROW_SCOPE,
    derived: str | None = None,
    **kwargs: Any,
) -> gxe.Expectation:
    """A built-in GX expectation with our ``meta`` (name, severity, scope, derived) and description."""
    meta: dict[str, Any] = {"name": name, "severity": severity, "scope": scope}
    if derived:
        meta["derived"] = derived
    return expectation(meta=meta, severity=severity, description=description, **kwargs)


def table_basics(table: str) -> list[gxe.Expectation]:
    """The two critical table checks of every suite: the declared columns, at least one row."""
    return [
        expect(
            gxe.ExpectTableColumnsToMatchOrderedList,
            f"{table}_columns_match_schema",
            CRITICAL,
            f"Every part file of `{table}` has exactly the columns (names, order and Arrow types) of its declared schema.",
            scope=TABLE_SCOPE,
            column_list=SCHEMAS[table].names,
        ),
        expect(
            gxe.ExpectTableRowCountToBeBetween,
            f"{table}_not_empty",
            CRITICAL,
            f"The `{table}` table has at least one row.",
            scope=TABLE_SCOPE,
            min_value=1,
        ),
    ]


def not_null(table: str, column: str, severity: str = CRITICAL) -> gxe.Expectation:
    """``column`` is set on every row."""
    return expect(
        gxe.ExpectColumnValuesToNotBeNull,
        f"{table}_{column}_not_null",
        severity,
        f"`{column}` is set on every row.",
        column=column,
    )


def parent_asin_format(name: str, column: str, description: str) -> gxe.Expectation:
    """``column`` holds Amazon item ids (:data:`core.records.PARENT_ASIN_PATTERN`)."""
    return expect(
        gxe.ExpectColumnValuesToMatchRegex,
        name,
        CRITICAL,
        description,
        column=column,
        regex=PARENT_ASIN_REGEX,
    )


def timestamp_plausible(name: str, column: str, derived: str | None = None) -> gxe.Expectation:
    """``column`` lies in :mod:`core.records`' timestamp window (suite parameters)."""
    return expect(
        gxe.ExpectColumnValuesToBeBetween,
        name,
        CRITICAL,
        "Timestamps are epoch milliseconds between July 1995 and the time of validation plus one day "
        "(core/records.py; catches seconds-for-milliseconds mistakes and future dates).",
        derived=derived,
        column=column,
        min_value=param("earliest_timestamp_ms"),
        max_value=param("latest_timestamp_ms"),
    )


def true_on_every_row(name: str, column: str, description: str, derived: str, scope: str = ROW_SCOPE) -> gxe.Expectation:
    """A derived boolean rule column that every row must satisfy."""
    return expect(
        gxe.ExpectColumnValuesToBeInSet,
        name,
        CRITICAL,
        description,
        scope=scope,
        derived=derived,
        column=column,
        value_set=[True],
    )
