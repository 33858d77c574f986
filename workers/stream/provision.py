"""Creating and checking topics from ``topics/*.yaml`` (``learnstream topics create|list``).

Workers run this before faust starts: a broker that auto-creates topics (Tansu
does, with its own partition count) would otherwise break co-partitioning, and
faust then crashes with PartitionsMismatch long after start-up.
"""
from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from workers.errors import ConfigError
from workers.stream.settings import Settings
from workers.topics import topics

__all__ = ("ensure_topics", "describe_topics", "ensure_topics_sync")

logger = logging.getLogger(__name__)


def _admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.broker, **settings.kafka_kwargs())


async def describe_topics(settings: Settings) -> dict[str, int]:
    """Existing topics and their partition counts."""
    admin = _admin(settings)
    await admin.start()
    try:
        names = await admin.list_topics()
        if not names:
            return {}
        meta = await admin.describe_topics(list(names))
        return {m["topic"]: len(m["partitions"]) for m in meta if not m.get("error_code")}
    finally:
        await admin.close()


async def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create missing topics; refuse input topics whose partition count differs."""
    wanted = {t.name: (t.partitions or settings.partitions, t) for t in topics().values()}
    existing = await describe_topics(settings)
    new = [NewTopic(name, n, settings.replication, topic_configs=t.config())
           for name, (n, t) in wanted.items() if name not in existing]
    if new:
        admin = _admin(settings)
        await admin.start()
        try:
            await admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass  # another worker won the race
        finally:
            await admin.close()
        existing = await describe_topics(settings)
    for name, (n, t) in wanted.items():
        have = existing.get(name)
        if have is None:
            raise ConfigError(f"topic {name} could not be created")
        if t.kind == "input" and have != n:
            raise ConfigError(
                f"topic {name} has {have} partitions but LEARNSTREAM_PARTITIONS={n}: inputs must be "
                f"co-partitioned. Set LEARNSTREAM_PARTITIONS={have} or recreate the topic.")
    return {name: existing[name] for name in wanted}


def ensure_topics_sync(settings: Settings) -> dict[str, int]:
    return asyncio.run(ensure_topics(settings))
