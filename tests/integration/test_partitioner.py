"""No silent loss from partitioners: librdkafka's default (CRC32) puts keyed events on partitions that do
not own their session; the worker re-routes them to the owner, applies each once, and the state survives
a restart (the owner's table partition is the one read back)."""
from __future__ import annotations


import pytest

from tests.helpers import wait_until
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
                                  headers=[(ORIGIN_HEADER, b"0:17")])
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
