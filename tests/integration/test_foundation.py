"""Issue 2 on real parts: embedded broker, worker subprocesses, RocksDB tables, HTTP."""
from __future__ import annotations

import base64

import orjson
import pytest

from tests.helpers import applied, read_topic, send_raw, wait_until

pytestmark = pytest.mark.integration


def info(w, sk: str) -> dict:
    out = w.dispatch("session_info", {"session_key": sk})
    assert out["ok"], out
    return out["data"]


def window(w, sk: str) -> int:
    return w.dispatch("health", {"session_key": sk})["data"]["loss_window_size"]


def test_events_apply_and_invalid_ones_go_to_dlq_with_reason(broker, worker_factory, client) -> None:
    w = worker_factory().start().wait_ready()
    client.loss("s1", 0.5)
    send_raw(broker.bootstrap, "learn.loss", b"s1", [b"{not json", orjson.dumps({"loss": "high"})])
    client.loss("s1", 0.6)
    # the good event after the bad ones is applied: the worker went on
    wait_until(lambda: window(w, "s1") == 2, 60, what="two good losses applied")
    dlq = read_topic(broker.bootstrap, "learn.dlq", 2)
    assert [d["reason_code"] for d in dlq] == ["bad_json", "invalid"]  # a wrong type breaks the schema
    assert "not valid JSON" in dlq[0]["reason"]
    assert "loss" in dlq[1]["reason"]
    assert base64.b64decode(dlq[0]["value_b64"]) == b"{not json"  # the original bytes, nothing lost
    assert dlq[0]["source"]["topic"] == "learn.loss" and dlq[0]["source"]["offset"] == 1
    assert dlq[0]["id"] == f"learn.loss:{dlq[0]['source']['partition']}:1"
    metrics = __import__("urllib.request").request.urlopen(w.url + "/metrics").read().decode()
    assert 'learnstream_dlq_total{reason="bad_json"} 1.0' in metrics
    assert 'learnstream_events_total{outcome="applied",topic="learn.loss"} 2.0' in metrics
    assert 'learnstream_kernel_seconds_count{kernel="record_loss"} 3.0' in metrics  # the refused one ran too
    assert 'learnstream_messages_total{outcome="applied",topic="learn.loss"} 2.0' in metrics
    assert "faust_consumer_commit_latency" in metrics  # the framework registry is served too
    # series whose hooks are off are not exported (they would read 0 under traffic)
    for dead in ("faust_messages_received_total", "faust_total_events_total", "faust_producer_send_latency",
                 "faust_topic_messages_sent_total", "faust_table_operations_total"):
        assert dead not in metrics, dead


LOSS = "learn.loss"


def _feed_losses(client, sessions: list[str], n: int) -> int:
    """n losses per session; returns how many events were sent."""
    for i in range(n):
        for s in sessions:
            # a jump every 7th loss so boundaries fire and counters move
            client.loss(s, 5.0 if i % 7 == 6 else 0.5 + 0.01 * i, wait=False)
    client.flush()
    return n * len(sessions)


def test_sigkill_and_restart_recovers_state_from_changelog(worker_factory, client, tmp_path) -> None:
    sessions = [f"agent-{i}" for i in range(6)]
    a = worker_factory("a").start().wait_ready()
    n = _feed_losses(client, sessions, 20)
    wait_until(lambda: applied(a, LOSS) == n, 60, what="all losses applied")
    before = {s: info(a, s) for s in sessions}
    a.kill()
    # same data dir: local RocksDB + changelog (persisted offsets are checked against highwaters)
    a2 = worker_factory("a2", data_dir=a.data_dir).start().wait_ready()
    assert {s: info(a2, s) for s in sessions} == before
    a2.kill()
    # fresh data dir: everything comes back from the changelog alone
    b = worker_factory("b").start().wait_ready()
    assert {s: info(b, s) for s in sessions} == before
    # and it keeps learning from where it was
    client.loss(sessions[0], 0.5)
    wait_until(lambda: info(b, sessions[0])["watermark"] != before[sessions[0]]["watermark"], 60)


def test_redelivered_batch_is_not_applied_twice(worker_factory, client) -> None:
    # offsets are never committed before the kill, so the restart redelivers everything: the
    # at-least-once path (without transactions, whose batches commit their offsets themselves)
    a = worker_factory("a", env={"LEARNSTREAM_COMMIT_INTERVAL_S": "3600",
                                 "LEARNSTREAM_TRANSACTIONS": "false"}).start().wait_ready()
    n = _feed_losses(client, ["s1", "s2"], 15)
    wait_until(lambda: applied(a, LOSS) == n, 60, what="all losses applied")
    before = {s: info(a, s) for s in ("s1", "s2")}
    a.kill()
    a2 = worker_factory("a2", data_dir=a.data_dir, env={"LEARNSTREAM_TRANSACTIONS": "false"}).start().wait_ready()
    metrics = lambda: __import__("urllib.request").request.urlopen(a2.url + "/metrics").read().decode()  # noqa: E731
    wait_until(lambda: 'learnstream_events_total{outcome="duplicate",topic="learn.loss"} 30.0' in metrics(), 60,
               what="all 30 redelivered events seen and skipped")
    assert {s: info(a2, s) for s in ("s1", "s2")} == before


def test_two_workers_split_partitions_and_failover_moves_state(worker_factory, client) -> None:
    a = worker_factory("a").start().wait_ready()
    b = worker_factory("b").start()
    def split() -> bool:
        pa, pb = set(a.health()["active_partitions"]), set(b.health()["active_partitions"])
        return a.ready() and b.ready() and pa and pb and pa.isdisjoint(pb) and pa | pb == {0, 1, 2, 3}

    wait_until(split, 120, 0.3, "the two workers split the 4 partitions")
    sessions = [f"agent-{i}" for i in range(12)]
    # writes over HTTP to either worker: forwarded to the owner, answered once applied
    for i, s in enumerate(sessions):
        out = (a if i % 2 else b).dispatch("init_instant", {"session_key": s, "targets": ["x", "y"], "dim": 4})
        assert out["ok"], out
    assert all(a.dispatch("health", {"session_key": s})["data"]["instant_ready"] for s in sessions)
    n = _feed_losses(client, sessions, 12)
    wait_until(lambda: applied(a, LOSS) + applied(b, LOSS) == n, 60, what="all losses applied")
    # any worker answers for any session (reads are forwarded to the owner)
    assert all(window(a, s) == 10 for s in sessions)
    before = {s: info(b, s) for s in sessions}
    b.stop()
    wait_until(lambda: a.ready() and set(a.health()["active_partitions"]) == {0, 1, 2, 3}, 120, 0.3,
               "a took over all partitions")
    assert {s: info(a, s) for s in sessions} == before
    moved = next(s for s in sessions if a.dispatch("session_info", {"session_key": s})["ok"]
                 and s in before)
    client.loss(moved, 0.5)
    wait_until(lambda: info(a, moved)["watermark"] != before[moved]["watermark"], 60)


def test_worker_without_a_broker_starts_the_embedded_one(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from tests.helpers import http_json
    from workers.local import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env.update(LEARNSTREAM_WEB_PORT=str(port), LEARNSTREAM_DATA_DIR=str(tmp_path / "data"),
               LEARNSTREAM_PARTITIONS="2")
    p = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        assert "embedded broker on 127.0.0.1:" in p.stdout.readline()
        wait_until(lambda: http_json(f"http://127.0.0.1:{port}/ready", timeout=3)[0] == 200, 90, 0.3,
                   "the worker on its own embedded broker")
        brokers = [c for c in psutil.Process(p.pid).children(recursive=True) if "noida" in " ".join(c.cmdline())]
        assert brokers
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(60)
    for c in brokers:
        assert not c.is_running() or c.status() == psutil.STATUS_ZOMBIE
