"""Memory of the sequences stage's global selection (dedupe, k-core, ordering) per interaction.

The selection runs in the driver over the whole domain's interaction keys, so its memory caps
the largest domain one machine can take. For each size, a fresh process builds an
``interactions``-shaped key table in memory (Amazon-like ids: 28-character user ids, 10-character
item ids, power-law item popularity, about 7 reviews a user) and runs
:func:`pipeline.sequences.select_interactions` on it; the process's peak resident memory is read
(sampled every 5 ms, above the interpreter and libraries loaded before the table is built). Reported: the input table's size, the selection's extra peak, and
both per interaction, plus the largest domain that fits a given memory.

    python benchmarks/selection_memory.py --sizes 1000000,2000000,4000000,8000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

MEASURE = """
import gc, json, sys, threading, time
import psutil
sys.path.insert(0, {root!r})
from benchmarks.selection_memory import key_table
from pipeline.sequences import SequencesSettings, select_interactions
process = psutil.Process()
baseline = process.memory_info().rss
table = key_table({n})
gc.collect()
before = process.memory_info().rss
peak = [before]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.005)
sampler = threading.Thread(target=sample)
sampler.start()
started = time.perf_counter()
selection = select_interactions(table, SequencesSettings())
elapsed = time.perf_counter() - started
done.set(); sampler.join()
print(json.dumps({{"interactions": {n}, "input_bytes": table.nbytes, "rss_baseline": baseline, "rss_before": before,
                  "rss_peak": max(peak[0], process.memory_info().rss), "seconds": elapsed,
                  "kept": selection.counts["interactions_out"]}}))
"""


def key_table(n: int, seed: int = 7) -> pa.Table:
    """An ``interactions`` key table of ``n`` rows shaped like a real Amazon 2023 domain."""
    rng = np.random.default_rng(seed)
    users = max(1, n // 7)
    items = max(1, n // 20)
    user = np.sort(rng.integers(0, users, n))  # grouped by user, as the raw files are
    item = np.minimum((rng.pareto(1.2, n) * items / 50).astype(np.int64), items - 1)
    user_ids = pa.array([f"A{u:027d}" for u in user.tolist()])
    item_ids = pa.array([f"B{i:09d}" for i in item.tolist()])
    return pa.table(
        {
            "user_id": user_ids,
            "parent_asin": item_ids,
            "timestamp": pa.array(1_500_000_000_000 + rng.integers(0, 10**11, n)),
            "rating": pa.array(rng.integers(1, 6, n).astype(np.float32)),
            "src_file": pa.array(np.zeros(n, np.int32)),
            "src_line": pa.array(np.arange(n, dtype=np.int64)),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,2000000,4000000", help="comma-separated interaction counts")
    parser.add_argument("--machine-gib", default="24,64,256", help="memory sizes to state the largest domain for")
    parser.add_argument("--output", help="write the records as JSON here")
    args = parser.parse_args()
    root = str(Path(__file__).resolve().parents[1])
    records = []
    for n in (int(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", MEASURE.format(root=root, n=n)], capture_output=True, text=True, check=True)
        record = json.loads(out.stdout.strip().splitlines()[-1])
        record["wall_s"] = round(time.perf_counter() - started, 1)
        extra = record["rss_peak"] - record["rss_before"]
        record["selection_extra_bytes_per_interaction"] = round(extra / n, 1)
        record["peak_bytes_per_interaction"] = round((record["rss_peak"] - record["rss_baseline"]) / n, 1)
        records.append(record)
        print(
            f"{n:>12,} interactions: input table {record['input_bytes'] / 2**20:8.0f} MiB, process peak "
            f"{record['rss_peak'] / 2**30:6.2f} GiB ({record['peak_bytes_per_interaction']:.0f} B/interaction, selection "
            f"adds {record['selection_extra_bytes_per_interaction']:.0f} B), {record['seconds']:.1f} s",
            flush=True,
        )
    per = max(r["peak_bytes_per_interaction"] for r in records[-2:])
    for gib in (int(g) for g in args.machine_gib.split(",")):
        usable = gib * 2**30 * 0.7  # room for the OS, the Dask workers and the page cache
        print(f"  a {gib} GiB machine: about {usable / per / 1e6:,.0f}M interactions in the driver's selection")
    if args.output:
        Path(args.output).write_text(json.dumps({"records": records, "bytes_per_interaction": per}, indent=2))


if __name__ == "__main__":
    main()
