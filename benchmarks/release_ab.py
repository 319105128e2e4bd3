"""`rrec release` of one run folder alone: this checkout against a baseline commit, alternately.

    python benchmarks/release_ab.py --run RUN_FOLDER --baseline REV [--rounds N] [--workdir DIR]

A validated run folder (for instance the one `chain_bench.py --reviews 14000000` leaves in its
workdir) is released into a fresh registry by each side in turn, each command timed whole with
its process tree's CPU seconds and peak memory (`benchmarks.common.measure_tree`): the baseline
runs the packages of commit REV (extracted with `git archive` and put first on PYTHONPATH, its
Dask workers too), this side the checkout's. Also recorded: the data files the release wrote
(count, total and largest size). The registries are removed after each run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import code_env, extract_baseline, measure_tree  # noqa: E402

PACKAGES = ("core", "pipeline", "release", "validation", "datacards", "rrec", "training", "configs")
VERSION = "1.0.0"


def release_once(run: Path, registry: Path, log: Path, pythonpath: Path | None) -> dict[str, object]:
    """One `rrec release` of ``run`` into a fresh ``registry``: its figures and the data files it wrote."""
    shutil.rmtree(registry, ignore_errors=True)
    rrec = str(Path(sys.executable).with_name("rrec"))
    cmd = [rrec, "--log-level", "INFO", "release", "--runs", str(run), "--registry", str(registry), "--version", VERSION]
    measured = measure_tree(cmd, log, env=code_env(pythonpath), cwd=Path(tempfile.gettempdir()))
    sizes = [path.stat().st_size for path in (registry / "data").rglob("*.parquet")] if (registry / "data").is_dir() else []
    shutil.rmtree(registry, ignore_errors=True)
    return {
        **measured.summary(),
        "data_files": len(sizes),
        "data_mb": round(sum(sizes) / 2**20, 1),
        "largest_file_mb": round(max(sizes, default=0) / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a validated run folder to release")
    parser.add_argument("--baseline", required=True, help="git revision whose code runs the other side")
    parser.add_argument("--rounds", type=int, default=1, help="baseline then this checkout, this many times")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rrec-release-ab", help="registries, logs, the baseline's code"
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON record (default: WORKDIR/release-ab.json)")
    args = parser.parse_args(argv)
    if not (args.run / "validation" / "summary.json").is_file():
        parser.error(f"{args.run} is not a validated run folder (no validation/summary.json)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    baseline_code = extract_baseline(args.baseline, args.workdir / "baseline-code", PACKAGES)
    runs: dict[str, list[dict[str, object]]] = {"baseline": [], "this": []}
    for number in range(1, args.rounds + 1):
        for side, pythonpath in (("baseline", baseline_code), ("this", None)):
            print(f"round {number}/{args.rounds}: {side} ...", flush=True)
            found = release_once(args.run, args.workdir / f"registry-{side}", args.workdir / f"{side}-{number}.log", pythonpath)
            print(f"  {found}", flush=True)
            if found["returncode"]:
                print(f"the {side} release failed; log: {args.workdir / f'{side}-{number}.log'}", file=sys.stderr)
                return 1
            runs[side].append(found)
    medians = {
        side: {key: statistics.median(r[key] for r in found) for key in ("wall_s", "cpu_s", "peak_tree_mb")} for side, found in runs.items()
    }
    record = {"run": str(args.run), "baseline": args.baseline, "rounds": args.rounds, "runs": runs, "medians": medians}
    record["command"] = "python benchmarks/release_ab.py " + " ".join(argv if argv is not None else sys.argv[1:])
    output = args.output or args.workdir / "release-ab.json"
    output.write_text(json.dumps(record, indent=2))
    print(f"medians: {medians}; record: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
