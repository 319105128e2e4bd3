"""A release shard's row-group preparation, this checkout against a baseline commit, on real rows.

    python benchmarks/shard_ab.py --run RUN_FOLDER --baseline REV [--split validation] [--shards 2] [--rounds 4]

The run folder (annotated and filtered, for instance one `chain_bench.py` leaves in its workdir)
is joined into staging files by this checkout's release builder, in this process without a
cluster, and the staged rows of its first ``--shards`` shards of ``--split`` are cut into row
groups as ``release.shards.write_shard`` cuts them, in the dictionary form it writes while each
group's dictionary fits a page. Those groups are what ``release.shards.encoded_group`` (the
step that turns a group's dictionary-encoded pieces into one table for the Parquet writer)
receives. Then the baseline's ``encoded_group``
(``release/shards.py`` of commit REV, from ``git archive``) and this checkout's run over the same
groups in turn, ``--rounds`` times, timed in CPU seconds of this process (steadier than a whole
`rrec release` on a shared machine, where a second or two drowns in the noise), after a check
that both return equal tables. Prints the rounds and writes a JSON record (--output).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402

from benchmarks.common import extract_baseline, write_record  # noqa: E402
from release import builder, shards  # noqa: E402
from release.publish import ReleaseSettings  # noqa: E402


def staged_groups(run: Path, workdir: Path, split: str, count: int) -> list[tuple[pa.Table, pa.Schema]]:
    """The (group, schema) pairs the first ``count`` shards of ``split`` hand to ``encoded_group``."""
    staging = workdir / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    source = types.SimpleNamespace(run=run, config="bench")
    settings = ReleaseSettings()  # the default partitions and shards of `rrec release`
    results = builder._join_partitions(source, staging, settings.partition_rows, None)
    files = [(f"{result.folder}/{split}{builder.STAGED}", result.rows[split]) for result in results]
    pieces = builder.shard_pieces(files, settings.shard_rows)[:count]
    written = shards.with_dictionary_leaves(builder.RELEASE_ROW)  # the form write_shard prepares while dictionaries fit a page
    kept: list[tuple[pa.Table, pa.Schema]] = []
    for shard in pieces:
        tables = (builder.read_staging(source, offset, rows) for source, offset, rows in shard)
        kept += [(group, written) for group in shards._row_groups(tables, written.names)]
    return kept


def baseline_shards(revision: str, workdir: Path) -> types.ModuleType:
    """``release/shards.py`` of ``revision`` as a module of its own."""
    code = extract_baseline(revision, workdir / "baseline", ("release",))
    spec = importlib.util.spec_from_file_location("baseline_shards", code / "release" / "shards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="an annotated and filtered run folder")
    parser.add_argument("--baseline", required=True, help="git revision whose release/shards.py is the other side")
    parser.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    parser.add_argument("--shards", type=int, default=2, help="shards of the split whose row groups are timed")
    parser.add_argument("--rounds", type=int, default=4, help="baseline then this checkout, this many times")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rrec-shard-ab")
    parser.add_argument("--output", type=Path, default=None, help="JSON record (default: WORKDIR/shard-ab.json)")
    args = parser.parse_args(argv)
    if not (args.run / "filtered").is_dir():
        parser.error(f"{args.run} has no filtered table: run annotate and filter first")
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        groups = staged_groups(args.run, args.workdir, args.split, max(1, args.shards))
        sides = {"baseline": baseline_shards(args.baseline, args.workdir).encoded_group, "this": shards.encoded_group}
        for table, target in groups:
            if not sides["baseline"](table, target).equals(sides["this"](table, target)):
                print("the two sides prepare different tables", file=sys.stderr)
                return 1
        times: dict[str, list[float]] = {"baseline": [], "this": []}
        for round_number in range(max(1, args.rounds)):
            for name, prepare in sides.items():
                start = time.process_time()
                for table, target in groups:
                    prepare(table, target)
                times[name].append(round(time.process_time() - start, 3))
                print(f"round {round_number + 1}: {name} {times[name][-1]} CPU s", flush=True)
    finally:
        shutil.rmtree(args.workdir / "staging", ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    record = {
        "run": str(args.run),
        "baseline": args.baseline,
        "split": args.split,
        "row_groups": len(groups),
        "rows": sum(table.num_rows for table, _ in groups),
        "cpu_s": times,
        "median_cpu_s": medians,
        "this_over_baseline": round(medians["this"] / medians["baseline"], 3) if medians["baseline"] else None,
    }
    output = write_record(record, args.output or args.workdir / "shard-ab.json", __file__, argv)
    print(
        f"{len(groups)} row groups, {record['rows']} rows: medians {medians}, this / baseline = {record['this_over_baseline']}; record: {output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
