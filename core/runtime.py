"""Process-level helpers for the hot loops of the stages and the memory between them (no Dask;
pyarrow only imported by :func:`give_back_memory`, when it is already loaded)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import importlib
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple


@contextlib.contextmanager
def paused_gc(freeze: bool = False) -> Iterator[None]:
    """No cyclic garbage collection inside (automatic collection resumes after, if it was on).

    For per-row Python work that allocates millions of small acyclic objects (ingest's parsed
    records, the annotator's and the filter's facts and tuples) while a worker holds many more:
    the collector's passes rescan every live object again and again and free nothing (about a
    tenth of ingest's CPU, a third of the template annotator's). Reference counting still frees
    everything.

    ``freeze``: the objects alive at the end move to the permanent generation (``gc.freeze``),
    so no later pass scans them again. For a worker whose caches gain a partition's new entries
    each time (the annotator's and the filter's item facts and words): the first collection after
    a partition otherwise scanned every entry it added, a sixth of the template annotator's time
    at 14M reviews. Frozen objects are still freed by reference counting when a cache drops them;
    only cyclic garbage among them waits for ``gc.unfreeze`` and the next full collection (a
    stage that froze them unfreezes them when it ends,
    ``pipeline.annotators.worker_caches.forget_worker_caches``, and the protocol's
    :func:`give_back_memory` collects).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()


def give_back_memory() -> int:
    """Return this process's freed memory to the system: a full collection, the free pages of
    Arrow's memory pool (when pyarrow is loaded) and glibc's free heap (``malloc_trim``, on Linux).
    Returns the process's resident bytes after (0 where unknown).

    A Dask worker of `rrec run` goes from stage to stage; what one stage freed stayed in its
    allocators and counted against the next (after the filter at 14M reviews a worker held 1.2 GB
    with no Arrow buffer alive, 0.55 GB once given back). Run on every worker when a stage ends
    (``core.protocol.Stage.execute``).
    """
    gc.collect()
    if (pyarrow := sys.modules.get("pyarrow")) is not None:
        pyarrow.default_memory_pool().release_unused()
    if sys.platform.startswith("linux") and (libc := ctypes.util.find_library("c")):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc).malloc_trim(0)
    import psutil

    return int(psutil.Process().memory_info().rss)


class CacheInfo(NamedTuple):
    """What ``cache_info()`` reports, as ``functools.lru_cache``'s does."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


class one_slot_cache:  # a decorator, named like functools.lru_cache
    """Decorator: keep the result of the last call only, and drop it *before* computing the next.

    ``functools.lru_cache(maxsize=1)`` computes the new value while still holding the old one,
    so a worker moving from one big value to the next (a sequences part's columns: 263 MB at
    14M reviews) briefly holds two. Same interface as ``lru_cache`` for what callers use:
    ``cache_clear()`` and ``cache_info()``.
    """

    def __init__(self, function: Callable[..., Any]):
        functools.update_wrapper(self, function)
        self._function = function
        self._key: tuple[Any, ...] | None = None
        self._value: Any = None
        self._hits = self._misses = 0
        self._lock = threading.Lock()  # a worker's threads share the slot: key and value change together

    def __call__(self, *args: Any) -> Any:
        with self._lock:
            if self._key == args:
                self._hits += 1
                return self._value
            self._key = self._value = None
            self._misses += 1
        value = self._function(*args)
        with self._lock:
            self._key, self._value = args, value
        return value

    def cache_clear(self) -> None:
        with self._lock:
            self._key = self._value = None

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self._hits, self._misses, 1, int(self._key is not None))


@contextlib.contextmanager
def importing_ahead(modules: Sequence[str]) -> Iterator[None]:
    """Run the body while a second thread imports ``modules`` (in order); wait for it at the end,
    so that no import is still running when the body's caller goes on (or the interpreter exits).

    For libraries that take seconds to import and that the body needs only later (GX for the
    validation report, matplotlib for the card): imported while the cores wait (a cluster
    starting, a stage's barrier), they no longer delay the step that needs them. An import error
    is left for that step's own import to raise, with its traceback.
    """
    if not modules:
        yield
        return
    importing = threading.Thread(target=import_quietly, args=(tuple(modules),), name="importing-ahead", daemon=True)
    importing.start()
    try:
        yield
    finally:
        importing.join()


def import_quietly(modules: Sequence[str]) -> None:
    """Import ``modules`` ahead of their use; an import error is left for the use's own import to raise."""
    for module in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(module)
