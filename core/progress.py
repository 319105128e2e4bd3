"""Progress display for long work: rich bars over Dask futures or plain iterables.

On a terminal a live bar is drawn. When the output is not a terminal (a log file, CI, a batch
job) the bar is off, and instead one progress line per unfinished task is logged at least every
:data:`LOG_INTERVAL_S` seconds (``RREC_PROGRESS_INTERVAL`` overrides it), also while a task makes
no progress at all, so a long stage never goes silent for hours.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from distributed import Future

T = TypeVar("T")
console = Console(stderr=True)
log = logging.getLogger("rrec.progress")
LOG_INTERVAL_S = 30.0
INTERVAL_ENV = "RREC_PROGRESS_INTERVAL"


def log_interval() -> float:
    """Seconds between progress lines when output is not a terminal (``RREC_PROGRESS_INTERVAL`` or 30)."""
    value = os.environ.get(INTERVAL_ENV)
    try:
        return max(0.05, float(value)) if value else LOG_INTERVAL_S
    except ValueError:
        return LOG_INTERVAL_S


class LoggedProgress(Progress):
    """A rich ``Progress`` that, when disabled (no terminal), logs each task's state periodically."""

    def __init__(self, *columns: Any, interval: float | None = None, **kwargs: Any):
        super().__init__(*columns, **kwargs)
        self.interval = log_interval() if interval is None else interval
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> LoggedProgress:
        super().__enter__()
        if self.disable:
            self._ticker = threading.Thread(target=self._tick, name="rrec-progress-log", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join()
            self._ticker = None
            self.log_state(final=True)
        super().__exit__(*exc_info)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.log_state()

    def log_state(self, final: bool = False) -> None:
        """Log one line per task: done / total, percentage and elapsed time (``final``: every task)."""
        for task in self.tasks:
            if task.finished and not final:
                continue
            total = f"/{task.total:,.0f}" if task.total is not None else ""
            share = f" ({100 * task.completed / task.total:.0f}%)" if task.total else ""
            elapsed = task.elapsed or 0.0
            log.info("%s: %s%s%s, %s elapsed", task.description, f"{task.completed:,.0f}", total, share, _duration(elapsed))


def _duration(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds))


def make_progress() -> Progress:
    """A progress display: a live bar on a terminal, periodic log lines otherwise."""
    return LoggedProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


def gather_with_progress(futures: Sequence[Future], description: str) -> list[Any]:
    """Wait for Dask futures showing a bar; results come back in submission order.

    The first failing future raises its exception (with the worker's traceback chained).
    """
    from distributed import as_completed  # Dask only where futures are gathered: core stays light

    results: list[Any] = [None] * len(futures)
    with make_progress() as progress:
        task = progress.add_task(description, total=len(futures))
        # as_completed yields the very objects it was given; identity, not the task key,
        # tells them apart (two futures of identical pure tasks share one key).
        positions = {id(future): i for i, future in enumerate(futures)}
        for future in as_completed(futures):
            results[positions[id(future)]] = future.result()
            progress.advance(task)
    return results


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` showing progress (see :func:`make_progress`)."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
