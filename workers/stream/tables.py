"""Session state on faust tables (``learnstream://``: rocksdict, compacted changelogs).

A session's keys (``workers.state.layout``) are written by :meth:`FaustStateAccess.write`
the way faust writes one table key, for many keys at once: one RocksDB write batch on the
partition's database (atomic), then one changelog record per key, in the batch's order, on
the same partition. faust flushes the producer before it commits the source offsets, and
records each changelog offset as the table's persisted offset once it is acknowledged.

The graph table is written key by key through faust (``FaustGraphStore``), which writes to
the *current event's* partition: each write runs inside :func:`event_context` of an event
from the right partition.
"""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from rocksdict import WriteBatch

from faust.streams import _current_event  # the context var faust's tables read

from workers.state.base import ModelStore
from workers.state.rocksdb import iter_prefix
from workers.state.access import StateAccess

__all__ = ("FaustStateAccess", "FaustGraphStore", "event_context", "TABLE_NAMES")

# table name in faust (and in its changelog topic) per verb table
TABLE_NAMES = {"session": "sessions", "learner": "learners", "agent": "agents", "memory": "memories",
               "graph": "graph"}


@contextlib.contextmanager
def event_context(event: Any) -> Iterator[None]:
    token = _current_event.set(weakref.ref(event) if event is not None else None)
    try:
        yield
    finally:
        _current_event.reset(token)


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
        return self.table.data._db_for_partition(self.partition)

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

    def _db(self, table: str, partition: int) -> Any:
        return self.tables[table].data._db_for_partition(partition)

    def get(self, table: str, partition: int, key: bytes) -> bytes | None:
        return self._db(table, partition).get(key)

    def scan(self, table: str, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter_prefix(self._db(table, partition), prefix)

    def write(self, table: str, partition: int, ops: Mapping[bytes, bytes | None]) -> None:
        t = self.tables[table]
        wb = WriteBatch(raw_mode=True)
        for k, v in ops.items():
            if v is None:
                wb.delete(k)
            else:
                wb.put(k, v)
        self._db(table, partition).write(wb)
        for k, v in ops.items():  # in order: pieces, then the head, then deletes (see workers.state.layout)
            t.send_changelog(partition, k, v, key_serializer="raw", value_serializer="raw")

    def graph_store(self, partition: int) -> ModelStore:
        return FaustGraphStore(self.tables["graph"], partition, self.events.get(partition))
