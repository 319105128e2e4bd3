"""Dask clusters: a LocalCluster sized to the machine, or an existing scheduler."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import dask
from distributed import Client, LocalCluster

from core.stage import StageError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Allocator settings of local worker processes. Dask's default (MALLOC_TRIM_THRESHOLD_ =
# 64 KiB, which also freezes the mmap threshold at 128 KiB) hands every freed array back to the
# kernel, so each large temporary of the next task is fresh memory that must be faulted in and
# zeroed: about a quarter of the sequences stage's CPU went to the kernel. With blocks up to
# 32 MiB served from the heap and up to 256 MiB kept for reuse, that drops by two thirds; a
# worker's memory still goes back above that. Arrow's allocator (mimalloc) likewise returns
# freed pages after 10 ms by default, between one step of a task and the next; after 2 s, the
# next task reuses them (page faults of a sequences task: about 25,000 -> 2,500).
WORKER_MALLOC_ENVIRON = {
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 32 * 1024 * 1024,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 256 * 1024 * 1024,
    "distributed.nanny.pre-spawn-environ.MIMALLOC_PURGE_DELAY": 2000,
}


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Client]:
    """A Dask client for the duration of a command.

    With ``scheduler`` (``tcp://HOST:PORT``) the stages run on that existing cluster; its
    workers must see the run folder at the same path (a shared file system). Otherwise a
    ``LocalCluster`` of ``workers`` single-threaded processes (default: one per core) is
    started and torn down with the command.
    """
    if scheduler:
        log.info("connecting to Dask scheduler %s", scheduler)
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise StageError(
                f"cannot reach the Dask scheduler at {scheduler} ({exc}); start it with "
                "`dask scheduler` or drop --scheduler to use a local cluster"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    n_workers = workers or default_workers()
    log.info("starting a local Dask cluster with %d worker process(es)", n_workers)
    with (
        dask.config.set(WORKER_MALLOC_ENVIRON),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            # A random port: the HTTP server starts even with the dashboard off, and a fixed port
            # clashes between concurrent runs ("Port 8787 is already in use").
            dashboard_address=":0",
            # A task's error reaches this process with its traceback, where the command reports
            # it (one line for a user-fixable one, such as a full disk); the worker's own
            # "Compute Failed" record of it (level ERROR, with the traceback) would print it
            # again. The workers' distributed loggers so print only CRITICAL records.
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def worker_count(client: Client) -> int:
    """How many workers ``client``'s cluster has now (at least 1)."""
    return max(1, len(client.scheduler_info().get("workers", {})))


def consecutive_chunks(items: list[T], workers: int, same_group: Callable[[T, T], bool] | None = None) -> list[list[T]]:
    """``items`` cut into runs of consecutive items, about four runs per worker.

    For work whose consecutive items share an expensive input (the partitions of one sequences
    part file): a worker process keeps the last input it read, so one task over a run reads it
    once, where one task per item would read it again whenever the scheduler alternates
    workers (a whole part file per partition: quadratic in the data). ``same_group`` (when
    given) also cuts a run where two neighbours differ, so a run never spans two inputs.
    """
    if not items:
        return []
    size = max(1, -(-len(items) // (4 * max(1, workers))))
    chunks: list[list[T]] = [[items[0]]]
    for previous, item in itertools.pairwise(items):
        if len(chunks[-1]) >= size or (same_group is not None and not same_group(previous, item)):
            chunks.append([])
        chunks[-1].append(item)
    return chunks
