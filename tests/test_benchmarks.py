"""The benchmarks' own logic: the chain benchmark's memory attribution (a missed memory target is
read stage by stage), its CPU and repeated pairs, and the shard A/B on a real run folder."""

from __future__ import annotations

import calendar
import json
import os
import sys
import time

import pytest

from benchmarks.chain_bench import main as chain_bench_main
from benchmarks.chain_bench import pair_figures, peaks_by_stage
from benchmarks.common import Command, measure_tree

MB = 2**20


def _at(stamp: str) -> float:
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


def test_each_stage_gets_the_peak_of_its_own_window_and_the_release_the_rest():
    stages = {
        "annotate": {"wall_time_s": 10.0, "finished_at": "2026-12-01T04:00:10Z"},
        "filter": {"wall_time_s": 10.0, "finished_at": "2026-12-01T04:00:30Z"},
    }
    start = _at("2026-12-01T04:00:00Z")
    samples = [(5, 900, 400), (15, 100, 50), (25, 2000, 1500), (40, 3000, 2500)]  # (s after start, tree MB, largest MB)
    command = Command(45.0, 2500.0, 3000.0, 3, 0, [(start + at, tree * MB, largest * MB) for at, tree, largest in samples])
    peaks = peaks_by_stage(stages, command)
    assert peaks["annotate"] == {"peak_process_mb": 400.0, "peak_tree_mb": 900.0}
    assert peaks["filter"] == {"peak_process_mb": 1500.0, "peak_tree_mb": 2000.0}
    assert peaks["release"] == {"peak_process_mb": 2500.0, "peak_tree_mb": 3000.0}


def test_the_measured_timeline_sees_a_child_process_memory(tmp_path):
    child = "import time; block = bytearray(300 * 2**20); block[::4096] = b'x' * len(block[::4096]); time.sleep(1.0)"
    measured = measure_tree([sys.executable, "-c", child], tmp_path / "child.log")
    assert measured.returncode == 0
    assert measured.peak_process_mb >= 300
    assert measured.peaks_between(measured.timeline[0][0], measured.timeline[-1][0])["peak_process_mb"] >= 300


def test_the_measured_cpu_counts_the_processes_the_command_started(tmp_path):
    # The command itself idles; its child burns about half a second of CPU (as Dask workers,
    # the report helper and git do for `rrec run`): the tree's CPU must include it.
    burn = "import time; end = time.process_time() + 0.5\nwhile time.process_time() < end: pass"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}], check=True)"
    measured = measure_tree([sys.executable, "-c", parent], tmp_path / "parent.log")
    assert measured.returncode == 0
    assert measured.cpu_s >= 0.5
    assert measured.summary()["cpu_s"] == measured.cpu_s


def test_chain_bench_refuses_a_missing_compare_record_before_any_work(tmp_path, capsys):
    # --compare is read only when the runs are done: a typo would have cost a whole 14M run
    with pytest.raises(SystemExit) as stopped:
        chain_bench_main(["--users", "50", "--workdir", str(tmp_path), "--compare", str(tmp_path / "missing.json")])
    assert stopped.value.code == 2
    assert "no such record" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing generated


def test_repeated_pairs_are_recorded_each_with_the_median_ratio():
    def command(wall: float, cpu: float) -> Command:
        return Command(wall, 1.0, 1.0, 1, 0, cpu_s=cpu)

    pairs = [
        (command(10.0, 20.0), command(35.0, 66.0)),
        (command(12.0, 21.0), command(36.0, 63.0)),
        (command(9.0, 20.0), command(33.0, 64.0)),
    ]
    figures = pair_figures(pairs)
    assert [pair["ratio"] for pair in figures["each"]] == [3.5, 3.0, 3.67]
    assert figures["median"]["ratio"] == 3.5 and figures["median"]["ratio_cpu"] == 3.2
    assert figures["median"]["second_wall_s"] == 35.0


def test_a_measured_command_runs_with_the_given_environment_and_folder(tmp_path):
    # release_ab.py runs a baseline's code this way: its PYTHONPATH first, outside the repository.
    child = "import os; print(os.getcwd(), os.environ.get('RREC_BENCH_SIDE'))"
    env = {**os.environ, "RREC_BENCH_SIDE": "baseline"}
    measured = measure_tree([sys.executable, "-c", child], tmp_path / "env.log", env=env, cwd=tmp_path)
    assert measured.returncode == 0
    assert (tmp_path / "env.log").read_text().split() == [str(tmp_path), "baseline"]


def test_shard_ab_times_both_sides_on_the_row_groups_of_a_real_release(good_run, tmp_path):
    # The baseline is this commit's own shards.py: both sides must prepare equal tables, and
    # every round times each side over every row group of the split's first shard.
    from benchmarks import shard_ab

    output = tmp_path / "record.json"
    work = str(tmp_path / "work")
    arguments = ["--run", str(good_run), "--baseline", "HEAD", "--split", "test", "--shards", "1", "--rounds", "2"]
    code = shard_ab.main([*arguments, "--workdir", work, "--output", str(output)])
    record = json.loads(output.read_text())
    assert code == 0
    assert record["row_groups"] >= 1 and record["rows"] > 0
    assert len(record["cpu_s"]["baseline"]) == len(record["cpu_s"]["this"]) == 2
    assert not list((tmp_path / "work").glob("shard-*.parquet")) and not (tmp_path / "work" / "staging").exists()


def test_partition_ab_runs_the_stages_after_sequences_at_both_part_sizes_on_a_copy(tmp_path):
    # A real run folder (ingest + sequences tables and manifest): both sizes run annotate ..
    # validate on a copy, each round timed per stage; the user's run folder is left as it was.
    from annotation_data import make_run

    from benchmarks import partition_ab

    run = tmp_path / "Grocery"
    make_run(run, users=12)
    before = sorted(str(path.relative_to(run)) for path in run.rglob("*"))
    output = tmp_path / "record.json"
    arguments = ["--run", str(run), "--rows", "3,50", "--rounds", "2", "--workers", "1", "--workdir", str(tmp_path / "work")]
    assert partition_ab.main([*arguments, "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert set(record["rounds"]) == {"3", "50"}
    for rounds in record["rounds"].values():
        assert len(rounds) == 2 and all(set(figures) == set(partition_ab.STAGES) for figures in rounds)
        assert all(figures[stage]["cpu_s"] > 0 for figures in rounds for stage in partition_ab.STAGES)
    assert set(record["second_over_first"]) == {"wall_s", "cpu_s"}
    assert sorted(str(path.relative_to(run)) for path in run.rglob("*")) == before
    assert not (tmp_path / "work" / "Grocery").exists()


def test_partition_ab_refuses_a_folder_without_sequences(tmp_path, capsys):
    from benchmarks import partition_ab

    with pytest.raises(SystemExit):
        partition_ab.main(["--run", str(tmp_path), "--workdir", str(tmp_path / "work")])
    assert "no sequences table" in capsys.readouterr().err
