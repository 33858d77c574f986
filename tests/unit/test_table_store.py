"""The tables' store (``learnstream://``): faust's RocksDB store, its writes logged (WAL, no fsync),
so what a killed worker wrote is still there when it restarts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import faust
import rocksdict

from workers.stream.store import Store

_KILLED_WRITER = """
import os, signal, sys
import faust, rocksdict
app = faust.App("t-store", broker="kafka://127.0.0.1:1", store=sys.argv[1], datadir=sys.argv[2])
data = app.Table("x", key_type=bytes, value_type=bytes, partitions=2, options={"driver": "rocksdict"}).data
db = data._db_for_partition(0)
batch = rocksdict.WriteBatch(raw_mode=True)
batch.put(b"head", b"h" * 100)
batch.put(b"head\\x1fpiece", b"p" * 2000)
db.write(batch)            # the path a session's keys take
db.put(b"__offset", b"41")  # the path faust's persisted offsets take
print(data.partition_path(0), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _table(tmp_path: Path, store: str) -> faust.Table:
    app = faust.App("t-store", broker="kafka://127.0.0.1:1", store=store, datadir=str(tmp_path))
    return app.Table("x", key_type=bytes, value_type=bytes, partitions=2, options={"driver": "rocksdict"})


def test_writes_of_a_killed_process_are_kept(tmp_path: Path) -> None:
    # with the WAL off, the memtable dies with the process and all three are gone
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, "learnstream://", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    path = proc.stdout.strip()
    db = rocksdict.Rdict(path, options=rocksdict.Options(raw_mode=True))
    try:
        got = (db.get(b"head"), db.get(b"head\x1fpiece"), db.get(b"__offset"))
    finally:
        db.close()
    assert got == (b"h" * 100, b"p" * 2000, b"41")


def test_our_store_is_the_learnstream_url_and_logs_without_fsync(tmp_path: Path) -> None:
    data = _table(tmp_path, "learnstream://").data
    assert isinstance(data, Store)
    db = data._db_for_partition(0)
    db.put(b"k", b"v" * 100_000)
    assert sum(p.stat().st_size for p in tmp_path.rglob("*.log")) > 100_000  # the WAL has it


def test_a_clean_close_keeps_what_was_written(tmp_path: Path) -> None:
    data = _table(tmp_path, "learnstream://").data
    path = data.partition_path(0)
    db = data._db_for_partition(0)
    db.put(b"k", b"v" * 1000)
    db.close()
    again = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
    try:
        assert again[b"k"] == b"v" * 1000
    finally:
        again.close()


def test_every_table_partition_shares_one_block_cache_and_one_memtable_budget(tmp_path: Path) -> None:
    """RocksDB's memory is bounded per worker, not per database: 5 tables x N partitions opened
    with their own caches and 64 MiB memtables grew a worker to 1.26 GB at 10,000 sessions."""
    from workers.stream.store import shared_memory

    app = faust.App("t-store", broker="kafka://127.0.0.1:1", store="learnstream://", datadir=str(tmp_path))
    opts = {"driver": "rocksdict", "shared_block_cache_bytes": 4 << 20, "memtable_bytes": 2 << 20}
    tables = [app.Table(name, key_type=bytes, value_type=bytes, partitions=2, options=opts) for name in ("a", "b")]
    dbs = [t.data._db_for_partition(p) for t in tables for p in (0, 1)]
    mem = shared_memory(app, 0, 0)  # the first opener's sizes stand
    assert (mem.block_cache_bytes, mem.memtable_bytes) == (4 << 20, 2 << 20)
    assert mem.cache.get_usage() >= 0 and mem.write_buffers.get_buffer_size() == 2 << 20
    # 16 MB written across the databases: the shared 2 MiB budget flushes memtables to disk as it goes
    for i in range(2000):
        dbs[i % 4].put(b"k%06d" % i, bytes([i % 251]) * 8000)
    # a soft limit: the budget plus at most one active memtable per database (1 MiB each here),
    # once the background flushes the writes triggered caught up (they lag on a loaded machine);
    # faust's own options would hold all 16 MB in memtables
    from workers.cli.waiting import wait_until

    wait_until(lambda: mem.write_buffers.get_usage() <= (2 << 20) + 4 * (1 << 20), timeout=30,
               what="memtables flushed down to the shared budget")
    assert list(tmp_path.rglob("*.sst")), "no memtable was flushed"
    assert dbs[3][b"k001999"] == bytes([1999 % 251]) * 8000


def test_a_reopened_table_partition_uses_the_shared_cache(tmp_path: Path) -> None:
    """A worker restarted on its data dir opens each partition's database again: with the shared block
    cache, not the 8 MiB one rocksdict gives an existing database opened with options alone."""
    from workers.stream.store import shared_memory

    opts = {"driver": "rocksdict", "shared_block_cache_bytes": 24 << 20, "memtable_bytes": 2 << 20}
    for _ in range(2):  # created, then reopened by a new app on the same data dir
        app = faust.App("t-store", broker="kafka://127.0.0.1:1", store="learnstream://", datadir=str(tmp_path))
        data = app.Table("x", key_type=bytes, value_type=bytes, partitions=1, options=opts).data
        db = data._db_for_partition(0)
        db.put(b"k", b"v")
        mem = shared_memory(app, 0, 0)  # one cache: the blocks and the memtables charged to it
        assert db.property_int_value("rocksdb.block-cache-capacity") == mem.block_cache_bytes + mem.memtable_bytes
        db.close()
