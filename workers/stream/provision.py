"""Creating and checking topics from ``topics/*.yaml`` (``learnstream topics create|list``).

Workers run this before faust starts: a broker that auto-creates topics with its
own partition count would otherwise break co-partitioning, and faust then crashes
with PartitionsMismatch long after start-up. On the embedded broker the tables'
changelog topics are created here too, with the configs that bound its memory
(:mod:`workers.kafka.broker_compat`); on Kafka faust creates them.
"""
from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from workers.kafka import broker_compat
from workers.errors import ConfigError
from workers.stream.settings import Settings
from workers.stream.tables import TABLE_NAMES
from workers.kafka.topics import topics

__all__ = ("ensure_topics", "describe_topics", "ensure_topics_sync")


def _admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.broker, **settings.kafka_kwargs())


async def describe_topics(settings: Settings) -> dict[str, int]:
    """Existing topics and their partition counts."""
    admin = _admin(settings)
    try:
        await admin.start()
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
    new = [NewTopic(name, n, settings.replication, topic_configs=_configs(settings, t.config()))
           for name, (n, t) in wanted.items() if name not in existing]
    if settings.broker_kind == "embedded":
        new += [NewTopic(name, settings.partitions, settings.replication,
                         topic_configs=changelog_configs(settings))
                for name in changelog_topics(settings) if name not in existing]
    if new:
        admin = _admin(settings)
        try:
            await admin.start()
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


def changelog_topics(settings: Settings) -> list[str]:
    """The tables' changelog topics, as faust names them (``<app id>-<table>-changelog``)."""
    return [f"{settings.app_id}-{name}-changelog" for name in TABLE_NAMES.values()]


def changelog_configs(settings: Settings) -> dict[str, str]:
    """Configs of a changelog topic the worker creates on the embedded broker."""
    configs = _configs(settings, {"cleanup.policy": "compact"})
    if settings.rewrites_changelogs:
        configs.update(broker_compat.REWRITTEN_CHANGELOG_CONFIGS)  # DeleteRecords allowed, nothing else deleted
    return configs


def _configs(settings: Settings, configs: dict[str, str]) -> dict[str, str]:
    if settings.broker_kind != "embedded":
        return configs
    return {**configs, **broker_compat.topic_configs(configs["cleanup.policy"], settings.embedded_retention_bytes)}


def ensure_topics_sync(settings: Settings) -> dict[str, int]:
    return asyncio.run(ensure_topics(settings))
