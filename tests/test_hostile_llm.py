"""The LLM fault corpus (tests/hostile/llm/faults.json) served to annotate, and the out-of-space path.

Every fault ends as a bounded retry, a counted correction or a pending row with a named error;
the rest of the run is annotated; a rerun against a healthy server sends only what failed, so
no answer the client received is paid twice; the recorded cost never follows a server's usage
claims past our own count, so ``--max-cost`` bounds the run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from annotation_data import make_run
from openai_loopback import LoopbackOpenAI, Reply, messages_key

from core.stage import StageError
from pipeline.annotate import AnnotateSettings, run_annotate
from pipeline.annotators.completion import MAX_ANSWER_CHARS
from pipeline.annotators.pricing import PriceTable
from pipeline.filter import FilterSettings, run_filter

CORPUS = json.loads((Path(__file__).parent / "hostile" / "llm" / "faults.json").read_text())["faults"]
KEY = "sk-test-hostile-llm-5a0c"
SETTINGS = {
    "annotator": "openai",
    "partition_rows": 6,
    "concurrency": 4,
    "max_retries": 2,
    "retry_base_s": 0.01,
    "request_timeout_s": 0.5,
    "max_server_wait_s": 5.0,
    "tokens_per_minute": None,
    "requests_per_minute": None,
}


def _reply(spec: dict) -> Reply:
    spec = dict(spec)
    if "content_repeat" in spec:
        text, times = spec.pop("content_repeat")
        spec["content"] = text * times
    return Reply(**spec)


class FaultServer:
    """Serves fault ``i`` of the corpus to the ``i``-th distinct request (every send of it, or
    only the first), a normal answer to the rest; counts sends and received answers per request."""

    def __init__(self, faults: list[dict]):
        self.faults = faults
        self.lock = threading.Lock()
        self.fault_of: dict[str, dict | None] = {}
        self.sends: Counter[str] = Counter()
        self.paid: Counter[str] = Counter()
        self.healthy = False

    def __call__(self, index: int, body: dict) -> Reply | None:
        key = messages_key(body)
        with self.lock:
            if key not in self.fault_of:
                position = len(self.fault_of)
                self.fault_of[key] = self.faults[position] if position < len(self.faults) else None
            self.sends[key] += 1
            fault = self.fault_of[key]
            active = not self.healthy and fault is not None and (fault["times"] == "always" or self.sends[key] == 1)
            # A 200 completion the client receives (and a real API bills): no fault, or a fault
            # served in place of the answer ("answered" faults that come every time).
            if not active or (fault["expect"] == "answered" and fault["times"] == "always"):
                self.paid[key] += 1
        return _reply(fault["reply"]) if active else None


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def test_every_llm_fault_is_bounded_counted_and_never_paid_twice(tmp_path, dask_client, api_key):
    run = tmp_path / "run"
    make_run(run, users=20)
    faults = FaultServer(CORPUS)
    with LoopbackOpenAI(faults) as server:
        entry = run_annotate(run, AnnotateSettings(base_url=server.base_url, **SETTINGS), dask_client)

    by_name = {f["name"]: key for key, f in faults.fault_of.items() if f is not None}
    assert set(by_name) == {f["name"] for f in CORPUS}, "every fault was served"
    failed = [f for f in CORPUS if f["expect"] == "failed"]
    for fault in CORPUS:
        assert faults.sends[by_name[fault["name"]]] <= fault["max_attempts"], fault["name"]
        assert entry["errors"].get(fault["error"], 0) >= 1, fault["name"]
    assert entry["complete"] is False and entry["rows_pending"] == len(failed)
    assert entry["rows_out"]["annotations"] == 20 - len(failed)
    # Our own count replaced the inflated and the missing usage: the recorded cost stays small.
    rows = {r["request_hash"]: r for r in pads.dataset(str(run / "annotations")).to_table().to_pylist()}
    assert max(r["input_tokens"] for r in rows.values()) < 10_000
    assert max(r["output_tokens"] for r in rows.values()) <= AnnotateSettings().max_output_tokens
    ceiling = PriceTable().cost("gpt-4o", 10_000 * 20, AnnotateSettings().max_output_tokens * 20)
    assert entry["cost_usd"] < ceiling
    assert all(len(r["rationale"] or "") <= MAX_ANSWER_CHARS for r in rows.values())

    # The answered faults that cannot be kept are rejected by the filter with their reason.
    filtered = run_filter(run, FilterSettings(), dask_client)
    for fault in CORPUS:
        if "filter" in fault:
            assert filtered["rejects_by_reason"].get(fault["filter"], 0) >= 1, fault["name"]

    # A rerun against a healthy server sends exactly the failed requests, once each.
    faults.healthy = True
    before = Counter(faults.sends)
    with LoopbackOpenAI(faults) as server:
        rerun = run_annotate(run, AnnotateSettings(base_url=server.base_url, **SETTINGS), dask_client)
    assert rerun["complete"] is True and rerun["rows_out"]["annotations"] == 20
    assert rerun["requests_sent"] == len(failed) and rerun["cache_hits"] == 20 - len(failed)
    resent = {key for key in faults.sends if faults.sends[key] > before[key]}
    assert resent == {by_name[f["name"]] for f in failed}
    assert max(faults.paid.values()) == 1, "no answer the client received was paid twice"


def test_max_cost_bounds_the_run_whatever_usage_the_server_claims(tmp_path, dask_client, api_key):
    run = tmp_path / "run"
    make_run(run, users=12)
    inflated = Reply(usage={"prompt_tokens": 10**12, "completion_tokens": 10**12, "total_tokens": 2 * 10**12})
    budget = 0.02
    with LoopbackOpenAI(lambda index, body: inflated) as server:
        entry = run_annotate(run, AnnotateSettings(base_url=server.base_url, max_cost=budget, **SETTINGS), dask_client)
    assert entry["cost_usd"] <= budget and entry["cost_usd_this_run"] <= budget
    assert entry["rows_out"]["annotations"] >= 1 and entry["errors"]["usage_untrusted"] == entry["requests_sent"]


def _bad_batch_lines(lines: list[str]) -> list[str]:
    """A null usage on the first record, a line that is not JSON, an unknown custom_id."""
    first = json.loads(lines[0])
    first["response"]["body"]["usage"]["prompt_tokens"] = None
    stranger = json.loads(lines[1])
    stranger["custom_id"] = "not-one-of-ours"
    return [json.dumps(first), '{"truncated": ', json.dumps(stranger), *lines[2:]]


def test_bad_batch_records_become_failures_and_the_rest_reaches_the_cache(tmp_path, dask_client, api_key):
    run = tmp_path / "run"
    make_run(run, users=8)

    def settings(server: LoopbackOpenAI) -> AnnotateSettings:
        return AnnotateSettings(**{**SETTINGS, "annotator": "openai-batch"}, base_url=server.base_url, batch_poll_interval_s=0.05)

    with LoopbackOpenAI(batch_output_edit=_bad_batch_lines) as server:
        entry = run_annotate(run, settings(server), dask_client)
    # The null usage is replaced by our count; the replaced line's request stays pending.
    assert entry["errors"] == {"invalid_batch_record": 1, "unknown_custom_id": 1, "usage_untrusted": 1}
    assert entry["rows_out"]["annotations"] == 7 and entry["complete"] is False
    # The rerun submits only the pending request (the answered seven are cached), and --force works.
    with LoopbackOpenAI() as server:
        rerun = run_annotate(run, settings(server), dask_client)
        assert rerun["complete"] is True and rerun["cache_hits"] == 7 and len(server.answered_keys) == 1
        forced = run_annotate(run, settings(server), dask_client, force=True)
        assert forced["complete"] is True and forced["cache_hits"] == 8 and len(server.answered_keys) == 1


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True)
    if shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def _fill(folder: Path) -> None:
    with open(folder / "ballast", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            return


def test_a_full_disk_stops_with_one_line_and_no_answer_is_paid_twice(tmp_path, dask_client, api_key):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "24m"):
        pytest.skip("mounting a size-limited tmpfs needs root on this machine")
    try:
        run = disk / "run"
        make_run(run, users=40)
        filled = threading.Event()

        def fill_at_tenth(index: int, body: dict) -> Reply | None:
            # The disk fills while the run is sending: answers arrive after it is full.
            if index == 10 and not filled.is_set():
                _fill(disk)
                filled.set()
            return None

        with LoopbackOpenAI(fill_at_tenth) as server:
            with pytest.raises(StageError) as failure:
                run_annotate(run, AnnotateSettings(base_url=server.base_url, **SETTINGS), dask_client)
            first_answers = Counter(server.answered_keys)
        message = str(failure.value)
        assert "no space left" in message and str(run) in message and "\n" not in message
        (disk / "ballast").unlink()
        with LoopbackOpenAI() as server:
            entry = run_annotate(run, AnnotateSettings(base_url=server.base_url, **SETTINGS), dask_client)
            second_answers = Counter(server.answered_keys)
        assert entry["complete"] is True and entry["rows_out"]["annotations"] == 40
        assert entry["cache_hits"] == sum(first_answers.values()) >= 10
        assert not set(first_answers) & set(second_answers), "an answer received before the disk filled was paid again"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_the_template_annotator_on_a_full_disk_stops_with_one_line(tmp_path, dask_client):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "16m"):
        pytest.skip("mounting a size-limited tmpfs needs root on this machine")
    try:
        run = disk / "run"
        make_run(run, users=200)
        _fill(disk)
        with pytest.raises(StageError) as failure:
            run_annotate(run, AnnotateSettings(partition_rows=20), dask_client)
        assert "no space left" in str(failure.value) and str(run) in str(failure.value)
        (disk / "ballast").unlink()
        entry = run_annotate(run, AnnotateSettings(partition_rows=20), dask_client)
        assert entry["complete"] is True and entry["rows_out"]["annotations"] == 200
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
