"""The rewriter's live-key count over a real partition RocksDB: every key but faust's offset key."""
from __future__ import annotations

from rocksdict import Options, Rdict

from workers.kafka.changelog_rewrite import _count, count_due


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


def test_a_recount_waits_until_the_log_grew_by_half_the_keys_counted():
    assert count_due(500, None, 0)  # never counted
    assert not count_due(10_000 + 4_999, 10_000, 10_000)
    assert count_due(10_000 + 5_000, 10_000, 10_000)
    assert count_due(10_001, 10_000, 1)  # a small table is counted as often as it changes


def test_counts_stay_few_while_a_table_grows_a_key_every_few_records():
    """The case that counted every few thousand records: sessions filling their replay buffers add a
    key per event (3 records) while the rewrite threshold is 2 x live + 1,000 records. Driven
    through the same decisions as maybe_rewrite (cheap check, count_due, count, rewrite)."""
    ratio, floor = 2.0, 1_000
    start, live, counted_at, counts, rewrites, keys = 0, None, None, 0, 0, 9_000
    for last in range(0, 60_000, 3):  # one event: 3 records, and a new key every third event
        keys += last % 9 == 0
        if last - start < ratio * (live or 0) + floor or not count_due(last, counted_at, live or 0):
            continue
        live, counted_at, counts = keys, last, counts + 1
        if last - start >= ratio * live + floor:  # the rewrite: the log starts again at its live keys
            start, counted_at, rewrites = last, last, rewrites + 1
    assert rewrites == 2
    assert counts <= 6  # 14 without count_due
