"""Kill a real process at a chosen point, as a crash of the machine would (the SIGKILL tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def kill_when(
    command: list[str],
    ready: Callable[[], bool],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
    timeout: float = 120,
) -> bool:
    """Start ``command`` in its own process group and SIGKILL the whole group (its Dask workers
    too) as soon as ``ready()``; True if it was killed while still running, False if it ended or
    ``timeout`` passed first. Output goes to ``log`` when given."""
    with open(log or os.devnull, "w") as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if ready():
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
