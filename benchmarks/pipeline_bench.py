"""Ingest + sequences against the official benchmark scripts' logic, in one invocation.

    python benchmarks/pipeline_bench.py --reviews 1000000

1. generates one synthetic domain of about N reviews with `rrec sample` (cached in --workdir);
2. runs ingest then sequences as a user runs them: `rrec run --until sequences` (one process,
   one LocalCluster of --workers for both stages; the stage times come from its manifest), or
   with --separate-commands `rrec ingest` then `rrec sequences` (a process and a cluster each);
3. runs the single-process pure-Python baseline (`benchmarks/official_baseline.py`: the logic
   of kcore_filtering.py + last_out_split.py) in a fresh process;
4. measures the wall time and the peak resident memory of each (the sum over the process tree,
   Dask workers included, sampled every 50 ms); each command starts with its input files read
   once into the page cache, untimed;
5. checks that both produce the same leave-one-out examples (the pipeline also draws 99
   negatives per row, joins item metadata and writes Parquet; the baseline does none of that): an order-independent digest over
   (split, user, target, history) of every test and validation row, and of the train rows the
   pipeline's `--train-targets` mode produces (`all`: every prefix; `last`: the item before the
   validation target), plus equal row counts.

Prints a table and writes a JSON record (--output) for docs/PERFORMANCE.md. Exits 1 if the
outputs differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from itertools import accumulate
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import measure_tree  # noqa: E402

DOMAIN = "Grocery_and_Gourmet_Food"
MASK = (1 << 64) - 1


@dataclass
class Measured:
    wall_s: float
    peak_rss_mb: float
    returncode: int


def measure(cmd: list[str], log_path: Path) -> Measured:
    """Run ``cmd``; wall time and peak RSS summed over its whole process tree."""
    measured = measure_tree(cmd, log_path)
    return Measured(measured.wall_s, measured.peak_tree_mb, measured.returncode)


def warm_page_cache(*paths: Path) -> None:
    """Read ``paths`` once, untimed, so each measured command starts with its input in the page
    cache: otherwise whichever side runs first may pay disk reads (seen: 19 s) the other does not."""
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(64 << 20):
                pass


def _row_hash(split: str, user: str, target: str, history: list[str] | tuple[str, ...]) -> int:
    text = f"{split}\t{user}\t{target}\t{','.join(history)}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def baseline_digest(review_file: Path, k: int, max_history: int, train_targets: str) -> dict:
    """The baseline run, reduced to digests of what the pipeline is compared on."""
    from benchmarks.official_baseline import filter_inters, load_ratings, make_inters_in_order

    raw = load_ratings([review_file])
    deduped = [inter for user_inters in make_inters_in_order(raw).values() for inter in user_inters]
    kcore = filter_inters(deduped, k)
    digests: Counter = Counter()
    counts: Counter = Counter()
    for user, inters in make_inters_in_order(kcore).items():
        items = [inter[1] for inter in inters]
        n = len(items)
        positions = [("test", n - 1)]
        if n > 1:
            positions.append(("validation", n - 2))
        if n > 2:
            positions.extend(("train", p) for p in (range(n - 2) if train_targets == "all" else [n - 3]))
        for split, position in positions:
            history = items[max(0, position - max_history) if max_history else 0 : position]
            digests[split] = (digests[split] + _row_hash(split, user, items[position], history)) & MASK
            counts[split] += 1
    return {"kcore_interactions": len(kcore), "digests": {s: f"{d:016x}" for s, d in digests.items()}, "counts": dict(counts)}


def pipeline_digest(run: Path) -> dict:
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    digests: Counter = Counter()
    counts: Counter = Counter()
    dataset = pads.dataset(str(run / "sequences"), format="parquet")
    for batch in dataset.to_batches(columns=["user_id", "split", "history", "target"], batch_size=20_000):
        users = batch.column("user_id").to_pylist()
        splits = batch.column("split").to_pylist()
        targets = batch.column("target").field("parent_asin").to_pylist()
        history = batch.column("history")
        # flatten() honours the array's slice offset; lengths rebuild the per-row boundaries.
        flat = history.flatten().field("parent_asin").to_pylist()
        ends = list(accumulate(pc.list_value_length(history).fill_null(0).to_pylist()))
        for i, (user, split, target) in enumerate(zip(users, splits, targets)):
            digests[split] = (digests[split] + _row_hash(split, user, target, flat[(ends[i - 1] if i else 0) : ends[i]])) & MASK
            counts[split] += 1
    manifest = json.loads((run / "manifest.json").read_text())
    return {
        "digests": {s: f"{d:016x}" for s, d in digests.items()},
        "counts": dict(counts),
        "manifest_sequences": manifest["stages"]["sequences"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, required=True, help="approximate number of reviews to generate")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rrec-bench"), help="data and run folders (data is reused)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="local Dask workers of the pipeline")
    parser.add_argument("--train-targets", choices=["all", "last"], default="last", help="the pipeline's train rows (DESIGN default: last)")
    parser.add_argument("--num-negatives", type=int, default=99)
    parser.add_argument("--max-history", type=int, default=50)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--gzip", action="store_true", help="generate .jsonl.gz input instead of .jsonl")
    parser.add_argument("--output", type=Path, default=None, help="JSON record of the run (default: WORKDIR/result-N.json)")
    parser.add_argument("--separate-commands", action="store_true", help="time `rrec ingest` and `rrec sequences` as two commands")
    parser.add_argument("--baseline-only-digest", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    train_targets = args.train_targets

    if args.baseline_only_digest:  # the measured baseline process
        result = baseline_digest(args.baseline_only_digest, args.k, args.max_history, train_targets)
        print(json.dumps(result))
        return 0

    from pipeline.sample import SampleSettings, generate_domain, users_for_reviews

    suffix = ".jsonl.gz" if args.gzip else ".jsonl"
    data = args.workdir / f"data-{args.reviews}{'-gz' if args.gzip else ''}"
    reviews, meta = data / f"{DOMAIN}{suffix}", data / f"meta_{DOMAIN}{suffix}"
    if not reviews.exists():
        print(f"generating ~{args.reviews:,} reviews into {data} ...", flush=True)
        report = generate_domain(data, DOMAIN, SampleSettings(users=users_for_reviews(args.reviews), gzip=args.gzip))
        print(f"  {report.reviews:,} reviews, {report.items:,} items", flush=True)
    n_lines = None
    if not args.gzip:
        with open(reviews, "rb") as handle:
            n_lines = sum(1 for _ in handle)
    rrec = str(Path(sys.executable).with_name("rrec"))
    sequences_settings = {"k": args.k, "train_targets": train_targets, "max_history": args.max_history, "num_negatives": args.num_negatives}
    if args.separate_commands:
        run = args.workdir / f"run-{args.reviews}"
        common = ["--workers", str(args.workers), "--force"]
        print("pipeline: rrec ingest ...", flush=True)
        warm_page_cache(reviews, meta)
        ingest = measure(
            [rrec, "--log-level", "WARNING", "ingest", "--run", str(run), "--reviews", str(reviews), "--meta", str(meta), *common],
            args.workdir / "ingest.log",
        )
        print(f"  {ingest}", flush=True)
        print("pipeline: rrec sequences ...", flush=True)
        options = [part for name, value in sequences_settings.items() for part in (f"--{name.replace('_', '-')}", str(value))]
        sequences = measure(
            [rrec, "--log-level", "WARNING", "sequences", "--run", str(run), *options, *common], args.workdir / "sequences.log"
        )
        print(f"  {sequences}", flush=True)
        commands = [ingest, sequences]
        stages = {"ingest": ingest.wall_s, "sequences": sequences.wall_s}
    else:
        out = args.workdir / f"out-{args.reviews}"
        run = out / "runs" / DOMAIN
        config = args.workdir / f"bench-{args.reviews}.yaml"
        config.write_text(
            json.dumps(
                {  # YAML is a superset of JSON
                    "workers": args.workers,
                    "run": {"inputs": {DOMAIN: {"reviews": [str(reviews)], "meta": [str(meta)]}}},
                    "sequences": sequences_settings,
                }
            )
        )
        print("pipeline: rrec run --until sequences ...", flush=True)
        warm_page_cache(reviews, meta)
        whole = measure(
            [rrec, "--log-level", "WARNING", "run", "--out", str(out), "--config", str(config), "--until", "sequences", "--force"],
            args.workdir / "pipeline.log",
        )
        print(f"  {whole}", flush=True)
        commands = [whole]
        if whole.returncode == 0:
            manifest = json.loads((run / "manifest.json").read_text())
            stages = {name: manifest["stages"][name]["wall_time_s"] for name in ("ingest", "sequences")}
    print("baseline (official scripts' logic, one process) ...", flush=True)
    digest_file = args.workdir / "baseline-digest.json"
    warm_page_cache(reviews)
    baseline = measure(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--reviews",
            str(args.reviews),
            "--k",
            str(args.k),
            "--max-history",
            str(args.max_history),
            "--train-targets",
            train_targets,
            "--baseline-only-digest",
            str(reviews),
        ],
        digest_file,
    )
    print(f"  {baseline}", flush=True)
    if any(m.returncode != 0 for m in (*commands, baseline)):
        return 2
    expected = json.loads(digest_file.read_text().strip().splitlines()[-1])
    got = pipeline_digest(run)
    equal = expected["digests"] == got["digests"] and expected["counts"] == got["counts"]
    pipeline_wall = sum(m.wall_s for m in commands)
    pipeline_rss = max(m.peak_rss_mb for m in commands)
    record = {
        "reviews_requested": args.reviews,
        "review_lines": n_lines,
        "input_bytes": reviews.stat().st_size,
        "train_targets": train_targets,
        "num_negatives": args.num_negatives,
        "max_history": args.max_history,
        "workers": args.workers,
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}",
        "pipeline": {
            "commands": "rrec ingest; rrec sequences" if args.separate_commands else "rrec run --until sequences",
            "stage_wall_s": stages,
            "wall_s": round(pipeline_wall, 2),
            "peak_rss_mb": pipeline_rss,
        },
        "baseline": asdict(baseline),
        "speedup": round(baseline.wall_s / pipeline_wall, 2),
        "rss_ratio": round(pipeline_rss / baseline.peak_rss_mb, 2),
        "outputs_equal": equal,
        "kcore_interactions_baseline": expected["kcore_interactions"],
        "rows": got["counts"],
        "command": "python benchmarks/pipeline_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    output = args.output or args.workdir / f"result-{args.reviews}.json"
    output.write_text(json.dumps(record, indent=2))
    print()
    print("| | wall (s) | peak RSS (MB) |\n|---|---|---|")
    for name, seconds in stages.items():
        print(f"| pipeline {name} | {seconds} | |")
    print(f"| pipeline total ({record['pipeline']['commands']}) | {pipeline_wall:.2f} | {pipeline_rss} |")
    print(f"| baseline (official logic) | {baseline.wall_s} | {baseline.peak_rss_mb} |")
    print(f"speedup {record['speedup']}x, RSS ratio {record['rss_ratio']}, outputs equal: {equal}; record: {output}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
