"""Annotation throughput against the loopback OpenAI-compatible server (issue 3, point 9).

Measures, on generated data:
1. rows per second of ``--annotator openai`` at ``--concurrency`` (default 64) when every
   request takes ``--latency`` seconds (default 0.5), against the ideal concurrency / latency;
   both for the request phase alone and for the whole stage (prompts, Dask, commit included);
2. rows per second of a rerun whose answers are all in the SQLite cache (filled directly, as a
   killed or earlier run leaves it);
3. rows per second of the offline template annotator, for reference.

Targets: request phase >= 90% of ideal; cached rerun >= 5,000 rows per second.
Run: ``.venv/bin/python benchmarks/annotate_bench.py`` (a few minutes on 2 cores).

``--compare REV --users N`` instead times this checkout against commit ``REV`` (checked out in a
``git worktree`` under /tmp) in the same invocation, alternating the two: ``rrec sample --users
N`` + ingest + sequences once, then for each side and round, on its own copy of the run folder,
the template annotate stage with ``force`` and the cached rerun of the OpenAI annotator (each
side's cache filled with its own prompts first). Each side runs in its own process with its
own two-worker Dask cluster; times are the stage calls, cluster start excluded, as wall time and
as CPU time of the driver and both workers (steadier than wall time on a shared machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from annotation_data import make_run  # noqa: E402  (test data generator lives with the tests)
from openai_loopback import default_teacher_answer  # noqa: E402

from benchmarks.common import cluster_cpu_s, code_env  # noqa: E402
from pipeline.annotate import AnnotateSettings, prepare_partition, run_annotate  # noqa: E402
from pipeline.annotators.cache import CACHE_FILE, AnswerCache, CachedAnswer  # noqa: E402
from pipeline.annotators.context import plan_partitions  # noqa: E402
from pipeline.cluster import dask_client  # noqa: E402


def _settings(base_url: str, concurrency: int) -> AnnotateSettings:
    # Limits off: the benchmark measures the client, not a rate plan.
    return AnnotateSettings(
        annotator="openai",
        base_url=base_url,
        concurrency=concurrency,
        requests_per_minute=None,
        tokens_per_minute=None,
        partition_rows=1000,
    )


@contextlib.contextmanager
def loopback_server(latency_s: float) -> Iterator[str]:
    """The loopback server in its own process (a remote server does not share our GIL)."""
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "openai_loopback.py"), str(latency_s)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=code_env(REPO),
    )
    try:
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait()


def fill_cache(run: Path, settings: AnnotateSettings) -> None:
    """Store the loopback server's answer for every request of ``run``, as an earlier run would
    have (filling 20,000 answers over HTTP would only measure the first run again)."""
    options = settings.chat_options()
    with AnswerCache(run / CACHE_FILE) as cache:
        for spec in plan_partitions(run / "sequences", settings.splits, settings.partition_rows):
            for request in prepare_partition(str(run), spec, options, settings.max_prompt_history).requests:
                content = default_teacher_answer({"messages": request.messages})
                answer = CachedAnswer(content, None, request.estimated_input_tokens, len(content) // 4, 0.0)
                cache.put(request.request_hash, options.model, options.prompt_version, answer)


SIDE = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from annotate_bench import cluster_cpu_s, _settings, fill_cache
from pipeline.annotate import AnnotateSettings, run_annotate
from pipeline.cluster import dask_client
from pipeline.judge import JudgeSettings, run_judge

run, rounds, judge_run, parts = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[4]), sys.argv[5].split(",")
openai = _settings("http://127.0.0.1:9/v1", 64)
times = {}


def timed(name, stage, folder, settings, client):
    started, cpu = time.perf_counter(), cluster_cpu_s(client)
    entry = stage(folder, settings, client, force=True)
    times.setdefault(name + "_s", []).append(round(time.perf_counter() - started, 3))
    times.setdefault(name + "_cpu_s", []).append(round(cluster_cpu_s(client) - cpu, 3))
    return entry


with dask_client(workers=2) as client:
    if "annotate" in parts:
        fill_cache(run, openai)
    for _ in range(rounds):
        if "judge" in parts:
            judged = timed("heuristic_judge", run_judge, judge_run, JudgeSettings(sample=10**8), client)
            times["judged_rows"] = judged["sample_size"]
        if "annotate" in parts:
            entry = timed("template", run_annotate, run, AnnotateSettings(), client)
            cached = timed("cached_openai", run_annotate, run, openai, client)
            assert cached["requests_sent"] == 0, cached
            times["rows"] = entry["rows_out"]["annotations"]
print(json.dumps(times))
"""


def _rrec(*args: str, cwd: Path) -> None:
    done = subprocess.run([str(Path(sys.executable).with_name("rrec")), *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"rrec {args[0]} failed: {done.stderr[-2000:]}")


def compare(rev: str, users: int, rounds: int, parts: str) -> dict[str, object]:
    """Template annotate and cached OpenAI rerun (``parts`` has ``annotate``) and the heuristic
    judge of every kept row (``judge``): this checkout against commit ``rev``."""
    tmp = Path(tempfile.mkdtemp(prefix="annotate-compare-"))
    old_root = tmp / "old"
    subprocess.run(["git", "worktree", "add", "--detach", str(old_root), rev], cwd=REPO, check=True, capture_output=True)
    try:
        _rrec("sample", "--out", str(tmp / "raw"), "--users", str(users), "--domains", "All_Beauty", cwd=REPO)
        base = tmp / "run"
        _rrec(
            "ingest",
            "--run",
            str(base),
            "--reviews",
            str(tmp / "raw" / "All_Beauty.jsonl"),
            "--meta",
            str(tmp / "raw" / "meta_All_Beauty.jsonl"),
            cwd=REPO,
        )
        _rrec("sequences", "--run", str(base), cwd=REPO)
        results: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
        for side in results:
            subprocess.run(["cp", "-r", str(base), str(tmp / f"run-{side}")], check=True)
        if "judge" in parts:
            # The judge's input: the template annotations of this checkout, filtered.
            _rrec("annotate", "--run", str(base), cwd=REPO)
            _rrec("filter", "--run", str(base), cwd=REPO)
            for side in results:
                subprocess.run(["cp", "-r", str(base), str(tmp / f"judge-{side}")], check=True)
        for _ in range(rounds):
            for side, root in (("old", old_root), ("new", REPO)):
                env = code_env(root, OPENAI_API_KEY="sk-benchmark-not-a-real-key")
                done = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        SIDE,
                        str(tmp / f"run-{side}"),
                        "1",
                        str(REPO / "benchmarks"),
                        str(tmp / f"judge-{side}"),
                        parts,
                    ],
                    cwd=root,
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items():
                    results[side].setdefault(key, []).extend(value if isinstance(value, list) else [value])
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"a measured side failed: {exc.stderr[-3000:]}") from None
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_root)], cwd=REPO, capture_output=True)
    best = {side: {k: min(v) for k, v in r.items() if k.endswith("_s")} for side, r in results.items()}
    ratios = {f"{key}_old_over_new": round(best["old"][key] / best["new"][key], 2) for key in best["new"]}
    return {"compare_rev": rev, "users": users, "parts": parts, "runs": results, "best_s": best, **ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000, help="train rows annotated through the slow server")
    parser.add_argument("--cached-rows", type=int, default=20000, help="train rows in the cached-rerun measurement")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds the server takes per request")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--compare", metavar="REV", help="time this checkout against commit REV instead (see the docstring)")
    parser.add_argument("--users", type=int, default=20000, help="with --compare: users of the sampled domain")
    parser.add_argument("--rounds", type=int, default=2, help="with --compare: alternating rounds per side")
    parser.add_argument("--parts", default="annotate,judge", help="with --compare: annotate, judge or both")
    args = parser.parse_args()
    if args.compare:
        load_before = os.getloadavg()[0]
        figures = compare(args.compare, args.users, args.rounds, args.parts)
        figures["machine"] = f"{psutil.cpu_count()} logical cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, shared"
        figures["load_average_1min_before_after"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return
    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark-not-a-real-key")
    load_before = os.getloadavg()[0]
    figures: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} logical cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}",
        "latency_s": args.latency,
        "concurrency": args.concurrency,
    }
    with tempfile.TemporaryDirectory() as tmp, dask_client(workers=args.workers) as client:
        slow_run, cached_run, template_run = Path(tmp) / "slow", Path(tmp) / "cached", Path(tmp) / "template"
        make_run(slow_run, users=args.rows, rows_per_part=2000)
        with loopback_server(args.latency) as base_url:
            started, cpu_started = time.perf_counter(), time.process_time()
            entry = run_annotate(slow_run, _settings(base_url, args.concurrency), client)
            stage_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        ideal = args.concurrency / args.latency
        request_rate = entry["rows_out"]["annotations"] / entry["send_wall_s"]
        figures.update(
            rows=entry["rows_out"]["annotations"],
            ideal_rows_per_s=round(ideal, 1),
            request_phase_rows_per_s=round(request_rate, 1),
            request_phase_fraction_of_ideal=round(request_rate / ideal, 3),
            stage_rows_per_s=round(entry["rows_out"]["annotations"] / stage_s, 1),
            stage_fraction_of_ideal=round(entry["rows_out"]["annotations"] / stage_s / ideal, 3),
            client_cpu_ms_per_request=round(1000 * cpu_s / entry["rows_out"]["annotations"], 2),
        )
        make_run(cached_run, users=args.cached_rows, rows_per_part=20000)
        fill_cache(cached_run, _settings("http://127.0.0.1:9/v1", args.concurrency))
        cpu_before = cluster_cpu_s(client)
        started = time.perf_counter()
        rerun = run_annotate(cached_run, _settings("http://127.0.0.1:9/v1", args.concurrency), client)
        cached_s = time.perf_counter() - started
        cpu_per_row = (cluster_cpu_s(client) - cpu_before) / args.cached_rows
        assert rerun["requests_sent"] == 0 and rerun["cache_hits"] == args.cached_rows
        figures.update(
            cached_rows=args.cached_rows,
            cached_rerun_rows_per_s=round(args.cached_rows / cached_s, 1),
            cached_rerun_cpu_us_per_row=round(cpu_per_row * 1e6, 1),
            # What the same work gives when every core is ours (the shared machine's load varies).
            cached_rerun_rows_per_cpu_s=round(1 / cpu_per_row, 1),
        )
        make_run(template_run, users=args.cached_rows, rows_per_part=20000)
        started = time.perf_counter()
        run_annotate(template_run, AnnotateSettings(partition_rows=5000), client)
        figures.update(template_rows_per_s=round(args.cached_rows / (time.perf_counter() - started), 1))
    figures["load_average_1min_before_after"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
