"""A full disk stops a stage with one clear line naming the folder; freeing space and rerunning works.

The run folder sits on a small tmpfs mounted for the test (root only: the machines this
project runs on, CI included, run as root; elsewhere the test says why it cannot run).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real subprocesses and stages: tens of seconds

RRECT = Path(sys.executable).with_name("rrec")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def filled(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file; return it (unlink it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def rrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RRECT), *args], capture_output=True, text=True, timeout=300)


def test_a_full_disk_is_one_line_naming_the_folder_and_a_rerun_after_freeing_space_completes(tmp_path: Path, small_disk: Path) -> None:
    data = tmp_path / "data"
    assert rrec("sample", "--out", str(data), "--domains", "Office_Products", "--users", "400").returncode == 0
    built = tmp_path / "built"
    ingest = rrec(
        "ingest",
        "--run",
        str(built),
        "--reviews",
        str(data / "Office_Products.jsonl"),
        "--meta",
        str(data / "meta_Office_Products.jsonl"),
        "--workers",
        "1",
    )
    assert ingest.returncode == 0, ingest.stderr
    run = small_disk / "run"
    shutil.copytree(built, run)
    filler = filled(small_disk)

    full = rrec("sequences", "--run", str(run), "--workers", "1", "--num-negatives", "20")
    assert full.returncode == 2
    assert "no space left" in full.stderr and str(run) in full.stderr
    assert "Traceback" not in full.stderr
    assert not (run / "sequences").exists()

    filler.unlink()
    again = rrec("sequences", "--run", str(run), "--workers", "1", "--num-negatives", "20")
    assert again.returncode == 0, again.stderr
    assert (run / "sequences").is_dir()


def test_a_release_on_a_full_disk_is_one_line_and_a_rerun_after_freeing_space_publishes(tmp_path: Path, small_disk: Path) -> None:
    # The shards are written by Dask workers: their "no space left" comes back to the driver
    # as an OSError like any other; it must end as one line, not as a traceback.
    from release_runs import make_run

    from release.registry import Registry

    run = make_run(tmp_path / "run")
    registry = small_disk / "registry"
    Registry(registry).init()
    filler = filled(small_disk)

    command = ("release", "--runs", str(run), "--registry", str(registry), "--version", "1.0.0", "--workers", "2")
    full = rrec(*command)
    assert full.returncode == 2, full.stderr
    assert "no space left" in full.stderr and str(registry) in full.stderr and "nothing was published" in full.stderr
    assert "Traceback" not in full.stderr
    assert not Registry(registry).has("v1.0.0")

    filler.unlink()
    again = rrec(*command)
    assert again.returncode == 0, again.stderr
    assert Registry(registry).has("v1.0.0")
