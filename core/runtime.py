"""Process-level helpers for the hot loops of the stages (no Dask, no pyarrow)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside (automatic collection resumes after, if it was on).

    For per-row Python work that allocates millions of small acyclic objects (ingest's parsed
    records, the annotator's and the filter's facts and tuples) while a worker holds many more:
    the collector's passes rescan every live object again and again and free nothing (about a
    tenth of ingest's CPU, a third of the template annotator's). Reference counting still frees
    everything.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
