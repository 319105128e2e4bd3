"""Dask clusters: a LocalCluster sized to the machine, or an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from distributed import Client, LocalCluster

from pipeline.stage import StageError

log = logging.getLogger(__name__)


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
    with LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        # A random port: the HTTP server starts even with the dashboard off, and a fixed port
        # clashes between concurrent runs ("Port 8787 is already in use").
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster, Client(cluster) as client:
        yield client
