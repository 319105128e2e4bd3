"""The stage contract through the real command: SIGKILL at several points, rerun, skip, force.

`rrec ingest` and `rrec sequences` run as subprocesses (each in its own process group, so the
kill also takes their Dask worker processes, as a crash of the machine would). After every
kill no half table is visible: a table the manifest lists has exactly the recorded content,
and a stage the manifest does not list is refused to downstream readers. A rerun then gives
exactly the output of an uninterrupted run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from kill_points import kill_when
from sequences_fixtures import tricky_reviews, write_jsonl

from core.hashing import hash_path
from core.stage import RunDir, StageError
from pipeline.ingest import IngestSettings, run_ingest
from pipeline.sequences import SequencesSettings, run_sequences

pytestmark = pytest.mark.slow  # real subprocesses and stages: tens of seconds

RREC = str(Path(sys.executable).with_name("rrec"))
SEQUENCE_OPTIONS = ["--k", "5", "--num-negatives", "10", "--events-per-partition", "60", "--workers", "1"]


def rrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RREC, *args], capture_output=True, text=True, timeout=300)


def ingest_args(run: Path, reviews: Path) -> list[str]:
    return ["ingest", "--run", str(run), "--reviews", str(reviews), "--block-size", "4096", "--workers", "1"]


def run_and_kill_when(args: list[str], ready: Callable[[], bool]) -> bool:
    """Start `rrec args`, SIGKILL its process group as soon as ``ready()``; True if it was killed."""
    return kill_when([RREC, *args], ready)


def temp_exists(run: Path, pattern: str) -> Callable[[], bool]:
    return lambda: any(run.glob(pattern))


def assert_nothing_half_visible(run: Path, stage: str, tables: list[str]) -> None:
    """Listed tables have their recorded content; an unlisted stage is refused downstream."""
    entry = RunDir(run).entry(stage)
    if entry is None:
        with pytest.raises(StageError):
            RunDir(run).require(stage)
        return
    for table in tables:
        assert hash_path(run / table) == entry["outputs"][table]
        pads.dataset(str(run / table)).to_table()  # every file complete and readable


def content(run: Path, table: str) -> list[str]:
    rows = pads.dataset(str(run / table)).to_table().to_pylist()
    return sorted(json.dumps(row, sort_keys=True) for row in rows)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("contract") / "Contract.jsonl", tricky_reviews(seed=21, users=260, items=120))


@pytest.fixture(scope="module")
def reference(reviews, tmp_path_factory, dask_client) -> Path:
    """An uninterrupted ingest + sequences with the command's settings (in-process: faster)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    run_ingest(run, IngestSettings(reviews=[str(reviews)], block_size=4096), dask_client)
    run_sequences(run, SequencesSettings(k=5, num_negatives=10, events_per_partition=60), dask_client)
    assert RunDir(run).entry("sequences")["partitions"] > 5  # several tasks: a wide window to kill in
    return run


@pytest.fixture(scope="module")
def killed_then_rerun(reviews, tmp_path_factory) -> Path:
    """Ingest killed once, sequences killed at three points, each checked, then both rerun."""
    run = tmp_path_factory.mktemp("killed") / "run"
    assert run_and_kill_when(ingest_args(run, reviews), temp_exists(run, ".tmp-ingest-*/interactions/*.parquet"))
    assert_nothing_half_visible(run, "ingest", ["interactions", "items", "rejects"])
    assert rrec(*ingest_args(run, reviews)).returncode == 0

    sequences = sequences_args(run)
    kill_points = [
        temp_exists(run, ".tmp-sequences-*"),  # stage entered
        temp_exists(run, ".tmp-sequences-*/scratch/catalog.parquet"),  # partition inputs being written
        temp_exists(run, ".tmp-sequences-*/sequences/part-00002.parquet"),  # output parts being written
    ]
    for ready in kill_points:
        assert run_and_kill_when(sequences, ready)
        assert_nothing_half_visible(run, "sequences", ["sequences"])
    result = rrec(*sequences)
    assert result.returncode == 0, result.stderr
    return run


def sequences_args(run: Path) -> list[str]:
    return ["sequences", "--run", str(run), *SEQUENCE_OPTIONS]


def test_sigkill_at_several_points_then_rerun_equals_an_uninterrupted_run(killed_then_rerun, reference):
    run = killed_then_rerun
    assert RunDir(run).entry("ingest")["outputs"] == RunDir(reference).entry("ingest")["outputs"]
    assert RunDir(run).entry("sequences")["outputs"] == RunDir(reference).entry("sequences")["outputs"]
    assert content(run, "sequences") == content(reference, "sequences")
    assert not list(run.glob(".tmp-*"))
    # the last kill came after part 2 was complete: the rerun reused what was done, not from zero
    assert RunDir(run).entry("sequences")["resumed_parts"] >= 1


def test_rerun_skips_force_reruns_changed_settings_rerun(killed_then_rerun):
    run = killed_then_rerun
    first = RunDir(run).entry("sequences")

    skipped = rrec(*sequences_args(run))
    assert skipped.returncode == 0 and "up to date" in skipped.stdout
    assert RunDir(run).entry("sequences") == first

    time.sleep(1.1)  # finished_at has one-second resolution
    assert rrec(*sequences_args(run), "--force").returncode == 0
    forced = RunDir(run).entry("sequences")
    assert forced["finished_at"] != first["finished_at"]
    assert forced["outputs"] == first["outputs"]

    assert rrec(*sequences_args(run), "--max-history", "2").returncode == 0
    changed = RunDir(run).entry("sequences")
    assert changed["config"]["max_history"] == 2 and changed["outputs"] != first["outputs"]
    assert max(len(row["history"]) for row in pads.dataset(str(run / "sequences")).to_table().to_pylist()) == 2
