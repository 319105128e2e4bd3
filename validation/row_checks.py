"""Row expectations of a suite, vectorised over one partition's Arrow columns (the default engine).

GX's pandas engine costs about 0.7 s per partition before it looks at a row (building its
metric graph, pydantic models, an ephemeral context) and checks a range with a Python lambda
per value; at 20k users that was most of ``rrec validate``. This module evaluates the same
built-in expectation types with Arrow compute kernels inside the same Dask task and returns
the same counts and examples (``tests/test_validation.py`` pins it to the GX engine of
:mod:`validation.gx_checks` on every planted defect).

GX's semantics, kept here:

- nulls (and NaN in float columns, which pandas treats as missing) are not checked: they are
  ``missing_count``, except for ``expect_column_values_to_not_be_null`` where they are the
  unexpected values;
- regexes are searched (``re.search``, not a full match), as ``Series.str.contains`` does.
  Rows of printable ASCII go through Arrow's RE2, which agrees with Python's ``re`` on such
  text for the suites' patterns; other rows (non-ASCII letters change ``\\b`` and ``\\s``) are
  searched with Python's ``re`` itself;
- examples are the first unexpected values of the partition in row order, each with the
  table's key columns (:data:`validation.spec.INDEX_COLUMNS`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from validation.spec import INDEX_COLUMNS, ROW_SCOPE, substitute_parameters
from validation.summary import CheckResult

PLAIN_TEXT = r"^[\x20-\x7e\t\n\r]*$"
"""Text on which RE2 and Python's ``re`` agree for the suites' patterns (no \\f, \\v, \\x1c-\\x1f,
which Python's ``\\s`` matches and RE2's does not, and no non-ASCII letters)."""


def plain_rows(strings: pa.Array) -> np.ndarray:
    """Which strings are :data:`PLAIN_TEXT` (RE2 searches those); False for nulls."""
    return pc.fill_null(pc.match_substring_regex(strings.cast(pa.string()), PLAIN_TEXT), False).to_numpy(zero_copy_only=False)


def search(strings: pa.Array, pattern: str, plain: np.ndarray | None = None) -> np.ndarray:
    """Whether ``re.search(pattern, s)`` finds a match in each string (False for nulls).

    ``plain`` is :func:`plain_rows` of ``strings`` when the caller already has it (several
    patterns searched in one column).
    """
    strings = strings.cast(pa.string())
    found = np.zeros(len(strings), dtype=bool)
    valid = pc.is_valid(strings).to_numpy(zero_copy_only=False)
    try:
        fast = plain_rows(strings) if plain is None else plain
        searched = strings if fast.all() else strings.filter(pa.array(fast))
        found[fast] = pc.match_substring_regex(searched, pattern).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # a pattern RE2 cannot compile: Python's re for every row
        fast = np.zeros(len(strings), dtype=bool)
    slow = np.flatnonzero(valid & ~fast)
    if len(slow):
        compiled = re.compile(pattern)
        values = strings.take(pa.array(slow)).to_pylist()
        found[slow] = [compiled.search(value) is not None for value in values]
    return found


def _missing(column: pa.Array) -> np.ndarray:
    nan_is_null = pa.types.is_floating(column.type)
    return pc.is_null(column, nan_is_null=nan_is_null).to_numpy(zero_copy_only=False)


def _outside(values: pa.Array, low: Any, high: Any) -> np.ndarray:
    # Arrow compares an integer column with a float bound in a common type, as pandas does.
    outside = pa.array(np.zeros(len(values), dtype=bool))
    if low is not None:
        outside = pc.or_(outside, pc.less(values, low))
    if high is not None:
        outside = pc.or_(outside, pc.greater(values, high))
    return pc.fill_null(outside, False).to_numpy(zero_copy_only=False)


def _in_set(column: pa.Array, kwargs: dict[str, Any]) -> np.ndarray:
    values = pa.array(kwargs["value_set"]).cast(column.type)
    return pc.fill_null(pc.is_in(column, value_set=values), True).to_numpy(zero_copy_only=False)


def _lengths(column: pa.Array) -> pa.Array:
    return pc.utf8_length(column.cast(pa.string()))


Plain = Callable[[], np.ndarray]
"""The column's :func:`plain_rows`, computed once per column however many patterns search it."""
UNEXPECTED: dict[str, Callable[[pa.Array, dict[str, Any], Plain], np.ndarray]] = {
    "expect_column_values_to_be_between": lambda c, k, p: _outside(c, k.get("min_value"), k.get("max_value")),
    "expect_column_values_to_be_in_set": lambda c, k, p: ~_in_set(c, k),
    "expect_column_values_to_match_regex": lambda c, k, p: ~search(c, k["regex"], p()),
    "expect_column_values_to_not_match_regex": lambda c, k, p: search(c, k["regex"], p()),
    "expect_column_values_to_not_match_regex_list": lambda c, k, p: np.logical_or.reduce([search(c, r, p()) for r in k["regex_list"]]),
    "expect_column_value_lengths_to_be_between": lambda c, k, p: _outside(_lengths(c), k.get("min_value"), k.get("max_value")),
}
"""Per expectation type: which non-missing rows are unexpected (True = fails the rule)."""
SUPPORTED = {"expect_column_values_to_not_be_null", *UNEXPECTED}


def check_column(
    table: pa.Table, table_name: str, kind: str, kwargs: dict[str, Any], examples: int, plain: dict[str, np.ndarray] | None = None
) -> CheckResult:
    """One row expectation over the Arrow ``table`` of one partition (``plain``: :func:`plain_rows`
    per column, filled in as needed and shared by the expectations of one partition)."""
    column = table.column(kwargs["column"]).combine_chunks()
    missing = _missing(column)
    if kind == "expect_column_values_to_not_be_null":
        unexpected, missing_count = missing, 0
    else:
        plain = {} if plain is None else plain

        def column_plain() -> np.ndarray:
            if kwargs["column"] not in plain:
                plain[kwargs["column"]] = plain_rows(column)
            return plain[kwargs["column"]]

        unexpected, missing_count = UNEXPECTED[kind](column, kwargs, column_plain) & ~missing, int(missing.sum())
    rows = np.flatnonzero(unexpected)
    return CheckResult(
        success=len(rows) == 0,
        element_count=table.num_rows,
        unexpected_count=len(rows),
        missing_count=missing_count,
        examples=_examples(table, table_name, kwargs["column"], rows[:examples]),
    )


def _examples(table: pa.Table, table_name: str, column: str, rows: np.ndarray) -> tuple[dict[str, Any], ...]:
    if not len(rows):
        return ()
    keys = [c for c in INDEX_COLUMNS[table_name] if c in table.column_names and c != column]
    return tuple(table.select([column, *keys]).take(pa.array(rows)).to_pylist())


def check_partition(
    table: pa.Table, table_name: str, suite: dict[str, Any], parameters: dict[str, Any], examples: int
) -> dict[str, CheckResult]:
    """The ``row`` expectations of ``suite`` over one partition; results keyed by expectation name."""
    results, plain = {}, {}
    for expectation in suite["expectations"]:
        if expectation["meta"]["scope"] != ROW_SCOPE:
            continue
        if expectation["type"] not in SUPPORTED:
            raise ValueError(
                f"expectation {expectation['meta']['name']}: {expectation['type']} has no vectorised form; "
                "add it to validation/row_checks.py or set `validate: {row_engine: gx}`"
            )
        kwargs = substitute_parameters(expectation["kwargs"], parameters)
        results[expectation["meta"]["name"]] = check_column(table, table_name, expectation["type"], kwargs, examples, plain)
    return results


def read_partition(table_name: str, part: str, suite: dict[str, Any]) -> pa.Table:
    """The columns the row expectations of ``suite`` check in one part file, with the key columns
    shown beside examples (derived columns for ``sequences``).

    Only those columns are read: the review texts, descriptions and titles, most of the bytes,
    are never checked by a row expectation.
    """
    from validation.derived import SEQUENCE_CHECK_FIELDS, SEQUENCE_DICTIONARY_LISTS, read_fields, sequence_check_columns

    if table_name == "sequences":
        return sequence_check_columns(read_fields(part, SEQUENCE_CHECK_FIELDS, SEQUENCE_DICTIONARY_LISTS))
    wanted = {e["kwargs"]["column"] for e in suite["expectations"] if e["meta"]["scope"] == ROW_SCOPE} | set(INDEX_COLUMNS[table_name])
    # List columns (categories, features) have no row expectations.
    columns = [f.name for f in pq.read_schema(part) if f.name in wanted and not pa.types.is_nested(f.type)]
    return pq.read_table(part, columns=columns)


def check_part(part: str, table: str, suite: dict[str, Any], parameters: dict[str, Any], examples: int) -> dict[str, CheckResult]:
    """Dask task: read one part file and check the suite's row expectations on it."""
    return check_partition(read_partition(table, part, suite), table, suite, parameters, examples)
