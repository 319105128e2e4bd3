"""Release shards written from dictionary-encoded rows (release.shards) and the layout-free Arrow size.

The fast path hands the lists' item ids and titles to the Parquet writer as dictionaries; the
reference is a writer of the decoded strings with the same settings. They must make the same
file, byte for byte, whatever dictionaries the pieces came with.
"""

from __future__ import annotations

import itertools
import random

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from core.schemas import RELEASE_ROW
from core.tables import arrow_bytes
from release import shards
from release.builder import DICTIONARY_RELEASE_ROW
from release.shards import DICTIONARY_PAGE_BYTES, ROW_GROUP_ROWS, first_use, parquet_options, write_shard


def _release_rows(count: int, catalog: int, candidates: int, seed: int = 7, title_bytes: int = 12) -> pa.Table:
    rng = random.Random(seed)

    def item(index: int) -> dict:
        title = None if index % 97 == 0 else f"title {index:0{title_bytes}d} <b>&</b>"
        return {"parent_asin": f"B{index:09d}", "title": title}

    rows = []
    for number in range(count):
        history = [{**item(rng.randrange(catalog)), "rating": 4.0, "timestamp": 1_600_000_000_000 + number} for _ in range(3)]
        target_index = rng.randrange(catalog)
        rows.append(
            {
                "user_id": f"U{number:07d}",
                "history": history,
                "target": {
                    "parent_asin": f"B{target_index:09d}",
                    "title": "t",
                    "categories": ["Grocery"],
                    "store": None,
                    "rating": 5.0,
                    "timestamp": 1,
                },
                "candidates": [item(rng.randrange(catalog)) for _ in range(candidates)],
                "target_index": 0,
                "rationale": None if number % 3 else f"because {number}",
                "user_preferences": None,
                "annotator": "template",
                "model": None,
                "prompt_version": "v1",
            }
        )
    return pa.Table.from_pylist(rows, schema=RELEASE_ROW)


def _with_noisy_dictionaries(table: pa.Table, unused: int) -> pa.Table:
    """``table`` with its list leaves dictionary-encoded over a shuffled dictionary that also holds unused values."""
    encoded = table.cast(DICTIONARY_RELEASE_ROW)
    columns = []
    for field, column in zip(DICTIONARY_RELEASE_ROW, encoded.columns):
        if field.name not in ("history", "candidates"):
            columns.append(column)
            continue
        chunks = []
        for chunk in column.chunks:
            struct = chunk.values
            children = []
            for index, child_field in enumerate(struct.type):
                child = struct.field(index)
                if pa.types.is_dictionary(child_field.type):
                    decoded = child.dictionary_decode()
                    extra = pa.array([f"unused {field.name} {i}" for i in range(unused)])
                    dictionary = pc.unique(pa.concat_arrays([extra, decoded.drop_null()]))
                    order = list(range(len(dictionary)))
                    random.Random(unused).shuffle(order)
                    dictionary = dictionary.take(pa.array(order))
                    child = pa.DictionaryArray.from_arrays(pc.index_in(decoded, value_set=dictionary), dictionary)
                children.append(child)
            rebuilt = pa.StructArray.from_arrays(children, fields=list(struct.type))
            chunks.append(pa.ListArray.from_arrays(chunk.offsets, rebuilt))
        columns.append(pa.chunked_array(chunks, field.type))
    return pa.Table.from_arrays(columns, schema=DICTIONARY_RELEASE_ROW)


def _reference_file(table: pa.Table, path) -> bytes:
    with pq.ParquetWriter(path, RELEASE_ROW, **parquet_options(RELEASE_ROW)) as writer:
        for start in range(0, table.num_rows, ROW_GROUP_ROWS):
            writer.write_table(table.slice(start, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
    return path.read_bytes()


def test_a_shard_from_dictionary_pieces_is_the_file_a_writer_of_the_decoded_strings_makes(tmp_path) -> None:
    rows = _release_rows(ROW_GROUP_ROWS + 2_345, catalog=800, candidates=4)
    # Pieces as staging files hand them over: each with its own shuffled dictionary holding
    # values no row uses, cut off the row-group grid and sliced.
    cuts = [0, 1_234, 6_000, ROW_GROUP_ROWS + 17, rows.num_rows]
    pieces = [_with_noisy_dictionaries(rows.slice(a, b - a), unused=50 + a % 7) for a, b in itertools.pairwise(cuts)]
    pieces[1] = pa.concat_tables([pieces[1].slice(0, 100), pieces[1].slice(100)])  # two chunks in one piece

    info = write_shard(pieces, tmp_path / "fast.parquet", RELEASE_ROW)

    assert (tmp_path / "fast.parquet").read_bytes() == _reference_file(rows, tmp_path / "reference.parquet")
    back = pq.read_table(tmp_path / "fast.parquet")
    assert back.schema.equals(RELEASE_ROW) and back.equals(rows)  # readers get the decoded strings
    assert pq.ParquetFile(tmp_path / "fast.parquet").num_row_groups == 2
    assert info["nbytes"] == arrow_bytes(rows.slice(0, ROW_GROUP_ROWS)) + arrow_bytes(rows.slice(ROW_GROUP_ROWS))
    # Plain pieces (the in-memory builder's) make the same file.
    assert write_shard([rows], tmp_path / "plain.parquet", RELEASE_ROW)["sha256"] == info["sha256"]


def _over_one_dictionary(table: pa.Table, repeat: str | None = None) -> pa.Table:
    """``table`` with its list leaves encoded over one dictionary per leaf for the whole table (as
    the staging files of a release carry the sequences table's catalog-wide dictionaries): the
    values reversed, then unused ones. With ``repeat``, that leaf's dictionary also holds each
    value a second time, and every other mention of it points at the copy."""
    encoded = table.cast(DICTIONARY_RELEASE_ROW).combine_chunks()
    columns = []
    for field, column in zip(DICTIONARY_RELEASE_ROW, encoded.columns):
        if field.name not in ("history", "candidates"):
            columns.append(column)
            continue
        struct = column.chunk(0).values
        children = []
        for index, child_field in enumerate(struct.type):
            child = struct.field(index)
            if pa.types.is_dictionary(child_field.type):
                decoded = child.dictionary_decode()
                values = pc.unique(decoded.drop_null()).to_pylist()[::-1]
                dictionary = pa.array([*values, *(f"unused {i}" for i in range(30))])
                codes = pc.index_in(decoded, value_set=dictionary)
                if repeat == f"{field.name}.{child_field.name}":
                    dictionary = pa.concat_arrays([dictionary, dictionary])
                    shift = pa.array([len(dictionary) // 2 * (i % 2) for i in range(len(codes))], pa.int32())
                    codes = pc.add(codes, shift)
                child = pa.DictionaryArray.from_arrays(codes, dictionary)
            children.append(child)
        rebuilt = pa.StructArray.from_arrays(children, fields=list(struct.type))
        columns.append(pa.chunked_array([pa.ListArray.from_arrays(column.chunk(0).offsets, rebuilt)], field.type))
    return pa.Table.from_arrays(columns, schema=DICTIONARY_RELEASE_ROW)


@pytest.mark.parametrize("repeat", [None, "candidates.title"])
def test_pieces_sharing_one_dictionary_make_the_decoded_writers_file(repeat, tmp_path) -> None:
    # Every staging file of a real release carries the same catalog-wide dictionaries, so a row
    # group's pieces are reduced on their indices alone. A shared dictionary that holds a value
    # twice (two codes for one title) must still give one dictionary entry per title.
    rows = _release_rows(ROW_GROUP_ROWS + 1_500, catalog=900, candidates=4)
    shared = _over_one_dictionary(rows, repeat)
    cuts = [0, 3_000, 7_777, ROW_GROUP_ROWS + 5, rows.num_rows]
    pieces = [shared.slice(a, b - a) for a, b in itertools.pairwise(cuts)]
    write_shard(pieces, tmp_path / "shared.parquet", RELEASE_ROW)
    assert (tmp_path / "shared.parquet").read_bytes() == _reference_file(rows, tmp_path / "reference.parquet")
    assert pq.read_table(tmp_path / "shared.parquet").equals(rows)


def test_first_use_over_one_shared_dictionary_drops_unused_values_and_keeps_nulls() -> None:
    dictionary = pa.array(["u", "c", "a", "b"])
    first = pa.DictionaryArray.from_arrays(pa.array([1, None, 2, 1], pa.int32()), dictionary)
    second = pa.DictionaryArray.from_arrays(pa.array([3, 2, None], pa.int32()), dictionary)
    merged = first_use([first, second])
    assert merged.dictionary.to_pylist() == ["c", "a", "b"]
    assert merged.dictionary_decode().to_pylist() == ["c", None, "a", "c", "b", "a", None]
    twice = pa.DictionaryArray.from_arrays(pa.array([0, 2, 1], pa.int32()), pa.array(["a", "b", "a"]))
    assert first_use([twice, twice]).dictionary.to_pylist() == ["a", "b"]
    # What is remembered of a dictionary is its content: one of the same length and type that
    # repeats a value is checked afresh.
    distinct = pa.DictionaryArray.from_arrays(pa.array([0, 2, 1], pa.int32()), pa.array(["a", "b", "c"]))
    assert first_use([distinct, distinct]).dictionary.to_pylist() == ["a", "c", "b"]
    again = pa.DictionaryArray.from_arrays(pa.array([0, 2, 1], pa.int32()), pa.array(["a", "b", "a"]))
    assert first_use([again, again]).dictionary.to_pylist() == ["a", "b"]
    # A null entry of the shared dictionary is a missing value, as the writer of the decoded strings sees it.
    with_null = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2], pa.int32()), pa.array(["a", None, "b"]))
    merged = first_use([with_null, with_null])
    assert merged.dictionary.to_pylist() == ["a", "b"] and merged.null_count == 2
    assert merged.dictionary_decode().to_pylist() == ["a", None, "b", "a", None, "b"]


def test_shard_statistics_cover_every_column_but_the_list_ids_and_titles(tmp_path) -> None:
    rows = _release_rows(50, catalog=30, candidates=3)
    write_shard([rows.cast(DICTIONARY_RELEASE_ROW)], tmp_path / "s.parquet", RELEASE_ROW)
    group = pq.ParquetFile(tmp_path / "s.parquet").metadata.row_group(0)
    with_statistics = {group.column(i).path_in_schema: group.column(i).is_stats_set for i in range(group.num_columns)}
    assert with_statistics["user_id"] and with_statistics["history.list.element.timestamp"] and with_statistics["target.title"]
    assert not with_statistics["candidates.list.element.title"] and not with_statistics["history.list.element.parent_asin"]
    assert group.column(0).statistics.min == "U0000000"


def _with_distinct_titles(count: int) -> tuple[pa.Table, pa.Table]:
    """A row group of 500 titles, then ``count`` rows of 40 distinct 120-byte candidate titles each."""
    fitting = _release_rows(ROW_GROUP_ROWS, catalog=500, candidates=3)
    distinct = _release_rows(count, catalog=count * 40 * 10, candidates=40, seed=3, title_bytes=120)
    return fitting, distinct


def _candidate_title_bytes(rows: pa.Table) -> int:
    titles = pc.list_flatten(rows["candidates"]).combine_chunks().field("title")
    return pc.sum(pc.binary_length(pc.unique(titles))).as_py()


def test_a_shard_with_a_dictionary_too_large_for_a_page_is_the_reference_file_too(tmp_path, monkeypatch) -> None:
    # The first row group's titles fit a dictionary page; the second's are all distinct and
    # long, past the page limit (made small here): the whole shard is then written from decoded
    # strings, as a writer of them writes it (which falls back to plain pages in that group).
    monkeypatch.setattr(shards, "DICTIONARY_PAGE_BYTES", 1 << 20)
    fitting, distinct = _with_distinct_titles(500)
    assert _candidate_title_bytes(distinct) > shards.DICTIONARY_PAGE_BYTES
    rows = pa.concat_tables([fitting, distinct])
    info = write_shard([rows.cast(DICTIONARY_RELEASE_ROW)], tmp_path / "big.parquet", RELEASE_ROW)
    assert (tmp_path / "big.parquet").read_bytes() == _reference_file(rows, tmp_path / "reference.parquet")
    assert pq.read_table(tmp_path / "big.parquet").equals(rows)
    column = pq.ParquetFile(tmp_path / "big.parquet").metadata.row_group(1).column(12)
    assert column.path_in_schema == "candidates.list.element.title" and "PLAIN" in column.encodings
    assert info["nbytes"] == arrow_bytes(fitting) + arrow_bytes(distinct)


def test_a_group_of_titles_past_8_mib_keeps_its_dictionary_page(tmp_path) -> None:
    # At 14M reviews a row group's candidates name 175k titles (10.7 MB): under the old 8 MiB
    # limit those shards fell back to plain pages, every mention a whole title, 163 MB a shard.
    # Such a group is now written from its dictionary, and is still the file a writer of the
    # decoded strings makes. (Long titles, each named eight times: a dictionary of 10 MB.)
    rows = _release_rows(2_000, catalog=10_000, candidates=40, seed=3, title_bytes=1_000)
    titles = pc.list_flatten(rows["candidates"]).combine_chunks().field("title")
    dictionary_bytes = _candidate_title_bytes(rows) + 4 * len(pc.unique(titles))
    assert 8 << 20 < dictionary_bytes < DICTIONARY_PAGE_BYTES
    write_shard([rows.cast(DICTIONARY_RELEASE_ROW)], tmp_path / "large.parquet", RELEASE_ROW)
    assert (tmp_path / "large.parquet").read_bytes() == _reference_file(rows, tmp_path / "reference.parquet")
    column = pq.ParquetFile(tmp_path / "large.parquet").metadata.row_group(0).column(12)
    assert column.path_in_schema == "candidates.list.element.title" and column.has_dictionary_page
    # Plain pages after a fallback would hold most of the 80,000 mentions whole (about 60 MB).
    assert column.total_uncompressed_size < 1.5 * dictionary_bytes
    assert pq.read_table(tmp_path / "large.parquet").equals(rows)


def test_first_use_keeps_the_values_and_orders_the_dictionary_by_first_use() -> None:
    first = pa.DictionaryArray.from_arrays(pa.array([2, 0, None, 2, 3], pa.int32()), pa.array(["c", "a", "x", "b"]))
    second = pa.array(["a", "d", None, "c"])
    merged = first_use([first, second.slice(0, 4)])
    assert merged.dictionary_decode().to_pylist() == ["x", "c", None, "x", "b", "a", "d", None, "c"]
    assert merged.dictionary.to_pylist() == ["x", "c", "b", "a", "d"]
    # A piece whose values are all missing may come with an empty dictionary.
    empty = pa.DictionaryArray.from_arrays(pa.array([None, None], pa.int32()), pa.array([], pa.string()))
    assert first_use([empty, pa.array(["a"])]).dictionary_decode().to_pylist() == [None, None, "a"]


@pytest.mark.parametrize("name", ["plain", "chunked", "sliced", "dictionary", "parquet"])
def test_arrow_bytes_depend_on_the_rows_not_on_their_layout_or_encoding(name, tmp_path) -> None:
    rows = _release_rows(300, catalog=40, candidates=5)
    expected = arrow_bytes(rows.combine_chunks())
    if name == "chunked":
        table = pa.concat_tables([rows.slice(0, 7), rows.slice(7, 100), rows.slice(107)])
    elif name == "sliced":
        table = pa.concat_tables([rows, rows]).slice(rows.num_rows, rows.num_rows)
    elif name == "dictionary":
        table = _with_noisy_dictionaries(rows, unused=25)
    elif name == "parquet":
        pq.write_table(rows, tmp_path / "r.parquet", row_group_size=64)
        table = pq.read_table(tmp_path / "r.parquet")
    else:
        table = rows
    assert arrow_bytes(table) == expected


def test_arrow_bytes_count_padded_buffers_and_a_bitmap_only_where_there_are_nulls() -> None:
    # strings: offsets 4 * 4 = 16, values 6 -> 8; with a null: + bitmap 1 -> 8
    assert arrow_bytes(pa.table({"s": ["ab", "c", "def"]})) == 16 + 8
    assert arrow_bytes(pa.table({"s": ["ab", None, "def"]})) == 8 + 16 + 8
    # int64: 3 * 8; list<int32>: offsets 16 + values 5 * 4 = 20 -> 24
    assert arrow_bytes(pa.table({"n": pa.array([1, 2, 3], pa.int64())})) == 24
    assert arrow_bytes(pa.table({"l": pa.array([[1, 2], [3], [4, 5]], pa.list_(pa.int32()))})) == 16 + 24
