"""The rewriter's live-key count over a real partition RocksDB: every key but faust's offset key."""
from __future__ import annotations

from rocksdict import Options, Rdict

from workers.kafka.changelog_rewrite import _count


def test_count_is_every_key_but_the_offset_key(tmp_path):
    db = Rdict(str(tmp_path / "p0"), options=Options(raw_mode=True))
    offset_key = b"__faust\x00offset__"
    try:
        assert _count(db, offset_key) == 0
        for i in range(1000):
            db[b"session-%04d" % i] = b"v"
        assert _count(db, offset_key) == 1000
        db[offset_key] = b"1234"
        assert _count(db, offset_key) == 1000
        del db[b"session-0007"]
        assert _count(db, offset_key) == 999
    finally:
        db.close()
