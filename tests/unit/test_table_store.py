"""The tables' store (``learnstream://``): faust's RocksDB store, writing without RocksDB's WAL."""
from __future__ import annotations

from pathlib import Path

import faust
import pytest
import rocksdict

from workers.stream.store import Store


def _table(tmp_path: Path, store: str) -> faust.Table:
    app = faust.App("t-store", broker="kafka://127.0.0.1:1", store=store, datadir=str(tmp_path))
    return app.Table("x", key_type=bytes, value_type=bytes, partitions=2, options={"driver": "rocksdict"})


def _wal_bytes(tmp_path: Path) -> int:
    return sum(p.stat().st_size for p in tmp_path.rglob("*.log"))


@pytest.mark.parametrize("store,wal", [("learnstream://", False), ("rocksdb://", True)])
def test_table_writes_skip_the_wal_only_in_our_store(tmp_path: Path, store: str, wal: bool) -> None:
    data = _table(tmp_path, store).data
    assert isinstance(data, Store) is (not wal)
    db = data._db_for_partition(0)
    db.put(b"k", b"v" * 100_000)
    batch = rocksdict.WriteBatch(raw_mode=True)
    batch.put(b"k2", b"w" * 100_000)
    db.write(batch)  # the path changelog recovery takes
    assert db[b"k"] == b"v" * 100_000 and db[b"k2"] == b"w" * 100_000
    assert (_wal_bytes(tmp_path) > 200_000) is wal


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
