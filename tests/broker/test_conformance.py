"""Broker conformance: what learnstream (faust, aiokafka) and its users' tools need from a Kafka broker.

Runs against any broker: ``LEARNSTREAM_CONFORMANCE_BROKER=noida|tansu|host:port pytest tests/broker``;
``learnstream bench brokers`` runs it against every embedded candidate and prints the README's table.
Each test states the Kafka behaviour it checks; none knows which broker it talks to.
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from tests.broker.candidates import Candidate

# Kafka's default max.message.bytes (1 MiB + 12): the largest changelog value a default topic takes.
# A record batch of one such value must go through; we send the value with its key and headers.
_CHANGELOG_LIMIT = 1048588
_MAX_VALUE = 1_000_000
_WAIT_S = 30.0


async def _create(bootstrap: str, topic: str, partitions: int = 1, **configs: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs)])
    finally:
        await admin.close()


async def _produce_batch(bootstrap: str, topic: str, values: list[bytes], partition: int = 0,
                         **kw: object) -> list[int]:
    """Send ``values`` in one record batch (linger) and return their offsets."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=200, **kw)
    await p.start()
    try:
        futs = [await p.send(topic, v, key=b"k%d" % i, partition=partition, headers=[("h", b"%d" % i)])
                for i, v in enumerate(values)]
        return [m.offset for m in await asyncio.gather(*futs)]
    finally:
        await p.stop()


async def _read_all(bootstrap: str, topic: str, n: int, partition: int = 0, to_end: bool = False,
                    **kw: object) -> list:
    """``n`` records from the start (or what came within _WAIT_S); ``to_end``: stop at the end offset."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest", **kw)
    await c.start()
    try:
        tp = TopicPartition(topic, partition)
        c.assign([tp])
        await c.seek_to_beginning(tp)
        end_offset = (await c.end_offsets([tp]))[tp] if to_end else None
        out: list = []
        loop = asyncio.get_running_loop()
        end = loop.time() + _WAIT_S
        while len(out) < n and loop.time() < end:
            for msgs in (await c.getmany(timeout_ms=300)).values():
                out += msgs
            if end_offset is not None and await c.position(tp) >= end_offset:
                break
        return out
    finally:
        await c.stop()


async def test_produce_fetch_multi_record_batches(target: Candidate, name: str) -> None:
    """Two multi-record batches come back in order, with keys, values, headers and dense offsets."""
    await _create(target.bootstrap, name)
    first = await _produce_batch(target.bootstrap, name, [b"a%d" % i for i in range(5)])
    second = await _produce_batch(target.bootstrap, name, [b"b%d" % i for i in range(7)])
    assert first == list(range(5)) and second == list(range(5, 12))
    got = await _read_all(target.bootstrap, name, 12)
    assert [m.offset for m in got] == list(range(12))
    assert [m.value for m in got] == [b"a%d" % i for i in range(5)] + [b"b%d" % i for i in range(7)]
    assert got[6].key == b"k1" and dict(got[6].headers) == {"h": b"1"}


async def test_list_offsets_earliest_latest_after_batches(target: Candidate, name: str) -> None:
    """ListOffsets latest = the next offset to be written (not the last batch's base + 1)."""
    await _create(target.bootstrap, name, partitions=2)
    await _produce_batch(target.bootstrap, name, [b"x"] * 4)
    await _produce_batch(target.bootstrap, name, [b"y"] * 3)
    c = AIOKafkaConsumer(bootstrap_servers=target.bootstrap)
    await c.start()
    try:
        tps = [TopicPartition(name, 0), TopicPartition(name, 1)]
        assert await c.end_offsets(tps) == {tps[0]: 7, tps[1]: 0}
        assert await c.beginning_offsets(tps) == {tps[0]: 0, tps[1]: 0}
    finally:
        await c.stop()


async def _group_member(bootstrap: str, topic: str, group: str, **kw: object) -> AIOKafkaConsumer:
    kw = {"session_timeout_ms": 10000, **kw}
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                         auto_offset_reset="earliest", heartbeat_interval_ms=500, max_poll_interval_ms=30000,
                         **kw)
    await c.start()
    return c


async def _until_assigned(members: list[AIOKafkaConsumer], want: list[int]) -> None:
    """Poll every member until their assignments have the sizes ``want`` (fail after _WAIT_S)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + _WAIT_S * 2
    while loop.time() < end:
        await asyncio.gather(*(m.getmany(timeout_ms=200) for m in members))
        if sorted(len(m.assignment()) for m in members) == sorted(want):
            return
    raise AssertionError(f"assignments {[sorted(tp.partition for tp in m.assignment()) for m in members]}, "
                         f"wanted sizes {want}")


async def test_group_join_rejoin(target: Candidate, name: str) -> None:
    """A group splits the partitions between two members, and the survivor gets all when one leaves."""
    await _create(target.bootstrap, name, partitions=4)
    group = name + "-g"
    a = await _group_member(target.bootstrap, name, group)
    try:
        await _until_assigned([a], [4])
        b = await _group_member(target.bootstrap, name, group)
        try:
            await _until_assigned([a, b], [2, 2])
            assert {tp.partition for tp in a.assignment()} | {tp.partition for tp in b.assignment()} == set(range(4))
        finally:
            await b.stop()  # LeaveGroup: a rejoins alone
        await _until_assigned([a], [4])
    finally:
        await a.stop()


async def test_static_membership(target: Candidate, name: str) -> None:
    """A static member (group.instance.id) that comes back gets its partitions and its committed offset."""
    await _create(target.bootstrap, name, partitions=2)
    await _produce_batch(target.bootstrap, name, [b"v"] * 3)
    group = name + "-g"
    a = await _group_member(target.bootstrap, name, group, group_instance_id="pod-0")
    try:
        await _until_assigned([a], [2])
        tp = TopicPartition(name, 0)
        await a.commit({tp: 3})
    finally:
        await a.stop()
    again = await _group_member(target.bootstrap, name, group, group_instance_id="pod-0")
    try:
        await _until_assigned([again], [2])
        assert await again.committed(tp) == 3
    finally:
        await again.stop()


async def test_committed_offsets_through_admin(target: Candidate, name: str) -> None:
    """OffsetFetch through the admin client (kafka-consumer-groups --describe, KEDA's lag scaler)."""
    await _create(target.bootstrap, name, partitions=2)
    group = name + "-g"
    c = await _group_member(target.bootstrap, name, group)
    try:
        await _until_assigned([c], [2])
        await c.commit({TopicPartition(name, 0): 5, TopicPartition(name, 1): 2})
    finally:
        await c.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=target.bootstrap)
    await admin.start()
    try:
        got = await admin.list_consumer_group_offsets(group)
        assert {tp.partition: o.offset for tp, o in got.items()} == {0: 5, 1: 2}
        assert isinstance(next(iter(got.values())), OffsetAndMetadata)
        assert group in [g[0] for g in await admin.list_consumer_groups()]
    finally:
        await admin.close()


async def test_idempotent_producer(target: Candidate, name: str) -> None:
    """InitProducerId and sequence numbers: an idempotent producer writes each record once."""
    await _create(target.bootstrap, name)
    offsets = await _produce_batch(target.bootstrap, name, [b"i%d" % i for i in range(10)], enable_idempotence=True)
    assert offsets == list(range(10))
    assert [m.value for m in await _read_all(target.bootstrap, name, 10)] == [b"i%d" % i for i in range(10)]


async def test_transactions_read_committed(target: Candidate, name: str) -> None:
    """A read_committed consumer sees committed transactions only; read_uncommitted sees both."""
    await _create(target.bootstrap, name)
    p = AIOKafkaProducer(bootstrap_servers=target.bootstrap, transactional_id=name + "-tx")
    await p.start()
    try:
        async with p.transaction():
            await p.send_and_wait(name, b"committed-1", partition=0)
        await p.begin_transaction()
        await p.send_and_wait(name, b"aborted", partition=0)
        await p.abort_transaction()
        async with p.transaction():
            await p.send_and_wait(name, b"committed-2", partition=0)
    finally:
        await p.stop()
    committed = await _read_all(target.bootstrap, name, 2, isolation_level="read_committed")
    assert [m.value for m in committed] == [b"committed-1", b"committed-2"]
    everything = await _read_all(target.bootstrap, name, 3, isolation_level="read_uncommitted")
    assert [m.value for m in everything] == [b"committed-1", b"aborted", b"committed-2"]


async def test_messages_up_to_the_changelog_limit(target: Candidate, name: str) -> None:
    """A ~1 MB value (under Kafka's default max.message.bytes) goes through intact."""
    await _create(target.bootstrap, name)
    big = bytes(range(256)) * (_MAX_VALUE // 256) + b"!" * (_MAX_VALUE % 256)
    p = AIOKafkaProducer(bootstrap_servers=target.bootstrap, max_request_size=_CHANGELOG_LIMIT + 4096)
    await p.start()
    try:
        meta = await p.send_and_wait(name, big, key=b"big", partition=0)
    finally:
        await p.stop()
    got = await _read_all(target.bootstrap, name, 1, max_partition_fetch_bytes=2 * _CHANGELOG_LIMIT)
    assert meta.offset == 0 and len(got) == 1 and got[0].value == big


async def _state_after_writes(c: Candidate, name: str) -> None:
    await _create(c.bootstrap, name, partitions=2, **{"cleanup.policy": "compact"})
    await _produce_batch(c.bootstrap, name, [b"r%d" % i for i in range(6)])
    group = name + "-g"
    m = await _group_member(c.bootstrap, name, group)
    try:
        await _until_assigned([m], [2])
        await m.commit({TopicPartition(name, 0): 4})
    finally:
        await m.stop()


async def _check_state(c: Candidate, name: str) -> None:
    got = await _read_all(c.bootstrap, name, 6)
    assert [m.value for m in got] == [b"r%d" % i for i in range(6)]
    admin = AIOKafkaAdminClient(bootstrap_servers=c.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(name + "-g")
        assert offsets[TopicPartition(name, 0)].offset == 4
        (meta,) = await admin.describe_topics([name])
        assert len(meta["partitions"]) == 2
    finally:
        await admin.close()
    # and it still takes writes at the right offsets
    assert await _produce_batch(c.bootstrap, name, [b"after"]) == [6]


def _restart(own_broker: Candidate, kill: bool) -> None:
    own_broker.restart(kill=kill)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_data_survives_a_broker_restart(own_broker: Candidate, name: str, how: str) -> None:
    """Records, topic layout and committed offsets survive a stop (SIGTERM) or crash (SIGKILL, 2 s after
    the last acknowledged write) and start on the same data directory."""
    await _state_after_writes(own_broker, name)
    if how == "sigkill":
        await asyncio.sleep(2.0)  # an acknowledged write is on disk within this (documented bound)
    await asyncio.to_thread(_restart, own_broker, how == "sigkill")
    await _check_state(own_broker, name)


def test_confluent_kafka_interop(target: Candidate, name: str) -> None:
    """librdkafka produces (default partitioner), aiokafka reads; librdkafka's group consumer reads and commits."""
    ck = pytest.importorskip("confluent_kafka")
    asyncio.run(_create(target.bootstrap, name, partitions=3))
    p = ck.Producer({"bootstrap.servers": target.bootstrap, "enable.idempotence": True, "linger.ms": 20})
    for i in range(30):
        p.produce(name, key=b"s%d" % i, value=b"c%d" % i)
    assert p.flush(_WAIT_S) == 0
    got = []
    for part in range(3):
        got += asyncio.run(_read_all(target.bootstrap, name, 1, partition=part))
    c = ck.Consumer({"bootstrap.servers": target.bootstrap, "group.id": name + "-g", "auto.offset.reset": "earliest",
                     "enable.auto.commit": False})
    try:
        c.subscribe([name])
        seen: list = []
        for _ in range(200):
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                seen.append(m.value())
            if len(seen) == 30:
                break
        assert sorted(seen) == sorted(b"c%d" % i for i in range(30))
        c.commit(asynchronous=False)
        committed = c.committed([ck.TopicPartition(name, part) for part in range(3)], timeout=10)
        assert sum(tp.offset for tp in committed) == 30
    finally:
        c.close()
    assert len(got) >= 3  # every partition had records aiokafka could read


def test_kcat_interop(target: Candidate, name: str) -> None:
    """Debian's kcat (librdkafka): metadata, produce and consume."""
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (apt-get install kcat; .ci/run installs it as root)")
    asyncio.run(_create(target.bootstrap, name))
    meta = subprocess.run([kcat, "-b", target.bootstrap, "-L", "-t", name], capture_output=True, text=True,
                          timeout=_WAIT_S)
    assert meta.returncode == 0, meta.stderr
    assert f'topic "{name}" with 1 partitions' in meta.stdout
    prod = subprocess.run([kcat, "-b", target.bootstrap, "-P", "-t", name, "-K:"], input="k1:one\nk2:two\n",
                          capture_output=True, text=True, timeout=_WAIT_S)
    assert prod.returncode == 0, prod.stderr
    cons = subprocess.run([kcat, "-b", target.bootstrap, "-C", "-t", name, "-o", "beginning", "-e", "-f", "%k=%s\n"],
                          capture_output=True, text=True, timeout=_WAIT_S)
    assert cons.returncode == 0, cons.stderr
    assert cons.stdout.split() == ["k1=one", "k2=two"]


async def _records_left_after_compaction(bootstrap: str, name: str, written: int) -> int:
    """The records ``name`` holds once fewer than half of the ``written`` remain, or after the wait."""
    loop = asyncio.get_running_loop()
    end = loop.time() + _WAIT_S * 2
    n = written
    while loop.time() < end:
        n = len(await _read_all(bootstrap, name, written, to_end=True))
        if n < written // 2:
            break
        await asyncio.sleep(1.0)
    return n


async def test_compaction_drops_superseded_values(target: Candidate, name: str) -> None:
    """A compacted topic with small segments keeps the latest value per key (what bounds the changelogs)."""
    await _create(target.bootstrap, name, **{"cleanup.policy": "compact", "segment.bytes": "4096",
                                             "segment.ms": "100", "min.cleanable.dirty.ratio": "0.01"})
    p = AIOKafkaProducer(bootstrap_servers=target.bootstrap)
    await p.start()
    try:
        for round_ in range(20):
            for k in range(5):
                await p.send_and_wait(name, b"v%d" % round_ + b"." * 500, key=b"key%d" % k, partition=0)
            await asyncio.sleep(0.05)
    finally:
        await p.stop()
    n = await _records_left_after_compaction(target.bootstrap, name, 100)
    assert n < 50, f"{n} of 100 records still there: nothing was compacted"


async def test_compaction_drops_superseded_transactional_values(target: Candidate, name: str) -> None:
    """The same with a transactional producer (the worker writes its changelogs in transactions)."""
    await _create(target.bootstrap, name, **{"cleanup.policy": "compact", "segment.bytes": "4096",
                                             "segment.ms": "100", "min.cleanable.dirty.ratio": "0.01"})
    p = AIOKafkaProducer(bootstrap_servers=target.bootstrap, transactional_id=name, acks="all")
    await p.start()
    try:
        for round_ in range(20):
            async with p.transaction():
                for k in range(5):
                    await p.send(name, b"v%d" % round_ + b"." * 500, key=b"key%d" % k, partition=0)
            await asyncio.sleep(0.05)
    finally:
        await p.stop()
    n = await _records_left_after_compaction(target.bootstrap, name, 100)
    assert n < 50, f"{n} of 100 committed records still there: nothing was compacted"


def test_a_member_that_dies_without_leaving_is_expired(target: Candidate, name: str, tmp_path) -> None:
    """A SIGKILLed member is dropped after its session timeout; the survivor gets its partitions."""
    import signal
    import sys
    import textwrap

    asyncio.run(_create(target.bootstrap, name, partitions=2))
    script = tmp_path / "member.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio
        from aiokafka import AIOKafkaConsumer
        async def main():
            c = AIOKafkaConsumer({name!r}, bootstrap_servers={target.bootstrap!r}, group_id={name + "-g"!r},
                                 session_timeout_ms=6000, heartbeat_interval_ms=500)
            await c.start()
            while not c.assignment():
                await c.getmany(timeout_ms=200)
            print("assigned", flush=True)
            while True:
                await c.getmany(timeout_ms=500)
        asyncio.run(main())
    """))
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "assigned"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()

    async def survivor() -> None:
        s = await _group_member(target.bootstrap, name, name + "-g", session_timeout_ms=6000,
                                request_timeout_ms=40000)
        try:
            await _until_assigned([s], [2])  # within 2 x _WAIT_S: the 6 s session timeout, many times over
        finally:
            await s.stop()

    async def bounded() -> None:
        try:
            await asyncio.wait_for(survivor(), 2 * _WAIT_S + 30)
        except asyncio.TimeoutError:
            raise AssertionError("the survivor never got the dead member's partitions") from None

    asyncio.run(bounded())
