"""The tables' RocksDB store: faust's, without RocksDB's write-ahead log.

The changelog topic is the log of every table. Kafka Streams disables the WAL of its
RocksDB stores for the same reason. A session value is ~115 kB at 384-d, and the WAL
made each put ~8x slower: 130 µs instead of 16 µs (bench/README.md, "feedback").

What a crash costs: the unflushed memtable, data and faust's persisted changelog
offsets alike. Both are written to the same per-partition DB, in order, and RocksDB
keeps a prefix of that order. So the DB stays consistent with its own offsets, and
recovery replays the changelog from there. A clean stop flushes the memtables.
Registered as the ``learnstream://`` store URL (entry point ``faust.stores``).
"""
from __future__ import annotations

from typing import Any

import rocksdict
from faust.stores import rocksdb

__all__ = ("Store",)


class Store(rocksdb.Store):
    """``rocksdb.Store`` whose partition DBs write without the WAL (rocksdict driver only)."""

    def _open_for_partition(self, partition: int) -> Any:
        db = super()._open_for_partition(partition)
        if self.use_rocksdict:
            opts = rocksdict.WriteOptions()
            opts.disable_wal = True
            db.set_write_options(opts)
        return db
