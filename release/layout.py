"""The release layout (DESIGN.md, "Release layout"): what a run folder contributes to a release.

A run folder holds one domain; it becomes one config of the release (``grocery``, ``office``,
...) with three splits of :data:`core.schemas.RELEASE_ROW` rows, plus the config
``<config>_items`` with the item catalog. This module turns run folders into those tables and
writes them as sharded Parquet; the card, manifest and changelog are built elsewhere.

Two builders share these functions. :func:`load_domains` + :func:`write_data` hold a whole
release in memory (the reference form, and the card preview of ``rrec card``);
``release.builder.stream_release`` computes the same files partition by partition on the Dask
cluster, so its memory depends on the partition size, not the release.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from core.names import check_config_names, config_name, items_config
from core.progress import track
from core.schemas import ITEMS, RELEASE_ROW, SPLITS
from core.stage import RunDir, StageError
from core.tables import arrow_bytes, read_table
from datacards.statistics import RowStatistics, category_counts
from pipeline.sequences.settings import SequencesSettings
from release.shards import ROW_GROUP_ROWS, write_shard

log = logging.getLogger(__name__)

ITEMS_SPLIT = "items"
RELEASED_STAGES = ("ingest", "sequences", "annotate", "filter", "validate")
"""Stages a release needs complete and fresh (the judge is optional)."""
_ANNOTATION_COLUMNS = ("rationale", "user_preferences", "annotator", "model", "prompt_version")
_KEY = ("user_id", "split", "target_parent_asin")


class ReleaseError(ValueError):
    """A release cannot be built or published; the message says what to do."""


def shard_name(split: str, index: int, total: int) -> str:
    """Hub-style shard file name, e.g. ``train-00000-of-00003.parquet``."""
    return f"{split}-{index:05d}-of-{total:05d}.parquet"


class TableSize(Protocol):
    """What the card and manifest read of a released table: an Arrow table or a :class:`WrittenTable`."""

    @property
    def schema(self) -> pa.Schema: ...

    @property
    def num_rows(self) -> int: ...

    @property
    def nbytes(self) -> int: ...


@dataclass(frozen=True)
class WrittenTable:
    """A table already written as shards by the streaming builder: its size, not its rows."""

    schema: pa.Schema
    num_rows: int
    nbytes: int


@dataclass(frozen=True)
class DomainSource:
    """A run folder checked for release: validated, complete, with its config name."""

    run: Path
    config: str
    domain: str
    stages: dict[str, dict[str, Any]]
    validation: dict[str, Any]


@dataclass(frozen=True)
class DomainRelease:
    """Everything one run folder contributes to a release.

    ``splits`` and ``items`` are the tables themselves (in-memory builder) or their sizes
    (streaming builder, which has written them already; ``files`` then holds the sha256 and
    size of every data file it wrote). ``row_statistics`` and ``category_counts`` feed the card.
    """

    config: str
    domain: str
    splits: Mapping[str, TableSize]
    items: TableSize
    stages: dict[str, dict[str, Any]]
    validation: dict[str, Any]
    train_without_rationale: int
    row_statistics: RowStatistics
    category_counts: dict[str, int]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def items_config(self) -> str:
        return items_config(self.config)

    @property
    def catalog_items(self) -> int:
        return self.items.num_rows

    def row_counts(self) -> dict[str, int]:
        return {split: table.num_rows for split, table in self.splits.items()}


def join_release_rows(sequences: pa.Table, filtered: pa.Table, schema: pa.Schema = RELEASE_ROW) -> tuple[dict[str, pa.Table], int]:
    """Release rows per split from a ``sequences`` and a ``filtered`` table, cast to ``schema``.

    Train rows are the train sequences whose rationale passed the filter; validation and test
    rows are every sequence of the split, with the rationale fields of the filtered table where
    there is one and null otherwise. Rows are sorted by user, target timestamp and target id so
    that the released files do not depend on how the run folder was partitioned. Returns the
    tables and the number of train sequences left out for lack of a passing rationale.
    ``schema`` is :data:`RELEASE_ROW` or its form with dictionary-encoded list leaves (the
    streaming builder's, written as they are by :func:`release.shards.write_shard`).
    """
    # One contiguous copy: each split's take would otherwise concatenate every chunk again.
    sequences = sequences.combine_chunks()
    target = sequences["target"]
    keyed = sequences.append_column("target_parent_asin", pc.struct_field(target, "parent_asin"))
    keyed = keyed.append_column("_row", pa.array(range(keyed.num_rows), pa.int64()))
    annotations = filtered.select([*_KEY, *_ANNOTATION_COLUMNS])
    duplicate = annotations.group_by(list(_KEY)).aggregate([([], "count_all")]).filter(pc.field("count_all") > 1)
    if duplicate.num_rows:
        first = duplicate.slice(0, 1).to_pylist()[0]
        raise ReleaseError(
            f"the filtered table holds {duplicate.num_rows} duplicated sequence key(s), e.g. "
            f"{ {k: first[k] for k in _KEY} }; rerun `rrec filter --force` on the run folder"
        )
    annotations = annotations.append_column("_annotated", pa.array([True] * annotations.num_rows, pa.bool_()))
    joined = keyed.select([*_KEY, "_row"]).join(annotations, keys=list(_KEY), join_type="left outer")
    joined = joined.append_column("_target_ts", pc.struct_field(target, "timestamp").take(joined["_row"]))
    orphans = annotations.num_rows - pc.sum(pc.fill_null(joined["_annotated"], False).cast(pa.int64())).as_py()
    if orphans:
        raise ReleaseError(
            f"the filtered table holds {orphans} rationale(s) for sequences that are not in the sequences table; "
            "it was built from an older sequences table: rerun `rrec annotate --force` and `rrec filter --force` on the run folder"
        )

    result: dict[str, pa.Table] = {}
    train_without_rationale = 0
    for split in SPLITS:
        rows = joined.filter(pc.equal(joined["split"], split))
        if split == "train":
            annotated = rows.filter(pc.fill_null(rows["_annotated"], False))
            train_without_rationale = rows.num_rows - annotated.num_rows
            rows = annotated
        rows = rows.sort_by([("user_id", "ascending"), ("_target_ts", "ascending"), ("target_parent_asin", "ascending")])
        base = sequences.take(rows["_row"])
        columns = {name: base[name] for name in ("user_id", "history", "target", "candidates", "target_index")}
        columns.update({name: rows[name] for name in _ANNOTATION_COLUMNS})
        result[split] = pa.table(columns).select(schema.names).cast(schema)
    return result, train_without_rationale


def mentioned_items(splits: Iterable[pa.Table]) -> pa.Array:
    """The distinct ``parent_asin`` of every item the release rows mention (history, target or candidate).

    Dictionary-encoded ids (the streaming builder's rows) are read through their dictionaries:
    the entries used are marked per distinct dictionary (the chunks of one join share a few), and
    only those entries are hashed once.
    """
    plain, used = mentioned_parts(splits)
    plain.extend(dictionary.filter(pa.array(marked)) for dictionary, marked in used)
    return pc.unique(pa.chunked_array(plain, pa.string()))


def mentioned_parts(splits: Iterable[pa.Table]) -> tuple[list[pa.Array], list[tuple[pa.Array, np.ndarray]]]:
    """The ids the release rows mention (history, target or candidate), as the plain arrays among
    them (a missing id of a dictionary-encoded chunk as one null) and, per distinct dictionary of
    the encoded ones, that dictionary with the entries used marked."""
    plain: list[pa.Array] = []
    used: dict[tuple[int, ...], tuple[pa.Array, np.ndarray]] = {}
    for table in splits:
        for ids in (
            pc.struct_field(pc.list_flatten(table["history"]), "parent_asin"),
            pc.struct_field(pc.list_flatten(table["candidates"]), "parent_asin"),
            pc.struct_field(table["target"], "parent_asin"),
        ):
            for chunk in _chunks(ids):
                if not isinstance(chunk, pa.DictionaryArray):
                    plain.append(chunk)
                    continue
                dictionary = chunk.dictionary
                key = (
                    dictionary.offset,
                    len(dictionary),
                    *(buffer.address if buffer is not None else 0 for buffer in dictionary.buffers()),
                )
                if (entry := used.get(key)) is None:
                    entry = used[key] = (dictionary, np.zeros(len(dictionary), dtype=bool))
                entry[1][pc.drop_null(chunk.indices).to_numpy(zero_copy_only=False)] = True
                if chunk.null_count:
                    plain.append(pa.nulls(1, pa.string()))  # a missing id is "mentioned", as in plain rows
    return plain, list(used.values())


def catalog_of(items: pa.Table, wanted: pa.Array) -> pa.Table:
    """The catalog rows of the items ``wanted``, in ``parent_asin`` order."""
    catalog = items.filter(pc.is_in(items["parent_asin"], value_set=wanted))
    return catalog.sort_by("parent_asin").select(ITEMS.names).cast(ITEMS)


def referenced_items(splits: dict[str, pa.Table], items: pa.Table) -> pa.Table:
    """The catalog rows of every item a released row mentions (history, target or candidate)."""
    return catalog_of(items, mentioned_items(splits.values()))


def _chunks(array: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return list(array.chunks) if isinstance(array, pa.ChunkedArray) else [array]


def read_validation(run: Path) -> dict[str, Any]:
    """The run's ``validation/summary.json``, or a :class:`ReleaseError` saying how to get one."""
    path = Path(run) / "validation" / "summary.json"
    if not path.exists():
        raise ReleaseError(f"run folder {run} has no validation results ({path} is missing); run `rrec validate --run {run}` first")
    summary = json.loads(path.read_text(encoding="utf-8"))
    if "critical_failures" not in summary or "success" not in summary:
        raise ReleaseError(f"{path} lacks 'critical_failures'/'success'; rerun `rrec validate --run {run} --force`")
    return summary


def check_validation(run: Path, summary: dict[str, Any]) -> None:
    """Refuse a run whose validation found a critical failure."""
    failures = int(summary["critical_failures"])
    if failures > 0:
        raise ReleaseError(
            f"run folder {run} failed {failures} critical expectation(s) "
            f"(see {Path(run) / 'validation' / 'summary.json'}); fix the data and rerun `rrec validate --run {run}` before releasing"
        )


def release_memory_estimate(run: Path, rows_per_task: int | None = None) -> int:
    """Roughly the bytes a release of ``run`` holds in one process's memory.

    The builder reads sequences with every candidate and history title as a plain string and
    then joins them into a second copy: about two copies of rows x (candidates + history) x
    (title + id + offsets). The in-memory builder holds every row (``rows_per_task`` None); the
    streaming builder holds one partition's rows at a time per worker thread, counted four
    times (the batch read, its contiguous copy, the joined split tables, the row group being
    written: at 150k users the peak grew by about 36 KB per added partition row from 5,000 to
    20,000 rows, against 23 KB estimated from two copies). Read from metadata only: the row count of the Parquet files, the stage's
    settings and the mean title length of the catalog.
    """
    run = Path(run)
    config = (RunDir(run).entry("sequences") or {}).get("config", {})
    defaults = SequencesSettings()
    candidates = int(config.get("num_negatives", defaults.num_negatives)) + 1
    # max_history 0 keeps whole histories: count them at the default cap, as an estimate.
    history = int(config.get("max_history", defaults.max_history)) or defaults.max_history
    rows = pads.dataset(str(run / "sequences"), format="parquet").count_rows()
    titles = read_table(run / "items", "items", columns=["title"]).column("title")
    title_bytes = (pc.mean(pc.binary_length(titles)).as_py() if len(titles) else None) or 0.0
    per_row = candidates * (title_bytes + 18) + history * (title_bytes + 30)
    if rows_per_task is None:
        return int(2 * rows * per_row)
    return int(4 * min(rows, rows_per_task) * per_row)


def check_domain(run: Path, memory_limit: int | None = None, rows_per_task: int | None = None) -> DomainSource:
    """Check that one run folder can be released: validated, complete, and small enough.

    Requires the :data:`RELEASED_STAGES` complete and fresh (none stale) and a validation summary
    without critical failures. With ``memory_limit`` (bytes), a run whose release would need
    more memory than that in one process (:func:`release_memory_estimate` with
    ``rows_per_task``) is refused with a clear error instead of the process being killed for
    memory halfway through.
    """
    run = Path(run)
    if not run.is_dir():
        raise ReleaseError(f"run folder {run} does not exist")
    run_dir = RunDir(run)
    try:  # the provenance chain: what is released is what was validated, stage by stage
        run_dir.require_fresh(RELEASED_STAGES, "release")
    except StageError as exc:
        raise ReleaseError(str(exc)) from None
    summary = read_validation(run)
    check_validation(run, summary)
    ingest = run_dir.require("ingest")
    domain = ingest.get("domain")
    if not domain:
        raise ReleaseError(f"the ingest stage of {run} recorded no domain; rerun `rrec ingest --run {run} --domain NAME --force`")
    if memory_limit is not None and (needed := release_memory_estimate(run, rows_per_task)) > memory_limit:
        raise ReleaseError(
            f"releasing {run} would hold about {needed / 2**30:.1f} GiB of rows in memory, more than the "
            f"{memory_limit / 2**30:.1f} GiB allowed (release.max_memory_gb, default: the memory available now); "
            "release a sampled subset (`rrec sequences --sample-users N`, as the paper's datasets are), "
            "lower release.partition_rows or raise --max-memory-gb on a larger machine"
        )
    return DomainSource(run, config_name(domain), domain, run_dir.manifest()["stages"], summary)


def check_domains(runs: list[Path], memory_limit: int | None = None, rows_per_task: int | None = None) -> list[DomainSource]:
    """Every run folder checked (:func:`check_domain`), refusing two runs of the same config; in config order."""
    if not runs:
        raise ReleaseError("no run folders given; pass at least one --runs DIR")
    sources = [check_domain(run, memory_limit, rows_per_task) for run in runs]
    check_config_names(source.domain for source in sources)
    seen: dict[str, str] = {}
    for run, source in zip(runs, sources):
        if source.config in seen:
            raise ReleaseError(
                f"run folders {seen[source.config]} and {run} both hold config '{source.config}'; release one run per domain"
            )
        seen[source.config] = str(run)
    return sorted(sources, key=lambda d: d.config)


def load_domain(run: Path, memory_limit: int | None = None) -> DomainRelease:
    """Read one validated run folder into the tables it releases, all in memory (checks: :func:`check_domain`)."""
    return _read_source(check_domain(run, memory_limit))


def _read_source(source: DomainSource) -> DomainRelease:
    run = source.run
    splits, dropped = join_release_rows(read_table(run / "sequences", "sequences"), read_table(run / "filtered", "filtered"))
    items = referenced_items(splits, read_table(run / "items", "items"))
    log.info("%s: release rows %s, %d catalog items", source.domain, {s: t.num_rows for s, t in splits.items()}, items.num_rows)
    return DomainRelease(
        config=source.config,
        domain=source.domain,
        splits=splits,
        items=items,
        stages=source.stages,
        validation=source.validation,
        train_without_rationale=dropped,
        row_statistics=RowStatistics.of_splits(splits),
        category_counts=category_counts(items),
    )


def load_domains(runs: list[Path], memory_limit: int | None = None) -> list[DomainRelease]:
    """Every run folder as an in-memory :class:`DomainRelease`, refusing two runs of the same config."""
    return [_read_source(source) for source in check_domains(runs, memory_limit)]


def shard_count(rows: int, shard_rows: int) -> int:
    """Shards of a split of ``rows`` rows: at least one (an empty split still gets an empty shard)."""
    if shard_rows < 1:
        raise ReleaseError(f"shard_rows must be at least 1, got {shard_rows}")
    return max(1, math.ceil(rows / shard_rows))


def shard_starts(rows: int, shard_rows: int) -> list[int]:
    """Where each shard of a split of ``rows`` rows starts, then ``rows``: :func:`shard_count`
    shards of at most ``shard_rows`` rows, as even as rows allow (sizes differ by one at most).

    Even shards rather than full ones and a short last one: the shards of a split are written
    in parallel, and a split of 108,795 rows with ``shard_rows`` 100,000 is two shards of 54,398
    and 54,397 rows, not 100,000 and 8,795 (one worker writing a large shard while another
    waits after a small one).
    """
    count = shard_count(rows, shard_rows)
    return [index * rows // count for index in range(count + 1)]


def release_nbytes(table: pa.Table, shard_rows: int) -> int:
    """The Arrow size a release records for ``table`` written as shards of ``shard_rows`` rows:
    :func:`core.tables.arrow_bytes` summed over the row groups of its shards (what the
    streaming builder adds up as it writes them)."""
    starts = shard_starts(table.num_rows, shard_rows)
    return sum(
        arrow_bytes(table.slice(group, min(ROW_GROUP_ROWS, end - group)))
        for start, end in itertools.pairwise(starts)
        for group in range(start, end, ROW_GROUP_ROWS)
    )


def sized_as_released(domain: DomainRelease, shard_rows: int) -> DomainRelease:
    """``domain`` (in memory) with each table's size as a release of ``shard_rows`` records it,
    for a card previewed before any release (``rrec card``): the sizes then match the release's."""

    def sized(table: TableSize) -> WrittenTable:
        return WrittenTable(
            table.schema, table.num_rows, release_nbytes(table, shard_rows) if isinstance(table, pa.Table) else table.nbytes
        )

    return replace(domain, splits={split: sized(t) for split, t in domain.splits.items()}, items=sized(domain.items))


def write_shards(table: pa.Table, folder: Path, split: str, shard_rows: int) -> list[Path]:
    """Write ``table`` as ``<split>-NNNNN-of-NNNNN.parquet`` files (:func:`shard_starts`).

    An empty table still gets one (empty) shard so the split exists for ``load_dataset``.
    """
    starts = shard_starts(table.num_rows, shard_rows)
    paths = []
    for index, (start, end) in enumerate(itertools.pairwise(starts)):
        path = folder / shard_name(split, index, len(starts) - 1)
        write_shard([table.slice(start, end - start)], path, table.schema)
        paths.append(path)
    return paths


def write_data(domains: list[DomainRelease], release_dir: Path, shard_rows: int) -> None:
    """Write ``data/<config>/`` and ``data/<config>_items/`` for every domain."""
    tables = [(domain.config, split, table) for domain in domains for split, table in domain.splits.items()]
    tables += [(domain.items_config, ITEMS_SPLIT, domain.items) for domain in domains]
    for config, split, table in track(tables, "writing release shards", total=len(tables)):
        write_shards(table, release_dir / "data" / config, split, shard_rows)


def write_validation(domains: list[DomainRelease], release_dir: Path) -> Path:
    """``validation/summary.json``: each config's suite results plus the overall verdict."""
    summary = {
        "critical_failures": sum(int(d.validation["critical_failures"]) for d in domains),
        "success": all(bool(d.validation["success"]) for d in domains),
        # The run folder is named, not where it sat on the machine that built the release.
        "configs": {d.config: {**d.validation, "run": Path(str(d.validation.get("run", d.domain))).name} for d in domains},
    }
    path = release_dir / "validation" / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path
