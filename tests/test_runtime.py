"""core.runtime: the paused collector of the hot loops, and its frozen survivors."""

from __future__ import annotations

import gc
import weakref

from core.runtime import paused_gc, thaw_collected


class Node:
    """A plain object that can hold a reference cycle."""


def test_paused_gc_stops_collection_inside_and_restores_it():
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # it was off before: stays off
    finally:
        gc.enable()


def test_frozen_survivors_are_skipped_until_thawed_and_their_cycles_then_freed():
    thaw_collected()
    with paused_gc(freeze=True):
        kept = [[number] for number in range(1000)]  # what a worker cache gains in a partition
        cycle = Node()
        cycle.self = cycle
        alive = weakref.ref(cycle)
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(kept)
    del cycle
    gc.collect()
    assert alive() is not None  # frozen: no collection scans it
    thaw_collected()
    assert gc.get_freeze_count() == 0
    assert alive() is None  # the cycle became collectable again


def test_frozen_objects_are_still_freed_by_reference_counting():
    thaw_collected()
    with paused_gc(freeze=True):
        plain = Node()
        alive = weakref.ref(plain)
    del plain  # no cycle: freed at once, frozen or not
    assert alive() is None
    thaw_collected()
