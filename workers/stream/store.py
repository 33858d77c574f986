"""The tables' RocksDB store: faust's, with RocksDB's write-ahead log on (unsynced) and its
memory bounded per worker, not per database.

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

**Memory.** faust opens every partition database with its own block cache and 64 MiB
memtables (up to three of them): 5 tables x N partitions of those grew a worker to 1.26 GB
with 10,000 sessions. Here all of one worker's databases share one block cache
(``LEARNSTREAM_BLOCK_CACHE_BYTES``) and one write buffer manager
(``LEARNSTREAM_MEMTABLE_BYTES``) whose memtables are charged to that same cache, so
RocksDB's share of the worker's memory stays under their sum whatever the number of tables,
partitions and sessions; a memtable over its share is flushed to disk.
Registered as the ``learnstream://`` store URL (entry point ``faust.stores``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import rocksdict
from faust.stores import rocksdb

__all__ = ("Store", "MEMTABLE_BYTES", "BLOCK_CACHE_BYTES", "shared_memory")

BLOCK_CACHE_BYTES = 64 * 1024 * 1024   # one cache for every table partition of a worker
MEMTABLE_BYTES = 64 * 1024 * 1024      # every memtable of a worker together, charged to that cache
# one memtable flushes at this size (faust's default 64 MiB per database, times 3 in flight)
_WRITE_BUFFER_BYTES = 8 * 1024 * 1024
_ATTR = "_learnstream_rocksdb_memory"


@dataclass
class SharedMemory:
    """The block cache and write buffer manager all of one app's table databases share."""

    cache: Any
    write_buffers: Any
    block_cache_bytes: int
    memtable_bytes: int


def shared_memory(app: Any, block_cache_bytes: int, memtable_bytes: int) -> SharedMemory:
    """The app's shared RocksDB memory (created on first use: one per worker process and app)."""
    mem = getattr(app, _ATTR, None)
    if mem is None:
        cache = rocksdict.Cache(block_cache_bytes + memtable_bytes)
        wbm = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(memtable_bytes, False, cache)
        mem = SharedMemory(cache, wbm, block_cache_bytes, memtable_bytes)
        setattr(app, _ATTR, mem)
    return mem


class Store(rocksdb.Store):
    """``rocksdb.Store`` whose partition DBs write through the WAL without fsync and share one
    block cache and one memtable budget per worker (rocksdict driver)."""

    def _open_for_partition(self, partition: int) -> Any:
        if not self.use_rocksdict:
            return super()._open_for_partition(partition)
        o = self.rocksdb_options
        extra = o.extra_options
        mem = shared_memory(self.app, int(extra.get("shared_block_cache_bytes", BLOCK_CACHE_BYTES)),
                            int(extra.get("memtable_bytes", MEMTABLE_BYTES)))
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_max_open_files(o.max_open_files)
        opts.set_target_file_size_base(o.target_file_size_base)
        opts.set_write_buffer_size(min(_WRITE_BUFFER_BYTES, max(mem.memtable_bytes // 4, 1 << 20)))
        opts.set_max_write_buffer_number(2)
        opts.set_write_buffer_manager(mem.write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(o.bloom_filter_size, block_based=True)
        table.set_block_cache(mem.cache)
        table.set_cache_index_and_filter_blocks(True)  # index and filters count against the cache too
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        opts.set_block_based_table_factory(table)
        db = rocksdict.Rdict(str(self.partition_path(partition)), options=opts,
                             access_type=rocksdict.AccessType.read_write())
        db.set_read_options(rocksdict.ReadOptions())
        wo = rocksdict.WriteOptions()
        wo.disable_wal = False
        wo.sync = False
        db.set_write_options(wo)
        return db
