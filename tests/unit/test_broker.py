"""The embedded broker: starts, answers, stops, keeps its data dir to itself, and the topic configs
that bound its memory (workers/kafka/broker_compat.py). Its Kafka conformance is tests/broker."""
from __future__ import annotations

import asyncio
import socket

import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from workers.kafka.broker import EmbeddedBroker
from workers.kafka.broker_compat import SEGMENT_BYTES, SEGMENT_MS, topic_configs
from workers.errors import BrokerError


def test_starts_on_loopback_and_stops_without_leaving_a_process(tmp_path) -> None:
    b = EmbeddedBroker(log_path=tmp_path / "b.log").start()
    pid = b.proc.pid
    assert b.host == "127.0.0.1"
    with socket.create_connection(("127.0.0.1", b.port), timeout=2):
        pass
    b.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_taken_port_is_a_clear_error(tmp_path) -> None:
    with EmbeddedBroker(log_path=tmp_path / "a.log") as a:
        with pytest.raises(BrokerError, match="in use"):
            EmbeddedBroker(port=a.port, log_path=tmp_path / "b.log").start()


async def _retained_from(bootstrap: str, configs_by_topic: dict[str, dict[str, str]], chunks: int) -> dict[str, int]:
    """Write ``chunks`` x 256 KiB to each topic and return each topic's earliest offset once the first moved."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(t, 1, 1, topic_configs=c) for t, c in configs_by_topic.items()])
    await admin.close()
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=1 << 20)
    await p.start()
    value = b"x" * (256 * 1024)
    for _ in range(chunks):
        for t in configs_by_topic:
            await p.send(t, value, partition=0)
    await p.flush()
    await p.stop()
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await c.start()
    tps = [TopicPartition(t, 0) for t in configs_by_topic]
    try:
        for _ in range(600):  # retention runs in the background: wait for it, up to 60 s
            first = await c.beginning_offsets(tps)
            if any(first.values()):
                break
            await asyncio.sleep(0.1)
        return {tp.topic: o for tp, o in first.items()}
    finally:
        await c.stop()


def test_embedded_topic_configs_bound_what_the_broker_keeps(tmp_path) -> None:
    # The broker keeps the retained log in memory. With Kafka's defaults (1 GiB segments, 7 days) it
    # keeps every byte; broker_compat's configs let retention drop closed segments.
    configs = {"bounded": {"cleanup.policy": "delete", **topic_configs("delete", SEGMENT_BYTES)},
               "defaults": {"cleanup.policy": "delete"}}
    with EmbeddedBroker(log_path=tmp_path / "b.log") as b:
        first = asyncio.run(_retained_from(b.bootstrap, configs, chunks=3 * SEGMENT_BYTES // (256 * 1024)))
    assert first["bounded"] > 0  # at least one closed segment past retention.bytes was dropped
    assert first["defaults"] == 0


def test_topic_configs_give_compacted_topics_segments_but_no_byte_retention() -> None:
    assert topic_configs("compact", 1 << 20) == {"segment.bytes": str(SEGMENT_BYTES), "segment.ms": str(SEGMENT_MS),
                                                 "min.cleanable.dirty.ratio": "0.1"}
    assert topic_configs("delete", 1 << 20)["retention.bytes"] == str(1 << 20)
    assert "retention.bytes" not in topic_configs("delete", 0)  # 0 = no byte limit


def test_a_restart_waits_for_the_previous_broker_on_the_same_data_dir(tmp_path) -> None:
    import time

    first = EmbeddedBroker(data_dir=tmp_path / "d", log_path=tmp_path / "1.log").start()
    old = first.proc
    first.proc = None  # forget it without stopping: it still owns the data dir
    import threading

    threading.Timer(1.0, old.terminate).start()
    t0 = time.monotonic()
    second = EmbeddedBroker(data_dir=tmp_path / "d", log_path=tmp_path / "2.log").start()
    try:
        assert old.poll() is not None and time.monotonic() - t0 >= 0.9  # it waited for the first to save and go
    finally:
        second.stop()
        old.wait()


def _noida_children(pid: int) -> list[psutil.Process]:
    try:
        return [c for c in psutil.Process(pid).children(recursive=True) if "noida" in " ".join(c.cmdline())]
    except psutil.NoSuchProcess:
        return []


def test_broker_dies_with_its_parent(tmp_path) -> None:
    import subprocess
    import sys

    from tests.helpers import wait_until

    # its data in tmp_path: a SIGKILLed parent cannot remove a temporary directory of its own
    code = ("from workers.kafka.broker import EmbeddedBroker; import sys, time; "
            "b = EmbeddedBroker(data_dir=sys.argv[1]).start(); print(b.proc.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "log")], stdout=subprocess.PIPE, text=True)
    broker_pid = int(parent.stdout.readline())
    assert psutil.pid_exists(broker_pid)
    parent.kill()  # SIGKILL: no cleanup code runs in the parent
    parent.wait()
    wait_until(lambda: not psutil.pid_exists(broker_pid) or psutil.Process(broker_pid).status() == psutil.STATUS_ZOMBIE,
               20, what="the orphaned broker to exit")


def test_learnstream_broker_stops_on_ctrl_c_and_keeps_its_data(tmp_path) -> None:
    import signal
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "workers.cli", "broker", "--data-dir", str(tmp_path / "log")],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert "ready on 127.0.0.1:" in line
    children = _noida_children(p.pid)
    assert children
    p.send_signal(signal.SIGINT)
    assert p.wait(20) == 0
    for c in children:
        assert not c.is_running() or c.status() == psutil.STATUS_ZOMBIE
    assert (tmp_path / "log" / "kafka.json").exists()  # it saved its log on the way out


def test_broker_runs_with_the_malloc_tunables(tmp_path) -> None:
    # without them each JSON snapshot's freed buffers stay in glibc's arenas (bench/README.md, broker_soak)
    import psutil

    from workers.kafka.broker_compat import MALLOC_TUNABLES

    with EmbeddedBroker(data_dir=tmp_path / "b") as b:
        seen = psutil.Process(b.proc.pid).environ().get("GLIBC_TUNABLES", "")
    # glibc read the variable at start and rewrote it: the tunables it keeps for children stay in the
    # string (arena_max), the ones it only applies to this process are taken out of it
    assert seen and seen in MALLOC_TUNABLES and "glibc.malloc.arena_max=2" in seen


def test_changelogs_the_worker_rewrites_allow_delete_records_and_keep_everything_else(monkeypatch) -> None:
    from workers.stream.provision import changelog_configs
    from workers.stream.settings import Settings

    monkeypatch.delenv("LEARNSTREAM_BROKER", raising=False)
    monkeypatch.delenv("LEARNSTREAM_TRANSACTIONS", raising=False)
    rewritten = changelog_configs(Settings.from_env(embedded_retention_bytes=1 << 20))
    # "delete" lets DeleteRecords cut the log; no time or byte retention ever drops a changelog record
    assert rewritten["cleanup.policy"] == "compact,delete"
    assert rewritten["retention.ms"] == rewritten["retention.bytes"] == "-1"
    assert rewritten["segment.bytes"] == str(SEGMENT_BYTES)
    plain = changelog_configs(Settings.from_env(transactions=False, embedded_retention_bytes=1 << 20))
    assert plain["cleanup.policy"] == "compact" and "retention.bytes" not in plain



def test_an_empty_assignment_makes_the_consumer_rejoin_instead_of_killing_its_coordinator() -> None:
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from aiokafka.coordinator.protocol import ConsumerProtocol

    from workers.kafka import broker_compat

    with pytest.raises(ValueError, match="unpack requires a buffer"):  # what kills aiokafka's coordinator task without the patch
        ConsumerProtocol.ASSIGNMENT.decode(b"")
    broker_compat.rejoin_on_empty_assignment()
    broker_compat.rejoin_on_empty_assignment()  # idempotent: patched once

    class Member:  # the few attributes of aiokafka's GroupCoordinator the method touches
        group_id = "learnstream"
        rejoins = 0

        def request_rejoin(self) -> None:
            self.rejoins += 1

        def _lookup_assignor(self, protocol: str) -> None:
            raise LookupError(protocol)  # reached only by aiokafka's own handling

    member = Member()
    asyncio.run(GroupCoordinator._on_join_complete(member, 7, "m-1", "faust", b""))
    assert member.rejoins == 1
    with pytest.raises(LookupError):  # a real assignment still goes to aiokafka's handling
        asyncio.run(GroupCoordinator._on_join_complete(member, 8, "m-1", "faust", b"\x00\x00"))
    assert member.rejoins == 1


_FETCH_PROBE = r'''
import asyncio, json, statistics, sys, time
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer import fetcher
from workers.kafka import broker_compat

bootstrap, patched = sys.argv[1], sys.argv[2] == "1"
if patched:
    broker_compat.hold_empty_fetches()
inner, took = fetcher.Fetcher._proc_fetch_request, []

async def timed(self, assignment, node_id, request):
    t0 = time.monotonic()
    got = await inner(self, assignment, node_id, request)
    took.append((time.monotonic() - t0, got))
    return got

fetcher.Fetcher._proc_fetch_request = timed

async def main():
    c = AIOKafkaConsumer("probe", bootstrap_servers=bootstrap, group_id="probe", fetch_max_wait_ms=500,
                         auto_offset_reset="earliest")
    await c.start()
    deadline = time.monotonic() + 30
    while len(took) < 3 and time.monotonic() < deadline:  # joined and fetching
        await asyncio.sleep(0.01)
    took.clear()
    await asyncio.sleep(1.0)  # the measured window: one idle second
    empty = [t for t, got in took if not got]
    async with AIOKafkaProducer(bootstrap_servers=bootstrap) as p:
        await p.send_and_wait("probe", b"hello")
    got = await asyncio.wait_for(c.getone(), 10)
    await c.stop()
    print(json.dumps({"per_s": len(empty), "median_ms": 1e3 * statistics.median(empty), "value": got.value.decode()}))

asyncio.run(main())
'''


def test_an_empty_fetch_is_held_in_the_client_since_the_broker_answers_it_at_once(tmp_path) -> None:
    """broker_compat defect 6: the embedded broker answers an empty fetch at once, whatever its
    max_wait_ms (here 500), so an idle consumer busy-loops; hold_empty_fetches holds the answer for
    EMPTY_FETCH_HOLD_MS, and a message produced afterwards is still consumed."""
    import json
    import subprocess
    import sys

    from workers.kafka.broker_compat import EMPTY_FETCH_HOLD_MS

    with EmbeddedBroker(log_path=tmp_path / "b.log") as b:
        async def topic() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=b.bootstrap)
            await admin.start()
            try:
                await admin.create_topics([NewTopic("probe", 2, 1)])
            finally:
                await admin.close()

        asyncio.run(topic())
        runs = {}
        for patched in ("0", "1"):
            out = subprocess.run([sys.executable, "-c", _FETCH_PROBE, b.bootstrap, patched], capture_output=True,
                                 text=True, timeout=60)
            assert out.returncode == 0, out.stderr[-2000:]
            runs[patched] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs["0"]["median_ms"] < 250 and runs["0"]["per_s"] > 0  # the defect: no long poll
    assert runs["1"]["median_ms"] >= EMPTY_FETCH_HOLD_MS * 0.9
    assert runs["1"]["per_s"] <= 1.1 * 1000 / EMPTY_FETCH_HOLD_MS
    assert runs["0"]["value"] == runs["1"]["value"] == "hello"


def test_waiting_for_a_broker_that_drops_connections_logs_no_aiokafka_errors(caplog) -> None:
    """A broker loading its log after a SIGKILL accepts connections and drops them: aiokafka's ERROR for each
    was a restarted worker's first line, before the one naming the broker (an outside trial)."""
    import logging
    import socket
    import threading

    from workers.errors import BrokerError
    from workers.kafka.broker import wait_for_broker

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def drop() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=drop, daemon=True).start()
    try:
        with caplog.at_level(logging.INFO), pytest.raises(BrokerError, match="within 1.5 s"):
            wait_for_broker(f"127.0.0.1:{srv.getsockname()[1]}", timeout=1.5)
    finally:
        srv.close()
    assert not [r for r in caplog.records if r.name == "aiokafka"], caplog.text
    assert logging.getLogger("aiokafka").filters == []  # left as it was
