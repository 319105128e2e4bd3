"""The per-process caches of annotate, filter and judge, dropped on every worker when a stage ends."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator
from typing import Any

from pipeline.annotators import catalog, context, grounding_contexts, template, template_columns
from pipeline.text_rules import grounding, hostile, partition

log = logging.getLogger(__name__)


def forget_worker_caches() -> None:
    """Drop every per-process cache of the context loader, the template and the filter rules.

    Run on each worker (``client.run``) when a stage that fills them ends: the workers of one
    `rrec run` go on to the next stages, and at 14M reviews these caches (a sequences part's
    columns, the catalog, the key index, item facts and words) held 2-3 GB per worker through
    the release. Returns nothing (``client.run`` sends the result back). The freed memory goes back
    to the system when the stage ends (``core.protocol.Stage.execute`` runs
    :func:`core.runtime.give_back_memory` on every worker after every stage).
    """
    context.forget_context_caches()
    catalog.forget_catalog_caches()
    grounding_contexts.forget_grounding_facts()
    template_columns.forget_bases()
    template._worker_memo.clear()
    for module in (template, hostile, grounding, partition):
        for value in vars(module).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()
    # The frozen entries (core.runtime.paused_gc) become collectable again; the collection itself
    # is give_back_memory's, which the stage protocol runs on every worker right after (a second
    # full pass here found nothing more).
    gc.unfreeze()


@contextlib.contextmanager
def worker_caches_dropped(client: Any) -> Iterator[None]:
    """Run the body, then :func:`forget_worker_caches` on every worker of ``client`` (None: nothing to do).

    A failure to reach the workers is logged, never raised over the body's own outcome.
    """
    try:
        yield
    finally:
        if client is not None:
            try:
                client.run(forget_worker_caches)
            except Exception as error:  # the stage's own outcome matters more than this cleanup
                log.warning("could not drop the workers' caches: %s", error)
