"""Table-scope expectations, computed by our own code: Parquet footers and map-reduces on Dask.

- Columns (names, order, Arrow types) and the row count come from the part files' footers,
  without reading any data.
- Key uniqueness and the validation-vs-test comparison are a map-reduce over Dask futures:
  each part file is reduced to small per-key frames split into hash buckets, and one task per
  bucket sees every row of its keys.

Futures of plain functions are used rather than dask.dataframe collections because shipping
dask-expr graphs to the scheduler hits a race in dask's expression deduplication ("Error
during deserialization of the task graph") often enough to fail runs.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.progress import gather_with_progress
from core.tables import aligned
from validation.derived import (
    EVALUATION_FIELDS,
    compare_validation_with_test,
    evaluation_keys,
    evaluation_rows,
    pair_validation_with_test,
    read_fields,
)
from validation.spec import SCHEMAS
from validation.summary import CheckResult

MAX_BUCKETS = 64
ROWS_PER_BUCKET = 1_000_000
"""Keys one reduce task sees, about: enough that a small table is one bucket (each bucket costs a
task per part file, so 56 part files and 56 buckets were 3,136 tasks for 82k rows), few enough
that a reduce task's memory stays bounded on a big table."""
ROWS_PER_TASK = 20_000
"""Rows one map task reads, about: consecutive small part files share a task (the filter writes
parts of ~1.5k rows; a task each cost more in scheduling than in checking), a big part is alone."""
UNIQUENESS = ("expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique")
CROSS_ROW = "expect_column_values_to_be_in_set"
"""A table-scope in-set expectation: a per-user flag of the validation-vs-test comparison."""


# -- from the footers ----------------------------------------------------------------------
def read_footers(parts_: list[str]) -> dict[str, pq.FileMetaData]:
    """Each part file's Parquet footer, read once for every check that needs it (schema, rows)."""
    return {part: pq.read_metadata(part) for part in parts_}


def footer_check(table: str, footers: dict[str, pq.FileMetaData], expectation: dict[str, Any]) -> CheckResult | None:
    """Columns and row counts from the Parquet footers; None for an expectation that needs data."""
    kind, kwargs = expectation["type"], expectation["kwargs"]
    if kind == "expect_table_columns_to_match_ordered_list":
        return _columns_check(table, footers, kwargs["column_list"])
    if kind == "expect_table_row_count_to_be_between":
        rows = sum(footer.num_rows for footer in footers.values())
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        ok = (low is None or rows >= low) and (high is None or rows <= high)
        return CheckResult(ok, rows, 0 if ok else 1, examples=() if ok else ({"observed_rows": rows},), observed_value=rows)
    return None


def _columns_check(table: str, footers: dict[str, pq.FileMetaData], column_list: list[str]) -> CheckResult:
    declared = SCHEMAS[table]
    wrong = []
    for part, footer in footers.items():
        found = footer.schema.to_arrow_schema()
        if found.names != column_list:
            wrong.append({"file": Path(part).name, "columns": found.names})
            continue
        # Names alone would let e.g. a string timestamp through; the Arrow types must agree too.
        types = {f.name: str(f.type) for f in found if not f.type.equals(declared.field(f.name).type)}
        if types:
            wrong.append({"file": Path(part).name, "columns": found.names, "unexpected_types": types})
    observed = wrong[0]["columns"] if wrong else column_list
    return CheckResult(not wrong, len(footers), len(wrong), examples=tuple(wrong), observed_value=observed)


# -- map and reduce steps (Dask tasks) ---------------------------------------------------------
def key_table(part: str, table: str, columns: list[str]) -> pa.Table:
    """The key columns of one part file (``evaluation_key`` derived for ``sequences``), as the
    file holds them, NaN read as missing (as pandas and GX count it)."""
    if table == "sequences" and columns == ["evaluation_key"]:
        read = pq.read_table(part, columns=["user_id", "split"])
        keys = pa.table({"evaluation_key": evaluation_keys(read.column("user_id").combine_chunks(), read.column("split").combine_chunks())})
    else:
        keys = pq.read_table(part, columns=columns)
    arrays = []
    for name in columns:
        column = keys.column(name).combine_chunks()
        if pa.types.is_floating(column.type):
            column = pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)
        arrays.append(column)
    return pa.Table.from_arrays(arrays, names=columns)


def _hashes(array: pa.Array) -> np.ndarray:
    """A 64-bit hash of each value that depends on the value alone (not on its partition):
    integers by their bits, anything else by its text (each distinct value hashed once); 0 for null."""
    if pa.types.is_integer(array.type):
        hashed = pd.util.hash_array(pc.fill_null(array, 0).cast(pa.int64(), safe=False).to_numpy().view(np.uint64))
    else:
        encoded = pc.dictionary_encode(array)
        text = np.asarray(encoded.dictionary.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
        unique = pd.util.hash_array(text) if len(text) else np.zeros(1, dtype=np.uint64)
        hashed = unique[pc.fill_null(encoded.indices, 0).to_numpy()]
    return np.where(pc.is_valid(array).to_numpy(zero_copy_only=False), hashed, np.uint64(0))


_COLUMN_MULTIPLIERS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)


def _bucket_of(keys: pa.Table, buckets: int) -> np.ndarray:
    """The hash bucket of each row's key (all of ``keys``' columns): equal keys share a bucket, in every partition."""
    combined = np.zeros(keys.num_rows, dtype=np.uint64)
    for index, column in enumerate(keys.columns):
        combined = combined * np.uint64(_COLUMN_MULTIPLIERS[index % len(_COLUMN_MULTIPLIERS)]) + _hashes(column.combine_chunks())
    return (combined % np.uint64(buckets)).astype(np.int64)


def _split(frame: pd.DataFrame, keys: list[str], buckets: int) -> list[pd.DataFrame]:
    """``frame`` in hash buckets of its ``keys`` columns (no hashing for a single bucket)."""
    if buckets == 1:
        return [frame]
    bucket = _bucket_of(pa.Table.from_pandas(frame[keys], preserve_index=False), buckets)
    return [frame[bucket == b] for b in range(buckets)]


def key_count_buckets(part: str, table: str, columns: list[str], buckets: int) -> list[pa.Table]:
    """Map step: how often each key occurs in one part file (``columns`` and ``rows``), split
    into hash buckets. Arrow's hash group-by (the pandas one took 5x as long)."""
    keys = key_table(part, table, columns)
    # GX ignores a row only when every key column is missing; do the same.
    present = pc.is_valid(keys.column(columns[0]))
    for name in columns[1:]:
        present = pc.or_(present, pc.is_valid(keys.column(name)))
    keys = keys.filter(present)
    grouped = keys.group_by(columns, use_threads=False).aggregate([([], "count_all")])
    counts = grouped.select(columns).append_column("rows", grouped.column("count_all"))
    if buckets == 1:
        return [counts]
    bucket = pa.array(_bucket_of(counts.select(columns), buckets))
    return [counts.filter(pc.equal(bucket, b)) for b in range(buckets)]


def _one_schema(pieces: list[Any]) -> bool:
    return all(isinstance(p, pa.Table) and p.schema.equals(pieces[0].schema) for p in pieces)


def _as_frame(piece: Any) -> pd.DataFrame:
    return piece.to_pandas(types_mapper=pd.ArrowDtype) if isinstance(piece, pa.Table) else piece


def repeated_keys(pieces: list[Any], columns: list[str], examples: int) -> tuple[int, int, pd.DataFrame]:
    """Reduce step: (rows checked, rows whose key repeats, first repeated keys with their
    ``rows``, in key order, nulls last) of one bucket.

    Pieces whose key columns have other types than each other's (a part that failed the column
    check) are compared as pandas compares mixed values (the text "5" is not the number 5)."""
    if not _one_schema(pieces):
        frame = pd.concat([_as_frame(p) for p in pieces], ignore_index=True)
        counts = frame.groupby(columns, dropna=False)["rows"].sum().reset_index()
        repeated = counts[counts["rows"] > 1]
        return int(counts["rows"].sum()), int(repeated["rows"].sum()), repeated.sort_values(columns).head(examples)
    # Pieces from other workers arrive inside Dask's message frames, at any address.
    grouped = aligned(pa.concat_tables(pieces)).group_by(columns, use_threads=False).aggregate([("rows", "sum")])
    counts = grouped.select(columns).append_column("rows", grouped.column("rows_sum"))
    repeated = counts.filter(pc.greater(counts.column("rows"), 1))
    first = repeated.sort_by([(name, "ascending", "at_end") for name in columns]).slice(0, examples)
    checked = pc.sum(counts.column("rows")).as_py() or 0
    unexpected = pc.sum(repeated.column("rows")).as_py() or 0
    return int(checked), int(unexpected), first.to_pandas(types_mapper=pd.ArrowDtype)


def evaluation_row_buckets(part: str, buckets: int) -> list[pd.DataFrame]:
    """Map step: the validation and test rows of one sequences part file, bucketed by user."""
    return _split(evaluation_rows(read_fields(part, EVALUATION_FIELDS)), ["user_id"], buckets)


def compare_bucket(
    pieces: list[pd.DataFrame], max_history: int, columns: list[str], examples: int
) -> dict[str, tuple[int, int, pd.DataFrame]]:
    """Reduce step: per flag column, (users checked, users failing, first failing users) of one bucket."""
    flags = compare_validation_with_test(pair_validation_with_test(pd.concat(pieces, ignore_index=True)), max_history)
    out = {}
    for column in columns:
        failing = flags.loc[~flags[column], ["user_id"]]
        out[column] = (len(flags), len(failing), failing.sort_values("user_id").head(examples))
    return out


# -- submitting and collecting -------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """A table's part files as map tasks: consecutive groups of about :data:`ROWS_PER_TASK` rows."""

    groups: list[list[str]]
    rows: int

    @classmethod
    def of(cls, footers: dict[str, pq.FileMetaData]) -> Layout:
        """Group the part files of ``footers`` (in order) by their row counts."""
        groups: list[list[str]] = [[]]
        rows = in_group = 0
        for part, footer in footers.items():
            count = footer.num_rows
            if groups[-1] and in_group + count > ROWS_PER_TASK:
                groups.append([])
                in_group = 0
            groups[-1].append(part)
            in_group += count
            rows += count
        return cls([g for g in groups if g], rows)

    @property
    def buckets(self) -> int:
        """Hash buckets of the map-reduce: one per :data:`ROWS_PER_BUCKET` rows, at most one per
        map task and :data:`MAX_BUCKETS`. The results do not depend on it."""
        return max(1, min(len(self.groups), MAX_BUCKETS, -(-self.rows // ROWS_PER_BUCKET)))


def for_group(group: list[str], map_step: Any, **kwargs: Any) -> list[Any]:
    """Map task: ``map_step`` on each part file of ``group``; its buckets concatenated across the
    parts (Arrow tables of one schema, or pandas frames)."""
    per_part = [map_step(part, **kwargs) for part in group]
    merged: list[Any] = []
    for b in range(len(per_part[0])):
        pieces = [buckets[b] for buckets in per_part]
        if _one_schema(pieces):
            merged.append(pa.concat_tables(pieces))
        else:  # pandas frames, or Arrow key counts whose types disagree (see repeated_keys)
            merged.append(pd.concat([_as_frame(p) for p in pieces], ignore_index=True))
    return merged


def _submit_bucketed_reduce(client: Any, mapped: list[Any], buckets: int, reducer: Any, **reducer_kwargs: Any) -> list[Any]:
    """Send bucket ``b`` of every mapped partition to one ``reducer`` task; one future per bucket."""
    return [
        client.submit(reducer, [client.submit(operator.getitem, m, b, pure=False) for m in mapped], pure=False, **reducer_kwargs)
        for b in range(buckets)
    ]


def _merge_buckets(per_bucket: list[tuple[int, int, pd.DataFrame]], examples: int) -> CheckResult:
    checked = sum(b[0] for b in per_bucket)
    unexpected = sum(b[1] for b in per_bucket)
    first = pd.concat([b[2] for b in per_bucket], ignore_index=True)
    records = json.loads(first.sort_values(list(first.columns)).head(examples).to_json(orient="records"))
    return CheckResult(unexpected == 0, checked, unexpected, examples=tuple(records))


@dataclass
class WholeTableChecks:
    """Submitted whole-table checks: reduce futures per check, collected with :meth:`results`."""

    uniqueness: dict[str, list[Any]]
    """Expectation name -> one reduce future per bucket."""
    cross_row: dict[str, str]
    """Flag column -> expectation name (all computed by the same comparison futures)."""
    cross_row_futures: list[Any]

    def results(self, table: str, examples: int) -> dict[str, CheckResult]:
        """Wait for every check of ``table`` and merge its buckets."""
        futures = [f for bucket_futures in self.uniqueness.values() for f in bucket_futures] + self.cross_row_futures
        done = iter(gather_with_progress(futures, f"checking {table} across partitions"))
        results = {name: _merge_buckets([next(done) for _ in bucket_futures], examples) for name, bucket_futures in self.uniqueness.items()}
        cross_row_buckets = list(done)
        for column, name in self.cross_row.items():
            results[name] = _merge_buckets([b[column] for b in cross_row_buckets], examples)
        return results


def submit_whole_table_checks(
    client: Any, table: str, layout: Layout, expectations: list[dict[str, Any]], parameters: dict[str, Any], examples: int
) -> WholeTableChecks:
    """Start the table-scope expectations that need the data (key uniqueness, validation vs test rows)."""
    buckets = layout.buckets
    uniqueness: dict[str, list[Any]] = {}
    cross_row: dict[str, str] = {}
    for expectation in expectations:
        kind, kwargs, name = expectation["type"], expectation["kwargs"], expectation["meta"]["name"]
        if kind in UNIQUENESS:
            columns = [kwargs["column"]] if "column" in kwargs else list(kwargs["column_list"])
            mapped = client.map(
                for_group, layout.groups, map_step=key_count_buckets, table=table, columns=columns, buckets=buckets, pure=False
            )
            uniqueness[name] = _submit_bucketed_reduce(client, mapped, buckets, repeated_keys, columns=columns, examples=examples)
        elif kind == CROSS_ROW:
            cross_row[kwargs["column"]] = name
    cross_row_futures = []
    if cross_row:
        mapped = client.map(for_group, layout.groups, map_step=evaluation_row_buckets, buckets=buckets, pure=False)
        cross_row_futures = _submit_bucketed_reduce(
            client, mapped, buckets, compare_bucket, max_history=parameters["max_history"], columns=list(cross_row), examples=examples
        )
    return WholeTableChecks(uniqueness, cross_row, cross_row_futures)
