"""`--scheduler`: the stages on an existing Dask cluster give the LocalCluster's output.

A real `dask scheduler` and two `dask worker` processes are started on 127.0.0.1 (the way a
user runs a cluster across machines, here on loopback), `rrec ingest` and `rrec sequences` are
pointed at it with `--scheduler`, and their tables are compared with those of the same stages
run on the test session's LocalCluster. The processes are always terminated.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from distributed import Client
from sequences_fixtures import meta, tricky_reviews, write_jsonl

from core.stage import RunDir
from pipeline.ingest import IngestSettings, run_ingest
from pipeline.sequences import SequencesSettings, run_sequences

BIN = Path(sys.executable).parent
SEQUENCE_OPTIONS = ["--num-negatives", "15", "--train-targets", "all", "--events-per-partition", "300"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(processes: list[subprocess.Popen]) -> None:
    """Terminate workers before the scheduler (a worker whose scheduler is gone waits for it)."""
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory) -> Iterator[str]:
    """A `dask scheduler` with two single-threaded `dask worker` processes on loopback."""
    logs = tmp_path_factory.mktemp("dask-logs")
    address = f"tcp://127.0.0.1:{free_port()}"
    processes: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        with open(logs / f"{name}.log", "w") as log:
            processes.append(subprocess.Popen([str(BIN / "dask"), *args], stdout=log, stderr=subprocess.STDOUT))

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard")
        for index in range(2):
            start(
                f"worker-{index}",
                "worker",
                address,
                "--host",
                "127.0.0.1",
                "--no-nanny",
                "--nthreads",
                "1",
                "--no-dashboard",
                "--local-directory",
                str(logs / f"worker-{index}"),
                "--name",
                f"worker-{index}",
            )
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        stop(processes)


def content(run: Path, table: str) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True) for row in pads.dataset(str(run / table)).to_table().to_pylist())


def test_stages_on_an_existing_cluster_equal_the_local_cluster_output(scheduler_address, tmp_path, dask_client):
    records = tricky_reviews(seed=33, users=200, items=110)
    reviews = write_jsonl(tmp_path / "raw" / "Cluster.jsonl.gz", records)
    items = sorted({r["parent_asin"] for r in records})
    metas = write_jsonl(tmp_path / "raw" / "meta_Cluster.jsonl", (meta(item, f"Tea {item}") for item in items[::3]))

    local = tmp_path / "local"
    run_ingest(local, IngestSettings(reviews=[str(reviews)], meta=[str(metas)]), dask_client)
    run_sequences(local, SequencesSettings(num_negatives=15, train_targets="all", events_per_partition=300), dask_client)

    remote = tmp_path / "remote"
    for args in (
        ["ingest", "--run", str(remote), "--reviews", str(reviews), "--meta", str(metas)],
        ["sequences", "--run", str(remote), *SEQUENCE_OPTIONS],
    ):
        result = subprocess.run([str(BIN / "rrec"), *args, "--scheduler", scheduler_address], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr + result.stdout

    with Client(scheduler_address, timeout="30s") as client:
        # The tasks ran there: the external scheduler knows the sequences task prefix.
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
        assert "build_partition" in prefixes
        assert len(client.scheduler_info()["workers"]) == 2

    for table in ("interactions", "items", "sequences"):
        assert content(remote, table) == content(local, table), table
    assert RunDir(remote).entry("sequences")["outputs"] == RunDir(local).entry("sequences")["outputs"]
    assert RunDir(remote).entry("sequences")["partitions"] > 2


def _allocator_environment() -> dict[str, str | None]:
    import os

    return {name: os.environ.get(name) for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MIMALLOC_PURGE_DELAY")}


def test_local_workers_keep_freed_memory_for_the_next_task(dask_client):
    # Without these, every large temporary of a task is fresh memory from the kernel (see
    # pipeline/cluster.py): the settings must reach the spawned worker processes.
    from pipeline.cluster import WORKER_MALLOC_ENVIRON

    expected = {key.rsplit(".", 1)[1]: str(value) for key, value in WORKER_MALLOC_ENVIRON.items()}
    assert set(expected) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MIMALLOC_PURGE_DELAY"}
    for environment in dask_client.run(_allocator_environment).values():
        assert environment == expected


def test_consecutive_chunks_keep_order_cover_every_item_and_never_span_two_files():
    from pipeline.cluster import consecutive_chunks

    # 3 files of 7, 1 and 12 partitions, 2 workers: runs of at most ceil(20 / 8) = 3, cut at each file
    items = [("a", i) for i in range(7)] + [("b", 0)] + [("c", i) for i in range(12)]
    chunks = consecutive_chunks(items, 2, lambda x, y: x[0] == y[0])
    assert [item for chunk in chunks for item in chunk] == items
    assert all(len({file for file, _ in chunk}) == 1 for chunk in chunks)
    assert max(len(chunk) for chunk in chunks) == 3
    assert [len(chunk) for chunk in chunks] == [3, 3, 1, 1, 3, 3, 3, 3]
    # without a grouping rule, only the size cuts; nothing to do gives no task
    assert [len(c) for c in consecutive_chunks(list(range(10)), 1)] == [3, 3, 3, 1]
    assert consecutive_chunks([], 4) == []
