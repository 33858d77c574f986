"""The tables' RocksDB store: faust's, with RocksDB's write-ahead log on (unsynced).

Local state must be useful after a crash, or every SIGKILL replays the whole changelog.
With the WAL off (this store's earlier choice, when a session was one ~115 kB value and
the WAL made each put ~8x slower), memtables only reach disk when they fill, so a worker
killed after a 10-minute soak had 1.4 MB on disk and replayed everything. Now a session's
write is its changed keys (a few kB, ``workers.state.layout``), the WAL costs little, and
it is written (not fsynced) with every batch: a killed *process* loses nothing the OS
already has, so the database, faust's persisted changelog offsets included, is as of the
last write, and recovery replays only the changelog records after those offsets
(bench/README.md, "restore"). A power loss may still lose the unsynced tail, which the
changelog replays: the database stays consistent with its own offsets either way, because
RocksDB recovers a prefix of the WAL and offsets are written after the data they cover.
Registered as the ``learnstream://`` store URL (entry point ``faust.stores``).
"""
from __future__ import annotations

from typing import Any

import rocksdict
from faust.stores import rocksdb

__all__ = ("Store",)

_OFFSET_KEY = b"__faust\0offset__"  # rocksdb.Store.offset_key


class Store(rocksdb.Store):
    """``rocksdb.Store`` whose partition DBs write through the WAL without fsync (rocksdict driver)."""

    def _open_for_partition(self, partition: int) -> Any:
        db = super()._open_for_partition(partition)
        if self.use_rocksdict:
            opts = rocksdict.WriteOptions()
            opts.disable_wal = False
            opts.sync = False
            db.set_write_options(opts)
        return db

    def drop_partition(self, partition: int) -> int:
        """Delete every key of one partition's database, its persisted changelog offset included, so
        recovery rebuilds it from the changelog; returns how many keys were deleted."""
        db = self._db_for_partition(partition)
        keys = list(db.keys())
        for key in keys:
            del db[key]
        self._key_index.clear()  # key -> partition lookups may name this partition's keys
        return len(keys)
