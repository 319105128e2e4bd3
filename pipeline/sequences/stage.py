"""The ``sequences`` stage: selection in the driver, partitions on the cluster, and its command."""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import typer

from core.cli_common import ConfigOpt, ForceOpt, RunOpt, SchedulerOpt, WorkersOpt, user_errors
from core.protocol import Stage, StageContext, StageResult
from core.schemas import SPLITS
from core.tables import part_name, read_table
from pipeline.sequences.candidates import ENCODED_SEQUENCES, Catalog, build_sequence_rows, check_catalog_size, user_chunks
from pipeline.sequences.selection import UserEvents, read_interaction_keys, select_interactions
from pipeline.sequences.settings import STAGE, SequencesSettings
from pipeline.stage_command import run_stage_command

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def _load_catalog(catalog_path: str) -> Catalog:
    # Once per worker process and stage run (the path is unique to the run), not per task.
    return Catalog.from_table(pq.read_table(catalog_path))


def build_partition(events_path: str, catalog_path: str, out_path: str, settings: SequencesSettings) -> dict[str, int]:
    """Dask task: read one partition of events, write its ``sequences`` part, return row counts."""
    events = UserEvents.load(events_path)
    catalog = _load_catalog(catalog_path)
    rows_by_split = dict.fromkeys(SPLITS, 0)
    # store_schema=False and non-compliant list names: the file's own Parquet types (string,
    # list<item: ...>) are exactly SEQUENCES, so the dictionary encoding stays an encoding.
    # Dictionary pages may hold a whole catalog (the default 1 MiB limit would fall back to
    # hashing plain strings). Statistics only where a reader filters: string min/max over 100
    # candidates a row would cost more than writing them.
    partial = Path(out_path).with_name(f".{Path(out_path).name}.partial")
    with pq.ParquetWriter(
        partial,
        ENCODED_SEQUENCES,
        compression="zstd",
        write_statistics=["user_id", "split", "target_index"],
        store_schema=False,
        use_compliant_nested_type=False,
        dictionary_pagesize_limit=1 << 30,
    ) as writer:
        for start, stop in user_chunks(events, settings):
            rows = build_sequence_rows(events.slice_users(start, stop), catalog, settings)
            writer.write_table(rows)
            split_counts = pc.value_counts(rows["split"]).to_pylist()
            for entry in split_counts:
                rows_by_split[entry["values"]] += entry["counts"]
        if events.num_users == 0:
            writer.write_table(ENCODED_SEQUENCES.empty_table())
    os.replace(partial, out_path)  # a part file that exists is complete (the stage resumes on it)
    return rows_by_split


def split_counts(part: Path) -> dict[str, int]:
    """Rows per split of one written part file (a partition a killed attempt completed)."""
    counts = dict.fromkeys(SPLITS, 0)
    for entry in pc.value_counts(pq.read_table(part, columns=["split"])["split"]).to_pylist():
        counts[entry["values"]] += entry["counts"]
    return counts


def warm_up() -> None:
    """Dask task that does nothing: unpickling it imports this module (and numpy, pandas,
    pyarrow.parquet) on a worker while the driver still selects, not when partitions are due."""


MAX_DEFAULT_PARTITION = 400_000
MIN_DEFAULT_PARTITIONS = 8


def default_partition_size(num_events: int) -> int:
    """Interactions per partition when none is set: large partitions write fewer copies of the
    catalog's dictionary pages (one per row group, see :data:`CHUNK_ELEMENTS`), and at least
    eight of them keep the workers of a small cluster busy on mid-sized data.

    At most :data:`MAX_DEFAULT_PARTITION`: every later stage holds one sequences part file at a
    time per worker (annotate, filter and judge keep the current one's columns), so the part's
    size is their memory. At 1M interactions a 14M-review domain had parts of 277k rows, 2.6
    times the 3.5M domain's, and the stages after sequences peaked 1.62x higher for 4x the input.
    """
    return max(1, min(MAX_DEFAULT_PARTITION, math.ceil(num_events / MIN_DEFAULT_PARTITIONS)))


def partition_bounds(events: UserEvents, events_per_partition: int) -> list[tuple[int, int]]:
    """User ranges of about ``events_per_partition`` interactions each (never splitting a user)."""
    if events.num_users == 0:
        return [(0, 0)]
    targets = np.arange(events_per_partition, events.num_events, events_per_partition)
    cuts = np.unique(np.searchsorted(events.offsets, targets, side="left"))
    cuts = cuts[(cuts > 0) & (cuts < events.num_users)]
    bounds = [0, *cuts.tolist(), events.num_users]
    return list(itertools.pairwise(bounds))


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------
class SequencesStage(Stage[SequencesSettings]):
    """Build the ``sequences`` table of a run folder from its ``interactions`` and ``items``.

    The manifest entry holds rows in/out, rows per split, users and items before and after the
    k-core, and rejects by reason, which together account for every interaction. Resumable: the
    selection is recomputed (it is deterministic), partitions whose part file a killed attempt
    completed are not rebuilt.
    """

    name = STAGE
    upstream = ("ingest",)
    settings_type = SequencesSettings
    resumable = True

    def report(self, result: StageResult) -> str:
        entry = result.entry
        split_rows = ", ".join(f"{split} {count:,}" for split, count in entry["rows_by_split"].items())
        status = " (up to date, not rebuilt; --force rebuilds)" if result.skipped else ""
        return (
            f"sequences{status}: {entry['rows_out'][STAGE]:,} rows ({split_rows}) from {entry['users_out']:,} users and "
            f"{entry['catalog_items']:,} items"
        )

    def run(self, ctx: StageContext[SequencesSettings]) -> None:
        """One function on purpose: the driver's phases overlap (workers warm up and items are read while the selection runs; partitions are submitted as their inputs are written), which reads best in the order it happens."""

        from core.progress import gather_with_progress

        run_dir, settings, client, out = ctx.run, ctx.settings, ctx.client, ctx.out
        log.info("building sequences of %s", run_dir.path)
        warming = [client.submit(warm_up, pure=False, workers=[address]) for address in client.scheduler_info()["workers"]]
        with ThreadPoolExecutor(max_workers=1) as pool:
            # The item metadata is read while the interactions are selected.
            items_read = pool.submit(read_table, run_dir.table("items"), "items", columns=["parent_asin", "title", "categories", "store"])
            interactions = read_interaction_keys(run_dir.table("interactions"))
            rows_in = interactions.num_rows
            selection = select_interactions(interactions, settings)
            del interactions
            items = items_read.result()
        log.info(
            "%d interactions -> %d after dedupe and %d-core (%d rounds): %d users, %d items",
            rows_in,
            selection.counts["interactions_out"],
            settings.k,
            selection.counts["kcore_rounds"],
            selection.counts["users_out"],
            selection.counts["catalog_items"],
        )
        events = selection.events
        if events.num_users == 0:
            log.warning("no interaction survives dedupe and the %d-core: the sequences table is empty (lower --k?)", settings.k)
        check_catalog_size(len(selection.catalog_asins), int(np.diff(events.offsets).max(initial=0)), settings.num_negatives)
        catalog = Catalog.from_items(selection.catalog_asins, items)
        del items

        # Inputs of the partition tasks go to files beside the output: on a multi-machine
        # cluster the run folder is the shared file system, and a task holds one partition.
        scratch = out.tmp_dir / "scratch"
        scratch.mkdir(exist_ok=True)
        catalog_path = scratch / "catalog.parquet"
        pq.write_table(catalog.to_table(), catalog_path)
        table_dir = out.table_dir(STAGE)
        done = out.done_parts(STAGE)
        futures = []
        per_partition = settings.events_per_partition or default_partition_size(events.num_events)
        bounds = partition_bounds(events, per_partition)
        for index, (start, stop) in enumerate(bounds):
            if part_name(index) in done:
                continue
            events_path = scratch / f"events-{index:05d}"
            events.slice_users(start, stop).save(events_path)
            # Submitted as soon as its input is written: workers start while the rest is written.
            futures.append(
                client.submit(build_partition, str(events_path), str(catalog_path), str(table_dir / part_name(index)), settings, pure=False)
            )
        counts, rejects = selection.counts, selection.rejects_by_reason
        del selection, events
        results = gather_with_progress(futures, "sequences") + [split_counts(table_dir / name) for name in sorted(done)]
        del warming
        shutil.rmtree(scratch)

        rows_by_split = {split: sum(result[split] for result in results) for split in SPLITS}
        out.record(
            rows_in=rows_in,
            rows_out={STAGE: sum(rows_by_split.values())},
            rejects_by_reason=rejects,
            rows_by_split=rows_by_split,
            partitions=len(bounds),
            items_without_metadata=catalog.without_metadata,
            resumed_parts=len(done),
            **counts,
        )


SEQUENCES = SequencesStage()


def run_sequences(run: Path | str, settings: SequencesSettings, client: Client, force: bool = False) -> dict[str, Any]:
    """Build the ``sequences`` table (see :class:`SequencesStage`); returns the manifest entry."""
    return SEQUENCES.execute(run, settings, client, force=force).entry


def register(app: typer.Typer) -> None:
    """Add ``rrec sequences`` to the ``rrec`` app."""

    @app.command(STAGE)
    @user_errors
    def sequences_command(
        run: RunOpt,
        k: Annotated[int | None, typer.Option("--k", help="k-core on users and items (default 5); 0 disables it.", min=0)] = None,
        train_targets: Annotated[
            str | None,
            typer.Option("--train-targets", help="'last' (default): one train row per user; 'all': one per prefix."),
        ] = None,
        max_history: Annotated[
            int | None, typer.Option("--max-history", help="History keeps the last N items (default 50); 0 keeps all.", min=0)
        ] = None,
        num_negatives: Annotated[
            int | None, typer.Option("--num-negatives", help="Negatives per candidate set (default 99).", min=0)
        ] = None,
        sample_users: Annotated[
            int | None, typer.Option("--sample-users", help="Keep a seeded sample of N users after the k-core.", min=1)
        ] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="Seed of user sampling and negatives (default 42).")] = None,
        events_per_partition: Annotated[
            int | None,
            typer.Option(
                "--events-per-partition",
                help="Interactions per Dask partition (layout only; default: an eighth of them, at most 1,000,000).",
                min=1,
            ),
        ] = None,
        config: ConfigOpt = None,
        workers: WorkersOpt = None,
        scheduler: SchedulerOpt = None,
        force: ForceOpt = False,
    ) -> None:
        """Build leave-one-out sequences (benchmark-exact dedupe, k-core and splits) with candidates.

        Reads the `interactions` and `items` tables of the run folder (run `rrec ingest` first) and writes the `sequences` table: one row per (user, split, target) with the history, the target and its shuffled candidate set. Options override the `sequences` section of the config file.
        """
        run_stage_command(
            SEQUENCES,
            run,
            config,
            force,
            k=k,
            train_targets=train_targets,
            max_history=max_history,
            num_negatives=num_negatives,
            sample_users=sample_users,
            seed=seed,
            events_per_partition=events_per_partition,
            workers=workers,
            scheduler=scheduler,
        )
