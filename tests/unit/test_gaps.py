"""The gap guard: a record that skips ahead is never applied as if nothing were missing.

The guard's decisions are driven here by a partition log held in the test (what a fetch would
return); the real fetch (:class:`KafkaProbe`) is checked against the embedded broker in
tests/integration/test_gaps_broker.py, and faust's patched commit/delivery on faust's own classes.
"""
from __future__ import annotations

import faust
import pytest
from faust.types import TP

from workers.stream import metrics
from workers.stream import faust_internals
from workers.stream.gaps import GapGuard

TOPIC = "learn.loss"


class Log:
    """One partition: which offsets hold records, and where the consumer was sought to."""

    def __init__(self, offsets: list[int], committed: int) -> None:
        self.offsets, self.committed = offsets, committed
        self.seeks: list[int] = []
        self.fetches = 0

    async def start(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {tp: self.committed for tp in tps}

    async def first_record(self, topic: str, partition: int, frm: int, below: int) -> int | None:
        self.fetches += 1
        return next((o for o in self.offsets if frm <= o < below), None)

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        self.seeks.append(offset)


class Ev:
    def __init__(self, offset: int, topic: str = TOPIC, partition: int = 0) -> None:
        self.where = (topic, partition, offset)


def guard(log: Log) -> GapGuard:
    return GapGuard({TOPIC}, start=log.start, first_record=log.first_record, seek=log.seek)


async def admit(g: GapGuard, offsets: list[int]) -> list[int]:
    a = await g.admit([Ev(o) for o in offsets], lambda e: e.where)
    g.applied(a)
    return [e.where[2] for e in a.events]


def gaps(outcome: str) -> float:
    return metrics.OFFSET_GAPS.labels(outcome)._value.get()


async def test_in_order_records_pass_and_the_commit_offset_follows() -> None:
    g = guard(Log(list(range(100)), committed=10))
    assert g.commit_offset(TOPIC, 0) is None  # nothing known before the first batch
    assert await admit(g, [10, 11, 12]) == [10, 11, 12]
    assert g.commit_offset(TOPIC, 0) == 13


async def test_a_skip_seeks_back_rereads_and_is_counted() -> None:
    # "delivers 139 after 13": the records 14..138 exist, so 139 must wait for them
    log = Log(list(range(300)), committed=10)
    g = guard(log)
    before = gaps("reread")
    assert await admit(g, [10, 11, 12, 13, 139, 140]) == [10, 11, 12, 13]
    assert log.seeks == [14] and gaps("reread") == before + 1
    assert g.commit_offset(TOPIC, 0) == 14  # never past what was applied
    assert await admit(g, [141, 142]) == []  # still in flight from before the seek: dropped
    assert await admit(g, [14, 15]) == [14, 15]  # the re-read
    assert await admit(g, list(range(16, 141))) == list(range(16, 141))
    assert g.commit_offset(TOPIC, 0) == 141 and log.seeks == [14]


async def test_a_rebalance_learns_each_watched_partitions_start_once_and_in_one_call() -> None:
    # where the consumer is sought after a rebalance (faust's own seek skips committed offset 0)
    log = Log(list(range(100)), committed=0)
    asked: list[list[tuple[str, int]]] = []

    async def start_many(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        asked.append(tps)
        return {tp: 7 * tp[1] for tp in tps}

    g = GapGuard({TOPIC}, start=start_many, first_record=log.first_record, seek=log.seek)
    assert await g.starts([(TOPIC, 0), (TOPIC, 1), ("other", 0)]) == {(TOPIC, 0): 0, (TOPIC, 1): 7}
    assert asked == [[(TOPIC, 0), (TOPIC, 1)]]  # unwatched topics are not the guard's
    assert await g.starts([(TOPIC, 1), (TOPIC, 2)]) == {(TOPIC, 1): 7, (TOPIC, 2): 14}
    assert asked[1:] == [[(TOPIC, 2)]]  # a known partition keeps its next
    assert await admit(g, [0, 1]) == [0, 1] and g.commit_offset(TOPIC, 0) == 2  # the seek's start is next
    assert await guard(log).starts([(TOPIC, 0)]) == {(TOPIC, 0): 0}  # the committed offset, as the other tests start


async def test_offsets_without_records_do_not_loop() -> None:
    # transaction markers at 11 and 12 (or compacted offsets): a fetch confirms, nothing is re-read
    log = Log([10, 13, 14, 17], committed=10)
    g = guard(log)
    before = gaps("empty")
    assert await admit(g, [10, 13, 14, 17]) == [10, 13, 14, 17]
    assert log.seeks == [] and log.fetches == 2 and gaps("empty") == before + 2
    assert g.commit_offset(TOPIC, 0) == 18


async def test_a_skip_over_markers_seeks_to_the_first_real_record() -> None:
    log = Log([10, 12, 13, 20], committed=10)
    g = guard(log)
    assert await admit(g, [10, 20]) == [10]
    assert log.seeks == [12]
    assert await admit(g, [12, 13, 20]) == [12, 13, 20]


async def test_redeliveries_below_the_next_offset_are_dropped() -> None:
    g = guard(Log(list(range(50)), committed=5))
    assert await admit(g, [5, 6, 7]) == [5, 6, 7]
    assert await admit(g, [5, 6, 7, 8]) == [8]


async def test_a_batch_not_applied_does_not_move_the_next_offset() -> None:
    log = Log(list(range(50)), committed=0)
    g = guard(log)
    a = await g.admit([Ev(0), Ev(1)], lambda e: e.where)  # applying it then failed: no applied()
    assert [e.where[2] for e in a.events] == [0, 1] and g.commit_offset(TOPIC, 0) == 0
    assert await admit(g, [0, 1, 2]) == [0, 1, 2]  # the retry


async def test_partitions_and_unwatched_topics_are_independent() -> None:
    log = Log(list(range(50)), committed=3)
    g = guard(log)
    a = await g.admit([Ev(3), Ev(3, partition=1), Ev(9, topic="other")], lambda e: e.where)
    assert [e.where for e in a.events] == [(TOPIC, 0, 3), (TOPIC, 1, 3), ("other", 0, 9)]
    g.applied(a)
    g.reset()  # a rebalance: start over from the committed offsets
    assert g.commit_offset(TOPIC, 0) is None


# -- the faust side: faust's own Consumer with the patches ----------------------------------------
class _Watch:
    def __init__(self, limit: int | None) -> None:
        self.limit = limit

    def watches(self, topic: str) -> bool:
        return topic == TOPIC

    def commit_offset(self, topic: str, partition: int) -> int | None:
        return self.limit


def _consumer(watch: _Watch | None) -> faust.transport.consumer.Consumer:
    faust_internals.install()
    app = faust.App(f"test-gaps-{id(watch)}", broker="kafka://127.0.0.1:1", store="memory://")
    if watch is not None:
        faust_internals.watch(app, watch)
    return app.consumer


@pytest.mark.parametrize("watched", [False, True])
def test_faust_commits_past_a_missing_record_unless_the_guard_decides(watched: bool) -> None:
    tp = TP(TOPIC, 0)
    c = _consumer(_Watch(14) if watched else None)
    c._committed_offset[tp] = 13
    c._acked[tp].extend([14, 15])  # 13 was never acked (it was skipped)
    c._acked_index[tp].update([14, 15])
    # faust's own rule: min(acked) - committed = 1 is "no gap", so it would commit 16 over record 13
    assert c._new_offset(tp) == (14 if watched else 16)


def test_faust_counts_a_delivery_gap_as_acked_unless_watched() -> None:
    tp = TP(TOPIC, 0)
    c = _consumer(_Watch(11))
    c._committed_offset[tp] = 10
    c._gap[tp].addi(11, 139)  # what _drain_messages records on "139 after 10"
    c._acked[tp].extend([10, 139])
    c._acked_index[tp].update([10, 139])
    assert c._new_offset(tp) == 11
    assert c._acked[tp] == [139] and tp not in c._gap


def test_watched_partitions_deliver_every_fetched_record() -> None:
    c = _consumer(_Watch(0))
    c._read_offset[TP(TOPIC, 0)] = 500
    c._read_offset[TP("other", 0)] = 500
    assert c._read_offset[TP(TOPIC, 0)] is None  # faust would drop records below 500 after a seek back
    assert c._read_offset[TP("other", 0)] == 500


async def test_the_flush_before_a_commit_waits_until_the_buffer_is_empty() -> None:
    # faust's flush gives up after 0.1 s without a send, changelog writes still buffered; the
    # commit that follows could then be durable before the state it covers.
    import asyncio

    app = faust.App("test-gaps-flush", broker="kafka://127.0.0.1:1", store="memory://")
    faust_internals.watch(app, _Watch(0))
    buf = app.producer.buffer
    sent: list[int] = []

    async def slow_send(msg: int) -> None:  # the broker edge: each send takes 0.15 s
        await asyncio.sleep(0.15)
        sent.append(msg)

    buf._send_pending = slow_send
    await buf.start()
    try:
        for i in range(3):
            buf.put(i)
        await buf.flush()
        assert buf.size == 0 and len(sent) >= 2  # the last one may be on its way (taken off the buffer)
    finally:
        await buf.stop()


def test_deleted_input_is_counted_once_whoever_meets_it_first() -> None:
    # the assignment's start check and the guard's fetch both met offsets 0..951 (the count read 1,904)
    from workers.stream.gaps import DeletedUnread

    counted = metrics.INPUT_DELETED_UNREAD.labels(TOPIC)
    before = counted._value.get()
    d = DeletedUnread()
    d.report(TOPIC, 0, 0, 952)
    d.report(TOPIC, 0, 0, 952)
    assert counted._value.get() == before + 952
    d.report(TOPIC, 0, 900, 1000)  # more deleted since: only the new part
    d.report(TOPIC, 1, 0, 10)  # another partition
    assert counted._value.get() == before + 1000 + 10


class _Msg:
    def __init__(self, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = TOPIC, partition, offset


class _Event:
    def __init__(self, partition: int, offset: int) -> None:
        self.message = _Msg(partition, offset)


class _Owns:
    """Transactional producers for these partitions only (one was fenced)."""

    def __init__(self, partitions: set[int]) -> None:
        self.partitions = partitions

    def owns(self, partition: int) -> bool:
        return partition in self.partitions


def messages(outcome: str) -> float:
    return metrics.MESSAGES.labels(TOPIC, outcome)._value.get()


async def test_events_of_a_fenced_partition_are_counted_as_not_owned_not_as_redelivered() -> None:
    """``Runtime._owned`` leaves out the events of a partition whose producer was fenced: they are
    not applied here, and they are not redeliveries either (the guard's drops, counted as such)."""
    from workers.stream.gaps import Admitted
    from workers.stream.runtime import Runtime

    rejoined: list[set[int]] = []

    class Rt:
        txn = _Owns({0})

        async def _rejoin(self, fenced: set[int]) -> None:
            rejoined.append(fenced)

    redelivered, not_owned = messages("redelivered"), messages("not_owned")
    guard_drop = _Event(0, 1)
    admitted = Admitted(events=[_Event(0, 2), _Event(1, 7), _Event(1, 8), _Event(0, 3)], dropped=[guard_drop],
                        next={(TOPIC, 0): 4, (TOPIC, 1): 9})
    out = await Runtime._owned(Rt(), admitted)  # type: ignore[arg-type]
    assert [(e.message.partition, e.message.offset) for e in out.events] == [(0, 2), (0, 3)]
    assert out.dropped == [guard_drop]  # what the guard dropped stays its own (handle counts it redelivered)
    assert out.next == {(TOPIC, 0): 4}  # partition 1's offset does not move here
    assert messages("not_owned") - not_owned == 2
    assert messages("redelivered") == redelivered
    assert rejoined == [{1}]
