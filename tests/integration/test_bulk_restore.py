"""Issue 10 on real parts: the bulk changelog restore (workers/stream/restore.py) and the changelog
writes as whole record batches (workers/stream/tables.py), against a real broker and real RocksDB."""
from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest
import rocksdict
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from workers.stream import faust_internals
from workers.stream.restore import Span, restore
from workers.stream.tables import send_records

pytestmark = pytest.mark.integration

OFFSET_KEY = b"__faust\0offset__"


async def _produce(bootstrap: str, topic: str, partition: int, items: list[tuple[bytes, bytes | None]]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=64 * 1024, linger_ms=5)
    await p.start()
    try:
        futs = [await p.send(topic, v, key=k, partition=partition) for k, v in items]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


def _create(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, partitions, 1)])
        finally:
            await admin.close()

    asyncio.run(go())


def _db(path: Path) -> rocksdict.Rdict:
    return rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))


def test_restore_applies_each_partition_in_order_with_its_last_offset_and_stops_at_the_highwater(
        broker, tmp_path: Path) -> None:
    topic = "t-restore-changelog"
    _create(broker.bootstrap, topic, 2)
    # partition 0: puts, overwrites and a delete, many fetches' worth; partition 1: a few
    p0 = [(b"k%04d" % (i % 300), b"v%d" % i * 200) for i in range(3000)] + [(b"k0001", None)]
    p1 = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]
    asyncio.run(_produce(broker.bootstrap, topic, 0, p0))
    asyncio.run(_produce(broker.bootstrap, topic, 1, p1))
    # records past the highwater the caller knew of are left for faust's recovery
    asyncio.run(_produce(broker.bootstrap, topic, 1, [(b"late", b"x")]))
    dbs = [_db(tmp_path / "p0"), _db(tmp_path / "p1")]
    try:
        dbs[1].put(OFFSET_KEY, b"0")
        dbs[1].put(b"a", b"1")  # the local database already holds offset 0
        spans = {(topic, 0): Span(dbs[0], OFFSET_KEY, -1, len(p0) - 1),
                 (topic, 1): Span(dbs[1], OFFSET_KEY, 0, len(p1) - 1)}
        done = asyncio.run(restore(spans, {"bootstrap_servers": broker.bootstrap}, time_limit_s=120))
        assert done.offsets == {(topic, 0): len(p0) - 1, (topic, 1): len(p1) - 1}
        assert done.records == len(p0) + len(p1) - 1
        want0: dict[bytes, bytes] = {}
        for k, v in p0:
            if v is None:
                want0.pop(k, None)
            else:
                want0[k] = v
        got0 = {k: v for k, v in dbs[0].items() if k != OFFSET_KEY}
        assert got0 == want0
        assert dbs[0][OFFSET_KEY] == str(len(p0) - 1).encode()
        assert {k: v for k, v in dbs[1].items()} == {b"a": b"3", b"b": b"2", OFFSET_KEY: b"2"}  # not "late"
    finally:
        for db in dbs:
            db.close()
    # flushed: a reopened database has it all, though it was written without the WAL
    again = _db(tmp_path / "p0")
    try:
        assert again[OFFSET_KEY] == str(len(p0) - 1).encode() and again.get(b"k0001") is None
    finally:
        again.close()


def test_restore_with_no_time_left_leaves_everything_to_faust(broker, tmp_path: Path) -> None:
    topic = "t-restore-late"
    _create(broker.bootstrap, topic, 1)
    asyncio.run(_produce(broker.bootstrap, topic, 0, [(b"a", b"1")]))
    db = _db(tmp_path / "p0")
    try:
        done = asyncio.run(restore({(topic, 0): Span(db, OFFSET_KEY, -1, 0)}, {"bootstrap_servers": broker.bootstrap},
                                   time_limit_s=0))
        assert done.offsets == {(topic, 0): -1} and db.get(b"a") is None and db.get(OFFSET_KEY) is None
    finally:
        db.close()


def test_changelog_records_go_as_batches_and_the_last_offset_is_the_partitions_last(broker) -> None:
    """send_records: many records over several batches; base offset + records - 1 of the last
    batch is the offset of the last record (what the worker persists as its changelog offset)."""
    topic = "t-batches"
    _create(broker.bootstrap, topic, 2)

    async def go() -> tuple:
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_batch_size=16 * 1024)
        await p.start()
        try:
            await _produce(broker.bootstrap, topic, 1, [(b"before", b"x")] * 3)  # offsets do not start at 0
            records = [(b"k%d" % i, b"v" * 700) for i in range(100)]  # ~70 kB: several 16 kB batches
            futs, last_n = await send_records(p, topic, 1, records)
            metas = await asyncio.gather(*futs)
            c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
            await c.start()
            try:
                tp = TopicPartition(topic, 1)
                c.assign([tp])
                end = (await c.end_offsets([tp]))[tp]
                got: list[tuple[bytes, bytes]] = []
                while len(got) < 103:
                    for msgs in (await c.getmany(timeout_ms=1000)).values():
                        got += [(m.key, m.value) for m in msgs]
            finally:
                await c.stop()
            return len(futs), metas[-1].offset + last_n - 1, end, got[3:], records
        finally:
            await p.stop()

    batches, last, end, got, records = asyncio.run(go())
    assert batches > 1
    assert last == end - 1 == 102
    assert got == records  # in order


def test_the_faust_recovery_hook_still_fits_faust() -> None:
    """Fails when faust changes what the bulk restore hooks into (workers/stream/faust_internals.py)."""
    import faust
    from faust.tables.recovery import Recovery
    from faust.transport.drivers.aiokafka import Producer

    faust_internals.install()
    params = list(inspect.signature(Recovery._build_offsets).parameters)
    assert params == ["self", "consumer", "tps", "destination", "title"]
    src = inspect.getsource(Recovery)
    # called for the actives once their highwaters are known, and before faust seeks to its offsets
    assert src.index("_build_highwaters") < src.index('assigned_active_tps, active_offsets, "active"') \
        < src.index("_seek_offsets")
    for attr in ("self.tp_to_table", "self.active_highwaters"):
        assert attr in src
    assert "_ensure_producer" in dir(Producer)
    assert "spinner" in inspect.getsource(faust.Worker._setup_spinner_handler)
    assert faust.__version__ == faust_internals.FAUST_CHECKED
