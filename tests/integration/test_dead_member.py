"""A worker SIGKILLed for good while another keeps running, on the embedded broker, which never expires
a dead group member (workers/kafka/broker_compat.py, defect 1): the survivor notices the dead worker's
HTTP is gone for the session timeout, makes its member leave the group (workers/stream/peers.py), and
takes over its partitions: events for sessions the dead worker owned are applied by the survivor."""
from __future__ import annotations

import pytest

from tests.helpers import applied, wait_until
from workers.stream.partitioning import owner_partition

pytestmark = pytest.mark.integration

PARTITIONS = 4
SESSION_TIMEOUT_S = 6.0  # tests.helpers.WorkerProc's LEARNSTREAM_SESSION_TIMEOUT_S
SESSIONS = [f"dead-{i}" for i in range(16)]


def test_a_dead_workers_partitions_move_to_the_survivor(worker_factory, client) -> None:
    assert {owner_partition(s, PARTITIONS) for s in SESSIONS} == set(range(PARTITIONS))
    a = worker_factory("a", partitions=PARTITIONS).start().wait_ready()
    b = worker_factory("b", partitions=PARTITIONS).start().wait_ready()
    # both own partitions: every session gets one loss, applied by one of them. Ready alone is not enough:
    # a worker the coordinator dropped still reports its old assignment (and is ready) until it learns
    def split() -> bool:
        pa, pb = set(a.health()["active_partitions"]), set(b.health()["active_partitions"])
        return a.ready() and b.ready() and bool(pa) and bool(pb) and pa.isdisjoint(pb) and pa | pb == {0, 1, 2, 3}

    wait_until(split, 120, 0.3, "the two workers split the 4 partitions")
    for s in SESSIONS:
        client.loss(s, 0.5, wait=False)
    client.flush()
    wait_until(lambda: applied(a, "learn.loss") + applied(b, "learn.loss") == len(SESSIONS), 120,
               what="the first losses applied")
    assert applied(a, "learn.loss") > 0 and applied(b, "learn.loss") > 0, "the partitions were not shared"
    before = applied(a, "learn.loss")
    b.kill()
    for s in SESSIONS:
        client.loss(s, 0.6, wait=False)
    client.flush()
    # Kafka would expire b after its session timeout; on the embedded broker the survivor expels it
    wait_until(lambda: applied(a, "learn.loss") - before >= len(SESSIONS), 20 * SESSION_TIMEOUT_S, 1.0,
               "the survivor applying every session's second loss, the dead worker's partitions included")
    assert "made it leave the group" in a.log_tail(2_000_000)
    for s in SESSIONS:
        out = a.dispatch("session_info", {"session_key": s})
        assert out["ok"] and out["data"]["keys"] > 0, (s, out)
