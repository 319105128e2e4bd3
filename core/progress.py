"""Progress display for long work: rich bars over Dask futures or plain iterables."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from distributed import Future

T = TypeVar("T")
console = Console(stderr=True)


def make_progress() -> Progress:
    return Progress(
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
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
