"""take_batches: which rule closes a batch, and nothing is acked before its batch was handled.

Driven through faust's own agent test harness (``agent.test_context()``): real streams and events,
no broker. Times are generous: they tell which rule closed a batch, they do not measure speed.
"""
from __future__ import annotations

import asyncio
import time

import faust

from workers.stream.batching import BUSY_LINGER_FACTOR, LearnStream

LINGER, WITHIN = 0.05, 2.0


def _harness(max_: int, within: float = WITHIN, linger: float = LINGER):
    app = faust.App("test-batching", broker="kafka://127.0.0.1:1", store="memory://", Stream=LearnStream)
    topic = app.topic("t", value_type=bytes, value_serializer="raw")
    seen: list[tuple[list[bytes], float, list[bool]]] = []  # values, when handed out, acked then
    events: list[list] = []

    async def batcher(stream):  # noqa: ANN001
        async for batch in stream.take_batches(max_, within, linger):
            seen.append(([e.value for e in batch], time.monotonic(), [e.message.acked for e in batch]))
            events.append(batch)
            yield len(batch)

    agent = app.agent(topic, name="batcher")(batcher)
    agent.events = events  # type: ignore[attr-defined]
    return agent, seen


async def _put(agent, n: int, start: int = 0) -> None:  # noqa: ANN001
    for i in range(start, start + n):
        await agent.put(str(i).encode(), wait=False)


async def _until(pred, timeout: float = 5.0) -> None:  # noqa: ANN001
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        await asyncio.sleep(0.005)


async def test_a_full_batch_closes_at_once_and_the_rest_follows() -> None:
    agent, seen = _harness(max_=3)
    async with agent.test_context() as a:
        t0 = time.monotonic()
        await _put(a, 7)
        await _until(lambda: sum(len(v) for v, _, _ in seen) == 7)
    assert [v for v, _, _ in seen] == [[b"0", b"1", b"2"], [b"3", b"4", b"5"], [b"6"]]
    assert seen[1][1] - t0 < LINGER  # full batches do not wait
    # the partial batch after full ones (under load) lingers longer, bridging a pause between fetches
    assert seen[2][1] - t0 >= LINGER * BUSY_LINGER_FACTOR * 0.9


async def test_a_lone_event_waits_the_linger_not_the_window() -> None:
    agent, seen = _harness(max_=100)
    async with agent.test_context() as a:
        t0 = time.monotonic()
        await _put(a, 1)
        await _until(lambda: len(seen) == 1)
    (values, at, _), = seen
    assert values == [b"0"] and LINGER * 0.9 <= at - t0 < WITHIN / 2


async def test_steady_arrivals_are_cut_by_the_window() -> None:
    agent, seen = _harness(max_=1000, within=0.15)
    async with agent.test_context() as a:
        for i in range(20):  # one event every 20 ms: never a quiet gap of 50 ms
            await _put(a, 1, start=i)
            await asyncio.sleep(0.02)
        await _until(lambda: sum(len(v) for v, _, _ in seen) == 20)
    sizes = [len(v) for v, _, _ in seen]
    assert len(sizes) >= 2 and max(sizes) > 1
    assert [x for v, _, _ in seen for x in v] == [str(i).encode() for i in range(20)]  # each once, in order


async def test_events_are_acked_only_after_their_batch_was_handled() -> None:
    agent, seen = _harness(max_=3)
    async with agent.test_context() as a:
        await _put(a, 6)
        await _until(lambda: len(seen) == 2)
        assert seen[0][2] == seen[1][2] == [False, False, False]  # not acked while handed out
        assert [e.message.acked for e in agent.events[0]] == [True] * 3  # acked once the next was asked for



async def test_a_batch_whose_handler_raised_is_never_acked() -> None:
    # The batch is acked only after every event was applied or dead-lettered: a handler that
    # raises (say the DLQ send failed) leaves it unacked, so it is read again, never skipped.
    app = faust.App("test-batching-fail", broker="kafka://127.0.0.1:1", store="memory://", Stream=LearnStream)
    topic = app.topic("t", value_type=bytes, value_serializer="raw")
    handed: list[list] = []

    async def failing(stream):  # noqa: ANN001
        async for batch in stream.take_batches(3, WITHIN, LINGER):
            handed.append(batch)
            raise RuntimeError("delivery failed")
        yield 0  # an async generator agent, like the harness

    agent = app.agent(topic, name="failing")(failing)
    async with agent.test_context() as a:
        await _put(a, 3)
        await _until(lambda: len(handed) == 1)
        await asyncio.sleep(LINGER * 4)  # give a wrong ack every chance to happen
        assert [e.message.acked for e in handed[0]] == [False, False, False]


async def test_events_gather_for_the_next_batch_while_the_caller_holds_one() -> None:
    # The caller's apply + commit waits on the broker; what arrives meanwhile forms the next batch
    # (at once, bounded by max_), instead of the stream standing still until the caller is done.
    app = faust.App("test-batching-overlap", broker="kafka://127.0.0.1:1", store="memory://", Stream=LearnStream)
    topic = app.topic("t", value_type=bytes, value_serializer="raw")
    handed: list[list[bytes]] = []
    release = asyncio.Event()

    async def slow(stream):  # noqa: ANN001
        async for batch in stream.take_batches(4, WITHIN, LINGER):
            handed.append([e.value for e in batch])
            if len(handed) == 1:
                await release.wait()  # holds the first batch, like a commit in flight
            yield len(batch)

    agent = app.agent(topic, name="slow")(slow)
    async with agent.test_context() as a:
        await _put(a, 1)
        await _until(lambda: len(handed) == 1)
        await _put(a, 6, start=1)  # arrive while the first batch is held: 3 fit (4 in all), 3 wait
        await asyncio.sleep(LINGER * 2)
        release.set()
        await _until(lambda: sum(len(v) for v in handed) == 7)
    assert handed[0] == [b"0"]
    assert handed[1] == [b"1", b"2", b"3"]  # gathered while the first was held, handed out at once
    assert [x for v in handed for x in v] == [str(i).encode() for i in range(7)]
