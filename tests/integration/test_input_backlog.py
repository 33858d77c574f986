"""Input on the embedded broker: a backlog is kept until applied, applied input is deleted
(workers/kafka/input_purge.py), another group's offset holds the cut back.

Before, the input topics had a 4 MiB byte retention per partition: a producer that ran 12 MiB ahead of a
worker lost two thirds of its events (the broker's retention acts within a second), with a warning."""
from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import TopicPartition

from tests.helpers import send_raw, wait_until
from workers.kafka.topics import topics
from workers.stream.provision import ensure_topics
from workers.stream.settings import Settings

pytestmark = pytest.mark.integration

_EVENTS = 1600  # ~8 KB each (384 floats as JSON): ~12.5 MiB on one partition, three times the old cap


def _events(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [orjson.dumps({"session_key": "s", "model": "m", "quality": float(q), "now_ms": 1_700_000_000_000 + i,
                          "embedding": rng.standard_normal(384).astype(np.float32).tolist()})
            for i, q in enumerate(rng.uniform(0, 1, n))]


async def _log_start(bootstrap: str, topic: str, partition: int) -> int:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await c.start()
    try:
        tp = TopicPartition(topic, partition)
        return (await c.beginning_offsets([tp]))[tp]
    finally:
        await c.stop()


async def _commit(bootstrap: str, group: str, topic: str, partition: int, offset: int) -> None:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        tp = TopicPartition(topic, partition)
        c.assign([tp])
        await c.commit({tp: offset})
    finally:
        await c.stop()


def test_a_backlog_past_the_old_cap_is_applied_whole_then_purged_up_to_every_groups_offset(
        broker, worker_factory) -> None:
    feedback = topics()["feedback"].name
    bs = broker.bootstrap
    w = worker_factory(partitions=1, env={"LEARNSTREAM_EMBEDDED_INPUT_PURGE_S": "1"}).start().wait_ready()
    assert w.dispatch("init_instant", {"session_key": "s", "targets": ["m", "n"], "dim": 384})["ok"]
    # another app's group reads the feedback topic too, and has got as far as offset 100
    reader = f"reader-{uuid.uuid4().hex[:6]}"
    asyncio.run(_commit(bs, reader, feedback, 0, 100))

    w.pause()  # the producer runs ahead of the worker
    try:
        send_raw(bs, feedback, b"s", _events(_EVENTS))
        time.sleep(3)  # what must not happen: the broker's retention (it acts within a second) deleting any
        assert asyncio.run(_log_start(bs, feedback, 0)) == 0  # the backlog is kept
    finally:
        w.resume()
    wait_until(lambda: w.metric("learnstream_events_total", topic=feedback, outcome="applied") >= _EVENTS, 120, 0.2,
               "the backlog applied")
    assert w.metric("learnstream_events_total", topic=feedback, outcome="applied") == _EVENTS
    assert w.metric("learnstream_input_deleted_unread_total", topic=feedback) == 0

    # applied input is deleted, but never past the other group's offset
    wait_until(lambda: asyncio.run(_log_start(bs, feedback, 0)) > 0, 30, 0.2, "the applied input purged")
    time.sleep(3)  # what must not happen: several more purge periods cutting past the reader's offset
    assert asyncio.run(_log_start(bs, feedback, 0)) == 100
    # once the reader has read it all, everything applied goes
    asyncio.run(_commit(bs, reader, feedback, 0, _EVENTS))
    assert wait_until(lambda: asyncio.run(_log_start(bs, feedback, 0)) == _EVENTS, 30, 0.2,
                      "the input purged to the end")
    assert w.metric("learnstream_input_purges_total", topic=feedback) >= 2
    assert w.dispatch("session_info", {"session_key": "s"})["ok"]


async def _retention_bytes(bootstrap: str, names: list[str]) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        got = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        out = {}
        for resp in got:
            for _, _, _, name, entries, *_ in resp.resources:
                out[name] = next((e[1] for e in entries if e[0] == "retention.bytes"), None)
        return out
    finally:
        await admin.close()


def test_input_topics_get_the_backlog_cap_other_topics_the_small_one_and_old_topics_are_updated(broker) -> None:
    names = [topics()["feedback"].name, topics()["dlq"].name]
    old = Settings(broker=broker.bootstrap, partitions=1, embedded_input_retention_bytes=4 << 20,
                   embedded_retention_bytes=4 << 20)
    asyncio.run(ensure_topics(old))  # as an older release made them
    assert asyncio.run(_retention_bytes(broker.bootstrap, names)) == {names[0]: str(4 << 20), names[1]: str(4 << 20)}
    asyncio.run(ensure_topics(Settings(broker=broker.bootstrap, partitions=1)))  # a worker of this one starts
    assert asyncio.run(_retention_bytes(broker.bootstrap, names)) == {names[0]: str(64 << 20), names[1]: str(4 << 20)}


@pytest.mark.parametrize("stopped_s", [2, 10])
def test_input_deleted_before_a_partitions_first_commit_is_counted_and_the_rest_applied(
        broker, worker_factory, stopped_s: float) -> None:
    """A partition the group has never committed on: input the cap deletes while the worker is stopped
    is reported (it was silent: the worker started at the log start it saw), and the rest is applied
    without waiting for new input. Stopped past the session timeout (6 s here) the worker rejoins its
    group; it then waited at the log's end until a new record came (the embedded broker answers a
    fetch below the log start from there)."""
    feedback = topics()["feedback"].name
    bs = broker.bootstrap
    w = worker_factory(partitions=1, env={"LEARNSTREAM_EMBEDDED_INPUT_RETENTION_BYTES": str(4 << 20)})
    w.start().wait_ready()
    assert w.dispatch("init_instant", {"session_key": "s", "targets": ["m", "n"], "dim": 384})["ok"]  # commands
    w.pause()
    try:
        send_raw(bs, feedback, b"s", _events(_EVENTS))
        deleted = wait_until(lambda: asyncio.run(_log_start(bs, feedback, 0)), 30, 0.2,
                             "the cap deleting unread input")
        time.sleep(stopped_s)  # the worker stays stopped this long (past the session timeout: a rejoin)
        deleted = asyncio.run(_log_start(bs, feedback, 0))
    finally:
        w.resume()
    wait_until(lambda: w.metric("learnstream_events_total", topic=feedback, outcome="applied") >= _EVENTS - deleted,
               60, 0.2, "the rest applied, with no new input")
    assert w.metric("learnstream_events_total", topic=feedback, outcome="applied") == _EVENTS - deleted
    assert w.metric("learnstream_input_deleted_unread_total", topic=feedback) == deleted
