"""The OpenAI annotator against a loopback OpenAI-compatible server, with the real ``openai`` SDK."""

from __future__ import annotations

import asyncio
import logging

import pyarrow.dataset as pads
import pytest
from annotation_data import make_run
from openai_loopback import LoopbackOpenAI, Reply, data_of
from typer.testing import CliRunner

from pipeline.annotate import AnnotateSettings, register, run_annotate
from pipeline.annotators.cache import AnswerCache
from pipeline.annotators.limits import Budget, RateLimiter
from pipeline.annotators.openai_chat import AnnotatorConfigError
from pipeline.annotators.pricing import PriceTable
from pipeline.filter import FilterSettings, run_filter
from pipeline.judge import JudgeSettings, run_judge

SECRET = "sk-test-DO-NOT-LEAK-4f9c2e7a1b"


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return SECRET


def _settings(server: LoopbackOpenAI, **overrides) -> AnnotateSettings:
    values = {
        "annotator": "openai",
        "base_url": server.base_url,
        "partition_rows": 5,
        "retry_base_s": 0.01,
        "request_timeout_s": 5.0,
        "concurrency": 4,
        "tokens_per_minute": None,
    }
    return AnnotateSettings(**{**values, **overrides})


def _rows(run, name="annotations"):
    return pads.dataset(str(run / name)).to_table().to_pylist()


def test_structured_outputs_tokens_and_cost_per_row_and_in_manifest(tmp_path, dask_client, api_key):
    run = tmp_path / "run"
    make_run(run, users=8)
    with LoopbackOpenAI() as server:
        entry = run_annotate(run, _settings(server), dask_client)
    rows = _rows(run)
    assert len(rows) == 8 and all(r["coherent"] for r in rows)
    assert server.chat_bodies[0]["response_format"]["type"] == "json_schema"
    assert server.chat_bodies[0]["model"] == "gpt-4o"
    assert all(header == f"Bearer {SECRET}" for header in server.authorization_headers)
    assert entry["input_tokens"] == sum(r["input_tokens"] for r in rows) > 0
    assert entry["output_tokens"] == sum(r["output_tokens"] for r in rows) > 0
    expected = PriceTable().cost("gpt-4o", entry["input_tokens"], entry["output_tokens"])
    assert entry["cost_usd"] == pytest.approx(expected, rel=1e-4)
    assert entry["requests_sent"] == 8 and entry["cache_hits"] == 0 and entry["complete"] is True
    assert {r["prompt_version"] for r in rows} == {entry["prompt_version"]}


def test_retries_429_with_retry_after_500_and_timeouts_then_succeeds(tmp_path, dask_client, api_key):
    run = tmp_path / "run"
    make_run(run, users=6)
    script = {0: Reply(status=429, headers={"Retry-After": "0.4"}), 1: Reply(status=500), 2: Reply(delay_s=3.0)}
    with LoopbackOpenAI(lambda index, body: script.get(index)) as server:
        entry = run_annotate(run, _settings(server, request_timeout_s=1.0, concurrency=1), dask_client)
    assert entry["rows_out"]["annotations"] == 6 and entry["complete"] is True
    assert entry["errors"] == {"http_429": 1, "http_500": 1, "timeout": 1}
    assert entry["retries"] == 3
    # The retry after the 429 waited at least the server's Retry-After.
    assert server.chat_times[1] - server.chat_times[0] >= 0.4
    assert len(_rows(run)) == 6


def test_a_2xx_body_that_is_not_a_completion_is_retried_not_stored(tmp_path, dask_client, api_key):
    run = tmp_path / "run"
    make_run(run, users=4)
    # A proxy's HTML page and a JSON list, both with status 200: neither is an answer.
    script = {0: Reply(raw="<html>502 Bad Gateway</html>"), 1: Reply(body=["not", "an", "object"])}
    with LoopbackOpenAI(lambda index, body: script.get(index)) as server:
        entry = run_annotate(run, _settings(server, concurrency=1), dask_client)
    assert entry["errors"] == {"invalid_response": 2} and entry["retries"] == 2
    assert entry["complete"] is True and entry["rows_out"]["annotations"] == 4
    assert all(row["rationale"] for row in _rows(run))


def test_a_completion_of_an_odd_shape_is_kept_for_the_filter_not_a_crash(tmp_path, dask_client, api_key):
    run = tmp_path / "run"
    make_run(run, users=3)
    odd = [{"choices": {"0": "a dict"}, "usage": ["a", "list"]}, {"choices": [], "usage": None}, {"choices": [{"message": "text"}]}]
    with LoopbackOpenAI(lambda index, body: Reply(body=odd[index]) if index < 3 else None) as server:
        entry = run_annotate(run, _settings(server, concurrency=1), dask_client)
    assert entry["complete"] is True and entry["rows_out"]["annotations"] == 3 and entry["requests_sent"] == 3
    assert all(row["rationale"] == "" and row["coherent"] is None for row in _rows(run))
    filtered = run_filter(run, FilterSettings(), dask_client)
    assert filtered["rows_out"] == {"filtered": 0, "filter_rejects": 3}


def test_requests_that_keep_failing_leave_the_run_incomplete_and_a_rerun_finishes_it(tmp_path, dask_client, api_key):
    run = tmp_path / "run"
    make_run(run, users=5)
    broken = {"on": True}
    first_title = pads.dataset(str(run / "sequences")).to_table().to_pylist()[0]["history"][0]["title"]

    def script(index, body):
        title = data_of(body)["history"][0]["title"]
        return Reply(status=503) if broken["on"] and title == first_title else None

    with LoopbackOpenAI(script) as server:
        entry = run_annotate(run, _settings(server, max_retries=2), dask_client)
        assert entry["complete"] is False and entry["failed_requests"] >= 1
        assert entry["rows_pending"] == 5 - entry["rows_out"]["annotations"] >= 1
        broken["on"] = False
        sent_before = len(server.chat_bodies)
        again = run_annotate(run, _settings(server, max_retries=2), dask_client)
    assert again["complete"] is True and again["rows_out"]["annotations"] == 5
    assert len(server.chat_bodies) - sent_before == entry["rows_pending"]  # only the failed ones again


def test_falls_back_to_json_mode_when_the_server_lacks_json_schema(tmp_path, dask_client, api_key):
    run = tmp_path / "run"
    make_run(run, users=4)

    def script(index, body):
        if body["response_format"]["type"] == "json_schema":
            return Reply(
                status=400, body={"error": {"message": "response_format json_schema is not supported", "type": "invalid_request_error"}}
            )
        return None

    with LoopbackOpenAI(script) as server:
        entry = run_annotate(run, _settings(server, concurrency=1), dask_client)
    assert entry["json_mode_fallback"] is True and entry["rows_out"]["annotations"] == 4
    assert server.chat_bodies[-1]["response_format"] == {"type": "json_object"}


def test_malformed_answers_refusals_and_obeyed_injections_are_kept_then_rejected_with_reasons(tmp_path, dask_client, api_key):
    run = tmp_path / "run"
    rows = make_run(run, users=6)
    train_rows = [r for r in rows if r["split"] == "train"]
    by_history = {tuple(h["title"] for h in r["history"]): r["user_id"] for r in train_rows}
    bad = {
        train_rows[0]["user_id"]: Reply(content='{"rationale": "unterminated'),
        train_rows[1]["user_id"]: Reply(refusal="I'm sorry, but I can't help with that request."),
        train_rows[2]["user_id"]: Reply(content="OK"),
    }  # a model that obeyed an injected title

    def script(index, body):
        return bad.get(by_history[tuple(h["title"] for h in data_of(body)["history"])])

    with LoopbackOpenAI(script) as server:
        run_annotate(run, _settings(server), dask_client)
    annotations = {r["user_id"]: r for r in _rows(run)}
    assert len(annotations) == 6  # nothing lost
    assert annotations[train_rows[0]["user_id"]]["coherent"] is None
    assert annotations[train_rows[1]["user_id"]]["rationale"].startswith("I'm sorry")
    entry = run_filter(run, FilterSettings(), dask_client)
    rejects = {r["user_id"]: r["reason"] for r in _rows(run, "filter_rejects")}
    assert rejects == {
        train_rows[0]["user_id"]: "unparsable_output",
        train_rows[1]["user_id"]: "refusal",
        train_rows[2]["user_id"]: "unparsable_output",
    }
    assert entry["rows_out"] == {"filtered": 3, "filter_rejects": 3}


def test_max_cost_stops_cleanly_and_a_larger_budget_continues_without_repeats(tmp_path, dask_client, api_key):
    run = tmp_path / "run"
    make_run(run, users=20)
    with LoopbackOpenAI() as server:
        small = run_annotate(run, _settings(server, max_cost=0.03, max_output_tokens=200), dask_client)
        first_keys = list(server.answered_keys)
        assert small["budget_exhausted"] is True and small["complete"] is False
        assert 0 < small["rows_out"]["annotations"] < 20
        assert small["cost_usd"] <= 0.03
        assert len(first_keys) == small["rows_out"]["annotations"]
        full = run_annotate(run, _settings(server, max_cost=10.0, max_output_tokens=200), dask_client)
        second_keys = server.answered_keys[len(first_keys) :]
    assert full["complete"] is True and full["rows_out"]["annotations"] == 20
    assert not set(first_keys) & set(second_keys)
    assert full["cache_hits"] == small["rows_out"]["annotations"]


def test_dry_run_reports_rows_tokens_and_cost_and_sends_nothing(tmp_path, dask_client, api_key):
    run = tmp_path / "run"
    make_run(run, users=6)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with LoopbackOpenAI() as server:
        report = run_annotate(run, _settings(server, dry_run=True, splits="train,test"), dask_client)
        assert server.chat_bodies == []
    assert report["rows"] == report["requests_to_send"] == 12
    assert report["estimated_input_tokens"] > 0 and report["max_cost_usd"] > 0
    assert "annotate" not in __import__("core.stage", fromlist=["RunDir"]).RunDir(run).manifest()["stages"]
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before, "a dry run wrote nothing"


def test_rate_limit_holds_for_the_whole_run_across_partitions(tmp_path, dask_client, api_key):
    run = tmp_path / "run"
    make_run(run, users=25)
    # 600 requests/minute = 10 per second with a one-second burst, over 5 partitions on 2 workers.
    with LoopbackOpenAI() as server:
        run_annotate(run, _settings(server, requests_per_minute=600, concurrency=8, partition_rows=5), dask_client)
    times = sorted(server.chat_times)
    assert len(times) == 25
    # The last request cannot start before (n - burst) / rate = 1.5 s after the first one did; the
    # server sees arrivals, and the first connection's set-up can delay an early arrival, hence
    # the slack. Per-partition limiters (5 x 10/s) would have let all 25 through at once.
    assert times[-1] - times[0] >= (25 - 10) / 10 - 0.5


def test_rate_limiter_and_budget_on_a_virtual_clock():
    now = [0.0]

    async def sleep(seconds):
        now[0] += seconds

    limiter = RateLimiter(requests_per_minute=60, tokens_per_minute=600, clock=lambda: now[0], sleep=sleep)

    async def go():
        for _ in range(5):
            await limiter.acquire(tokens=100)

    asyncio.run(go())
    # 600 tokens/minute = 10/s with a 10-token burst: 5 requests of 100 tokens need about 40 s more.
    assert now[0] == pytest.approx(40.0, abs=1.0)
    limiter.pause(30)
    before = now[0]
    asyncio.run(limiter.acquire(tokens=1))
    assert now[0] - before >= 30
    budget = Budget(1.0)
    assert budget.reserve(0.6) and not budget.reserve(0.6) and budget.exhausted
    budget.settle(0.6, 0.2)
    assert budget.spent_usd == pytest.approx(0.2) and budget.reserved_usd == 0


def test_a_missing_api_key_is_a_clear_error(tmp_path, dask_client, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    run = tmp_path / "run"
    make_run(run, users=2)
    with pytest.raises(AnnotatorConfigError, match="OPENAI_API_KEY"):
        run_annotate(run, AnnotateSettings(annotator="openai"), dask_client)


def test_the_api_key_appears_in_no_artifact_or_log(tmp_path, dask_client, api_key, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    run = tmp_path / "run"
    make_run(run, users=6)
    script = {0: Reply(status=429, headers={"Retry-After": "0"}), 3: Reply(status=500)}
    with LoopbackOpenAI(lambda index, body: script.get(index)) as server:
        run_annotate(run, _settings(server), dask_client)
        run_annotate(run, _settings(server, annotator="openai-batch", model="gpt-4o-mini", batch_poll_interval_s=0.01), dask_client)
        run_filter(run, FilterSettings(), dask_client)
        run_judge(run, JudgeSettings(judge="openai", base_url=server.base_url, sample=3, retry_base_s=0.01), dask_client)
    assert f"Bearer {SECRET}" in server.authorization_headers  # the key was really used
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == "annotation_cache.sqlite" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert SECRET not in caplog.text and SECRET not in captured.out and SECRET not in captured.err


def test_cli_dry_run_and_help(tmp_path, dask_client, api_key):
    import typer

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps typer's subcommand layout
    runner = CliRunner()
    help_text = runner.invoke(app, ["annotate", "--help"]).output
    for option in (
        "--annotator",
        "--model",
        "--base-url",
        "--concurrency",
        "--limit",
        "--max-cost",
        "--dry-run",
        "--splits",
        "--run",
        "--config",
        "--workers",
        "--scheduler",
    ):
        assert option in help_text
    run = tmp_path / "run"
    make_run(run, users=3)
    with LoopbackOpenAI() as server:
        result = runner.invoke(
            app,
            [
                "annotate",
                "--run",
                str(run),
                "--annotator",
                "openai",
                "--base-url",
                server.base_url,
                "--dry-run",
                "--scheduler",
                dask_client.scheduler.address,
            ],
        )
        assert server.chat_bodies == []
    assert result.exit_code == 0, result.output
    assert "3 row(s)" in result.output and "request(s) to send" in result.output
    bad = runner.invoke(app, ["annotate", "--run", str(run), "--splits", "dev"])
    assert bad.exit_code == 2 and "unknown split" in bad.output and "Traceback" not in bad.output


def test_a_rejected_key_stops_the_run_with_a_clear_error_and_keeps_earlier_answers(tmp_path, dask_client, api_key):
    run = tmp_path / "run"
    make_run(run, users=6)

    def script(index, body):
        return (
            Reply(status=401, body={"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
            if index >= 2
            else None
        )

    with LoopbackOpenAI(script) as server, pytest.raises(AnnotatorConfigError, match="HTTP 401: check OPENAI_API_KEY") as error:
        run_annotate(run, _settings(server, concurrency=1), dask_client)
    assert SECRET not in str(error.value)
    with AnswerCache(run / "annotation_cache.sqlite") as cache:
        assert cache.count() == 2
