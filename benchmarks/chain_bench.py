"""The whole chain, raw files to a validated, carded, tagged release, timed as a user runs it.

    python benchmarks/chain_bench.py --users 150000      # the embedded Grocery domain, 150k users
    python benchmarks/chain_bench.py --reviews 14000000  # a full-size domain

1. generates one synthetic Grocery domain with `rrec sample`'s generator (cached in --workdir);
2. the pyarrow floor: the time `pyarrow.json` alone takes to read the same review file on the
   same number of local Dask workers (64 MiB newline-aligned blocks, the raw review fields as
   an explicit schema, as ingest reads them), cluster start-up excluded;
3. first command: `rrec run --until sequences` (ingest + sequences), timed whole;
4. second command: `rrec run` (annotate with the template annotator, filter, judge (heuristic),
   validate, card and release; ingest and sequences are skipped as unchanged), timed whole;
   with --pairs N the two commands run N times in turn (from a fresh output folder each time),
   and the record holds each pair's times and ratio and their medians;
5. each command's peak memory, sampled every 50 ms over its process tree (driver and Dask
   workers): the largest single process and the sum; and the tree's CPU seconds (user +
   system), with the share of the cores each command kept busy;
6. stage wall times from the run manifest, and a check that the release loads with
   `release.loading.load_release`;
7. with --compare RECORD (a record of a smaller run of this script): how the peak memory grew
   with the input (issue 13: 4x the input costs at most 1.5x the peak memory), per command;
8. with --release-memory P1,P2,...: `rrec release` of the same run folder once per partition
   size (`release.partition_rows`), in one process without a cluster, with its peak memory:
   how the streaming builder's memory follows the partition, not the release.

Prints a table and writes a JSON record (--output) for docs/PERFORMANCE.md. Targets (issue 13):
second / first <= 3 and no process above 4 GB at 150k users. Exits 1 if a command fails or the
release does not load.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import Command, measure_tree, write_record  # noqa: E402
from benchmarks.pipeline_bench import DOMAIN, warm_page_cache  # noqa: E402
from core.stage import STAGE_ORDER  # noqa: E402

CONFIG = "grocery"
VERSION = "1.0.0"
FLOOR_BLOCK = 64 << 20


def newline_blocks(path: Path, block: int) -> list[tuple[int, int]]:
    """``(start, end)`` byte ranges of about ``block`` bytes, each ending after a newline."""
    size = path.stat().st_size
    bounds = [0]
    with open(path, "rb") as handle:
        while bounds[-1] + block < size:
            handle.seek(bounds[-1] + block)
            handle.readline()
            bounds.append(min(handle.tell(), size))
    return list(zip(bounds, [*bounds[1:], size]))


def read_block_with_pyarrow(path: str, start: int, end: int) -> int:
    """Rows ``pyarrow.json`` reads from one block of review lines (the raw review fields, typed)."""
    import pyarrow as pa
    import pyarrow.json as pajson

    from pipeline.ingest.records import RAW_REVIEW as schema

    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    table = pajson.read_json(
        pa.BufferReader(data),
        read_options=pajson.ReadOptions(use_threads=False, block_size=len(data) + 1),
        parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
    )
    return table.num_rows


def pyarrow_floor(reviews: Path, workers: int) -> dict[str, float | int]:
    """Seconds ``pyarrow.json`` takes to read ``reviews`` in parallel blocks on ``workers`` local Dask workers."""
    from pipeline.cluster import dask_client

    blocks = newline_blocks(reviews, FLOOR_BLOCK)
    with dask_client(workers) as client:
        client.run(lambda: __import__("pyarrow.json"))  # imports are start-up, not reading
        warm_page_cache(reviews)
        started = time.perf_counter()
        futures = [client.submit(read_block_with_pyarrow, str(reviews), s, e, pure=False) for s, e in blocks]
        rows = sum(client.gather(futures))
        seconds = time.perf_counter() - started
    return {"wall_s": round(seconds, 2), "rows": rows, "blocks": len(blocks), "block_bytes": FLOOR_BLOCK}


def write_config(path: Path, args: argparse.Namespace, reviews: Path, meta: Path) -> None:
    config = {  # YAML is a superset of JSON
        "workers": args.workers,
        "run": {"inputs": {DOMAIN: {"reviews": [str(reviews)], "meta": [str(meta)]}}, "judge": True},
        "sequences": {"k": 5, "train_targets": args.train_targets, "max_history": 50, "num_negatives": 99},
        "annotate": {"annotator": "template", "splits": ["train"]},
        "judge": {"judge": "heuristic", "sample": 300},
        "release": {"version": VERSION},
    }
    path.write_text(json.dumps(config, indent=2))


def loads_back(registry: Path) -> dict[str, int]:
    """Rows per split of the released config, read with the project's loader (verifies checksums)."""
    from release.loading import load_release

    dataset = load_release(registry, CONFIG, revision=f"v{VERSION}", cache_dir=registry.parent / "load-cache")
    return {split: len(rows) for split, rows in dataset.items()}


def release_memory(run: Path, workdir: Path, partition_rows: list[int]) -> dict[int, dict[str, float]]:
    """Peak memory of `rrec release` of ``run`` (one process, no cluster) per ``release.partition_rows``."""
    rrec = str(Path(sys.executable).with_name("rrec"))
    found = {}
    for rows in partition_rows:
        config = workdir / f"release-{rows}.yaml"
        config.write_text(json.dumps({"release": {"partition_rows": rows}}))
        registry = workdir / f"release-memory-{rows}"
        shutil.rmtree(registry, ignore_errors=True)
        cmd = [rrec, "--log-level", "WARNING", "release", "--runs", str(run), "--registry", str(registry), "--version", VERSION]
        measured = measure_tree([*cmd, "--config", str(config)], workdir / f"release-{rows}.log")
        found[rows] = {"wall_s": measured.wall_s, "peak_process_mb": measured.peak_process_mb, "returncode": measured.returncode}
        print(f"  partition_rows {rows:,}: {found[rows]}", flush=True)
        shutil.rmtree(registry, ignore_errors=True)
    return found


def pair_figures(pairs: list[tuple[Command, Command]]) -> dict[str, Any]:
    """Each (first, second) pair's wall and CPU seconds and ratios, and their medians (the stage
    figures of the record are the last pair's)."""
    each = [
        {
            "first_wall_s": first.wall_s,
            "second_wall_s": second.wall_s,
            "ratio": round(second.wall_s / first.wall_s, 2),
            "first_cpu_s": first.cpu_s,
            "second_cpu_s": second.cpu_s,
            "ratio_cpu": round(second.cpu_s / first.cpu_s, 2) if first.cpu_s else None,
        }
        for first, second in pairs
    ]
    medians = {key: statistics.median(p[key] for p in each) for key in each[0] if all(p[key] is not None for p in each)}
    return {"each": each, "median": {key: round(value, 2) for key, value in medians.items()}}


def busy_share(command: Command, cores: int) -> float:
    """The share of ``cores`` that ``command``'s process tree kept busy over its wall time."""
    return round(command.cpu_s / (command.wall_s * cores), 3) if command.wall_s else 0.0


def scaling(record: dict, smaller: dict) -> dict[str, float]:
    """How much larger ``record``'s input is than ``smaller``'s, and its peak memory, per command."""
    found = {"input_ratio": round(record["reviews"] / smaller["reviews"], 2), "against": smaller["command"]}
    for command in ("first_command", "second_command"):
        for peak in ("peak_process_mb", "peak_tree_mb"):
            found[f"{command}_{peak}_ratio"] = round(record[command][peak] / smaller[command][peak], 2)
    return found


def peaks_by_stage(stages: dict[str, dict], command: Command) -> dict[str, dict[str, float]]:
    """Peak memory of ``command`` (the second one) within each of its stages' windows, from the
    manifest's finish time (second resolution) and wall time; ``release`` is what follows the last.

    Where the largest process's memory goes is the first question a missed memory target asks.
    """
    windows = {}
    for name in STAGE_ORDER[2:]:
        if name in stages and "finished_at" in stages[name]:
            end = calendar.timegm(time.strptime(stages[name]["finished_at"], "%Y-%m-%dT%H:%M:%SZ")) + 1.0
            windows[name] = (end - stages[name]["wall_time_s"] - 1.0, end)
    found = {name: command.peaks_between(start, end) for name, (start, end) in windows.items()}
    if windows and command.timeline:
        found["release"] = command.peaks_between(max(end for _, end in windows.values()) - 1.0, command.timeline[-1][0])
    return found


WARNING_MARKS = ("warning", "traceback", "poorly aligned", "error")


def warning_lines(log: Path) -> list[str]:
    """Lines of a command's output that look like a warning or an error (a clean run has none:
    the s12 code printed 95 Arrow alignment warnings from validate's workers unnoticed)."""
    return [line for line in log.read_text(errors="replace").splitlines() if any(mark in line.lower() for mark in WARNING_MARKS)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--users", type=int, help="users of the generated Grocery domain (the issue's 150k: --users 150000)")
    size.add_argument("--reviews", type=int, help="about this many reviews (users = reviews / 9)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rrec-chain-bench"), help="data and run folders (data is reused)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="local Dask workers of the chain and of the floor")
    parser.add_argument("--train-targets", choices=["all", "last"], default="last")
    parser.add_argument("--note", default="", help="free text stored in the record (e.g. machine load)")
    parser.add_argument("--release-memory", default="", help="comma-separated release.partition_rows values to measure `rrec release` at")
    parser.add_argument("--compare", type=Path, default=None, help="record of a smaller run: report input and peak-memory ratios")
    parser.add_argument("--output", type=Path, default=None, help="JSON record (default: WORKDIR/chain-<size>.json)")
    parser.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="run the two commands this many times, one after the other, and record each pair and the medians "
        "(a single pair's ratio on a shared VM spread 2.9x-4.4x for the same code)",
    )
    args = parser.parse_args(argv)
    if args.compare is not None and not args.compare.is_file():  # read only at the end: refuse before a long run
        parser.error(f"--compare {args.compare}: no such record")

    from pipeline.sample import SampleSettings, generate_domain, users_for_reviews

    users = args.users or users_for_reviews(args.reviews)
    label = f"users-{users}"
    data = args.workdir / f"data-{label}"
    reviews, meta = data / f"{DOMAIN}.jsonl", data / f"meta_{DOMAIN}.jsonl"
    if not reviews.exists():
        print(f"generating {users:,} users into {data} ...", flush=True)
        report = generate_domain(data, DOMAIN, SampleSettings(users=users))
        print(f"  {report.reviews:,} reviews, {report.items:,} items", flush=True)

    print(f"pyarrow floor: pyarrow.json over {reviews.stat().st_size / 2**20:,.0f} MiB on {args.workers} workers ...", flush=True)
    floor = pyarrow_floor(reviews, args.workers)
    print(f"  {floor}", flush=True)

    out = args.workdir / f"out-{label}"
    shutil.rmtree(out, ignore_errors=True)
    config = args.workdir / f"chain-{label}.yaml"
    write_config(config, args, reviews, meta)
    rrec = [str(Path(sys.executable).with_name("rrec")), "--log-level", "WARNING", "run", "--out", str(out), "--config", str(config)]
    pairs: list[tuple[Command, Command]] = []
    wanted = max(1, args.pairs)
    for number in range(1, wanted + 1):
        shutil.rmtree(out, ignore_errors=True)
        print(f"first command ({number}/{wanted}): rrec run --until sequences ...", flush=True)
        warm_page_cache(reviews, meta)
        first = measure_tree([*rrec, "--until", "sequences"], args.workdir / "first.log")
        print(f"  {first}", flush=True)
        print("second command: rrec run (annotate .. release) ...", flush=True)
        second = measure_tree(rrec, args.workdir / "second.log") if first.returncode == 0 else first
        print(f"  {second}", flush=True)
        if first.returncode or second.returncode:
            return 1
        pairs.append((first, second))

    stages = json.loads((out / "runs" / DOMAIN / "manifest.json").read_text())["stages"]
    stage_s = {name: stages[name]["wall_time_s"] for name in STAGE_ORDER if name in stages}
    stage_peaks = peaks_by_stage(stages, second)
    after_sequences = sum(stage_s.get(name, 0.0) for name in STAGE_ORDER[2:])
    loaded = loads_back(out / "registry")
    release = json.loads((out / "registry" / "manifest.json").read_text())
    shard_bytes = [info["bytes"] for name, info in release["files"].items() if name.startswith(f"data/{CONFIG}/")]
    sizes = [int(v) for v in args.release_memory.split(",") if v]
    if sizes:
        print("rrec release alone, per partition size ...", flush=True)
    by_partition = release_memory(out / "runs" / DOMAIN, args.workdir, sizes)
    figures = pair_figures(pairs)
    warnings = {name: warning_lines(args.workdir / f"{name}.log") for name in ("first", "second")}
    record = {
        "users_generated": users,
        "reviews": stages["ingest"].get("rows_in"),
        "review_file_bytes": reviews.stat().st_size,
        "sequences_rows": stages["sequences"].get("rows_out"),
        "released_rows": release["row_counts"],
        "loaded_rows": loaded,
        "largest_shard_mb": round(max(shard_bytes) / 2**20, 1),
        "workers": args.workers,
        "note": args.note,
        "pyarrow_floor": floor,
        "ingest_over_floor": round(stage_s["ingest"] / floor["wall_s"], 2) if floor["wall_s"] else None,
        "stage_wall_s": stage_s,
        "release_and_startup_s": round(second.wall_s - after_sequences, 2),
        "second_command_peaks_by_stage": stage_peaks,
        "first_command": {"cmd": "rrec run --until sequences", **first.summary()},
        "second_command": {"cmd": "rrec run", **second.summary()},
        # The last pair's ratios, in wall and in CPU seconds, and how much of the cores each command
        # kept busy: wall time is about CPU / cores plus what runs on one core (start-up, stage ends, exit).
        "second_over_first": figures["each"][-1]["ratio"],
        "pairs": figures,
        "second_over_first_cpu": figures["each"][-1]["ratio_cpu"],
        "busy_share": {name: busy_share(cmd, args.workers) for name, cmd in (("first", first), ("second", second))},
        "warning_lines": {name: len(lines) for name, lines in warnings.items()},
        "release_alone_by_partition_rows": by_partition,
        "load_average_at_end": os.getloadavg(),
    }
    if args.compare:
        record["scaling"] = scaling(record, json.loads(args.compare.read_text()))
    output = write_record(record, args.output or args.workdir / f"chain-{label}.json", __file__, argv)
    print()
    print("| | wall (s) | CPU (s) | peak, largest process (MB) | peak, process tree (MB) |\n|---|---|---|---|---|")
    print(f"| pyarrow.json floor (read only) | {floor['wall_s']} | | | |")
    for name, seconds in stage_s.items():
        peaks = stage_peaks.get(name, {})
        print(f"| stage {name} | {seconds} | | {peaks.get('peak_process_mb', '')} | {peaks.get('peak_tree_mb', '')} |")
    rest = stage_peaks.get("release", {})
    print(
        f"| release + start-up (rest of 2nd) | {record['release_and_startup_s']} | | {rest.get('peak_process_mb', '')} | {rest.get('peak_tree_mb', '')} |"
    )
    for name, cmd in (("1st: rrec run --until sequences", first), ("2nd: rrec run", second)):
        print(f"| {name} | {cmd.wall_s} | {cmd.cpu_s} | {cmd.peak_process_mb} | {cmd.peak_tree_mb} |")
    if "scaling" in record:
        print(f"scaling against {args.compare}: {record['scaling']}")
    for name, lines in warnings.items():
        for line in lines[:5]:
            print(f"WARNING in the {name} command's output: {line}")
    if len(pairs) > 1:
        median = record["pairs"]["median"]
        print(
            f"{len(pairs)} pairs: ratios {[p['ratio'] for p in record['pairs']['each']]}, median {median['ratio']}x (CPU {median.get('ratio_cpu')}x)"
        )
    print(
        f"last pair: second / first = {record['second_over_first']}x (CPU {record['second_over_first_cpu']}x; "
        f"cores busy {record['busy_share']['first']:.0%} / {record['busy_share']['second']:.0%})"
    )
    print(f"ingest / floor = {record['ingest_over_floor']}x; record: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
