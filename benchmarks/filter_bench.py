"""``rrec filter`` of the current code against an earlier commit's, in one invocation.

    python benchmarks/filter_bench.py --users 20000 --baseline 2659bfe

1. prepares a run folder of one synthetic domain of --users users with the rrec commands
   (sample, ingest, sequences, annotate with the template annotator, all splits), cached in
   --workdir;
2. extracts the baseline commit's ``core/`` and ``pipeline/`` packages into the work folder, so
   the baseline side runs that commit's filter (rules, context loading, stage) on today's tables;
3. filters the run (``--force``) with each side in turn, --repeats times, each in a fresh
   process with its own LocalCluster of --workers; times the stage (``wall_time_s`` of its
   manifest entry: cluster start-up excluded) and the whole process; before that, the CPU time
   of loading contexts and of applying the rules to the first --partitions parts in-process
   (no cluster), to show where the time goes with less noise from a shared machine;
4. checks that both sides keep the same rows (the current filter has more rules: on template
   rationales that reason forward, none of them fires).

Prints a table and writes a JSON record (--output) for docs/PERFORMANCE.md. Exits 1 if the
kept rows differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import extract_baseline, measure_driver, prepare_run


def measure(run: Path, workers: int, partitions: int, pythonpath: Path | None) -> dict[str, object]:
    """One filter stage in a fresh process; seconds of the stage and of the whole process."""
    return measure_driver(__file__, [str(run), "--workers", str(workers), "--partitions", str(partitions)], pythonpath)


def cpu_breakdown(stage: object, run: Path, files: list[Path]) -> dict[str, float]:
    """CPU seconds of loading contexts and of applying the rules to ``files``, in-process.

    CPU time rather than wall time: on a shared machine the wall time of a few seconds of work
    moves with the other processes far more than its CPU time does.
    """
    import pyarrow.dataset as pads

    settings = stage.FilterSettings()
    context_s = rules_s = 0.0
    for file in files:
        annotations = pads.dataset(str(file), format="parquet", schema=stage.ANNOTATIONS).to_table()
        started = time.process_time()
        if hasattr(stage, "load_grounding_contexts_for_keys"):  # the current code
            contexts = stage.load_grounding_contexts_for_keys(run, annotations)
        elif hasattr(stage, "load_contexts_for_keys"):  # the tenth session's shared loader
            contexts = stage.load_contexts_for_keys(run, annotations, catalog_columns=stage.GROUNDING_COLUMNS)
        else:  # the baseline: its own per-stage loader
            contexts = stage._contexts_for(run, annotations)
        loaded = time.process_time()
        if hasattr(stage, "reject_reasons"):
            stage.reject_reasons(annotations, contexts, settings)
        else:
            stage.filter_rows(annotations.to_pylist(), contexts, settings)
        context_s += loaded - started
        rules_s += time.process_time() - loaded
    return {"contexts_cpu_s": round(context_s, 3), "rules_cpu_s": round(rules_s, 3)}


def driver(run: Path, workers: int, partitions: int) -> None:
    """Inside the measured process: CPU of a few partitions in-process, then the stage on a cluster; JSON out."""
    import pyarrow.dataset as pads

    import pipeline.filter as stage
    from core.tables import parts
    from pipeline.cluster import dask_client

    breakdown = cpu_breakdown(stage, run, parts(run / "annotations")[:partitions])
    with dask_client(workers=workers) as client:
        modules = client.run(lambda: __import__("pipeline.filter").filter.__file__)
        entry = stage.run_filter(run, stage.FilterSettings(), client, force=True)
    kept = pads.dataset(str(run / "filtered"), format="parquet").to_table(columns=["user_id", "split", "target_parent_asin"])
    keys = sorted(zip(*(kept.column(c).to_pylist() for c in kept.column_names), strict=True))
    print(
        json.dumps(
            {
                "stage_s": entry["wall_time_s"],
                **breakdown,
                "partition_cpu_s": round((breakdown["contexts_cpu_s"] + breakdown["rules_cpu_s"]) / partitions, 3),
                "rows_in": entry["rows_in"],
                "kept": len(keys),
                "kept_hash": hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16],
                "rejects_by_reason": entry["rejects_by_reason"],
                "module": stage.__file__,
                "worker_modules": sorted(set(modules.values())),
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--baseline", default="2659bfe", help="commit whose core/ and pipeline/ packages are the baseline")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rrec-filter-bench")
    parser.add_argument("--run", type=Path, default=None, help="an annotated run folder to use instead of preparing one")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=6, help="annotation parts timed in-process (CPU)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--driver", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver is not None:
        driver(args.driver, args.workers, args.partitions)
        return 0

    workdir = args.workdir / f"users-{args.users}"
    run = args.run or prepare_run(workdir, args.users, args.workers, "filter", ("--splits", "train,validation,test"))
    sides = {"baseline": extract_baseline(args.baseline, workdir / f"baseline-{args.baseline}", ("core", "pipeline")), "current": None}
    times: dict[str, list[dict[str, object]]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        for side, path in sides.items():
            times[side].append(measure(run, args.workers, args.partitions, path))
            print(f"round {repeat + 1} {side}: {times[side][-1]}", flush=True)
    keys = ("stage_s", "process_s", "contexts_cpu_s", "rules_cpu_s", "partition_cpu_s")
    median = {side: {k: statistics.median(float(t[k]) for t in runs) for k in keys} for side, runs in times.items()}
    same = len({t["kept_hash"] for runs in times.values() for t in runs}) == 1
    record = {
        "command": " ".join(["python", "benchmarks/filter_bench.py", *sys.argv[1:]]),
        "machine": f"{platform.node()} {os.cpu_count()} cores (shared)",
        "load_average": os.getloadavg(),
        "baseline": args.baseline,
        "rows_in": times["current"][-1]["rows_in"],
        "runs": times,
        "median": median,
        "speedup": {k: round(median["baseline"][k] / median["current"][k], 2) for k in keys},
        "same_kept_rows": same,
    }
    print(json.dumps(record, indent=2))
    if args.output:
        args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
