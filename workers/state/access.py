"""Where the session state of one worker (or one in-process session) is read and written.

:class:`StateAccess` is partition-aware: a worker's tables hold one RocksDB per partition
and a changelog partition each. A session's keys (``workers.state.layout``) are read with
one head ``get``, then point gets of the pieces before its replay rows (a row when a kernel
replays it) and a prefix scan per part read whole, and written with :meth:`StateAccess.write`:
one atomic batch per session, produced to the changelog in the batch's order.
"""
from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping

from workers.state.base import ModelStore

__all__ = ("StateAccess", "StoreStateAccess", "state_key")


def state_key(table: str, session_key: str) -> bytes:
    """Store key of a session's head in a shared :class:`ModelStore`, or the key prefix of its graph."""
    return f"{table}\x1f{session_key}\x1f".encode() if table == "graph" else f"{table}\x1f{session_key}".encode()


class StateAccess(abc.ABC):
    """Session keys by table and partition (faust tables, or one ModelStore)."""

    def base_key(self, table: str, session_key: str) -> bytes:
        """The key of a session's head in ``table``; its pieces follow it, after a separator."""
        return session_key.encode()

    @abc.abstractmethod
    def get(self, table: str, partition: int, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def scan(self, table: str, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Items whose key starts with ``prefix``, in key order."""

    @abc.abstractmethod
    def write(self, table: str, partition: int, base: bytes, ops: Mapping[bytes, bytes | None]) -> None:
        """Puts (value) and deletes (None) of the session at ``base`` as one atomic batch,
        replicated in ``ops``' order."""

    def pending(self, table: str, base: bytes) -> bool:
        """True while a write of this session is not yet readable from the store (the cache must keep it)."""
        return False

    @abc.abstractmethod
    def graph_store(self, partition: int) -> ModelStore: ...


class StoreStateAccess(StateAccess):
    """StateAccess over one ModelStore (``LearnSession``, tests, single-process replays)."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def base_key(self, table: str, session_key: str) -> bytes:
        return state_key(table, session_key)

    def get(self, table: str, partition: int, key: bytes) -> bytes | None:
        return self.store.get(key)

    def scan(self, table: str, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self.store.iter_prefix(prefix)

    def write(self, table: str, partition: int, base: bytes, ops: Mapping[bytes, bytes | None]) -> None:
        self.store.write_batch(ops)

    def graph_store(self, partition: int) -> ModelStore:
        return self.store
