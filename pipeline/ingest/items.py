"""The item catalog's last step: one row per ``parent_asin``, the first in file and line order.

Metadata blocks write their rows and rejects to a staging area; once every block is done,
:func:`finalize_items` moves each staged part into ``items`` and ``rejects``, rejecting later
records of an item already kept as ``duplicate_parent_asin`` (their ``raw`` is the dropped item
as JSON). Each step can be repeated after a kill: a staged file exists until its final form is
written, and a final ``rejects`` part of a metadata block exists only once it is complete.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.schemas import ITEMS, REJECTS
from core.tables import part_name, write_part
from pipeline.ingest.blocks import rejects_table, row_raw
from pipeline.ingest.sources import SourceFile
from pipeline.ingest.tasks import ITEM_KEYS, BlockResult, keys_path


@dataclass(frozen=True)
class ItemFolders:
    """Where metadata goes: staged by the block tasks, final after :func:`finalize_items`."""

    staged_items: Path
    staged_rejects: Path
    blocks: Path
    items: Path
    rejects: Path


def _duplicates(parts: list[int], blocks: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per metadata part: rows (in the staged part) and input lines of later duplicates."""
    if not parts:
        return {}
    tables = []
    for part in parts:
        keys = pq.read_table(keys_path(blocks, part), schema=ITEM_KEYS)
        tables.append(
            keys.append_column("part", pa.array(np.full(keys.num_rows, part, np.int64))).append_column(
                "row", pa.array(np.arange(keys.num_rows, dtype=np.int64))
            )
        )
    keys = pa.concat_tables(tables).to_pandas()
    later = keys[keys.duplicated("parent_asin", keep="first")]
    return {int(part): (rows["row"].to_numpy(), rows["line"].to_numpy()) for part, rows in later.groupby("part")}


def _finalize_part(part: int, drop: tuple[np.ndarray, np.ndarray], source: SourceFile, folders: ItemFolders) -> None:
    rows, lines = drop
    staged_items, staged_rejects = folders.staged_items / part_name(part), folders.staged_rejects / part_name(part)
    if not (folders.rejects / part_name(part)).exists() and (staged_rejects.exists() or len(rows)):
        found: list[tuple[int, str, str]] = []
        if len(rows):
            dropped = pq.read_table(staged_items, schema=ITEMS).take(pa.array(rows))
            found = [(int(line), "duplicate_parent_asin", row_raw(item)) for line, item in zip(lines, dropped.to_pylist())]
        if staged_rejects.exists():
            found += [(r["line"], r["reason"], r["raw"]) for r in pq.read_table(staged_rejects, schema=REJECTS).to_pylist()]
        write_part(rejects_table(source, found), folders.rejects, part, REJECTS)
    staged_rejects.unlink(missing_ok=True)
    if not staged_items.exists():
        return
    if len(rows):
        items = pq.read_table(staged_items, schema=ITEMS)
        keep = np.ones(items.num_rows, bool)
        keep[rows] = False
        if keep.any():
            write_part(items.filter(pa.array(keep)), folders.items, part, ITEMS)
        staged_items.unlink()
    else:
        os.replace(staged_items, folders.items / part_name(part))


def finalize_items(results: list[BlockResult], meta: list[SourceFile], folders: ItemFolders) -> Counter[int]:
    """Move every staged metadata part into place without its duplicates.

    Returns the number of ``duplicate_parent_asin`` rejects per metadata file index.
    """
    parts = sorted(r.part for r in results if r.kind == "meta")
    source_of = {r.part: meta[r.source_index] for r in results if r.kind == "meta"}
    duplicates = _duplicates(parts, folders.blocks)
    none = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    dropped: Counter[int] = Counter()
    for part in parts:
        drop = duplicates.get(part, none)
        _finalize_part(part, drop, source_of[part], folders)
        if len(drop[0]):
            dropped[source_of[part].index] += len(drop[0])
    return dropped
