"""Creating and checking topics from ``topics/*.yaml`` (``learnstream topics create|list``).

Workers run this before faust starts: a broker that auto-creates topics with its
own partition count would otherwise break co-partitioning, and faust then crashes
with PartitionsMismatch long after start-up. On the embedded broker the tables'
changelog topics are created here too, with the configs that bound its memory
(:mod:`workers.kafka.broker_compat`); on Kafka faust creates them.
"""
from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from workers.kafka import broker_compat
from workers.errors import ConfigError
from workers.stream.settings import Settings
from workers.stream.tables import TABLE_NAMES
from workers.kafka.topics import topics

__all__ = ("ensure_topics", "describe_topics", "ensure_topics_sync")

logger = logging.getLogger(__name__)


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
    new = [NewTopic(name, n, settings.replication, topic_configs=_configs(settings, t.config(), t.kind == "input"))
           for name, (n, t) in wanted.items() if name not in existing]
    if settings.broker_kind == "embedded":
        new += [NewTopic(name, settings.partitions, settings.replication,
                         topic_configs=changelog_configs(settings))
                for name in changelog_topics(settings) if name not in existing]
    made = {t.name for t in new}
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
    if settings.broker_kind == "embedded":
        await _refresh_configs(settings, {name: _configs(settings, t.config(), t.kind == "input")
                                          for name, (_, t) in wanted.items() if name in existing and name not in made})
    for name, (n, t) in wanted.items():
        have = existing.get(name)
        if have is None:
            raise ConfigError(f"topic {name} could not be created")
        if t.kind == "input" and have != n:
            raise ConfigError(
                f"topic {name} has {have} partitions but LEARNSTREAM_PARTITIONS={n}: inputs must be "
                f"co-partitioned. Set LEARNSTREAM_PARTITIONS={have} or recreate the topic.")
    return {name: existing[name] for name in wanted}


async def _refresh_configs(settings: Settings, configs: dict[str, dict[str, str]]) -> None:
    """Give existing topics of the embedded broker (the worker owns them) today's configs: one an older
    release made, or made under other retention settings, would keep them (an input topic's old 4 MiB
    cap dropped unread backlog). AlterConfigs replaces a topic's configs whole, as they are created."""
    if not configs:
        return
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = _admin(settings)
    try:
        await admin.start()
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, c) for name, c in configs.items()])
    except Exception as exc:  # noqa: BLE001 - they keep the configs they have: a longer or shorter history
        logger.warning("could not update the embedded broker's topic configs (%r); they keep their old ones", exc)
    finally:
        await admin.close()


def changelog_topics(settings: Settings) -> list[str]:
    """The tables' changelog topics, as faust names them (``<app id>-<table>-changelog``)."""
    return [f"{settings.app_id}-{name}-changelog" for name in TABLE_NAMES.values()]


def changelog_configs(settings: Settings) -> dict[str, str]:
    """Configs of a changelog topic the worker creates on the embedded broker."""
    configs = _configs(settings, {"cleanup.policy": "compact"})
    if settings.rewrites_changelogs:
        configs.update(broker_compat.REWRITTEN_CHANGELOG_CONFIGS)  # DeleteRecords allowed, nothing else deleted
    return configs


def _configs(settings: Settings, configs: dict[str, str], input_topic: bool = False) -> dict[str, str]:
    if settings.broker_kind != "embedded":
        return configs
    # inputs: a cap on unread backlog only, what was applied is purged (workers/kafka/input_purge.py)
    cap = settings.embedded_input_retention_bytes if input_topic else settings.embedded_retention_bytes
    return {**configs, **broker_compat.topic_configs(configs["cleanup.policy"], cap)}


def ensure_topics_sync(settings: Settings) -> dict[str, int]:
    return asyncio.run(ensure_topics(settings))
