"""HTTP writes wait for their offset's reply: registered before or after the batch is applied."""
from __future__ import annotations

import asyncio

import pytest

from workers.stream.runtime import _RECENT_BATCHES, Replies

K = ("learn.feedback", 0, 7)


async def test_a_waiter_registered_first_gets_its_reply() -> None:
    r = Replies()
    task = asyncio.create_task(r.wait(K, 5.0))
    while K not in r.waiting:  # the waiter registers
        await asyncio.sleep(0)
    r.resolve({("learn.feedback", 0, 6): {"ok": True, "n": 6}, K: {"ok": True, "n": 7}})
    assert await task == {"ok": True, "n": 7}
    assert not r.waiting


async def test_a_reply_applied_before_the_waiter_registered_is_found() -> None:
    r = Replies()
    r.resolve({K: {"ok": True, "n": 7}})
    for i in range(_RECENT_BATCHES - 1):  # later batches
        r.resolve({("learn.feedback", 1, i): {"ok": True}})
    assert await r.wait(K, 5.0) == {"ok": True, "n": 7}


async def test_replies_older_than_the_kept_batches_time_out() -> None:
    r = Replies()
    r.resolve({K: {"ok": True}})
    for i in range(_RECENT_BATCHES):
        r.resolve({("learn.feedback", 1, i): {"ok": True}})
    with pytest.raises(asyncio.TimeoutError):
        await r.wait(K, 0.01)
    assert not r.waiting  # a timed-out waiter is removed


async def test_a_stopping_worker_answers_every_waiter_now_and_every_later_one_at_once() -> None:
    from workers.stream.runtime import WorkerStopping

    r = Replies()
    task = asyncio.create_task(r.wait(K, 60.0))
    while K not in r.waiting:
        await asyncio.sleep(0)
    r.stop()
    with pytest.raises(WorkerStopping):
        await task
    with pytest.raises(WorkerStopping):
        await r.wait(("learn.feedback", 1, 3), 60.0)


async def test_waiters_on_partitions_the_new_assignment_lacks_answer_now_the_others_wait() -> None:
    """A write's partition moved to another worker in a rebalance: it waited for its timeout (30 s)."""
    from workers.stream.runtime import PartitionMoved

    r = Replies()
    moved, kept = ("learn.feedback", 1, 3), K
    tasks = {k: asyncio.create_task(r.wait(k, 60.0)) for k in (moved, kept)}
    while len(r.waiting) < 2:
        await asyncio.sleep(0)
    r.release_except({0, 2})
    with pytest.raises(PartitionMoved):
        await tasks[moved]
    r.resolve({kept: {"ok": True}})
    assert await tasks[kept] == {"ok": True}


async def test_a_waiter_asks_where_its_result_comes_from_and_gives_up_on_a_second_no() -> None:
    """After a long pause a worker's writes waited their whole timeout for results other workers had applied
    (an outside trial): the waiter now asks ``fate`` twice a second, and raises what it says twice in a row."""
    import time

    from workers.stream.runtime import AppliedElsewhere, Runtime

    r = Replies()
    t0 = time.monotonic()
    with pytest.raises(AppliedElsewhere):
        await r.wait(K, 30.0, lambda key: AppliedElsewhere())
    assert time.monotonic() - t0 < 2.0 and not r.waiting
    # one "no" (a batch's result a moment behind its partition's next offset) is not enough
    said = [AppliedElsewhere(), None, None, None]
    asked = []

    def fate(key: tuple) -> Exception | None:
        asked.append(key)
        return said[len(asked) - 1] if len(asked) <= len(said) else None

    task = asyncio.create_task(r.wait(K, 30.0, fate))
    while len(asked) < 3:  # the "no", then two answers after it
        await asyncio.sleep(0.05)
    r.resolve({K: {"ok": True}})
    assert await task == {"ok": True}

    class Worker:  # what Runtime._fate reads
        def __init__(self, active: list[int], nxt: dict) -> None:
            self.active_partitions = active
            self.guard = type("G", (), {"next": nxt})()

    fate = Runtime._fate
    assert fate(Worker([], {}), K) is None  # between a revocation and an assignment: not known
    assert type(fate(Worker([1, 2], {}), K)).__name__ == "PartitionMoved"
    assert type(fate(Worker([0], {("learn.feedback", 0): 8}), K)) is AppliedElsewhere  # taken up past offset 7
    assert fate(Worker([0], {("learn.feedback", 0): 7}), K) is None  # still to be applied here
    assert fate(Worker([0], {}), K) is None
