"""Session state on faust tables (``learnstream://``: rocksdict, compacted changelogs).

A session's keys (``workers.state.layout``) are queued by :meth:`FaustStateAccess.write`:
one changelog record per key, in the batch's order, on the session's partition. The worker
produces them in the batch's transaction (workers/stream/transactions.py, as whole record batches; without transactions,
:meth:`FaustStateAccess.durable`); once it committed (or the broker acknowledged the last of
them), :meth:`FaustStateAccess.store` puts every session's keys of a table partition into its
RocksDB in one write batch together with the last record's offset as the table's persisted
changelog offset.

So the local database never holds a write its changelog lacks, and its persisted offset
covers exactly what it holds. After a crash, recovery replays the changelog after that
offset: only records newer than anything local, in order, which the layout makes safe to
cut anywhere. (Written the other way round, local first, a killed worker's database can be
ahead of its changelog, and replaying the older tail over it would mix two versions of a
session's keys.) Until the write is local, the session stays in the processor's cache
(:meth:`FaustStateAccess.pending`), which is what reads see anyway; the source offsets commit
in the same transaction as the records (or, without transactions, after faust's producer flush).

The graph table is written key by key through faust (``FaustGraphStore``), which writes to
the *current event's* partition: each write runs inside :func:`event_context` of an event
from the right partition.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from rocksdict import WriteBatch

from workers.state.base import ModelStore
from workers.state.rocksdb import iter_prefix
from workers.state.access import StateAccess
from workers.stream import faust_internals
from workers.stream.faust_internals import changelog_offset_key, event_context, partition_db

__all__ = ("FaustStateAccess", "FaustGraphStore", "TABLE_NAMES", "QueuedWrite", "send_records")

# one session's write: (verb table, partition, base key, [(key, value or None to delete)] in order)
QueuedWrite = tuple[str, int, bytes, list[tuple[bytes, "bytes | None"]]]

# table name in faust (and in its changelog topic) per verb table
TABLE_NAMES = {"session": "sessions", "learner": "learners", "agent": "agents", "memory": "memories",
               "graph": "graph"}


class _PartitionEvents:
    """Any event of each partition of the batch being processed (for event_context)."""

    def __init__(self) -> None:
        self.by_partition: dict[int, Any] = {}

    def get(self, partition: int) -> Any:
        return self.by_partition.get(partition)


class FaustGraphStore(ModelStore):
    """ModelStore over the ``graph`` table for one partition (prefix scans on its RocksDB)."""

    def __init__(self, table: Any, partition: int, event: Any) -> None:
        self.table, self.partition, self.event = table, partition, event

    def _db(self) -> Any:
        return partition_db(self.table, self.partition)

    def get(self, key: bytes) -> bytes | None:
        return self._db().get(key)

    def put(self, key: bytes, value: bytes) -> None:
        with event_context(self.event):
            self.table[key] = value

    def delete(self, key: bytes) -> None:
        with event_context(self.event):
            self.table.pop(key, None)

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter_prefix(self._db(), prefix)


class FaustStateAccess(StateAccess):
    def __init__(self, tables: dict[str, Any], partition_of_key: Any) -> None:
        self.tables = tables  # verb table -> faust Table
        self.events = _PartitionEvents()
        self.partition_of_key = partition_of_key  # session_key -> partition, for reads outside a batch
        self._pending: dict[tuple[str, bytes], int] = {}  # (table, base key) -> writes not yet local
        self._queued: list[QueuedWrite] = []
        self.producer = lambda: next(iter(tables.values())).app.producer  # the transport producer

    def _db(self, table: str, partition: int) -> Any:
        return partition_db(self.tables[table], partition)

    def get(self, table: str, partition: int, key: bytes) -> bytes | None:
        return self._db(table, partition).get(key)

    def scan(self, table: str, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter_prefix(self._db(table, partition), prefix)

    def write(self, table: str, partition: int, base: bytes, ops: Mapping[bytes, bytes | None]) -> None:
        """Queue the session's keys; :meth:`durable` produces and then stores them."""
        session = (table, base)
        self._pending[session] = self._pending.get(session, 0) + 1
        self._queued.append((table, partition, base, list(ops.items())))

    def pending(self, table: str, base: bytes) -> bool:
        return (table, base) in self._pending

    def take(self) -> list[QueuedWrite]:
        """The writes queued since the last call, in order (pieces, then the head, then deletes)."""
        queued, self._queued = self._queued, []
        return queued

    def changelog_topic(self, table: str) -> str:
        return self.tables[table].changelog_topic.get_topic_name()

    def store(self, writes: list[QueuedWrite], offset: int) -> None:
        """Write queued session writes of *one* table partition to its RocksDB in one write batch, in
        order, with ``offset`` (their last changelog record's) as the table's persisted changelog
        offset: their records are durable. One batch for all of them: a persisted offset never covers
        a write that is not in the database."""
        if not writes:
            return
        table, partition = writes[0][0], writes[0][1]
        wb = WriteBatch(raw_mode=True)
        for write in writes:
            if (write[0], write[1]) != (table, partition):
                raise ValueError("store(): writes of more than one table partition")
            for k, v in write[3]:
                if v is None:
                    wb.delete(k)
                else:
                    wb.put(k, v)
        wb.put(changelog_offset_key(self.tables[table]), str(offset).encode())
        self._db(table, partition).write(wb)
        for write in writes:
            self.drop(write)

    def drop(self, write: QueuedWrite) -> None:
        """The write is stored, or will not happen (its transaction aborted): one less pending for its session."""
        session = (write[0], write[2])
        left = self._pending[session] - 1
        if left:
            self._pending[session] = left
        else:
            del self._pending[session]

    async def durable(self) -> None:
        """Produce every queued write to its changelog, wait for the broker's acknowledgement, then
        write them to the partitions' RocksDBs: one write batch per table and partition, holding
        every session's keys of this batch in order and the partition's last changelog offset.

        Without transactions (``LEARNSTREAM_TRANSACTIONS=false``) the worker awaits this before it
        acks a batch, so no source offset is committed before the state it produced is in the
        changelog. The records go to the transport producer as whole record batches, per changelog
        partition in the queue's order (one session's pieces, then its head, then its deletes):
        thousands of sessions touched once each cost a few sends and a few RocksDB writes per batch,
        not several of each per session.
        """
        queued = self.take()
        if not queued:
            return
        by_tp: dict[tuple[str, int], list[QueuedWrite]] = {}
        for write in queued:
            by_tp.setdefault((write[0], write[1]), []).append(write)
        producer = faust_internals.kafka_producer(self.app)
        sent = []
        for (table, partition), writes in by_tp.items():
            topic = self.tables[table].changelog_topic.get_topic_name()
            sent.append(await send_records(producer, topic, partition, (kv for w in writes for kv in w[3])))
        acked = await asyncio.gather(*(asyncio.gather(*futs) for futs, _ in sent))
        for writes, (_, last_count), metas in zip(by_tp.values(), sent, acked, strict=True):
            # the offset of the partition's last record: its last batch's base offset + records - 1
            self.store(writes, metas[-1].offset + last_count - 1)

    def graph_store(self, partition: int) -> ModelStore:
        return FaustGraphStore(self.tables["graph"], partition, self.events.get(partition))

    @property
    def app(self) -> Any:
        return next(iter(self.tables.values())).app


async def send_records(producer: Any, topic: str, partition: int,
                        records: Iterable[tuple[bytes, bytes | None]]) -> tuple[list[asyncio.Future], int]:
    """Append ``records`` to record batches of one partition and send them in order; returns each
    batch's delivery future and the number of records in the last batch."""
    futures: list[asyncio.Future] = []
    batch, n = producer.create_batch(), 0
    for k, v in records:
        if batch.append(key=k, value=v, timestamp=None) is None:  # full: send it, start the next
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch, n = producer.create_batch(), 0
            if batch.append(key=k, value=v, timestamp=None) is None:
                raise ValueError(f"a changelog record of {len(k) + len(v or b'')} bytes does not fit a batch")
        n += 1
    futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures, n
