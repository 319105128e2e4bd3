"""``rrec validate`` of the current code against an earlier commit's, in one invocation.

    python benchmarks/validate_bench.py --users 20000 --baseline 5156c85

1. prepares a run folder of one synthetic domain of --users users with the rrec commands
   (sample, ingest, sequences, annotate with the template annotator, filter), cached in
   --workdir;
2. extracts the baseline commit's ``validation/`` package into the work folder (the rest of
   the tree is the current one: the baseline runs its own suites and runner on today's
   stages and tables);
3. validates the run (``--force``) with each side in turn, --repeats times, each in a fresh
   process with its own LocalCluster of --workers; times the validation itself (cluster
   start-up and the import of great_expectations excluded: the baseline imports it with its
   runner, the current code only when its report is written), the CPU seconds it used
   (driver and workers: steadier than wall time on a shared machine) and the whole process;
4. checks that both sides report the same result for every expectation (success, element
   and unexpected counts).

Prints a table and writes a JSON record (--output) for docs/PERFORMANCE.md. Exits 1 if the
results differ.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import extract_baseline, measure_driver, prepare_run


def measure(run: Path, workers: int, pythonpath: Path | None, summary_out: Path) -> dict[str, float]:
    """One validation in a fresh process; seconds of the validation and of the whole process."""
    return measure_driver(__file__, [str(run), "--workers", str(workers), "--output", str(summary_out)], pythonpath)


def driver(run: Path, workers: int, output: Path) -> None:
    """Inside the measured process: start a cluster, validate once, print the times as JSON."""
    import great_expectations  # noqa: F401  (imported before the clock on both sides; process_s counts it)

    import validation
    from pipeline.cluster import dask_client
    from validation.runner import run_validation

    with dask_client(workers=workers) as client:
        package = client.run(lambda: __import__("validation").__file__)
        cpu_before, started = _tree_cpu(), time.perf_counter()
        summary = run_validation(run, client, force=True)
        validate_s, cpu_s = time.perf_counter() - started, _tree_cpu() - cpu_before
    output.write_text(json.dumps(summary, default=str), encoding="utf-8")
    times = {"validate_s": round(validate_s, 2), "cpu_s": round(cpu_s, 2)}
    print(json.dumps({**times, "package": validation.__file__, "worker_packages": sorted(set(package.values()))}))


def _tree_cpu() -> float:
    """CPU seconds (user + system) used so far by this process and its Dask worker processes.

    On a shared machine the wall time swings with other people's load; the CPU time the
    validation itself burns does much less.
    """
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def outcomes(summary_file: Path) -> dict[str, tuple[object, int, int]]:
    """Per expectation: (success, element_count, unexpected_count)."""
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    return {
        e["name"]: (e["success"], e["element_count"], e["unexpected_count"])
        for suite in summary["suites"].values()
        for e in suite["expectations"]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--baseline", default="5156c85", help="commit whose validation/ package is the baseline")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rrec-validate-bench")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--driver", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver is not None:
        driver(args.driver, args.workers, args.output)
        return 0

    workdir = args.workdir / f"users-{args.users}"
    run = prepare_run(workdir, args.users, args.workers, "validate")
    baseline_path = extract_baseline(args.baseline, workdir / f"baseline-{args.baseline}", ("validation",))
    sides = {"baseline": baseline_path, "current": None}
    times: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        for side, path in sides.items():
            times[side].append(measure(run, args.workers, path, workdir / f"summary-{side}.json"))
            print(f"round {repeat + 1} {side}: {times[side][-1]}", flush=True)
    same = outcomes(workdir / "summary-baseline.json") == outcomes(workdir / "summary-current.json")
    median = {
        side: {k: statistics.median(t[k] for t in runs) for k in ("validate_s", "cpu_s", "process_s")} for side, runs in times.items()
    }
    rows = json.loads((workdir / "summary-current.json").read_text())["suites"]
    record = {
        "command": " ".join(["python", "benchmarks/validate_bench.py", *sys.argv[1:]]),
        "machine": f"{platform.node()} {os.cpu_count()} cores (shared)",
        "baseline": args.baseline,
        "users": args.users,
        "rows": {table: suite.get("rows") for table, suite in rows.items()},
        "partitions": {table: suite.get("partitions") for table, suite in rows.items()},
        "runs": times,
        "median": median,
        "speedup_validate": round(median["baseline"]["validate_s"] / median["current"]["validate_s"], 2),
        "speedup_process": round(median["baseline"]["process_s"] / median["current"]["process_s"], 2),
        "cpu_ratio": round(median["baseline"]["cpu_s"] / median["current"]["cpu_s"], 2),
        "same_results": same,
    }
    print(json.dumps(record, indent=2))
    if args.output:
        args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
