"""The gap guard's confirming fetch (KafkaProbe) against the real embedded broker."""
from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from workers.stream.gaps import KafkaProbe

pytestmark = pytest.mark.integration


async def _topic(bootstrap: str) -> str:
    name = f"gaps-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()
    return name


async def test_probe_finds_the_records_a_delivery_skipped(broker) -> None:
    topic = await _topic(broker.bootstrap)
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await p.start()
    try:
        offsets = [(await p.send_and_wait(topic, b"a", key=b"k")).offset for _ in range(4)]
    finally:
        await p.stop()
    assert offsets == [0, 1, 2, 3]
    group = f"g-{uuid.uuid4().hex[:6]}"
    c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        c.assign([TopicPartition(topic, 0)])
        await c.commit({TopicPartition(topic, 0): 2})
    finally:
        await c.stop()
    probe = KafkaProbe(broker.bootstrap)
    try:
        assert await probe.log_start(topic, 0) == 0
        assert await probe.committed(group, topic, 0) == 2
        assert await probe.committed(f"{group}-none", topic, 0) is None
        assert await probe.first_record(topic, 0, 0, 3) == 0  # 3 delivered while 0 was next: 0 is there
        assert await probe.first_record(topic, 0, 2, 3) == 2
        assert await probe.first_record(topic, 0, 3, 3) is None  # nothing below 3 from 3 on
    finally:
        await probe.close()


async def test_probe_confirms_that_a_transaction_marker_holds_no_record(broker) -> None:
    topic = await _topic(broker.bootstrap)
    plain = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    txn = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=f"t-{uuid.uuid4().hex[:6]}")
    await plain.start()
    try:
        try:
            await txn.start()
        except KafkaError as exc:
            await txn.stop()
            pytest.skip(f"this broker has no transactions ({exc!r}; workers/kafka/broker_compat.py); "
                        "runs against Apache Kafka (LEARNSTREAM_BROKER)")
        try:
            async with txn.transaction():
                t1 = (await txn.send_and_wait(topic, b"t", key=b"k")).offset
            after = (await plain.send_and_wait(topic, b"b", key=b"k")).offset  # the commit marker lies between
        finally:
            await txn.stop()
    finally:
        await plain.stop()
    assert after == t1 + 2
    probe = KafkaProbe(broker.bootstrap)
    try:
        assert await probe.first_record(topic, 0, t1, after) == t1
        assert await probe.first_record(topic, 0, t1 + 1, after) is None  # the marker: nothing to re-read
    finally:
        await probe.close()


async def test_probe_sees_records_deleted_before_they_were_consumed(broker) -> None:
    """Retention (or DeleteRecords) can drop input a worker has not consumed yet: the log start moves
    past the guard's next offset. Nothing is there to re-read; the probe must say so at once, not wait
    for a record that will never come (the guard then failed the batch on every retry)."""
    from aiokafka.admin import RecordsToDelete

    topic = await _topic(broker.bootstrap)
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await p.start()
    try:
        for _ in range(6):
            await p.send_and_wait(topic, b"a", key=b"k")
    finally:
        await p.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=4)})
    finally:
        await admin.close()
    probe = KafkaProbe(broker.bootstrap)
    try:
        assert await probe.log_start(topic, 0) == 4
        assert await probe.first_record(topic, 0, 1, 5) == 4  # 1..3 are gone: the first record there is 4
        assert await probe.first_record(topic, 0, 1, 4) is None  # and below 4 nothing is left
    finally:
        await probe.close()


async def test_callers_at_once_share_one_probe_consumer_and_one_admin(broker) -> None:
    """A restarted worker asks the probe for log starts from several partitions at once, before any
    consumer exists: each used to start its own, and the one overwritten was collected unclosed
    (ERROR "Unclosed AIOKafkaConsumer" in a user trial's log)."""
    import asyncio
    import gc

    topic = await _topic(broker.bootstrap)
    unclosed: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unclosed.append(context.get("message", "")))
    probe = KafkaProbe(broker.bootstrap)
    try:
        assert await asyncio.gather(*(probe.log_start(topic, 0) for _ in range(4)), probe.log_end(topic, 0)) == [0] * 5
        admins = await asyncio.gather(*(probe._admin_client() for _ in range(3)))
        assert all(a is admins[0] for a in admins)
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
        assert [m for m in unclosed if "Unclosed" in m] == []
    finally:
        loop.set_exception_handler(None)
        await probe.close()
