"""The stages after sequences at two annotation part sizes, alternated on one cluster.

    python benchmarks/partition_ab.py --run RUN_FOLDER [--rows 2000,16000] [--rounds 6] [--workers 2]

The run folder (one with ingest and sequences done, for instance the one `chain_bench.py` leaves
in its workdir) is copied into --workdir, and annotate (template, ``partition_rows`` = each
size in turn), filter, judge (heuristic) and validate run on the copy with ``--force``, as
``rrec run`` runs them: one local Dask cluster of --workers single-threaded processes for the
whole benchmark, after one unrecorded warm-up round (the first validation imports GX in this
process), the sizes alternated (A B, B A, ...) so that a slow period of the machine falls on
both. Each stage is timed in wall seconds and in CPU seconds of the workers and this
process. The annotate part size decides how many parts the later stages read (one filtered part
per annotation part). Prints each round and writes a JSON record (--output) with the medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import cluster_cpu_s, write_record  # noqa: E402

STAGES = ("annotate", "filter", "judge", "validate")


def one_round(run: Path, rows: int, client: Any) -> dict[str, dict[str, float]]:
    """The four stages once, annotate with parts of ``rows`` rows: wall and CPU seconds per stage."""
    from pipeline.annotate import ANNOTATE, AnnotateSettings
    from pipeline.filter import FILTER
    from pipeline.judge import JUDGE
    from validation.runner import VALIDATE

    settings = {"annotate": AnnotateSettings(partition_rows=rows)}
    figures = {}
    for stage in (ANNOTATE, FILTER, JUDGE, VALIDATE):
        cpu, start = cluster_cpu_s(client), time.perf_counter()
        stage.execute(run, settings.get(stage.name, stage.settings_type()), client, force=True)
        wall, cpu = time.perf_counter() - start, cluster_cpu_s(client) - cpu
        figures[stage.name] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run folder with ingest and sequences done")
    parser.add_argument("--rows", default="2000,16000", help="the two annotation part sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, each running both sizes (order alternated)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rrec-partition-ab")
    parser.add_argument("--output", type=Path, default=None, help="JSON record (default: WORKDIR/partition-ab.json)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.rows.split(",") if size.strip()]
    if len(sizes) != 2 or min(sizes) < 1:
        parser.error("--rows takes two positive part sizes, e.g. 2000,16000")
    if not (args.run / "sequences").is_dir():
        parser.error(f"{args.run} has no sequences table: run `rrec run --until sequences` first")

    from pipeline.cluster import dask_client

    copy = args.workdir / args.run.name
    shutil.rmtree(copy, ignore_errors=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rounds: dict[int, list[dict[str, dict[str, float]]]] = {size: [] for size in sizes}
    try:
        shutil.copytree(args.run, copy)
        with dask_client(args.workers) as client:
            one_round(copy, sizes[0], client)  # warm-up: imports in this process and the workers
            for number in range(max(1, args.rounds)):
                for size in sizes if number % 2 == 0 else sizes[::-1]:
                    figures = one_round(copy, size, client)
                    rounds[size].append(figures)
                    total = sum(f["wall_s"] for f in figures.values())
                    stages = ", ".join(f"{name} {f['wall_s']:.2f} s / {f['cpu_s']:.1f} CPU s" for name, f in figures.items())
                    print(f"round {number + 1}, parts of {size} rows: {total:.2f} s ({stages})", flush=True)
    finally:
        shutil.rmtree(copy, ignore_errors=True)

    def median(size: int, key: str) -> float:
        return round(statistics.median(sum(f[key] for f in figures.values()) for figures in rounds[size]), 3)

    medians = {size: {"wall_s": median(size, "wall_s"), "cpu_s": median(size, "cpu_s")} for size in sizes}
    first, second = sizes
    record = {
        "run": str(args.run),
        "stages": list(STAGES),
        "workers": args.workers,
        "rounds": {str(size): values for size, values in rounds.items()},
        "median_total": {str(size): values for size, values in medians.items()},
        "second_over_first": {
            key: round(medians[second][key] / medians[first][key], 3) if medians[first][key] else None for key in ("wall_s", "cpu_s")
        },
    }
    output = write_record(record, args.output or args.workdir / "partition-ab.json", __file__, argv)
    print(
        f"medians of annotate .. validate: {medians}; parts of {second} / parts of {first}: {record['second_over_first']}; record: {output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
