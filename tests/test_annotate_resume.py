"""Resuming: SIGKILL mid-run, Batch API reruns, and the cache under concurrent writers."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from annotation_data import make_run
from kill_points import kill_when
from openai_loopback import LoopbackOpenAI, Reply, messages_key

from core.stage import RunDir, StageError
from pipeline.annotate import AnnotateSettings, run_annotate
from pipeline.annotators.cache import AnswerCache
from pipeline.annotators.pricing import PriceTable

TESTS = Path(__file__).resolve().parent
KEY = "sk-test-resume-7d1e"


def _annotations(run: Path) -> list[dict]:
    rows = pads.dataset(str(run / "annotations")).to_table().to_pylist()
    return sorted(rows, key=lambda r: (r["user_id"], r["split"], r["target_parent_asin"]))


def _cached(run: Path) -> int:
    path = run / "annotation_cache.sqlite"
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=10) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


CHILD = textwrap.dedent(
    """
    import sys
    from distributed import Client
    from pipeline.annotate import AnnotateSettings, run_annotate

    if __name__ == "__main__":
        run, base_url = sys.argv[1], sys.argv[2]
        settings = AnnotateSettings(annotator="openai", base_url=base_url, partition_rows=4, concurrency=3,
                                    tokens_per_minute=None, request_timeout_s=120)
        with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
            run_annotate(run, settings, client)
    """
)


def test_sigkill_then_rerun_repeats_no_answered_request_and_equals_an_uninterrupted_run(tmp_path, dask_client, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    make_run(interrupted, users=16)
    make_run(reference, users=16)
    answer_first = 7
    stall = {"on": True}

    def script(index, body):
        # After the first answers the server stalls, so the kill lands with requests in flight.
        return Reply(delay_s=60.0) if stall["on"] and index >= answer_first else None

    child = tmp_path / "child.py"
    child.write_text(CHILD)
    with LoopbackOpenAI(script) as server:
        process = subprocess.Popen(
            [sys.executable, str(child), str(interrupted), server.base_url],
            cwd=TESTS.parent,
            env={**os.environ, "PYTHONPATH": str(TESTS.parent)},
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while not (len(server.answered_keys) == answer_first and _cached(interrupted) == answer_first):
                assert process.poll() is None, "the annotate process ended before it could be killed"
                assert time.monotonic() < deadline, "the annotate process never got its first answers"
                time.sleep(0.05)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        answered_before_kill = set(server.answered_keys)
        assert RunDir(interrupted).entry("annotate") is None  # nothing half-committed
        stall["on"] = False
        received_before = len(server.chat_bodies)
        resumed = run_annotate(
            interrupted,
            AnnotateSettings(annotator="openai", base_url=server.base_url, partition_rows=4, tokens_per_minute=None),
            dask_client,
        )
        sent_after = [messages_key(body) for body in server.chat_bodies[received_before:]]
    assert not answered_before_kill & set(sent_after), "a request answered before the kill was sent again"
    assert resumed["cache_hits"] == answer_first and resumed["complete"] is True
    with LoopbackOpenAI() as server:
        run_annotate(
            reference, AnnotateSettings(annotator="openai", base_url=server.base_url, partition_rows=4, tokens_per_minute=None), dask_client
        )
    resumed_rows, reference_rows = _annotations(interrupted), _annotations(reference)
    assert len(resumed_rows) == 16 and len({(r["user_id"], r["split"]) for r in resumed_rows}) == 16
    assert resumed_rows == reference_rows


RREC = str(Path(sys.executable).with_name("rrec"))


@pytest.mark.slow
def test_template_annotate_killed_mid_stage_resumes_from_its_parts_and_equals_an_uninterrupted_run(tmp_path, dask_client):
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    make_run(interrupted, users=120)
    make_run(reference, users=120)
    config = tmp_path / "config.yaml"
    config.write_text("annotate:\n  partition_rows: 2\n")
    args = [RREC, "annotate", "--run", str(interrupted), "--config", str(config), "--workers", "1"]
    log = tmp_path / "annotate.log"
    killed = kill_when(args, lambda: any(interrupted.glob(".tmp-annotate-*/annotations/part-00005.parquet")), log=log)
    assert killed, log.read_text()[-2000:]
    assert RunDir(interrupted).entry("annotate") is None  # nothing half-committed
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    entry = RunDir(interrupted).entry("annotate")
    assert entry["resumed_parts"] >= 6 and entry["complete"] is True
    run_annotate(reference, AnnotateSettings(partition_rows=2), dask_client)
    assert _annotations(interrupted) == _annotations(reference)
    assert RunDir(reference).entry("annotate")["resumed_parts"] == 0


def test_batch_api_round_trip_maps_results_back_and_bills_half_price(tmp_path, dask_client, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    run = tmp_path / "run"
    make_run(run, users=6)
    with LoopbackOpenAI(batch_polls_before_done=2) as server:
        entry = run_annotate(
            run, AnnotateSettings(annotator="openai-batch", base_url=server.base_url, batch_poll_interval_s=0.01), dask_client
        )
        assert len(server.batches) == 1
        uploaded = next(iter(server.files.values()))
    assert uploaded["meta"]["purpose"] == "batch" and uploaded["data"].count(b"\n") == 6
    rows = _annotations(run)
    assert len(rows) == 6 and all(r["coherent"] for r in rows)
    assert entry["cost_usd"] == pytest.approx(0.5 * PriceTable().cost("gpt-4o", entry["input_tokens"], entry["output_tokens"]), rel=1e-3)


def test_batch_rerun_resumes_the_submitted_batch_and_resubmits_only_failed_requests(tmp_path, dask_client, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    run = tmp_path / "run"
    make_run(run, users=6)
    settings = {"annotator": "openai-batch", "batch_poll_interval_s": 0.01}
    with LoopbackOpenAI(lambda index, body: Reply(status=500) if index == 2 else None, batch_polls_before_done=3) as server:
        with pytest.raises(StageError, match="rerun the same command later"):
            run_annotate(run, AnnotateSettings(**settings, base_url=server.base_url, batch_wait_s=0), dask_client)
        assert len(server.batches) == 1 and RunDir(run).entry("annotate") is None
        first = run_annotate(run, AnnotateSettings(**settings, base_url=server.base_url), dask_client)
        assert len(server.batches) == 1, "the rerun submitted a second batch instead of resuming"
        assert first["rows_out"]["annotations"] == 5 and first["complete"] is False
        assert first["failed_requests"] == 1
        second = run_annotate(run, AnnotateSettings(**settings, base_url=server.base_url), dask_client)
        assert len(server.batches) == 2
        last_batch = list(server.batches.values())[-1]
        assert last_batch["request_counts"]["total"] == 1
    assert second["complete"] is True and second["rows_out"]["annotations"] == 6


WRITER = textwrap.dedent(
    """
    import sys
    from pipeline.annotators.cache import AnswerCache, CachedAnswer

    path, worker = sys.argv[1], int(sys.argv[2])
    with AnswerCache(path) as cache:
        for i in range(40):
            # Half the keys are shared by every writer, half are the writer's own.
            key = f"shared-{i}" if i % 2 == 0 else f"own-{worker}-{i}"
            cache.put(key, "m", "v", CachedAnswer(content=str(worker), refusal=None, input_tokens=1, output_tokens=1, cost_usd=0.0))
    """
)


def test_cache_is_safe_under_concurrent_writer_processes(tmp_path):
    path = str(tmp_path / "annotation_cache.sqlite")
    AnswerCache(path).close()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, path, str(w)], cwd=TESTS.parent, env={**os.environ, "PYTHONPATH": str(TESTS.parent)}
        )
        for w in range(3)
    ]
    assert [p.wait(60) for p in writers] == [0, 0, 0]
    with AnswerCache(path) as cache:
        assert cache.count() == 20 + 3 * 20
        assert len(cache.get_many(f"shared-{i}" for i in range(0, 40, 2))) == 20
