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
The code is :class:`workers.stream.faust_internals.WalStore` (it replaces a faust method).
Registered as the ``learnstream://`` store URL (entry point ``faust.stores``).
"""
from __future__ import annotations

from workers.stream.faust_internals import BLOCK_CACHE_BYTES, MEMTABLE_BYTES, WalStore as Store, shared_memory

__all__ = ("Store", "MEMTABLE_BYTES", "BLOCK_CACHE_BYTES", "shared_memory")
