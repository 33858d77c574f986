"""No silent loss from partitioners: librdkafka's default (CRC32) puts keyed events on partitions that do
not own their session; the worker re-routes them to the owner, applies each once, and the state survives
a restart (the owner's table partition is the one read back)."""
from __future__ import annotations


import pytest

from tests.helpers import send_raw, wait_until
from workers.stream.partitioning import owner_partition

pytestmark = pytest.mark.integration

PARTITIONS = 4
SESSIONS = [f"crc-{i}" for i in range(12)]
LOSSES = 5


def _window(w, sk: str) -> int:
    out = w.dispatch("health", {"session_key": sk})
    assert out["ok"], out
    return out["data"]["loss_window_size"]


def _rerouted(w) -> float:
    return w.metric("learnstream_rerouted_total", topic="learn.loss")


def test_confluent_kafka_default_partitioner_is_rerouted_and_survives_restart(broker, worker_factory) -> None:
    ck = pytest.importorskip("confluent_kafka")
    import zlib

    misplaced = [s for s in SESSIONS if zlib.crc32(s.encode()) % PARTITIONS != owner_partition(s, PARTITIONS)]
    assert misplaced, "the sessions must include some the CRC32 partitioner misplaces"
    w = worker_factory("a", partitions=PARTITIONS).start().wait_ready()
    p = ck.Producer({"bootstrap.servers": broker.bootstrap})  # librdkafka's default partitioner
    for i in range(LOSSES):
        for s in SESSIONS:
            p.produce("learn.loss", key=s.encode(), value=b'{"loss": %.2f}' % (0.5 + 0.01 * i))
    assert p.flush(30) == 0
    wait_until(lambda: all(_window(w, s) == LOSSES for s in SESSIONS), 90, what="every loss applied once")
    # each misplaced event re-routed (a batch redelivered after a rebalance re-routes again: its copies are
    # duplicates by their origin, which the windows above show were not applied twice)
    assert _rerouted(w) >= LOSSES * len(misplaced)
    w.stop()
    again = worker_factory("b", data_dir=w.data_dir, partitions=PARTITIONS).start().wait_ready()
    assert {s: _window(again, s) for s in SESSIONS} == {s: LOSSES for s in SESSIONS}
    fresh = worker_factory("c", partitions=PARTITIONS)  # nothing local: the owners' changelogs have it all
    again.stop()
    fresh.start().wait_ready()
    assert {s: _window(fresh, s) for s in SESSIONS} == {s: LOSSES for s in SESSIONS}


def test_a_rerouted_copy_on_a_wrong_partition_goes_to_the_dlq_as_wrong_partition(broker, worker_factory) -> None:
    """A copy that carries the re-route header and still lands on a partition that does not own its key
    (a producer that counts partitions differently) is never applied there nor bounced again: it goes to
    learn.dlq with reason_code wrong_partition, with its origin, and the next event is applied."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from tests.helpers import read_topic
    from workers.stream.partitioning import ORIGIN_HEADER

    sk = "moved-copy"
    wrong = (owner_partition(sk, PARTITIONS) + 1) % PARTITIONS
    w = worker_factory("a", partitions=PARTITIONS).start().wait_ready()

    async def send() -> None:
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await p.start()
        try:
            await p.send_and_wait("learn.loss", b'{"loss": 0.5}', key=sk.encode(), partition=wrong,
                                  headers=[(ORIGIN_HEADER, b"%d:17" % ((wrong + 1) % PARTITIONS))])
            await p.send_and_wait("learn.loss", b'{"loss": 0.5}', key=sk.encode())  # the owner: applied
        finally:
            await p.stop()
    asyncio.run(send())
    wait_until(lambda: _window(w, sk) == 1, 60, what="the correctly placed event applied")
    dlq = [e for e in read_topic(broker.bootstrap, "learn.dlq", 1) if e.get("reason_code") == "wrong_partition"]
    assert len({e["id"] for e in dlq}) == 1, dlq  # (read uncommitted: an aborted attempt may show too)
    assert dlq[0]["source"]["partition"] == wrong and "does not own its key" in dlq[0]["reason"], dlq[0]
    assert w.metric("learnstream_dlq_total", reason="wrong_partition") == 1
    assert _rerouted(w) == 0  # not bounced again


def test_a_worker_restarted_inside_an_aborted_re_route_applies_none_of_it(broker, worker_factory) -> None:
    """Re-routed copies are written in the source partition's transaction, between clients' records on
    the owner's partition. When that transaction aborts (its worker was fenced mid-batch), the owner's
    committed offset can end up between two of its copies. A worker that starts from there (a restart,
    a rebalance) must apply neither copy: on the embedded broker the first form of the abort-listing
    workaround (workers/kafka/broker_compat.py) applied the second, out of order."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from workers.stream.partitioning import ORIGIN_HEADER

    sk = "aborted-copies"
    owner = owner_partition(sk, PARTITIONS)
    source = (owner + 1) % PARTITIONS
    w = worker_factory("a", partitions=PARTITIONS).start().wait_ready()

    async def produce() -> None:
        client = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True)
        copies = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="elsewhere-p%d" % source)
        await asyncio.gather(client.start(), copies.start())
        try:
            async def loss(v: float, producer: AIOKafkaProducer = client, origin: int | None = None) -> None:
                headers = [(ORIGIN_HEADER, b"%d:%d" % (source, origin))] if origin is not None else None
                await producer.send_and_wait("learn.loss", b'{"loss": %.1f}' % v, key=sk.encode(), partition=owner,
                                             headers=headers)
            await loss(0.1)
            await copies.begin_transaction()
            await loss(0.2, copies, origin=7)   # aborted copy
            await loss(0.3)                      # the worker's committed offset ends up after this one
            await loss(0.4, copies, origin=8)   # aborted copy
            await copies.abort_transaction()
        finally:
            await asyncio.gather(client.stop(), copies.stop())
    asyncio.run(produce())
    wait_until(lambda: _window(w, sk) == 2, 60, what="the two clients' losses applied, no copy")
    w.stop()
    again = worker_factory("b", data_dir=w.data_dir, partitions=PARTITIONS).start().wait_ready()
    send_raw(broker.bootstrap, "learn.loss", sk.encode(), [b'{"loss": 0.5}'])
    wait_until(lambda: _window(again, sk) >= 3, 60, what="the loss after the restart applied")
    assert _window(again, sk) == 3  # 0.1, 0.3, 0.5: the copy after the committed offset is not applied


def test_an_origin_header_on_its_own_partition_goes_to_the_dlq_and_loses_nothing(broker, worker_factory) -> None:
    """An outside trial: one event with ``learnstream-origin: <its own partition>:99999999`` (a header a worker
    never writes there) was applied as a copy from that far offset, and every later event of the session on
    that partition was then a "duplicate": none applied, none in the DLQ. Now it goes to the DLQ as
    ``invalid``, naming the header, and every other event is applied."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from tests.helpers import read_topic
    from workers.stream.partitioning import ORIGIN_HEADER

    sk = "forged-origin"
    owner = owner_partition(sk, PARTITIONS)
    w = worker_factory("a", partitions=PARTITIONS).start().wait_ready()

    async def send() -> None:
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await p.start()
        try:
            for i in range(9):
                headers = [(ORIGIN_HEADER, b"%d:99999999" % owner)] if i == 3 else None
                await p.send_and_wait("learn.loss", b'{"loss": 0.%d}' % (i + 1), key=sk.encode(), partition=owner,
                                      headers=headers)
        finally:
            await p.stop()
    asyncio.run(send())
    wait_until(lambda: _window(w, sk) == 8, 60, what="the eight events without the header applied")
    dlq = [e for e in read_topic(broker.bootstrap, "learn.dlq", 1) if e.get("reason_code") == "invalid"]
    assert len({e["id"] for e in dlq}) == 1, dlq
    assert ORIGIN_HEADER in dlq[0]["reason"] and "names the partition the record is on" in dlq[0]["reason"], dlq[0]
    assert dlq[0]["source"]["partition"] == owner
    assert w.metric("learnstream_dlq_total", reason="invalid") == 1
