"""Columns derived per partition for expectations GX cannot express on list/struct columns.

GX's pandas engine checks scalar columns. The rules about histories and candidates are about
lists of structs, so each partition is first turned into a frame of scalar columns (the
lengths, plus one boolean per rule, true when the row obeys it) that built-in expectations
then check. Everything here is a pure function of one Arrow table, vectorised with numpy so
it keeps up with paper-sized tables; nothing depends on how the table is partitioned.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.tables import ITEM_ID_DICTIONARY_BYTES, dictionary_pages, read_with_dictionaries

EVALUATION_SPLITS = ("validation", "test")
# Joins a history's parent_asins into one string so Dask can shuffle and compare it cheaply.
ASIN_SEPARATOR = " "


SEQUENCE_CHECK_FIELDS: dict[str, frozenset[str] | None] = {
    "user_id": None,
    "split": None,
    "history": frozenset({"parent_asin", "timestamp"}),
    "target": frozenset({"parent_asin", "timestamp"}),
    "candidates": frozenset({"parent_asin"}),
    "target_index": None,
}
"""The parts of a sequences row the checks read: the titles (most of the bytes) are left unread."""
SEQUENCE_DICTIONARY_LISTS = frozenset({"history", "candidates"})
"""Lists whose ``parent_asin`` is read as a dictionary: the candidates are 100 strings a row from a
catalogue of far fewer, and the checks only need equal items to get equal codes (reading them as
strings and encoding them again was most of a partition's time)."""
DICTIONARY_BYTES_PER_VALUE = ITEM_ID_DICTIONARY_BYTES
"""Above it an item id leaf is read as strings (:func:`core.tables.dictionary_pages`)."""
EVALUATION_FIELDS: dict[str, frozenset[str] | None] = {
    "user_id": None,
    "split": None,
    "history": frozenset({"parent_asin"}),
    "target": frozenset({"parent_asin"}),
}


def read_fields(part: str, fields: dict[str, frozenset[str] | None], dictionary_lists: frozenset[str] = frozenset()) -> pa.Table:
    """Read only ``fields`` of a part file: whole columns (None) or some leaves of a nested one.

    Leaves are picked from the file's own column paths (``history.list.item.timestamp`` or
    ``...element...`` depending on the writer), so no selection is ever silently empty. The
    ``parent_asin`` leaves of the columns in ``dictionary_lists`` are read dictionary-encoded.
    """
    parquet = pq.ParquetFile(part)
    paths = [column.path for column in parquet.schema]
    chosen = [
        p for p in paths if p.split(".")[0] in fields and (fields[p.split(".")[0]] is None or p.split(".")[-1] in fields[p.split(".")[0]])
    ]
    as_dictionary = [
        p
        for p in chosen
        if p.split(".")[0] in dictionary_lists
        and p.split(".")[-1] == "parent_asin"
        and dictionary_pages(parquet, p, DICTIONARY_BYTES_PER_VALUE)
    ]
    table = read_with_dictionaries(part, chosen, as_dictionary, parquet.metadata) if as_dictionary else parquet.read(columns=chosen)
    missing = [name for name in fields if name not in table.column_names]
    if missing:
        raise ValueError(f"{part} has no column {', '.join(missing)}")
    return table


def _flat_lists(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.StructArray, np.ndarray]:
    """(length per row with nulls as 0, flattened struct values, row index of each value)."""
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    return lengths, values, parents


def _shared_codes(*arrays: pa.Array) -> list[np.ndarray]:
    """Integer codes of string arrays in one shared dictionary, so equal strings get equal codes.

    Nulls get -1 in the first array and -2 in the others: a missing target never "matches" a
    missing candidate, while repeated missing candidates still count as repeats. A dictionary
    array is coded through its dictionary: only its distinct values are encoded again.
    """
    plain = [a.dictionary.cast(pa.string()) if pa.types.is_dictionary(a.type) else a.cast(pa.string()) for a in arrays]
    indices = pc.dictionary_encode(pa.concat_arrays(plain)).indices
    codes, start = [], 0
    for i, (array, values) in enumerate(zip(arrays, plain, strict=True)):
        fill = -1 if i == 0 else -2
        own = pc.fill_null(indices.slice(start, len(values)), fill).to_numpy(zero_copy_only=False).astype(np.int64)
        start += len(values)
        if pa.types.is_dictionary(array.type):
            # A null index takes the last slot: the null code.
            positions = pc.fill_null(array.indices, len(values)).to_numpy(zero_copy_only=False)
            own = np.append(own, fill)[positions]
        codes.append(own)
    return codes


def _int64(array: pa.Array, fill: int) -> np.ndarray:
    return pc.fill_null(array, fill).to_numpy(zero_copy_only=False).astype(np.int64)


def _rows_flagged(n_rows: int, rows: np.ndarray) -> np.ndarray:
    flagged = np.zeros(n_rows, dtype=bool)
    flagged[rows] = True
    return flagged


def _candidate_rules(
    n_rows: int, counts: np.ndarray, codes: np.ndarray, rows: np.ndarray, history_codes: np.ndarray, history_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (no candidate repeats, no candidate is in the row's history), from the item codes.

    (row, item) pairs are one int64 each (``row * stride + code + 2``). Rows that all have the same
    number of candidates (what the sequences stage writes) are sorted as a matrix
    (:func:`_candidate_rules_sorted`); ragged rows (hostile data) are hashed
    (:func:`_candidate_rules_hashed`). Both are linear in the rows and give the same flags.
    """
    stride = np.int64(max(int(codes.max(initial=0)), int(history_codes.max(initial=0))) + 3)
    history_keys = history_rows * stride + history_codes + 2
    width = int(counts[0]) if len(counts) else 0
    if width and len(codes) == width * n_rows and bool((counts == width).all()):
        return _candidate_rules_sorted(codes.reshape(n_rows, width), history_keys, stride)
    return _candidate_rules_hashed(n_rows, rows * stride + codes + 2, rows, history_keys)


def _candidate_rules_sorted(codes: np.ndarray, history_keys: np.ndarray, stride: np.int64) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_candidate_rules` for a (rows x candidates) matrix of codes, sorted within each row.

    Repeats are then neighbours (k log k per row), and a row has a candidate in its history
    exactly when one of its history items is found among its sorted candidates (one binary
    search per history item over the row-major keys, which are sorted as a whole).
    """
    n_rows = codes.shape[0]
    by_row = np.sort(codes, axis=1)
    unique = ~(by_row[:, 1:] == by_row[:, :-1]).any(axis=1)
    sorted_keys = by_row + 2
    sorted_keys += (np.arange(n_rows, dtype=np.int64) * stride)[:, None]
    sorted_keys = sorted_keys.ravel()
    wanted = np.sort(history_keys)
    position = np.minimum(np.searchsorted(sorted_keys, wanted), len(sorted_keys) - 1)
    return unique, ~_rows_flagged(n_rows, wanted[sorted_keys[position] == wanted] // stride)


def _candidate_rules_hashed(
    n_rows: int, candidate_keys: np.ndarray, rows: np.ndarray, history_keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_candidate_rules` for any row lengths: pandas ``duplicated`` and Arrow ``is_in`` (hashing)."""
    repeated = pd.Series(candidate_keys).duplicated().to_numpy()
    in_history = pc.is_in(pa.array(candidate_keys), value_set=pa.array(history_keys)).to_numpy(zero_copy_only=False)
    return ~_rows_flagged(n_rows, rows[repeated]), ~_rows_flagged(n_rows, rows[in_history])


CHECK_SLICE_ROWS = 32_768
"""Rows whose derived columns are computed at once. The rules work on flattened candidates
(a hundred a row) as int64 arrays, several alive together: a whole 275k-row part of a 14M-review
domain took 1.7 GB in one task, where a slice of this size takes a few hundred MB whatever the
part's size (the columns do not depend on where the rows are cut)."""


def sequence_check_columns(table: pa.Table, slice_rows: int = CHECK_SLICE_ROWS) -> pa.Table:
    """:func:`sequence_slice_check_columns` of ``table`` computed ``slice_rows`` rows at a time, so
    a task's memory follows the slice, not the part file."""
    if table.num_rows <= slice_rows:
        return sequence_slice_check_columns(table)
    slices = [sequence_slice_check_columns(table.slice(start, slice_rows)) for start in range(0, table.num_rows, slice_rows)]
    return pa.concat_tables(slices).combine_chunks()


def sequence_slice_check_columns(table: pa.Table) -> pa.Table:
    """One row per sequence with the scalar columns the ``sequences`` suite checks (Arrow).

    Columns: ``user_id``, ``split``, ``target_parent_asin``, ``target_timestamp``,
    ``history_length``, ``candidate_count`` and the booleans ``history_chronological``,
    ``history_before_target``, ``target_once_at_index``, ``candidates_unique``,
    ``candidates_not_in_history``, plus ``evaluation_key`` (``user_id|split`` on validation and
    test rows, null on train rows) for the one-row-per-user-and-split check. A null list counts
    as empty, so it fails the length checks instead of slipping through.

    One function (about 65 lines) because the rules share the flattened lists, their row
    indices and the shared string codes; split up, each piece would recompute or pass them on.
    """
    n_rows = table.num_rows
    target = table.column("target").combine_chunks()
    target_asin_array = pc.struct_field(target, "parent_asin")
    target_ts_raw = pc.struct_field(target, "timestamp")
    # A missing target timestamp cannot be shown to follow the history: treat it as -infinity.
    target_ts = _int64(target_ts_raw, np.iinfo(np.int64).min)

    history_length, history, history_row = _flat_lists(table.column("history"))
    history_ts = _int64(pc.struct_field(history, "timestamp"), 0)
    candidate_count, candidates, candidate_row = _flat_lists(table.column("candidates"))
    target_code, history_code, candidate_code = _shared_codes(
        target_asin_array, pc.struct_field(history, "parent_asin"), pc.struct_field(candidates, "parent_asin")
    )

    same_row_as_previous = history_row[1:] == history_row[:-1]
    decreasing = same_row_as_previous & (history_ts[1:] < history_ts[:-1])
    chronological = ~_rows_flagged(n_rows, history_row[1:][decreasing])
    after_target = history_ts > target_ts[history_row]
    before_target = ~_rows_flagged(n_rows, history_row[after_target])

    is_target = candidate_code == target_code[candidate_row]
    target_occurrences = np.bincount(candidate_row[is_target], minlength=n_rows)
    target_index = _int64(table.column("target_index").combine_chunks(), -1)
    starts = np.cumsum(candidate_count) - candidate_count
    index_valid = (target_index >= 0) & (target_index < candidate_count)
    at_index = np.zeros(n_rows, dtype=bool)
    at_index[index_valid] = candidate_code[(starts + target_index)[index_valid]] == target_code[index_valid]
    target_once_at_index = at_index & (target_occurrences == 1)

    candidates_unique, candidates_not_in_history = _candidate_rules(
        n_rows, candidate_count, candidate_code, candidate_row, history_code, history_row
    )

    user_id = table.column("user_id").combine_chunks()
    split = table.column("split").combine_chunks()
    return pa.table(
        {
            "user_id": user_id,
            "split": split,
            "target_parent_asin": target_asin_array.cast(pa.string()),
            "target_timestamp": target_ts_raw.cast(pa.int64()),
            "history_length": history_length,
            "candidate_count": candidate_count,
            "history_chronological": chronological,
            "history_before_target": before_target,
            "target_once_at_index": target_once_at_index,
            "candidates_unique": candidates_unique,
            "candidates_not_in_history": candidates_not_in_history,
            "evaluation_key": evaluation_keys(user_id, split),
        }
    )


def sequence_row_checks(table: pa.Table) -> pd.DataFrame:
    """:func:`sequence_check_columns` as the pandas frame GX's pandas engine checks."""
    return sequence_check_columns(table).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def evaluation_keys(user_id: pa.Array, split: pa.Array) -> pa.Array:
    """``user_id|split`` for validation and test rows, null for train rows (checks skip nulls).

    A missing user id reads ``None`` in the key, as Python's f-string would write it.
    """
    joined = pc.binary_join_element_wise(
        user_id.cast(pa.string()), split.cast(pa.string()), "|", null_handling="replace", null_replacement="None"
    )
    evaluation = pc.fill_null(pc.is_in(split, value_set=pa.array(EVALUATION_SPLITS)), False)
    return pc.if_else(evaluation, joined, pa.scalar(None, pa.string()))


def evaluation_rows(table: pa.Table) -> pd.DataFrame:
    """The validation and test rows of a sequences partition, histories as joined parent_asins."""
    split = table.column("split")
    keep = pc.is_in(split, value_set=pa.array(EVALUATION_SPLITS))
    rows = table.filter(pc.fill_null(keep, False))
    lengths, history, _ = _flat_lists(rows.column("history"))
    asins = pc.fill_null(pc.struct_field(history, "parent_asin").cast(pa.string()), "")
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), type=pa.int32())
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, asins), ASIN_SEPARATOR)
    return pd.DataFrame(
        {
            "user_id": rows.column("user_id").to_numpy(),
            "split": rows.column("split").to_numpy(),
            "history_asins": joined.to_numpy(zero_copy_only=False),
            "target_parent_asin": pc.struct_field(rows.column("target").combine_chunks(), "parent_asin").to_numpy(zero_copy_only=False),
        }
    )


def pair_validation_with_test(rows: pd.DataFrame) -> pd.DataFrame:
    """Each user's validation row next to its test row (from :func:`evaluation_rows` output).

    An outer join: a user with only one of the two rows gets nulls for the other, and a user
    with repeated rows gets every combination (the one-row-per-split check reports those).
    """
    validation = rows.loc[rows["split"] == "validation", ["user_id", "history_asins", "target_parent_asin"]].rename(
        columns={"history_asins": "validation_history", "target_parent_asin": "validation_target"}
    )
    test = rows.loc[rows["split"] == "test", ["user_id", "history_asins"]].rename(columns={"history_asins": "test_history"})
    return validation.merge(test, on="user_id", how="outer")


def compare_validation_with_test(pairs: pd.DataFrame, max_history: int) -> pd.DataFrame:
    """Per user (a validation row joined with a test row), whether the two agree.

    ``pairs`` has ``user_id``, ``validation_history``, ``validation_target`` and
    ``test_history`` (null where the user lacks that row). The test history minus its last
    item must be the suffix of the validation history, and the validation history must be as
    long as truncation to ``max_history`` allows: one shorter than the test history, or
    ``max_history`` when the test history was truncated. The validation target must be the last
    item of the test history.
    """
    history_matches, target_matches = [], []
    for validation_history, validation_target, test_history in zip(
        pairs["validation_history"], pairs["validation_target"], pairs["test_history"], strict=True
    ):
        if not isinstance(validation_history, str) or not isinstance(test_history, str):
            history_matches.append(False)
            target_matches.append(False)
            continue
        test_items = test_history.split(ASIN_SEPARATOR) if test_history else []
        validation_items = validation_history.split(ASIN_SEPARATOR) if validation_history else []
        expected_prefix = test_items[:-1]
        # One item shorter than the test history, unless the test history was cut to
        # max_history, in which case the validation history may be cut too (then it is full).
        allowed_lengths = {len(test_items) - 1}
        if len(test_items) >= max_history:
            allowed_lengths.add(max_history)
        suffix = validation_items[len(validation_items) - len(expected_prefix) :] if expected_prefix else []
        history_matches.append(bool(test_items) and len(validation_items) in allowed_lengths and suffix == expected_prefix)
        target_matches.append(bool(test_items) and test_items[-1] == validation_target)
    return pd.DataFrame(
        {
            "user_id": pairs["user_id"].to_numpy(dtype=object),
            "validation_history_matches_test": np.asarray(history_matches, dtype=bool),
            "validation_target_matches_test": np.asarray(target_matches, dtype=bool),
        },
        index=pairs.index,
    )
