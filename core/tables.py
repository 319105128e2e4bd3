"""Reading and writing the Parquet tables of a run folder with their explicit schemas."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

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
