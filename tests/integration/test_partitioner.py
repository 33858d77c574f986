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
