"""Per-partition batch transactions (workers/stream/transactions.py) on the real embedded broker.

What the worker's exactly-once downstream rests on: a batch's downstream events, changelog records
and input offsets are committed together or not at all; a worker that died mid-transaction is fenced
and its transaction aborted as soon as the next owner takes the partition; and recovery finds the
last committed record of a log that ends in transaction markers (KafkaProbe.last_record).
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import TypeVar

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import ProducerFenced
from aiokafka.structs import TopicPartition

from tests.helpers import wait_until
from workers.kafka.topics import topics
from workers.stream.gaps import KafkaProbe
from workers.stream.tables import send_records
from workers.stream.transactions import NotOwned, PartitionWork, Send, Transactions

pytestmark = pytest.mark.integration

T = TypeVar("T")


async def _step(what: str, aw: Awaitable[T], seconds: float = 60.0) -> T:
    """``aw``, or a failure that names the step still waiting after ``seconds``. The first test
    below hung until pytest-timeout twice in full CI runs on a slow machine and never when run
    alone; the timeout's dump only shows an event loop waiting, so each step says where it was."""
    try:
        async with asyncio.timeout(seconds):
            return await aw
    except TimeoutError:
        pytest.fail(f"{what}: not done after {seconds:g} s", pytrace=False)


async def _topics(bootstrap: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 2, 1) for n in names])
    finally:
        await admin.close()


async def _values(bootstrap: str, topic: str, isolation_level: str) -> list[bytes]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation_level, enable_auto_commit=False)
    await c.start()
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 0)
        end = (await c.end_offsets([tp]))[tp]
        out: list[bytes] = []
        while await c.position(tp) < end:
            out += [m.value for m in (await c.getmany(tp, timeout_ms=1000)).get(tp, [])]
        return out
    finally:
        await c.stop()


async def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    probe = KafkaProbe(bootstrap)
    try:
        return await probe.committed(group, topic, 0)
    finally:
        await probe.close()


def _txns(bootstrap: str, app_id: str) -> Transactions:
    return Transactions(bootstrap, app_id, app_id, max_batch_size=16384, linger_ms=0, max_request_size=1_000_000)


async def test_a_batch_is_all_or_nothing_and_a_dead_owner_is_fenced(broker) -> None:
    app = f"tx-{uuid.uuid4().hex[:8]}"
    inp, out, log = f"{app}-in", f"{app}-out", f"{app}-changelog"
    await _step("create the topics", _topics(broker.bootstrap, inp, out, log))
    first = _txns(broker.bootstrap, app)
    await _step("first owner's producer (InitProducerId)", first.assign({0}))
    assert first.owns(0) and not first.owns(1)
    with pytest.raises(NotOwned):
        await first.commit(1, PartitionWork())
    meta = await _step("first owner's commit", first.commit(
        0, PartitionWork([Send(out, b"k", b"event-1", 0), Send(log, b"k", b"state-1", 0)], {inp: 5})))
    assert [m.offset for m in meta] == [0, 0]
    assert await _step("committed offset", _committed(broker.bootstrap, app, inp)) == 5

    # the owner dies mid-batch: its records are in the log, its transaction open (SIGKILL: no abort)
    zombie = first.producers[0]
    await _step("zombie begins", zombie.begin_transaction())
    await _step("zombie sends its event", zombie.send_and_wait(out, b"event-2", key=b"k", partition=0))
    await _step("zombie sends its state", zombie.send_and_wait(log, b"state-2", key=b"k", partition=0))
    assert await _step("read_uncommitted events", _values(broker.bootstrap, out, "read_uncommitted")) == [
        b"event-1", b"event-2"]

    # the next owner starts its producer: the open transaction is aborted at once, the old one fenced
    second = _txns(broker.bootstrap, app)
    await _step("next owner's producer (InitProducerId, aborts the open transaction)", second.assign({0}))
    with pytest.raises(ProducerFenced):
        await _step("zombie's offsets", zombie.send_offsets_to_transaction({TopicPartition(inp, 0): 9}, app))
        await _step("zombie's commit", zombie.commit_transaction())
    assert await _step("committed offset", _committed(broker.bootstrap, app, inp)) == 5  # the zombie's never count
    # the batch applied again by the new owner: its event exactly once for read_committed
    await _step("next owner's commit", second.commit(
        0, PartitionWork([Send(out, b"k", b"event-2", 0), Send(log, b"k", b"state-2", 0)], {inp: 9})))
    assert await _step("read_committed events", _values(broker.bootstrap, out, "read_committed")) == [
        b"event-1", b"event-2"]
    assert await _step("read_committed states", _values(broker.bootstrap, log, "read_committed")) == [
        b"state-1", b"state-2"]
    assert await _step("committed offset", _committed(broker.bootstrap, app, inp)) == 9

    # recovery's end: the last committed record, not the marker after it nor an aborted record
    probe = KafkaProbe(broker.bootstrap)
    try:
        end = (await _step("probe's client", probe._client())).end_offsets
        last_state = (await _step("end offsets", end([TopicPartition(log, 0)])))[TopicPartition(log, 0)]
        assert last_state == 6  # state-1, commit, state-2 (aborted), abort, state-2, commit
        assert await _step("last record", probe.last_record(log, 0, last_state)) == 4
        assert await _step("last record of an empty partition", probe.last_record(log, 1, 0)) is None
    finally:
        await _step("probe's close", probe.close())
    with pytest.raises(Exception):  # noqa: B017 - fenced: whatever aiokafka raises on a dead producer
        await _step("zombie's abort", zombie.abort_transaction())
    await _step("first owner's close (the fenced producer's stop)", first.close())
    await _step("next owner's close", second.close())


async def test_a_fenced_producer_is_dropped_without_an_unretrieved_error(broker) -> None:
    """A worker whose partition moved on mid-batch logs one warning (fenced), not asyncio's ERROR
    "Future exception was never retrieved" for the transaction aiokafka failed inside the producer."""
    import gc

    app = f"tx-{uuid.uuid4().hex[:8]}"
    out = f"{app}-out"
    await _step("create the topics", _topics(broker.bootstrap, out))
    first, second = _txns(broker.bootstrap, app), _txns(broker.bootstrap, app)
    unhandled: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        await _step("first owner", first.assign({0}))
        await _step("first commit", first.commit(0, PartitionWork([Send(out, b"k", b"1", 0)])))
        await _step("next owner (fences the first)", second.assign({0}))
        with pytest.raises(ProducerFenced):
            await _step("fenced commit", first.commit(0, PartitionWork([Send(out, b"k", b"2", 0)])))
        assert not first.owns(0)
        await _step("next owner's commit", second.commit(0, PartitionWork([Send(out, b"k", b"2", 0)])))
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
        assert [c.get("message") for c in unhandled] == []
        # what is not a fenced producer's still reaches the handler that was there
        loop.call_exception_handler({"message": "something else"})
        assert [c.get("message") for c in unhandled] == ["something else"]
    finally:
        loop.set_exception_handler(None)
        await _step("closes", asyncio.gather(first.close(), second.close()))


async def test_last_record_reads_back_past_a_long_aborted_transaction(broker) -> None:
    app = f"tx-{uuid.uuid4().hex[:8]}"
    log = f"{app}-changelog"
    await _topics(broker.bootstrap, log)
    t = _txns(broker.bootstrap, app)
    await t.assign({0})
    try:
        await t.commit(0, PartitionWork([Send(log, b"k", b"kept", 0)]))
        p = t.producers[0]
        await p.begin_transaction()
        for i in range(600):  # more than the probe's first step (256 offsets)
            await p.send(log, b"x%d" % i, key=b"k", partition=0)
        await p.abort_transaction()
        probe = KafkaProbe(broker.bootstrap)
        try:
            assert await probe.last_record(log, 0, 603) == 0
        finally:
            await probe.close()
    finally:
        await t.close()


async def test_recovery_reads_past_an_aborted_transaction_on_the_embedded_broker(broker) -> None:
    """noida lists aborted transactions that ended before the fetch offset; without
    broker_compat.ignore_finished_aborts a read_committed fetch from just after a committed record
    (faust's recovery from a persisted offset) returns nothing of the producer's later commits."""
    from workers.kafka import broker_compat

    app = f"tx-{uuid.uuid4().hex[:8]}"
    log = f"{app}-changelog"
    await _topics(broker.bootstrap, log)
    t = _txns(broker.bootstrap, app)
    await t.assign({0})
    try:
        await t.commit(0, PartitionWork([Send(log, b"k", b"a", 0)]))           # 0, commit 1
        p = t.producers[0]
        await p.begin_transaction()
        await p.send_and_wait(log, b"aborted", key=b"k", partition=0)           # 2
        await p.abort_transaction()                                              # abort 3
        await t.commit(0, PartitionWork([Send(log, b"k", b"b", 0)]))           # 4, commit 5
        await t.commit(0, PartitionWork([Send(log, b"k", b"c", 0)]))           # 6, commit 7
    finally:
        await t.close()
    broker_compat.ignore_finished_aborts()
    c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, isolation_level="read_committed",
                         enable_auto_commit=False)
    await c.start()
    try:
        tp = TopicPartition(log, 0)
        c.assign([tp])
        c.seek(tp, 5)  # persisted offset 4 ("b"): recovery reads from 5
        got: list[bytes] = []
        while await c.position(tp) < 8:
            got += [m.value for m in (await c.getmany(tp, timeout_ms=1000)).get(tp, [])]
        assert got == [b"c"]
    finally:
        await c.stop()
    probe = KafkaProbe(broker.bootstrap, tail_from_start=True)
    try:
        assert await probe.last_record(log, 0, 8) == 6
        # from a committed record the table holds: only the records after it count
        assert await probe.last_record(log, 0, 8, after=4) == 6
        assert await probe.last_record(log, 0, 8, after=6) is None
    finally:
        await probe.close()


async def test_a_fetch_from_inside_an_aborted_transaction_skips_the_rest_of_it(broker) -> None:
    """Re-routed copies go to an input partition in another partition's transaction, between clients'
    records; a group's committed offset can lie between two copies of a transaction that aborted.
    A read_committed fetch from there (a rebalance, a restart) must not read the later copy: the
    compat fix's first form dropped every listed abort that started before the fetch offset, so it
    did, and the copy was applied out of order (its re-sent duplicate then dropped: an event lost)."""
    from aiokafka import AIOKafkaProducer

    from workers.kafka import broker_compat

    broker_compat.ignore_finished_aborts()
    topic = f"in-{uuid.uuid4().hex[:8]}"
    await _topics(broker.bootstrap, topic)
    copies = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=topic + "-p3")
    client = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True)
    await _step("producers start", asyncio.gather(copies.start(), client.start()))
    try:
        await client.send_and_wait(topic, b"client-0", partition=0)              # 0
        await copies.begin_transaction()
        await copies.send_and_wait(topic, b"copy-1", partition=0)                # 1 (aborted)
        await client.send_and_wait(topic, b"client-1", partition=0)              # 2
        await copies.send_and_wait(topic, b"copy-2", partition=0)                # 3 (aborted)
        await _step("abort", copies.abort_transaction())                          # 4: abort marker
        async with copies.transaction():
            await copies.send_and_wait(topic, b"copy-3", partition=0)            # 5, commit 6
        await client.send_and_wait(topic, b"client-2", partition=0)              # 7
    finally:
        await _step("producers stop", asyncio.gather(copies.stop(), client.stop()))

    async def from_(offset: int) -> list[bytes]:
        c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, isolation_level="read_committed",
                             enable_auto_commit=False)
        await _step("consumer start", c.start())
        try:
            tp = TopicPartition(topic, 0)
            c.assign([tp])
            c.seek(tp, offset)
            got: list[bytes] = []
            while await c.position(tp) < 8:
                got += [m.value for m in (await _step("fetch", c.getmany(tp, timeout_ms=1000))).get(tp, [])]
            return got
        finally:
            await _step("consumer stop", c.stop())

    assert await from_(0) == [b"client-0", b"client-1", b"copy-3", b"client-2"]
    assert await from_(3) == [b"copy-3", b"client-2"]   # the committed offset after client-1: inside the abort
    assert await from_(2) == [b"client-1", b"copy-3", b"client-2"]
    assert await from_(5) == [b"copy-3", b"client-2"]   # after the abort marker: the listing is stale


async def test_changelog_records_go_as_record_batches_in_the_transaction(broker) -> None:
    """PartitionWork.records: many changelog records per topic sent as whole record batches inside the
    transaction, in order, with the offset of each topic's last record reported; an aborted
    transaction leaves none of them for read_committed."""
    app = f"tx-{uuid.uuid4().hex[:8]}"
    out, log, log2 = f"{app}-out", f"{app}-changelog", f"{app}-changelog2"
    await _topics(broker.bootstrap, out, log, log2)
    t = _txns(broker.bootstrap, app)  # 16 kB producer batches: 40 records of 1 kB take several
    await t.assign({0})
    try:
        records = [(b"k%d" % i, b"%04d" % i + b"v" * 1000) for i in range(40)] + [(b"gone", None)]
        work = PartitionWork([Send(out, b"k", b"event", 0)], {}, {log: records, log2: [(b"a", b"1")]})
        await t.commit(0, work)
        assert work.last_offsets == {log: 40, log2: 0}
        got = await _values(broker.bootstrap, log, "read_committed")
        assert got == [v for _, v in records]
        # record batches are part of the transaction: aborted, they are never read_committed
        p = t.producers[0]
        await p.begin_transaction()
        await send_records(p, log, 0, [(b"x", b"aborted")])
        await p.abort_transaction()
        await t.commit(0, PartitionWork([], {}, {log: [(b"k", b"after")]}))
        assert (await _values(broker.bootstrap, log, "read_committed"))[-1] == b"after"
        assert b"aborted" not in await _values(broker.bootstrap, log, "read_committed")
    finally:
        await t.close()


async def test_a_broker_that_lost_acknowledged_records_gets_a_new_producer_and_nothing_left_open(tmp_path) -> None:
    """The embedded broker SIGKILLed right after acknowledged transactions loses them (workers/stream/
    transactions.py, README "Broker outages"): the producer's next transaction fails for good, the
    partition's producer is dropped (ProducerLost), what it left open is aborted (a partition it wrote to
    before failing stays readable read_committed), and the next assignment's producer commits again."""
    from workers.kafka.broker import EmbeddedBroker
    from workers.stream.transactions import ProducerLost

    broker = await asyncio.to_thread(EmbeddedBroker(data_dir=tmp_path / "log").start)
    try:
        app = f"tx-{uuid.uuid4().hex[:8]}"
        inp, out, log = f"{app}-in", f"{app}-out", f"{app}-changelog"
        await _topics(broker.bootstrap, inp, out, log)
        txns = _txns(broker.bootstrap, app)
        await txns.assign({0})
        await txns.commit(0, PartitionWork([Send(log, b"k", b"saved", 0)], {inp: 1}))
        await asyncio.sleep(3)  # noida saves its log about a second after a change
        for i in range(3):  # acknowledged, then lost with the broker
            await txns.commit(0, PartitionWork([Send(log, b"k", b"lost-%d" % i, 0)], {inp: 2 + i}))
        port = broker.port
        await asyncio.to_thread(broker.stop, True)
        broker = await asyncio.to_thread(EmbeddedBroker(port=port, data_dir=tmp_path / "log").start)
        assert await _values(broker.bootstrap, log, "read_committed") == [b"saved"]

        # "out" never saw this producer: its send is taken, the changelog's is refused (sequence ahead)
        with pytest.raises(ProducerLost):
            await txns.commit(0, PartitionWork([Send(out, b"k", b"event", 0), Send(log, b"k", b"state", 0)],
                                               {inp: 9}))
        assert not txns.owns(0)
        assert await asyncio.wait_for(_values(broker.bootstrap, out, "read_committed"), 30) == []  # aborted
        assert await _committed(broker.bootstrap, app, inp) == 1

        await txns.assign({0})  # the rebalance that follows: a new producer
        await txns.commit(0, PartitionWork([Send(out, b"k", b"event", 0), Send(log, b"k", b"state", 0)], {inp: 2}))
        assert await _values(broker.bootstrap, out, "read_committed") == [b"event"]
        assert await _values(broker.bootstrap, log, "read_committed") == [b"saved", b"state"]
        assert await _committed(broker.bootstrap, app, inp) == 2
        await txns.close()
    finally:
        broker.stop()


async def test_a_partition_kept_through_a_rebalance_gets_a_producer_that_another_owner_did_not_fence(broker) -> None:
    """A worker the coordinator dropped and readmitted keeps its partition, while a generation without it
    gave the partition to another worker, whose producer fenced its own (the embedded broker does this when
    a second worker joins). Its next assignment starts a new producer: the first batch after the rebalance
    commits. With the old producer kept, that batch failed fenced and its events waited for a later record."""
    app = f"tx-{uuid.uuid4().hex[:8]}"
    out = f"{app}-out"
    await _step("create the topics", _topics(broker.bootstrap, out))
    kept, other = _txns(broker.bootstrap, app), _txns(broker.bootstrap, app)
    try:
        await _step("first owner", kept.assign({0}))
        await _step("the other worker's generation (fences the first owner's producer)", other.assign({0, 1}))
        await _step("the other worker's next generation", other.assign({1}))
        await _step("the first owner's partition again", kept.assign({0}))
        await _step("the first batch after the rebalance", kept.commit(0, PartitionWork([Send(out, b"k", b"1", 0)])))
        assert await _step("read_committed events", _values(broker.bootstrap, out, "read_committed")) == [b"1"]
    finally:
        await _step("closes", asyncio.gather(kept.close(), other.close()))


def test_a_worker_fenced_twice_in_a_row_applies_every_record_without_a_later_one(worker_factory, broker,
                                                                                 app_id) -> None:
    """Another process takes the worker's transactional id (as a new owner's producer does), then records
    come, and no record after them. The batch fails fenced and the worker rejoins its group:
    - faust's seek to the committed offsets left a partition committed at 0 past the records its
      consumer had fetched (aiokafka seeks only above 0), so they waited for a later record;
    - fenced again within the session timeout, the worker dropped the records and put no rejoin
      off, so they waited for a later record too;
    and the dropped batches' events were counted as applied."""
    feedback = topics()["feedback"].name
    w = worker_factory(partitions=1).start().wait_ready()
    assert w.dispatch("init_instant", {"session_key": "s", "targets": ["m", "n"], "dim": 4})["ok"]
    event = orjson.dumps({"verb": "feedback", "session_key": "s", "embedding": [0.1, 0.2, 0.3, 0.4], "model": "m",
                          "quality": 0.7})

    async def fence_then_send() -> list[int]:
        other = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=f"{app_id}-p0")
        await other.start()  # InitProducerId: the worker's producer of partition 0 is fenced
        await other.stop()
        plain = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await plain.start()
        try:
            return [(await plain.send_and_wait(feedback, event, key=b"s")).offset for _ in range(3)]
        finally:
            await plain.stop()

    def applied_through(offset: int) -> bool:
        watermark = w.dispatch("session_info", {"session_key": "s"})["data"]["watermark"]
        return watermark.get(f"{feedback}:0", -1) >= offset

    for round_ in range(2):  # the second within the worker's session timeout (6 s) of the first rejoin
        offsets = asyncio.run(fence_then_send())
        assert offsets == [3 * round_, 3 * round_ + 1, 3 * round_ + 2]
        wait_until(lambda: applied_through(offsets[-1]), 30, 0.2, f"round {round_}: offsets {offsets} applied")
    # each applied once, and counted once: a batch whose transaction did not commit was counted as applied
    assert w.metric("learnstream_events_total", topic=feedback, outcome="applied") == 6


async def test_the_start_up_check_takes_a_broker_with_transactions_and_refuses_one_without(broker) -> None:
    """A worker on a broker without transactions (an earlier embedded broker, Tansu: an outside trial's upgrade)
    crashed with a traceback at its first assignment, after joining the group. It now checks with one
    transactional producer of its own id first; a broker that does not answer it is refused in one line
    (checked by hand against Tansu: "UnknownError"; here, a port where no broker listens)."""
    from workers.errors import ConfigError
    from workers.local import free_port
    from workers.stream import transactions

    await _step("the check on the embedded broker", transactions.check_transactions(broker.bootstrap, "probe-test"))
    transactions._PROBE_TIMEOUT_S, saved = 3.0, transactions._PROBE_TIMEOUT_S
    try:
        with pytest.raises(ConfigError, match=r"did not start a transactional producer \(.*\); it may not support "
                                              r"transactions: .* LEARNSTREAM_TRANSACTIONS=false"):
            await transactions.check_transactions(f"127.0.0.1:{free_port()}", "probe-test")
    finally:
        transactions._PROBE_TIMEOUT_S = saved
