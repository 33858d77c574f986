"""What flows through a worker: consumed records and what they produce."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ("Record", "Produce", "record_id")


class Record(NamedTuple):
    """One consumed Kafka message, independent of faust (a tuple: one is built per message)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
    # (partition, offset) where a re-routed copy was first written (workers/stream/partitioning.py)
    origin: tuple[int, int] | None = None

    @property
    def mark(self) -> tuple[str, int, int]:
        """Where the watermark counts this record: a re-routed copy counts at its origin, so a
        second copy of the same event (a re-route redelivered after a crash) is a duplicate."""
        if self.origin is None:
            return self.topic, self.partition, self.offset
        return self.topic, self.origin[0], self.origin[1]

    @property
    def source(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "timestamp_ms": self.timestamp_ms}


@dataclass(frozen=True, slots=True)
class Produce:
    """One message to send downstream (topic role, key, JSON-able value)."""

    role: str
    key: str
    value: dict


def record_id(rec: Record, n: int = 0) -> str:
    """Deterministic id of the n-th downstream event caused by ``rec``: consumers dedup on it."""
    base = f"{rec.topic}:{rec.partition}:{rec.offset}"
    return base if n == 0 else f"{base}:{n}"
