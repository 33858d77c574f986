"""What the embedded broker (noida-db 0.2.3) needs that Apache Kafka does not: topic configs that bound it.

Switched on only for the embedded broker (``LEARNSTREAM_BROKER_KIND=embedded``). It passes the
whole conformance suite (``tests/broker``), so no protocol workaround is needed; its one defect for
a long-running local worker is memory. It keeps the retained log in memory (and snapshots it to
disk), and, like Kafka, it compacts or deletes only closed segments. Kafka's defaults (1 GiB or 7-day
segments, 7- to 30-day or infinite retention) would keep everything a local worker ever wrote. So every
topic the worker creates on it gets:

- small segments (``segment.bytes``, ``segment.ms``), so compaction keeps each changelog near its
  live state and retention can drop old input;
- on delete-policy topics (inputs, downstream, DLQ), ``retention.bytes`` per partition
  (``LEARNSTREAM_EMBEDDED_RETENTION_BYTES``): a bounded local history. State does not depend on it:
  it lives in the compacted changelogs.

``tests/unit/test_broker.py`` shows the broker's memory dropping with these configs and not without.
"""
from __future__ import annotations

__all__ = ("topic_configs", "SEGMENT_BYTES", "SEGMENT_MS")

# Segments this small roll often enough that compaction and retention run within a minute, and
# cost nothing measurable in throughput (bench/README.md, "broker_soak").
SEGMENT_BYTES = 8 * 1024 * 1024
SEGMENT_MS = 60_000


def topic_configs(cleanup_policy: str, retention_bytes: int) -> dict[str, str]:
    """Extra topic configs for a topic of ``cleanup_policy`` created on the embedded broker."""
    out = {"segment.bytes": str(SEGMENT_BYTES), "segment.ms": str(SEGMENT_MS)}
    if "delete" in cleanup_policy and retention_bytes > 0:
        out["retention.bytes"] = str(retention_bytes)
    return out
