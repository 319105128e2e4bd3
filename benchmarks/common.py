"""What the stage benchmarks share: running ``rrec``, a prepared run folder, a baseline commit's code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "Grocery_and_Gourmet_Food"


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


def measure_driver(script: str, args: list[str], pythonpath: Path | None) -> dict[str, object]:
    """Run ``script --driver ARGS`` in a fresh process (with ``pythonpath`` first: a baseline's
    code) and return the JSON it prints last, plus the whole process's seconds."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
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
