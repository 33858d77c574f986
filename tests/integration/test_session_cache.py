"""The decoded-session cache through a worker: within LEARNSTREAM_CACHE_BYTES once a batch's writes are local."""
from __future__ import annotations

from tests.helpers import applied, wait_until
from workers.kafka.topics import topics

BUDGET = 200_000


def test_an_idle_worker_holds_its_session_cache_within_the_budget(worker_factory, client) -> None:
    """An outside trial: after a batch touching 300 sessions the idle worker held 11 times its
    LEARNSTREAM_CACHE_BYTES until the next write came. A batch's sessions cannot leave the cache before their
    writes are local (the store does not have them yet); the worker now trims again once they are."""
    # one batch for all of them (it closes 2 s after its first event, or 1 s after its last)
    w = worker_factory(env={"LEARNSTREAM_CACHE_BYTES": str(BUDGET), "LEARNSTREAM_BATCH_WITHIN_S": "2",
                            "LEARNSTREAM_BATCH_LINGER_S": "1"}).start().wait_ready()
    sessions = [f"c{i}" for i in range(80)]
    for sk in sessions:  # ~8 kB each decoded: 80 of them are three times the budget
        client.send("commands", sk, {"verb": "init_instant",
                                     "body": {"session_key": sk, "targets": ["a", "b"], "dim": 384}}, wait=False)
    client.flush()
    commands = topics()["commands"].name
    wait_until(lambda: applied(w, commands) == len(sessions), 120, what="every init applied")
    wait_until(lambda: w.metric("learnstream_session_cache_evictions_total") > 0, 30, what="evictions")
    cached = w.metric("learnstream_session_cache_bytes")
    assert 0 < cached <= BUDGET, cached
    assert w.metric("learnstream_session_cache_sessions") < len(sessions)
    # an evicted session is read back from the store whole
    assert w.dispatch("apply_adapter", {"session_key": "c0", "embedding": [0.1] * 384})["ok"]
