"""Do the local tables belong to the log this worker consumes? Checked before faust opens them.

The RocksDB tables are a cache of their changelog topics, and every session value carries the
watermark (source offsets) of the input log it has applied. Both are only valid against the log
they came from. If that log is gone (the broker's data deleted, another cluster, topics
recreated), keeping the tables would crash faust's recovery (``ConsistencyError: persisted offset
... is higher than the last offset``, in a loop) or, worse, skip the new log's first events as
"duplicates" of the old one's offsets.

So at start-up: a table partition whose persisted changelog offset is at or beyond its changelog's
end offset, or a data dir last used with another Kafka cluster id, means the tables belong to
another log. They are moved aside (never deleted) to ``<data_dir>/stale-tables-<UTC time>`` with a
WARNING saying so, and the worker rebuilds its state from the changelogs it finds, then applies
every event of the input topics from the group's committed offsets.

While running, the log can also fall behind the tables: a broker that acknowledged writes and
lost them (noida-db killed with SIGKILL loses up to its last ~1 s, README "The embedded broker").
When the broker is back, faust's recovery finds a table partition's persisted offset past its
changelog's end and would crash (``ConsistencyError``). :func:`~workers.stream.faust_internals.install_truncation_recovery`
makes it rebuild that partition from the changelog instead, with an ERROR naming the lost offsets: the
state then matches the log again (the lost writes are lost with their effects, never half), the
watermarks it rebuilds let the input records that reuse the lost offsets be applied, and nothing
the log still holds is applied twice.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import orjson
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka.protocol.metadata import MetadataRequest

from workers.kafka.clients import started

__all__ = ("ensure_tables_match_log", "stale_tables", "cluster_id")

logger = logging.getLogger(__name__)

_MARKER = "log-identity.json"
_OFFSET_KEY = b"__faust\0offset__"  # faust.stores.rocksdb.Store.offset_key
_DB_NAME = re.compile(r"^(?P<table>.+)-(?P<partition>\d+)\.db$")


async def cluster_id(bootstrap: str, **kafka: object) -> str | None:
    """The cluster id of a Metadata (v2+) response, or None when the broker sends none."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, **kafka)
    try:
        await client.bootstrap()
        node = next(iter(client.cluster.brokers())).nodeId
        resp = await client.send(node, MetadataRequest([]))  # the negotiated version (v2+ has cluster_id)
        return getattr(resp, "cluster_id", None) or None
    finally:
        await client.close()


def _persisted_offset(db_path: Path) -> int | None:
    from rocksdict import AccessType, Options, Rdict

    db = Rdict(str(db_path), Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        raw = db.get(_OFFSET_KEY)
    finally:
        db.close()
    return int(raw) if raw is not None else None


async def _end_offsets(bootstrap: str, tps: list[TopicPartition], **kafka: object) -> dict[TopicPartition, int]:
    c = await started(AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **kafka))
    try:
        return await c.end_offsets(tps) if tps else {}
    finally:
        await c.stop()


async def stale_tables(tabledir: Path, changelogs: Mapping[str, str], bootstrap: str,
                       **kafka: object) -> list[str]:
    """Reasons the tables in ``tabledir`` are ahead of their changelogs (``changelogs``: table -> topic)."""
    found: dict[TopicPartition, tuple[Path, int]] = {}
    for db in sorted(tabledir.glob("*.db")) if tabledir.is_dir() else []:
        m = _DB_NAME.match(db.name)
        topic = changelogs.get(m["table"]) if m else None
        if topic is None:
            continue
        offset = _persisted_offset(db)
        if offset is not None:
            found[TopicPartition(topic, int(m["partition"]))] = (db, offset)
    if not found:
        return []
    ends = await _end_offsets(bootstrap, list(found), **kafka)
    return [f"{db.name} holds changelog records up to offset {offset} but {tp.topic}[{tp.partition}] holds "
            f"{_last(ends.get(tp, 0))}" for tp, (db, offset) in found.items() if offset >= ends.get(tp, 0)]


def _last(end: int) -> str:
    """A log's last offset, from its end offset (one past it), in words."""
    return "no record" if end <= 0 else f"records up to offset {end - 1}"


async def ensure_tables_match_log(data_dir: Path, tabledir: Path, changelogs: Mapping[str, str], bootstrap: str,
                                  **kafka: object) -> Path | None:
    """Move the tables aside when they belong to another log; return where they went (None: kept)."""
    marker = data_dir / _MARKER
    current = await cluster_id(bootstrap, **kafka)
    reasons: list[str] = []
    if marker.exists():
        before = orjson.loads(marker.read_bytes()).get("cluster_id")
        if before and current and before != current:
            reasons.append(f"the data dir was last used with Kafka cluster {before}, this broker is {current}")
    if not reasons:
        reasons = await stale_tables(tabledir, changelogs, bootstrap, **kafka)
    moved = None
    if reasons and tabledir.is_dir() and any(tabledir.iterdir()):
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        moved = data_dir / f"stale-tables-{stamp}"
        shutil.move(str(tabledir), str(moved))
        logger.warning(
            "local tables belong to another log (%s%s); moved them to %s and rebuilding state from the "
            "changelogs of %s. Nothing was deleted: to keep the old state, point the worker at the log it came "
            "from and move the directory back.", "; ".join(reasons[:3]),
            f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "", moved, bootstrap)
    data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(orjson.dumps({"cluster_id": current, "bootstrap": bootstrap}))
    return moved

