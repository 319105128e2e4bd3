"""What the benchmarks share: running ``rrec``, a prepared run folder, a baseline commit's code,
a command measured whole (wall time, peak memory of its process tree), the CPU seconds of a Dask
cluster, and a JSON record with the machine and the command line that made it."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "Grocery_and_Gourmet_Food"


def cluster_cpu_s(client: Any) -> float:
    """CPU seconds used so far by this process and every worker process of the Dask ``client``."""
    workers = client.run(time.process_time)
    return time.process_time() + sum(workers.values())


def machine() -> str:
    """The machine a record was measured on: host, architecture, cores, memory, Python."""
    memory = psutil.virtual_memory().total / 2**30
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, {memory:.0f} GiB RAM, Python {platform.python_version()}"


def write_record(record: dict[str, Any], output: Path, script: str, argv: list[str] | None) -> Path:
    """``record`` with the machine and the command line (``script`` with ``argv``, default this
    process's arguments) added, written as JSON into ``output``; returns ``output``."""
    arguments = argv if argv is not None else sys.argv[1:]
    record.update(machine=machine(), command=" ".join(["python", f"benchmarks/{Path(script).name}", *arguments]))
    output.write_text(json.dumps(record, indent=2))
    return output


def rrec(*args: str) -> None:
    """Run one ``rrec`` command of this environment; a failure raises."""
    command = Path(sys.executable).with_name("rrec")
    subprocess.run([str(command), *args], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def prepare_run(workdir: Path, users: int, workers: int, until: str, annotate_args: tuple[str, ...] = ()) -> Path:
    """A run folder of ``users`` synthetic Grocery users with every stage before ``until`` done
    (kept between invocations: an unchanged stage skips itself)."""
    data, run = workdir / "data", workdir / "runs" / DOMAIN
    if not data.exists():
        rrec("sample", "--out", str(data), "--domains", DOMAIN, "--users", str(users))
    reviews, meta = data / f"{DOMAIN}.jsonl", data / f"meta_{DOMAIN}.jsonl"
    common = ["--run", str(run), "--workers", str(workers)]
    rrec("ingest", *common, "--reviews", str(reviews), "--meta", str(meta), "--domain", DOMAIN)
    for stage in ("sequences", "annotate", "filter"):
        if stage == until:
            break
        rrec(stage, *common, *(annotate_args if stage == "annotate" else ()))
    return run


def extract_baseline(revision: str, into: Path, packages: tuple[str, ...]) -> Path:
    """``packages`` of the baseline commit ``revision`` under ``into`` (to put on PYTHONPATH)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, *packages], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def code_env(pythonpath: Path | None, **extra: str) -> dict[str, str]:
    """This process's environment with ``pythonpath`` (a baseline's code) first on the import path
    (unchanged when None), plus ``extra`` variables: how a benchmark runs one side's code."""
    env = {**os.environ, **extra}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def measure_driver(script: str, args: list[str], pythonpath: Path | None) -> dict[str, object]:
    """Run ``script --driver ARGS`` in a fresh process (with ``pythonpath`` first: a baseline's
    code) and return the JSON it prints last, plus the whole process's seconds."""
    env = code_env(pythonpath)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, script, "--driver", *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),  # not the repository: its packages would shadow the baseline's
    )
    process_s = time.perf_counter() - started
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "process_s": round(process_s, 2)}


@dataclass
class Command:
    """One measured command: wall time, peak memory of its largest process and of the whole tree,
    and the CPU seconds (user + system) of the whole tree."""

    wall_s: float
    peak_process_mb: float
    peak_tree_mb: float
    processes: int
    returncode: int
    timeline: list[tuple[float, int, int]] = field(default_factory=list, repr=False)
    """(epoch seconds, tree bytes, largest process bytes) of every sample, for peaks per stage."""
    cpu_s: float = 0.0
    """User + system CPU seconds of the command and every process it started (Dask workers, the
    report helper, git), as the kernel accounts them when each is reaped: what the command asked
    of the machine's cores, beside how long it took."""

    def summary(self) -> dict[str, float | int]:
        """The command's figures for a record (without the timeline)."""
        return {
            "wall_s": self.wall_s,
            "peak_process_mb": self.peak_process_mb,
            "peak_tree_mb": self.peak_tree_mb,
            "processes": self.processes,
            "returncode": self.returncode,
            "cpu_s": self.cpu_s,
        }

    def peaks_between(self, start: float, end: float) -> dict[str, float]:
        """Peak tree and largest-process memory (MB) of the samples taken from ``start`` to ``end`` (epoch s)."""
        window = [(tree, largest) for at, tree, largest in self.timeline if start <= at <= end]
        return {
            "peak_process_mb": round(max((largest for _, largest in window), default=0) / 2**20, 1),
            "peak_tree_mb": round(max((tree for tree, _ in window), default=0) / 2**20, 1),
        }


def measure_tree(cmd: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path = REPO) -> Command:
    """Run ``cmd``; wall time, the peak RSS per process and summed over its process tree (50 ms
    samples) and the tree's CPU seconds (this process's reaped children's usage before and after:
    run one command at a time). ``env`` replaces the environment (a baseline's PYTHONPATH) and
    ``cwd`` the working folder (not the repository, whose packages would shadow a baseline's)."""
    with open(log_path, "w") as log:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        root = psutil.Process(proc.pid)
        per_process: dict[int, int] = {}
        tree_peak = 0
        timeline: list[tuple[float, int, int]] = []
        done = threading.Event()

        def sample() -> None:
            nonlocal tree_peak
            while not done.is_set():
                try:
                    procs = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    procs = []
                total = largest = 0
                for p in procs:
                    try:
                        rss = p.memory_info().rss
                    except psutil.NoSuchProcess:
                        continue
                    total += rss
                    largest = max(largest, rss)
                    per_process[p.pid] = max(per_process.get(p.pid, 0), rss)
                tree_peak = max(tree_peak, total)
                timeline.append((time.time(), total, largest))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        returncode = proc.wait()
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        done.set()
        sampler.join()
    if returncode != 0:
        print(f"command failed ({returncode}): {' '.join(cmd)}; log: {log_path}", file=sys.stderr)
        print(log_path.read_text()[-3000:], file=sys.stderr)
    return Command(
        round(wall, 2),
        round(max(per_process.values(), default=0) / 2**20, 1),
        round(tree_peak / 2**20, 1),
        len(per_process),
        returncode,
        timeline,
        cpu_s=round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 2),
    )
