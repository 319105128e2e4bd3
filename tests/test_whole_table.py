"""validation.whole_table's key-count map-reduce on hostile part files (types that disagree, NaN)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from validation.whole_table import for_group, key_count_buckets, repeated_keys


def _reduce(paths: list[str], columns: list[str], buckets: int, table: str = "hostile") -> tuple[int, int, list[dict]]:
    mapped = [for_group([path], key_count_buckets, table=table, columns=columns, buckets=buckets) for path in paths]
    results = [repeated_keys([m[b] for m in mapped], columns, examples=10) for b in range(buckets)]
    examples = sorted((row for _, _, frame in results for row in frame.to_dict("records")), key=repr)
    return sum(r[0] for r in results), sum(r[1] for r in results), examples


@pytest.mark.parametrize("buckets", [1, 2, 3])
def test_keys_repeated_across_parts_are_counted_whatever_the_buckets(tmp_path, buckets) -> None:
    a, b = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    pq.write_table(pa.table({"user_id": ["u1", "u2", "u3", None], "line": [1, 2, 3, None]}), a)
    pq.write_table(pa.table({"user_id": ["u3", "u4", None, None], "line": [3, 4, None, 7]}), b)
    checked, repeated, examples = _reduce([a, b], ["user_id", "line"], buckets)
    # The all-missing key is ignored (as GX does); (u3, 3) repeats across the parts.
    assert (checked, repeated) == (6, 2)
    assert examples == [{"user_id": "u3", "line": 3, "rows": 2}]


def test_a_nan_key_is_missing_like_null_and_disagreeing_types_compare_as_pandas_does(tmp_path) -> None:
    a, b = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    pq.write_table(pa.table({"k": pa.array([1.0, float("nan"), None], pa.float64()), "s": ["x", "x", "x"]}), a)
    checked, repeated, _ = _reduce([a], ["k", "s"], 1)
    assert (checked, repeated) == (3, 2)  # NaN and null are the same missing value (pandas, GX)
    pq.write_table(pa.table({"k": pa.array([5, 6], pa.int64())}), a)
    pq.write_table(pa.table({"k": pa.array(["5", "7"], pa.string())}), b)
    for buckets in (1, 2):
        checked, repeated, examples = _reduce([a, b], ["k"], buckets)
        assert (checked, repeated) == (4, 0) and examples == []  # the text "5" is not the number 5
    pq.write_table(pa.table({"k": pa.array(["7", "8"], pa.string())}), a)  # and equal texts still repeat
    for buckets in (1, 2):
        assert _reduce([a, b], ["k"], buckets)[:2] == (4, 2)


def _as_received(table: pa.Table) -> pa.Table:
    """``table`` as a worker receives it from another: Dask's own serialisation, read back from
    inside a larger frame, at an address that leaves its buffers off their value width."""
    from distributed.protocol import deserialize_bytes, serialize_bytes

    message = serialize_bytes(table)
    for offset in range(1, 16):
        received = deserialize_bytes(memoryview(bytearray(offset) + message)[offset:])
        if any(b is not None and b.address % 8 for c in received.columns for ch in c.chunks for b in ch.buffers()):
            return received
    raise AssertionError("no offset misaligned the buffers")


def test_pieces_received_from_other_workers_are_reduced_without_arrow_warnings(tmp_path, capfd) -> None:
    # A 150k-user chain printed 95 "An input buffer was poorly aligned" lines from Arrow's
    # group-by in this reduce, one per misaligned buffer of the pieces other workers sent.
    paths = []
    for index in range(2):
        path = str(tmp_path / f"{index}.parquet")
        pq.write_table(pa.table({"src_file": ["f0"] * 500, "src_line": list(range(500))}), path)
        paths.append(path)
    mapped = [for_group([path], key_count_buckets, table="interactions", columns=["src_file", "src_line"], buckets=2) for path in paths]
    capfd.readouterr()
    results = [repeated_keys([_as_received(m[b]) for m in mapped], ["src_file", "src_line"], examples=3) for b in range(2)]
    assert "aligned" not in capfd.readouterr().err
    assert sum(r[0] for r in results) == 1000
    assert sum(r[1] for r in results) == 1000  # both files name f0: every (file, line) twice


def test_aligned_copies_only_the_misaligned_columns_and_keeps_their_values() -> None:
    from core.tables import BUFFER_ALIGNMENT, aligned

    table = pa.table({"k": [f"k{i}" for i in range(100)], "n": list(range(100)), "l": [[i, i + 1] for i in range(100)]})
    received = _as_received(table)
    fixed = aligned(received)
    assert fixed.equals(table) and fixed.schema == table.schema
    assert all(b is None or b.address % BUFFER_ALIGNMENT == 0 for c in fixed.columns for ch in c.chunks for b in ch.buffers())
    kept = aligned(table)  # nothing to copy: the same buffers
    assert [b.address for b in kept.column("n").chunks[0].buffers() if b] == [b.address for b in table.column("n").chunks[0].buffers() if b]
