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


# -- maybe_rewrite itself, over a table that grows with its log (young sessions) and then stops --------
class _Table:
    def __init__(self, topic: str) -> None:
        self.changelog_topic = type("T", (), {"get_topic_name": staticmethod(lambda: topic)})()


def _driven(monkeypatch, keys: list[int]):
    """A rewriter of one changelog partition whose key count is ``keys[0]``; returns it, its count
    calls and its rewrites (a rewrite restarts the log at the live keys, as the real one does)."""
    import workers.kafka.changelog_rewrite as cr

    counts: list[int] = []
    rewrites: list[int] = []
    monkeypatch.setattr(cr, "_count", lambda db, offset_key: counts.append(keys[0]) or keys[0])
    monkeypatch.setattr(cr, "partition_db", lambda table, partition: None)
    monkeypatch.setattr(cr, "changelog_offset_key", lambda table: b"offset")

    class Probe:
        async def log_start(self, topic: str, partition: int) -> int:
            return 0

    txn = type("Txn", (), {"owns": staticmethod(lambda partition: True)})()

    async def on_lost() -> None:
        raise AssertionError("no producer is lost here")

    rw = cr.ChangelogRewriter(txn, {"session": _Table("cl")}, Probe(), ratio=2.0, floor=1_000,
                              may_commit=lambda: True, on_lost=on_lost, topic_configs={}, bootstrap="127.0.0.1:1")

    async def rewrite(topic: str, partition: int, size: int | None = None) -> int:
        last = rw.ends[(topic, partition)]
        rewrites.append(last)
        rw.starts[(topic, partition)], rw.live[(topic, partition)] = last, keys[0]
        rw.counted_at[(topic, partition)], rw.grown[(topic, partition)] = last, 0
        return last

    monkeypatch.setattr(rw, "rewrite", rewrite)
    return rw, counts, rewrites


def _run(rw, keys: list[int], batches: list[tuple[int, int, int]], with_growth: bool) -> None:
    """``batches``: (records, keys the store gains, keys the saves were sure of) per committed batch."""
    import asyncio

    async def go() -> None:
        last = -1
        for records, gained, sure in batches:
            last += records
            keys[0] += gained
            rw.note(0, {"cl": last}, {"cl": sure} if with_growth else None)
            await rw.maybe_rewrite()

    asyncio.run(go())


def test_a_table_growing_with_its_log_is_not_counted_again_and_again(monkeypatch):
    """Young sessions: each event writes 2 records (a new replay row, the head) and adds a key. With
    the keys the saves were sure of added up between counts (``note(..., grown)``), the cheap check
    follows the table's growth and no count is needed; without them, a count every half-table of
    records. Once the table stops growing (full buffers: rows overwritten), the log outgrows twice
    its keys and is rewritten either way."""
    growth = [(400, 200, 200)] * 300 + [(400, 0, 0)] * 300  # 60,000 events growing, then 60,000 not
    results = {}
    for with_growth in (True, False):
        keys = [5_000]
        rw, counts, rewrites = _driven(monkeypatch, keys)
        _run(rw, keys, growth, with_growth)
        results[with_growth] = (len(counts), rewrites)
    (counted, rewritten), (counted_before, rewritten_before) = results[True], results[False]
    assert counted_before >= 8 and counted <= 3, results
    assert rewritten and rewritten_before  # both compact once the growth stops
    assert rewritten[0] - 120_000 <= 60_000 and all(r >= 120_000 for r in rewritten), results


def test_keys_the_saves_were_sure_of_never_delay_a_count_past_the_threshold(monkeypatch):
    """Deletes count as keys gone: a table that shrinks is counted (and rewritten) as soon as its log
    passes twice its keys, whatever it gained before."""
    keys = [20_000]
    rw, counts, rewrites = _driven(monkeypatch, keys)
    _run(rw, keys, [(400, 200, 200)] * 50 + [(400, -200, -200)] * 200, True)
    assert rewrites, (counts, rewrites)


def test_without_the_sums_a_recount_still_waits_for_half_a_table_of_records(monkeypatch):
    """A worker whose saves report no key sums (``note(..., None)``): sessions filling their replay
    buffers add a key every third event (3 records each) while the threshold is 2 x live + 1,000
    records, so the cheap check passes again and again; ``count_due`` spaces the counts out."""
    import workers.kafka.changelog_rewrite as cr

    results = {}
    for due in (True, False):
        with monkeypatch.context() as m:
            if not due:
                m.setattr(cr, "count_due", lambda *a: True)
            keys = [9_000]
            rw, counts, rewrites = _driven(m, keys)
            _run(rw, keys, [(900, 100, 0)] * 200, False)  # 60,000 events in batches of 300
            results[due] = (len(counts), len(rewrites))
    (counted, rewritten), (counted_always, rewritten_always) = results[True], results[False]
    assert rewritten and rewritten == rewritten_always, results   # the same compactions
    assert counted <= 10 and counted_always >= 14, results        # 9 and 15 when written
