"""Restoring the tables from their changelogs in bulk, before faust's own recovery.

faust recovers a table by turning every changelog record into a stream event and passing it
through its recovery loop (a queue, a ``wait_for``, offsets and highwater bookkeeping per
record): ~1 MB/s here, about 18 minutes for 10,000 sessions (~70 keys of ~1.5 kB each). A
session's keys need nothing of that: they are bytes to put in the partition's RocksDB in
changelog order. So when faust has computed, for each active changelog partition, where its
local database stands (the persisted offset) and where the changelog ends (the highwater),
:func:`restore` reads that range with a plain consumer in large fetches and writes each fetch
as one RocksDB write batch with its last offset as the persisted offset (the WAL skipped,
memtables flushed at the end). faust's recovery then starts where this stopped: nothing left,
or the rest if the time limit came first.

Safe to cut anywhere: every write batch holds a prefix of the partition's changelog and the
offset of its last record, so the database always stands at a changelog offset, and the
layout (``workers.state.layout``) reads a session cut mid-batch as before or after it. Without
the WAL a crash loses the memtables' tail, and with it the offset that covered it: recovery
restarts from the last flushed batch. Aborted transactions are skipped (``read_committed``).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from rocksdict import WriteBatch, WriteOptions

from workers.kafka.clients import started

__all__ = ("restore", "Span", "Restored")

logger = logging.getLogger(__name__)

# The embedded broker answered nothing within its request timeout to 8-16 MiB partition fetches of a
# 1.1 GB changelog (bench/README.md, "state"); 1 MiB per partition is what faust's recovery reads.
_FETCH_PARTITION_BYTES = 1024 * 1024
_FETCH_BYTES = 8 * 1024 * 1024
_MAX_RECORDS = 20_000


@dataclass
class Span:
    """One changelog partition to restore: records after ``start`` up to ``highwater`` (inclusive)."""

    db: Any            # the partition's Rdict
    offset_key: bytes  # where the table keeps its persisted changelog offset
    start: int         # last offset the database holds (-1: nothing)
    highwater: int     # last offset in the changelog


@dataclass
class Restored:
    offsets: dict[tuple[str, int], int]  # (topic, partition) -> last offset now held locally
    records: int
    bytes: int
    seconds: float


async def restore(spans: Mapping[tuple[str, int], Span], consumer_kwargs: Mapping[str, Any], *,
                  time_limit_s: float, clock: Callable[[], float] = time.monotonic) -> Restored:
    """Apply the changelog records of every span to its database; stops at the highwaters or after
    ``time_limit_s`` (what is left is faust's), and returns where each partition stands."""
    t0 = clock()
    todo = {tp: s for tp, s in spans.items() if s.highwater > s.start}
    done = {tp: s.start for tp, s in spans.items()}
    records = nbytes = 0
    if not todo or time_limit_s <= 0:
        return Restored(done, 0, 0, 0.0)
    consumer = AIOKafkaConsumer(enable_auto_commit=False, group_id=None, isolation_level="read_committed",
                                max_partition_fetch_bytes=_FETCH_PARTITION_BYTES, fetch_max_bytes=_FETCH_BYTES,
                                fetch_max_wait_ms=100, auto_offset_reset="earliest", **consumer_kwargs)
    await started(consumer)
    no_wal = WriteOptions()
    no_wal.disable_wal = True
    try:
        tps = {tp: TopicPartition(*tp) for tp in todo}
        consumer.assign(list(tps.values()))
        for tp, s in todo.items():
            consumer.seek(tps[tp], s.start + 1)
        while todo and clock() - t0 < time_limit_s:
            fetched = await consumer.getmany(*[tps[tp] for tp in todo], timeout_ms=500, max_records=_MAX_RECORDS)
            for ktp, msgs in fetched.items():
                tp = (ktp.topic, ktp.partition)
                s = todo.get(tp)
                if s is None:
                    continue
                wb = WriteBatch(raw_mode=True)
                last = None
                for m in msgs:
                    if m.offset > s.highwater:
                        break
                    if m.value is None:
                        wb.delete(m.key)
                    else:
                        wb.put(m.key, m.value)
                        nbytes += len(m.value)
                    nbytes += len(m.key or b"")
                    last = m.offset
                    records += 1
                if last is not None:
                    wb.put(s.offset_key, str(last).encode())
                    s.db.write(wb, no_wal)
                    done[tp] = last
            for tp in list(todo):
                if await consumer.position(tps[tp]) > todo[tp].highwater:  # read through (markers, compaction)
                    s = todo.pop(tp)
                    if done[tp] < s.highwater:
                        s.db.put(s.offset_key, str(s.highwater).encode(), no_wal)
                        done[tp] = s.highwater
    finally:
        await consumer.stop()
        for s in spans.values():
            s.db.flush(True)  # what was written without the WAL is on disk before anything builds on it
    secs = clock() - t0
    if todo:
        logger.warning("bulk restore stopped after %.0f s with %d partitions left to faust's recovery", secs,
                       len(todo))
    return Restored(done, records, nbytes, secs)
