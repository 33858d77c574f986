"""Session state on faust tables (``rocksdb://`` via rocksdict, compacted changelogs).

faust writes a table value to the local RocksDB of, and the changelog partition
of, the *current event's* partition. A batch holds events of many partitions, so
each write runs inside :func:`event_context` of an event from the right partition.
"""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

from faust.streams import _current_event  # the context var faust's tables read

from workers.state.base import ModelStore
from workers.state.rocksdb import iter_prefix
from workers.stream.processor import StateAccess

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

    def load(self, table: str, session_key: str, partition: int) -> bytes | None:
        t = self.tables[table]
        return t.data._db_for_partition(partition).get(session_key.encode())

    def save(self, table: str, session_key: str, partition: int, value: bytes) -> None:
        event = self.events.get(partition)
        if event is None:
            raise RuntimeError(f"no event of partition {partition} in this batch to write under")
        with event_context(event):
            self.tables[table][session_key] = value

    def graph_store(self, partition: int) -> ModelStore:
        return FaustGraphStore(self.tables["graph"], partition, self.events.get(partition))
