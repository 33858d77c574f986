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

from workers.stream.faust_internals import WalStore as Store

__all__ = ("Store",)
