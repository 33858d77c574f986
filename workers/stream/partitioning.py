"""Which partition owns a session, and what to do with an event that arrived on another one.

All state of a session lives with the partition that owns its ``session_key``: murmur2 of the key
bytes, modulo the partition count (Kafka's Java client and aiokafka default partitioner). A client
using another partitioner (librdkafka's default ``consistent_random`` is CRC32: ``confluent-kafka``,
``kcat``, most non-Java clients) puts keyed events on other partitions. Applied there, they would
land in a table partition nobody reads the session from again after a rebalance or restart: learning
silently lost. So such an event is never applied where it arrived: it is re-written, unchanged, to the
owning partition with a header naming where it first arrived, and the copy is applied there. The
processor counts a copy's watermark at its origin, so a re-route repeated after a crash is a duplicate.
A copy that arrives on a wrong partition again (the partition count differs from the producer's) goes
to the DLQ as ``wrong_partition`` instead of bouncing.

The header is trusted only where a re-route could have written it: a copy is always on another partition
than its origin, so an origin on the record's own partition, outside the topic's partitions or
unreadable is a header some other producer wrote (by hand, or copied with the record by a mirroring
tool). Counted at that origin, such a record moved the session's watermark of its own partition past
every later event, which were then dropped as duplicates; it goes to the DLQ as ``invalid`` instead.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from aiokafka.partitioner import murmur2

from workers.stream.records import Record

__all__ = ("ORIGIN_HEADER", "UNREADABLE", "owner_partition", "origin_of", "split", "bad_origin")

ORIGIN_HEADER = "learnstream-origin"
# what origin_of gives for a header that is there but not "<partition>:<offset>"
UNREADABLE = (-1, -1)
# aiokafka's murmur2 is pure Python (~3 µs for a short key) and runs for every consumed event;
# sessions repeat, so their owners are remembered.
_OWNER_CACHE = 1 << 16


def owner_partition(session_key: str | bytes, partitions: int) -> int:
    """The partition that owns ``session_key`` (Kafka's default murmur2 partitioner)."""
    return _owner(session_key.encode() if isinstance(session_key, str) else session_key, partitions)


@functools.lru_cache(maxsize=_OWNER_CACHE)
def _owner(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def origin_of(headers: Any) -> tuple[int, int] | None:
    """(partition, offset) of the ``learnstream-origin`` header, None without one, ``UNREADABLE`` when it
    is not ``<partition>:<offset>`` (:func:`bad_origin` says so)."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for name, value in items:
        if name == ORIGIN_HEADER:
            try:
                partition, offset = (value.decode() if isinstance(value, bytes) else value).split(":")
                return int(partition), int(offset)
            except (ValueError, UnicodeDecodeError, AttributeError):
                return UNREADABLE
    return None


def bad_origin(rec: Record, partitions: int) -> str | None:
    """Why ``rec``'s origin header cannot be a re-route's (module doc), or None."""
    if rec.origin is None:
        return None
    partition, offset = rec.origin
    if rec.origin == UNREADABLE:
        problem = "is not <partition>:<offset>"
    elif partition == rec.partition:
        problem = f"names the partition the record is on ({partition})"
    elif not 0 <= partition < partitions:
        problem = f"names partition {partition}, which the topic does not have (0..{partitions - 1})"
    elif offset < 0:
        problem = f"names a negative offset ({offset})"
    else:
        return None
    return (f"header {ORIGIN_HEADER!r} {problem}: only a worker writes it, on a copy of an event it moves to "
            f"the partition that owns the key; send the event without it")


def _utf8(key: bytes) -> bool:
    try:
        key.decode()
    except UnicodeDecodeError:
        return False
    return True


def split(records: Iterable[Record], partitions: int
          ) -> tuple[list[Record], list[tuple[Record, int]], list[Record], list[tuple[Record, str]]]:
    """(records to apply here, (record, owning partition) to re-route, re-routed copies still misplaced,
    (record, why) of those whose origin header no re-route wrote).

    Keyless and non-UTF-8 keys stay with the processor, which rejects them with their own reason.
    """
    here: list[Record] = []
    reroute: list[tuple[Record, int]] = []
    misplaced: list[Record] = []
    forged: list[tuple[Record, str]] = []
    for rec in records:
        if rec.origin is not None:
            why = bad_origin(rec, partitions)
            if why is not None:
                forged.append((rec, why))
                continue
        if rec.key is None or not _utf8(rec.key):
            here.append(rec)
            continue
        owner = owner_partition(rec.key, partitions)
        if owner == rec.partition:
            here.append(rec)
        elif rec.origin is None:
            reroute.append((rec, owner))
        else:
            misplaced.append(rec)
    return here, reroute, misplaced, forged
