"""Writing one release shard: Parquet row groups straight from dictionary-encoded rows.

A release row names about a hundred candidate items by id and title. The streaming builder
keeps those ids and titles dictionary-encoded from the sequences files to the shard
(:data:`DICTIONARY_LEAVES`), and :func:`write_shard` hands them to the Parquet writer as
dictionaries: the writer then writes the dictionary page and the indices as they are, without
decoding a million titles per row group and hashing them again. The file is the one a writer
of the decoded strings makes (:func:`parquet_options`; byte for byte, tested): the dictionary of
a group is reduced to the values the group uses, in order of first use (:func:`first_use`), as
the writer's own encoder orders them, and the Arrow schema stored in the file is the decoded
one, so every reader gets plain strings back. That holds while each group's dictionary fits one
dictionary page (:data:`DICTIONARY_PAGE_BYTES`); a shard with a group whose dictionary does not
(a large catalog) is written from decoded strings instead, as a writer of them writes it.

Column statistics (min and max per row group) are written for every leaf except those ids and
titles: the smallest and largest of a million titles do not let a reader skip a row group, and
computing them was half of writing a shard (measured in docs/PERFORMANCE.md, "Tenth session").
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.tables import arrow_bytes, content_cache

# Rows per Parquet row group of a shard: a shard is written a row group at a time, so writing
# holds one group, not the shard. A shard of fewer rows is one group, as pq.write_table makes it.
ROW_GROUP_ROWS = 10_000
# Largest Parquet dictionary page of a shard column (the writer's default is 1 MiB). A row group
# of 10,000 rows names a million candidates drawn from the catalog; with the default their
# titles outgrew the dictionary and were written plain. At 8 MiB a 100,000-row shard of the
# 150k-user benchmark is 72 MB instead of 150 MB (it reads back as the same strings). At 14M
# reviews (a 600k-item catalog) a row group's candidates name 175k titles, 10.7 MB with the
# page's 4 bytes an entry: past 8 MiB, every shard fell back to plain pages, decoded and hashed
# a million titles a group and was 163 MB. The plain path costs the 150k release 1.5x the CPU
# for 2.4x the bytes (measured in docs/PERFORMANCE.md, "Fourteenth session"). 32 MiB holds the
# 14M catalog's groups with room for a catalog three times larger; any reader takes pages of
# that size, and a larger catalog still falls back to plain pages.
DICTIONARY_PAGE_BYTES = 32 << 20
DICTIONARY_LEAVES = frozenset({("history", "parent_asin"), ("history", "title"), ("candidates", "parent_asin"), ("candidates", "title")})
"""``(list column, struct field)``: the item ids and titles of the lists, a hundred a row from one catalog."""


def _is_list_of_structs(data_type: pa.DataType) -> bool:
    return pa.types.is_list(data_type) and pa.types.is_struct(data_type.value_type)


def _has_dictionary_leaves(data_type: pa.DataType) -> bool:
    return _is_list_of_structs(data_type) and any(pa.types.is_dictionary(f.type) for f in data_type.value_type)


def with_dictionary_leaves(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the :data:`DICTIONARY_LEAVES` string fields dictionary-encoded (the same schema if it has none)."""

    def item(list_name: str, field: pa.Field) -> pa.Field:
        encoded = (list_name, field.name) in DICTIONARY_LEAVES
        return field.with_type(pa.dictionary(pa.int32(), field.type)) if encoded else field

    fields = []
    for top in schema:
        if _is_list_of_structs(top.type):
            top = top.with_type(pa.list_(pa.struct([item(top.name, f) for f in top.type.value_type])))
        fields.append(top)
    return pa.schema(fields, metadata=schema.metadata)


def _leaf_paths(name: str, data_type: pa.DataType) -> Iterator[tuple[str, ...]]:
    """The Parquet column paths under one Arrow field (lists written in the compliant 3-level form)."""
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        for rest in _leaf_paths("element", data_type.value_type):
            yield (name, "list", *rest)
    elif pa.types.is_struct(data_type):
        for child in data_type:
            for rest in _leaf_paths(child.name, child.type):
                yield (name, *rest)
    else:
        yield (name,)


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """The Parquet writer settings of a shard of ``schema`` (decoded form): the reference a
    writer of plain strings uses to make the same file."""
    statistics = [
        ".".join(path)
        for top in schema
        for path in _leaf_paths(top.name, top.type)
        if not (len(path) == 4 and path[1] == "list" and (path[0], path[3]) in DICTIONARY_LEAVES)
    ]
    return {"compression": "zstd", "dictionary_pagesize_limit": DICTIONARY_PAGE_BYTES, "write_statistics": statistics}


def first_use(pieces: list[pa.Array]) -> pa.DictionaryArray:
    """``pieces`` (dictionary-encoded or plain strings) as one dictionary array whose dictionary
    holds each value they use once, in order of first use: what a Parquet writer's own
    dictionary encoding of the decoded values builds. Unused dictionary entries are dropped.

    Pieces that share one dictionary (the candidate lists of every staging file carry the
    sequences table's catalog-wide one: ``pipeline.sequences.candidates.DistinctStrings``) are
    reduced on their indices alone, once that dictionary is known to hold no repeated value and
    no null (:func:`distinct_values`); the used values of pieces with other dictionaries (the
    histories') are merged by value."""
    encoded = [piece if pa.types.is_dictionary(piece.type) else pc.dictionary_encode(piece) for piece in pieces]
    if encoded and _one_dictionary(encoded) and distinct_values(encoded[0].dictionary):
        return pa.DictionaryArray.from_arrays(*_reduced(pa.concat_arrays([piece.indices for piece in encoded]), encoded[0].dictionary))
    used_values: list[pa.Array] = []
    indices: list[pa.Array] = []
    offset = 0
    for piece in encoded:
        piece_indices, values = _reduced(piece.indices, piece.dictionary, offset)
        indices.append(piece_indices)
        used_values.append(values)
        offset += len(values)
    # A value used by two pieces appears twice here, the first time at its first use overall.
    values = pc.dictionary_encode(pa.concat_arrays(used_values))
    return pa.DictionaryArray.from_arrays(values.indices.take(pa.concat_arrays(indices)), values.dictionary)


def _one_dictionary(pieces: list[pa.DictionaryArray]) -> bool:
    """Whether every piece has the first one's dictionary (the same values in the same order)."""
    first = pieces[0].dictionary
    return all(piece.dictionary is first or piece.dictionary.equals(first) for piece in pieces[1:])


@content_cache(maxsize=64)
def distinct_values(dictionary: pa.Array) -> bool:
    """Whether ``dictionary`` holds each value once and no null, so that the values its indices
    use are a group's dictionary as they stand. Answered once per content (about 1 ms to key
    617k ids, where finding repeats takes about 100 ms): the row groups of a shard all carry the
    one catalog-wide dictionary of the candidates."""
    return dictionary.null_count == 0 and len(pc.unique(dictionary)) == len(dictionary)


def _reduced(raw: pa.Array, dictionary: pa.Array, offset: int = 0) -> tuple[pa.Array, pa.Array]:
    """Indices ``raw`` into ``dictionary`` as indices (counted from ``offset``) into the entries
    they use, in order of first use, and those entries."""
    used = pc.unique(raw).drop_null()  # hash order: first use
    position = np.zeros(max(len(dictionary), 1), dtype=np.int32)  # all-null indices read slot 0
    position[used.to_numpy()] = np.arange(offset, offset + len(used), dtype=np.int32)
    mask = raw.is_null().to_numpy(zero_copy_only=False) if raw.null_count else None
    indices = pa.array(position[raw.fill_null(0).to_numpy()], pa.int32(), mask=mask)
    return indices, dictionary.take(used)


def _list_of_structs(chunks: list[pa.ListArray], target: pa.ListType) -> pa.ListArray:
    """Chunks of a list-of-structs column as one fresh array of ``target``, its dictionary leaves by :func:`first_use`."""
    offsets: list[np.ndarray] = []
    structs: list[pa.StructArray] = []
    start = 0
    for chunk in chunks:
        bounds = chunk.offsets.to_numpy()
        offsets.append(bounds[:-1] - bounds[0] + start)
        structs.append(chunk.values.slice(bounds[0], bounds[-1] - bounds[0]))
        start += int(bounds[-1] - bounds[0])
    offsets.append(np.array([start], dtype=np.int32))
    children = []
    for index, field in enumerate(target.value_type):
        pieces = [struct.field(index) for struct in structs]
        if pa.types.is_dictionary(field.type):
            children.append(first_use(pieces))
        else:
            children.append(pa.concat_arrays([piece.cast(field.type) for piece in pieces]))
    struct_nulls = sum(struct.null_count for struct in structs)
    struct_mask = pa.concat_arrays([struct.is_null() for struct in structs]) if struct_nulls else None
    values = pa.StructArray.from_arrays(children, fields=list(target.value_type), mask=struct_mask)
    list_mask = pa.concat_arrays([chunk.is_null() for chunk in chunks]) if any(c.null_count for c in chunks) else None
    return pa.ListArray.from_arrays(pa.array(np.concatenate(offsets), pa.int32()), values, type=target, mask=list_mask)


def encoded_group(table: pa.Table, target: pa.Schema) -> pa.Table:
    """``table``'s rows as a fresh table of ``target``, one chunk per column: the shard's schema
    (dictionary-encoded strings decoded) or its :func:`with_dictionary_leaves` form (each
    dictionary leaf by :func:`first_use`)."""
    columns = []
    for field, column in zip(target, table.columns):
        chunks = column.chunks or [pa.array([], column.type)]
        if _has_dictionary_leaves(field.type):
            columns.append(_list_of_structs(chunks, field.type))
        else:
            columns.append(pa.concat_arrays([chunk.cast(field.type) for chunk in chunks]))
    return pa.Table.from_arrays(columns, schema=target)


def _row_groups(pieces: Iterable[pa.Table], names: list[str]) -> Iterator[pa.Table]:
    """Consecutive ``pieces`` (their columns ``names``) as tables of :data:`ROW_GROUP_ROWS` rows (the last one may be shorter)."""
    pending: list[pa.Table] = []
    buffered = 0
    for piece in pieces:
        pending.append(piece.select(names))
        buffered += piece.num_rows
        while buffered >= ROW_GROUP_ROWS:
            table = pa.concat_tables(pending)
            yield table.slice(0, ROW_GROUP_ROWS)
            pending, buffered = [table.slice(ROW_GROUP_ROWS)], buffered - ROW_GROUP_ROWS
    if buffered:
        yield pa.concat_tables(pending)


def dictionaries_fit(group: pa.Table) -> bool:
    """Whether each dictionary of an :func:`encoded_group` stays under :data:`DICTIONARY_PAGE_BYTES`
    as the Parquet writer counts it (4 bytes and the value per entry)."""
    for column in group.columns:
        if not _has_dictionary_leaves(column.type):
            continue
        for chunk in column.chunks:
            for index, field in enumerate(chunk.type.value_type):
                if pa.types.is_dictionary(field.type):
                    dictionary = chunk.values.field(index).dictionary
                    if (pc.sum(pc.binary_length(dictionary)).as_py() or 0) + 4 * len(dictionary) >= DICTIONARY_PAGE_BYTES:
                        return False
    return True


class _DictionaryTooLarge(Exception):
    """A row group's dictionary does not fit a page: the shard is written again from decoded strings."""


def _write_groups(groups: Iterator[pa.Table], partial: Path, schema: pa.Schema, written: pa.Schema | None) -> int:
    """Write ``groups`` (prepared in a second thread while the one before is written) into
    ``partial``; return their Arrow size. With ``written`` (the dictionary form) the writer is
    given the dictionaries and stores the decoded schema, as a writer of the decoded table would
    (schema metadata, then ARROW:schema); a group whose dictionary does not fit a page raises
    :class:`_DictionaryTooLarge`."""
    nbytes = 0
    writer = pq.ParquetWriter(partial, written or schema, store_schema=written is None, **parquet_options(schema))
    with writer, ThreadPoolExecutor(max_workers=1) as preparer:
        upcoming = preparer.submit(next, groups, None)
        while (group := upcoming.result()) is not None:
            upcoming = preparer.submit(next, groups, None)
            if written is not None and not dictionaries_fit(group):
                raise _DictionaryTooLarge
            writer.write_table(group, row_group_size=group.num_rows)
            nbytes += arrow_bytes(group)
        if not nbytes:  # no row: one empty group, so the split exists for load_dataset
            writer.write_table(schema.empty_table())
        if written is not None:
            writer.add_key_value_metadata({**(schema.metadata or {}), b"ARROW:schema": base64.b64encode(schema.serialize().to_pybytes())})
    return nbytes


def write_shard(pieces: Callable[[], Iterable[pa.Table]] | Sequence[pa.Table], path: Path, schema: pa.Schema) -> dict[str, Any]:
    """Write consecutive ``pieces`` of rows as one Parquet shard of ``schema``; return its sha256,
    bytes and Arrow size (:func:`core.tables.arrow_bytes`, summed over its row groups).

    ``pieces`` is a sequence of tables or a function that yields them (called again if the
    shard is started over). They may hold the :data:`DICTIONARY_LEAVES` dictionary-encoded or
    plain (all of one schema). Row groups hold :data:`ROW_GROUP_ROWS` rows whatever the pieces
    are, and the file is the one a writer of the decoded rows makes with :func:`parquet_options`,
    so its bytes depend on its rows only (not on how a builder cut them or encoded them).

    It is written from the dictionaries (:func:`encoded_group`) while each group's dictionary
    fits a page. A group whose dictionary does not (the writer would fall back to plain pages
    part way through it, and only a writer of the decoded strings makes the reference file
    then) starts the shard over from decoded strings, as for a catalog too large for the
    dictionaries (at 14M reviews a row group's candidates name 175k titles, 10 MB): there the
    first group already tells. A group is prepared in a second thread while the one before it
    is written, so at most two are held. The file appears under its name only once complete.
    """
    source = pieces if callable(pieces) else lambda: pieces
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    written = with_dictionary_leaves(schema)
    raw = _row_groups(source(), written.names)
    first = next(raw, None)
    if written != schema and first is not None:  # an empty shard: written as from decoded rows
        try:
            groups = (encoded_group(table, written) for table in itertools.chain([first], raw))
            return _published(partial, path, _write_groups(groups, partial, schema, written))
        except _DictionaryTooLarge:
            raw = _row_groups(source(), written.names)
            first = next(raw, None)
    groups = (encoded_group(table, schema) for table in itertools.chain([first] if first is not None else [], raw))
    return _published(partial, path, _write_groups(groups, partial, schema, None))


def _published(partial: Path, path: Path, nbytes: int) -> dict[str, Any]:
    """Hash the complete ``partial`` file and move it to ``path``; its sha256, bytes and Arrow size."""
    digest = hashlib.sha256()
    with open(partial, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    os.replace(partial, path)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size, "nbytes": nbytes}
