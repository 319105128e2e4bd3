"""The second command of the chain benchmark, this checkout against an earlier commit, alternately.

    python benchmarks/second_command_ab.py --baseline 20db2fb --rounds 4 --workdir /tmp/cb150

On a VM whose speed drifts by 10-20% from minute to minute, one run of each side says little;
this script runs them in turn, in the same invocation:

1. uses the data and config that ``benchmarks/chain_bench.py --users N --workdir DIR`` left in
   --workdir (run it first);
2. checks the baseline commit out in a ``git worktree`` and runs each side with ``PYTHONPATH``
   set to its tree (the same virtual environment);
3. per side, ``rrec run --until sequences`` once into its own folder, kept as a snapshot;
4. per round, both sides in turn (the order alternates): the run folders restored from the
   snapshot, the page cache flushed (``sync``), then ``rrec run`` (annotate .. release) timed
   whole, with the machine's busy CPU seconds over the command (all processes: driver, workers,
   helpers); after the first rounds, the first command again (for the ratio).

Writes a JSON record (--output) with every time. It asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import code_env  # noqa: E402


def _command(tree: Path, out: Path, config: Path, *extra: str) -> tuple[float, float]:
    """Run ``rrec run`` of the code in ``tree``; (wall seconds, busy CPU seconds of the machine)."""
    code = 'import sys; from rrec.main import main; sys.argv[0] = "rrec"; main()'
    argv = [sys.executable, "-c", code, "--log-level", "WARNING", "run", "--out", str(out), "--config", str(config), *extra]
    before, start = psutil.cpu_times(), time.perf_counter()
    done = subprocess.run(argv, env=code_env(tree), capture_output=True, text=True)
    wall, after = time.perf_counter() - start, psutil.cpu_times()
    if done.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return round(wall, 2), round((after.user + after.system) - (before.user + before.system), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="commit to compare against")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cb150"))
    parser.add_argument("--users", type=int, default=150_000, help="users of chain_bench.py's data in --workdir")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    config = args.workdir / f"chain-users-{args.users}.yaml"
    if not config.exists():
        sys.exit(f"{config} does not exist: run `python benchmarks/chain_bench.py --users {args.users} --workdir {args.workdir}` first")
    baseline = args.workdir / "ab-baseline"
    if baseline.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)], check=False)
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(baseline), args.baseline], check=True, capture_output=True)
    sides = {"this checkout": REPO, f"baseline {args.baseline}": baseline}
    record: dict[str, dict[str, list]] = {side: {"first": [], "second": []} for side in sides}
    try:
        for index, (side, tree) in enumerate(sides.items()):
            out = args.workdir / f"ab-{index}"
            shutil.rmtree(out, ignore_errors=True)
            record[side]["first"].append(_command(tree, out, config, "--until", "sequences"))
            shutil.rmtree(f"{out}-snapshot", ignore_errors=True)
            shutil.copytree(out / "runs", f"{out}-snapshot")
        for round_ in range(args.rounds):
            order = list(enumerate(sides.items()))
            for index, (side, tree) in order if round_ % 2 == 0 else order[::-1]:
                out = args.workdir / f"ab-{index}"
                shutil.rmtree(out, ignore_errors=True)
                shutil.copytree(f"{out}-snapshot", out / "runs")
                os.sync()
                time.sleep(1)
                record[side]["second"].append(_command(tree, out, config))
                print(round_, side, record[side]["second"][-1], flush=True)
            if round_ < 2:
                for index, (side, tree) in order:
                    first = args.workdir / f"ab-{index}-first"
                    shutil.rmtree(first, ignore_errors=True)
                    record[side]["first"].append(_command(tree, first, config, "--until", "sequences"))
                    shutil.rmtree(first, ignore_errors=True)
    finally:
        for index in range(len(sides)):
            for folder in (f"ab-{index}", f"ab-{index}-snapshot"):
                shutil.rmtree(args.workdir / folder, ignore_errors=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)], check=False)
    for side, times in record.items():
        firsts, seconds = [t[0] for t in times["first"]], [t[0] for t in times["second"]]
        print(f"{side}: first {firsts}, second {seconds}, busy CPU {[t[1] for t in times['second']]}")
    if args.output:
        args.output.write_text(json.dumps({"baseline": args.baseline, "rounds": args.rounds, "times": record}, indent=2) + "\n")


if __name__ == "__main__":
    main()
