"""The worker's use of the garbage collector (workers/stream/collector.py)."""
from __future__ import annotations

import asyncio
import gc

import orjson
import pytest

from workers.state.access import StoreStateAccess
from workers.state.memory import MemoryStore
from workers.stream.collector import GC_GEN0_THRESHOLD, collector_paused, tune_collector
from workers.stream.processor import Processor
from workers.stream.records import Record


def test_the_workers_collector_settings_raise_the_young_threshold_and_freeze_what_exists() -> None:
    """tune_collector (run_worker, and bench feedback's in-process row): thousands of cached sessions
    are long-lived containers, so the young generation is collected every GC_GEN0_THRESHOLD allocations,
    not CPython's 700, and the objects alive at start leave the collector's generations."""
    before = gc.get_threshold()
    try:
        assert tune_collector() == before
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, *before[1:]) and gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_a_pause_nests_survives_an_exception_and_keeps_a_disabled_collector_disabled() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause found it disabled: left so
    assert gc.isenabled()
    with pytest.raises(KeyError), collector_paused():
        raise KeyError("x")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # a caller's own choice stays
    finally:
        gc.enable()


def _feedback(i: int) -> Record:
    sk = f"s-{i % 300}"
    body = {"session_key": sk, "embedding": [0.1 * (i % 7), 0.2, -0.3, 0.4], "model": "a", "quality": 0.9}
    return Record("learn.feedback", 0, i, sk.encode(), orjson.dumps(body))


def test_no_collection_runs_inside_a_batch_and_the_batchs_objects_never_reach_the_collector() -> None:
    """A batch over many sessions builds transient containers per session; with the young threshold low
    enough that they would be collected several times over (as the same batch is, unpaused), none is
    collected inside the batch."""
    proc = Processor(StoreStateAccess(MemoryStore()))
    init = [Record("learn.commands", 0, i, f"s-{i}".encode(),
                   orjson.dumps({"verb": "init_instant", "body": {"session_key": f"s-{i}", "targets": ["a", "b"],
                                                                   "dim": 4}})) for i in range(300)]
    assert proc.process(init).rejected == 0
    collections: list[int] = []
    inside = [False]

    def seen(phase: str, info: dict) -> None:
        if phase == "start" and inside[0]:
            collections.append(info["generation"])

    apply = proc.apply

    def watched(records: list[Record]):
        inside[0] = True
        try:
            return apply(records)
        finally:
            inside[0] = False

    proc.apply = watched  # type: ignore[method-assign]
    before = gc.get_threshold()
    gc.callbacks.append(seen)
    gc.collect()
    gc.set_threshold(200, *before[1:])
    try:
        res = proc.process([_feedback(1000 + i) for i in range(900)])
    finally:
        gc.set_threshold(*before)
        gc.callbacks.remove(seen)
    assert res.rejected == 0 and res.applied == 900
    assert collections == [] and gc.isenabled()
    # without the pause the same batch is collected many times over (the threshold is 200)
    gc.collect()
    gc.callbacks.append(seen)
    gc.set_threshold(200, *before[1:])
    inside[0] = True
    try:
        res = Processor.apply(proc, [_feedback(5000 + i) for i in range(900)])
    finally:
        inside[0] = False
        gc.set_threshold(*before)
        gc.callbacks.remove(seen)
    assert res.applied == 900 and len(collections) > 5


def test_the_workers_batch_runs_with_the_collector_paused() -> None:
    """Runtime.handle pauses the collector around the whole batch, its commit included."""
    from workers.stream.runtime import Runtime

    states: list[bool] = []

    async def body(events: list) -> None:
        states.append(gc.isenabled())
        await asyncio.sleep(0)
        states.append(gc.isenabled())

    rt = Runtime.__new__(Runtime)
    rt._handle = body  # type: ignore[method-assign]
    asyncio.run(rt.handle([]))
    assert states == [False, False] and gc.isenabled()
