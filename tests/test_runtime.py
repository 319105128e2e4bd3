"""core.runtime: the paused collector of the hot loops, and its frozen survivors."""

from __future__ import annotations

import gc
import importlib
import weakref

import pytest

from core.runtime import give_back_memory, importing_ahead, one_slot_cache, paused_gc


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


def _stage_end() -> None:
    """What every worker runs when a stage that froze its caches ends: the caches' drop (which
    unfreezes them), then the protocol's collection."""
    from pipeline.annotators.worker_caches import forget_worker_caches

    forget_worker_caches()
    give_back_memory()


def test_frozen_survivors_are_skipped_until_thawed_and_their_cycles_then_freed():
    _stage_end()
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
    _stage_end()
    assert gc.get_freeze_count() == 0
    assert alive() is None  # the cycle became collectable again


def test_frozen_objects_are_still_freed_by_reference_counting():
    _stage_end()
    with paused_gc(freeze=True):
        plain = Node()
        alive = weakref.ref(plain)
    del plain  # no cycle: freed at once, frozen or not
    assert alive() is None
    _stage_end()


def _hold_and_free_arrow_memory() -> int:
    """Allocate and drop 250 MB of Arrow buffers; this process's RSS after (the pool keeps the pages)."""
    import psutil
    import pyarrow as pa
    import pyarrow.compute as pc

    base = pa.array(range(32768), pa.int64())
    held = [pc.add(base, i) for i in range(1000)]  # 1,000 buffers of 256 KB
    assert pa.total_allocated_bytes() >= 250 * 2**20
    del held
    gc.collect()
    return psutil.Process().memory_info().rss


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def test_give_back_memory_returns_freed_arrow_pages_to_the_system():
    """Arrow's allocator keeps freed pages for reuse; a worker going on to the next stage after a
    big one carried them (0.65 GB after the filter at 14M reviews)."""
    before = _hold_and_free_arrow_memory()
    give_back_memory()
    assert before - _rss() >= 150 * 2**20


def test_every_stage_gives_its_workers_freed_memory_back(good_run, dask_client):
    """Through the stage protocol, for a stage with no cache of its own (validate)."""
    from validation.runner import run_validation

    run = good_run
    held = dask_client.run(_hold_and_free_arrow_memory)
    run_validation(run, dask_client, force=True)
    after = dask_client.run(_rss)
    assert all(held[worker] - after[worker] >= 150 * 2**20 for worker in held)


def test_workers_of_our_own_cluster_still_holding_too_much_are_restarted_others_never(good_run, dask_client, monkeypatch):
    """What give_back_memory cannot free (arenas pinned by a few live objects) is dropped by
    restarting the worker, on a cluster this process started; an external cluster's workers
    (a client connected by address: `--scheduler`) are left alone."""
    import os

    from distributed import Client

    from core import protocol
    from validation.runner import run_validation

    monkeypatch.setattr(protocol, "RESTART_ABOVE_BYTES", 0)  # every worker holds more than that
    with Client(dask_client.scheduler.address, timeout="20s") as external:
        before = external.run(os.getpid)
        run_validation(good_run, external, force=True)
        assert external.run(os.getpid) == before
    before = set(dask_client.run(os.getpid).values())
    run_validation(good_run, dask_client, force=True)
    dask_client.wait_for_workers(len(before), timeout=60)
    after = set(dask_client.run(os.getpid).values())
    assert len(after) == len(before) and not after & before

    monkeypatch.setattr(protocol, "RESTART_ABOVE_BYTES", 1 << 40)
    run_validation(good_run, dask_client, force=True)
    assert set(dask_client.run(os.getpid).values()) == after


class Big:
    """A value whose life a weak reference can watch."""

    def __init__(self, key: str):
        self.key = key


def test_one_slot_cache_lets_the_old_value_go_before_computing_the_next():
    """A worker moving to the next part file holds one part's columns, not two: when the new
    value is being computed, the old one is already unreachable."""
    alive_during_compute: list[bool] = []
    previous: list[weakref.ref] = []

    @one_slot_cache
    def load(key: str) -> Big:
        gc.collect()
        alive_during_compute.append(bool(previous) and previous[-1]() is not None)
        return Big(key)

    first = load("a")
    assert load("a") is first and load.cache_info().hits == 1
    previous.append(weakref.ref(first))
    del first
    second = load("b")
    assert second.key == "b" and alive_during_compute == [False, False]
    assert load.cache_info().currsize == 1
    load.cache_clear()
    assert load.cache_info().currsize == 0


def test_one_slot_cache_never_answers_with_another_keys_value_across_threads():
    import threading

    @one_slot_cache
    def load(key: int) -> tuple[int, list[int]]:
        return key, [key] * 1000

    wrong: list[tuple[int, int]] = []

    def worker(offset: int) -> None:
        for i in range(2000):
            key = (i + offset) % 5
            got, _ = load(key)
            if got != key:
                wrong.append((key, got))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_importing_ahead_imports_in_a_second_thread_while_the_body_runs(tmp_path, monkeypatch):
    """The modules import beside the body, are all imported once it ends, and a broken one
    raises only where the caller imports it itself (with its own error)."""
    import sys
    import threading

    started = threading.Event()
    (tmp_path / "slow_ahead_module.py").write_text(
        "import threading, time\nimport test_runtime_signal\ntest_runtime_signal.started.set()\n"
        "THREAD = threading.current_thread().name\ntime.sleep(0.3)\n"
    )
    (tmp_path / "broken_ahead_module.py").write_text("raise RuntimeError('broken on purpose')\n")
    signal = type(sys)("test_runtime_signal")
    signal.started = started
    monkeypatch.setitem(sys.modules, "test_runtime_signal", signal)
    monkeypatch.syspath_prepend(str(tmp_path))

    with importing_ahead(["broken_ahead_module", "slow_ahead_module"]):
        assert started.wait(10)  # the import runs while the body does
        body_thread = threading.current_thread().name
    module = sys.modules["slow_ahead_module"]  # complete once the body is left
    assert module.THREAD == "importing-ahead" != body_thread
    assert "broken_ahead_module" not in sys.modules
    with pytest.raises(RuntimeError, match="broken on purpose"):
        importlib.import_module("broken_ahead_module")
    with importing_ahead([]):  # nothing to import: no thread
        assert not any(t.name == "importing-ahead" for t in threading.enumerate())
    for name in ("slow_ahead_module", "broken_ahead_module"):
        sys.modules.pop(name, None)
