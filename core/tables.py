"""Reading and writing the Parquet tables of a run folder with their explicit schemas."""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import xxhash

from core.schemas import TABLE_SCHEMAS


def part_name(index: int) -> str:
    """File name of partition ``index``; zero-padded so lexical order is partition order."""
    return f"part-{index:05d}.parquet"


def write_part(table: pa.Table, folder: Path, index: int, schema: pa.Schema | None = None) -> Path:
    """Write one partition file, cast to ``schema`` (an error, not a silent change, if it cannot).

    The file appears under its name only once complete (written under a hidden name, then
    renamed), so a part file that exists is whole: a resumed stage can trust it.
    """
    if schema is not None and table.schema != schema:
        table = table.select(schema.names).cast(schema)
    path = Path(folder) / part_name(index)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    pq.write_table(table, partial, compression="zstd")
    os.replace(partial, path)
    return path


def dataset(folder: Path, name: str | None = None) -> pads.Dataset:
    """A pyarrow dataset over a table folder, with its declared schema when ``name`` is known."""
    schema = TABLE_SCHEMAS.get(name or Path(folder).name)
    return pads.dataset(str(folder), format="parquet", schema=schema)


def read_table(folder: Path, name: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read a whole table folder in partition order."""
    return dataset(folder, name).to_table(columns=columns)


def parts(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.parquet"))


FileSignature = tuple[tuple[str, int, int], ...]
"""A table folder's part files with their mtime and size: a cache key that changes with the files."""


def folder_signature(folder: Path) -> FileSignature:
    """The :data:`FileSignature` of a table folder (empty when it has no part files)."""
    return tuple((str(f), (st := f.stat()).st_mtime_ns, st.st_size) for f in parts(folder))


def content_key(array: pa.Array) -> tuple[object, ...]:
    """A key equal for two arrays of the same type, offset, length and buffer bytes (xxh3 of each
    buffer: about 1 ms for 600k item ids)."""
    return (str(array.type), array.offset, len(array), *(None if b is None else xxhash.xxh3_128_digest(b) for b in array.buffers()))


R = TypeVar("R")


def content_cache(maxsize: int) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorator: remember a function of arrays by their contents (:func:`content_key`), for work
    on values that arrive again in arrays read separately (each staging file of a release gives
    its own copy of the candidates' catalog-wide dictionary). Emptied when ``maxsize`` results
    are held; ``cache_clear()`` as ``functools.lru_cache``'s."""

    def decorate(function: Callable[..., R]) -> Callable[..., R]:
        results: dict[tuple[object, ...], Any] = {}

        @functools.wraps(function)
        def remembered(*arrays: pa.Array) -> R:
            key = tuple(content_key(array) for array in arrays)
            if key not in results:
                if len(results) >= maxsize:
                    results.clear()
                results[key] = function(*arrays)
            return results[key]

        remembered.cache_clear = results.clear  # type: ignore[attr-defined]
        return remembered

    return decorate


def _padded(size: int) -> int:
    return (size + 7) & ~7


def _string_bytes(array: pa.Array) -> int:
    """Bytes of the values of a string or binary array, or of a dictionary array of them, decoded."""
    if pa.types.is_dictionary(array.type):
        lengths = pc.binary_length(array.dictionary).take(array.indices)
    else:
        lengths = pc.binary_length(array)
    return pc.sum(lengths).as_py() or 0


def _column_bytes(chunks: list[pa.Array], data_type: pa.DataType) -> int:
    rows = sum(len(chunk) for chunk in chunks)
    size = _padded((rows + 7) // 8) if any(chunk.null_count for chunk in chunks) else 0
    value_type = data_type.value_type if pa.types.is_dictionary(data_type) else data_type
    if pa.types.is_string(value_type) or pa.types.is_binary(value_type):
        return size + _padded(4 * (rows + 1)) + _padded(sum(_string_bytes(chunk) for chunk in chunks))
    if pa.types.is_large_string(value_type) or pa.types.is_large_binary(value_type):
        return size + _padded(8 * (rows + 1)) + _padded(sum(_string_bytes(chunk) for chunk in chunks))
    if pa.types.is_dictionary(data_type):
        return _column_bytes([chunk.dictionary_decode() for chunk in chunks], value_type)
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        width = 8 if pa.types.is_large_list(data_type) else 4
        return size + _padded(width * (rows + 1)) + _column_bytes([chunk.flatten() for chunk in chunks], data_type.value_type)
    if pa.types.is_struct(data_type):
        return size + sum(_column_bytes([chunk.field(i) for chunk in chunks], f.type) for i, f in enumerate(data_type))
    if pa.types.is_null(data_type):
        return 0
    if pa.types.is_boolean(data_type):
        return size + _padded((rows + 7) // 8)
    return size + _padded(rows * data_type.bit_width // 8)


def arrow_bytes(table: pa.Table) -> int:
    """The Arrow size of ``table``'s rows, whatever their memory layout and encoding: the bytes of
    the buffers of a fresh, plain copy, each padded to 8 bytes (offsets and values; a validity
    bitmap only where a column holds nulls; dictionary-encoded values counted decoded).

    ``Table.nbytes`` depends on how the rows were built: a Parquet reader gives every nullable
    column a bitmap, a slice counts bytes it does not use, a dictionary counts each value once.
    """
    return sum(_column_bytes(column.chunks, column.type) for column in table.columns)


BUFFER_ALIGNMENT = 8
"""The widest value of our tables' columns (int64, double, large offsets): Arrow's Acero engine
(group by, join) wants each buffer aligned to its value width. Buffers received from another
process (Dask deserialises a table inside its message frames) can start anywhere; Acero then
warns on stderr once per buffer ("An input buffer was poorly aligned") and copies."""


def aligned(table: pa.Table) -> pa.Table:
    """``table`` with each chunk that has a buffer off :data:`BUFFER_ALIGNMENT` copied into fresh
    memory (the others are kept as they are): an input Acero reads without a warning."""
    columns = []
    for column in table.columns:
        chunks = column.chunks
        if any(buffer is not None and buffer.address % BUFFER_ALIGNMENT for chunk in chunks for buffer in chunk.buffers()):
            memory = pa.default_cpu_memory_manager()
            column = pa.chunked_array([chunk.copy_to(memory) for chunk in chunks], column.type)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=table.schema)


def list_leaf_paths(schema: pq.ParquetSchema, leaves: Collection[tuple[str, str]]) -> list[str]:
    """The file's paths of the ``(list column, struct field)`` leaves: ``history.list.item.title``,
    or ``history.list.element.title`` as other writers name a list's items."""
    found = []
    for column in schema:
        names = column.path.split(".")
        if len(names) == 4 and names[1] == "list" and (names[0], names[3]) in leaves:
            found.append(column.path)
    return found


ITEM_ID_DICTIONARY_BYTES = 6
"""The most bytes a value a dictionary-encoded item id leaf takes: its indices take 1 to 3 bytes a
value; a plain-encoded item id takes 14 (10 characters and a length)."""


def dictionary_pages(parquet: pq.ParquetFile, path: str, max_bytes_per_value: float) -> bool:
    """Whether the leaf at column ``path`` is dictionary-encoded throughout, judged from the footer:
    a dictionary page in every row group and at most ``max_bytes_per_value`` bytes a value.

    A writer falls back to plain pages once a dictionary outgrows its page (a big catalogue);
    Arrow then rebuilds the dictionary value by value, several times slower than reading strings.
    """
    metadata = parquet.metadata
    column = [leaf.path for leaf in parquet.schema].index(path)
    chunks = [metadata.row_group(i).column(column) for i in range(metadata.num_row_groups)]
    return bool(chunks) and all(
        c.has_dictionary_page and c.total_uncompressed_size <= max_bytes_per_value * max(c.num_values, 1) for c in chunks
    )


def read_with_dictionaries(part: str, columns: list[str], as_dictionary: list[str], metadata: pq.FileMetaData | None = None) -> pa.Table:
    """``columns`` of a part file, the leaves ``as_dictionary`` dictionary-encoded. ``metadata``
    (the file's footer, when the caller has read it already) is not read again.

    Arrow reads a nested dictionary leaf of one row group only, so row groups are read one by
    one (one chunk each; combining them later unifies the dictionaries). Should Arrow still
    refuse, the leaves are read as plain strings: the values are the same either way.
    """
    parquet = pq.ParquetFile(part, metadata=metadata, read_dictionary=as_dictionary)
    try:
        if parquet.num_row_groups:
            return pa.concat_tables([parquet.read_row_group(i, columns=columns) for i in range(parquet.num_row_groups)])
    except pa.ArrowNotImplementedError:
        pass
    return pq.ParquetFile(part, metadata=parquet.metadata).read(columns=columns)
