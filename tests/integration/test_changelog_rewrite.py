"""Worker-side changelog compaction on the embedded broker (workers/kafka/changelog_rewrite.py).

With transactions on, the embedded broker never compacts the changelogs; the owning worker rewrites a
partition's live keys and deletes the records before them. Real broker, real workers: the log start
moves forward, and a worker on a fresh data dir, one restarted after SIGKILL, and one whose local
tables were written before the cut all read back the same sessions.
"""
from __future__ import annotations

import asyncio
import threading

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.helpers import WorkerProc, wait_until
from workers.stream.partitioning import owner_partition

pytestmark = pytest.mark.integration

PARTITIONS = 2
# two sessions on each partition
SESSIONS = [sk for p in range(PARTITIONS)
            for sk in [k for k in (f"agent-{i}" for i in range(100)) if owner_partition(k, PARTITIONS) == p][:2]]
# low thresholds: a rewrite every few dozen batches of a partition
REWRITE = {"LEARNSTREAM_CHANGELOG_REWRITE_FLOOR": "40", "LEARNSTREAM_CHANGELOG_REWRITE_RATIO": "2"}


def _infos(w: WorkerProc) -> dict[str, dict]:
    out = {}
    for sk in SESSIONS:
        got = w.dispatch("session_info", {"session_key": sk})
        assert got["ok"], got
        out[sk] = got["data"]
    return out


def _write(w: WorkerProc, rounds: int, start: int = 0) -> None:
    for i in range(start, start + rounds):
        for sk in SESSIONS:
            out = w.dispatch("record_loss", {"session_key": sk, "loss": 0.5 + 0.001 * i})
            assert out["ok"], out  # acknowledged = applied


def _log_starts(bootstrap: str, topic: str) -> list[int]:
    async def go() -> list[int]:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
        await c.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            starts = await c.beginning_offsets(tps)
            return [starts[tp] for tp in tps]
        finally:
            await c.stop()

    return asyncio.run(go())


def test_rewrite_moves_the_log_start_and_every_restore_reads_the_same_sessions(broker, worker_factory, app_id,
                                                                               tmp_path) -> None:
    changelog = f"{app_id}-sessions-changelog"
    first = worker_factory("first", data_dir=tmp_path / "first", partitions=PARTITIONS, env=REWRITE).start()
    first.wait_ready()
    _write(first, 60)
    assert first.metric("learnstream_changelog_rewrites_total") >= 1
    assert first.metric("learnstream_changelog_rewrite_bytes_total") > 0
    starts = _log_starts(broker.bootstrap, changelog)
    assert min(starts) > 0, "the rewrites deleted the records before them"
    uninterrupted = _infos(first)
    first.stop()

    # a fresh data dir: everything from the cut log
    fresh = worker_factory("fresh", data_dir=tmp_path / "fresh", partitions=PARTITIONS, env=REWRITE).start()
    fresh.wait_ready()
    assert _infos(fresh) == uninterrupted
    # more writes, more rewrites: "first"'s tables now end before the log start
    before = fresh.metric("learnstream_changelog_rewrites_total")
    _write(fresh, 60, start=60)
    assert fresh.metric("learnstream_changelog_rewrites_total") > before
    assert all(a > b for a, b in zip(_log_starts(broker.bootstrap, changelog), starts, strict=True))
    latest = _infos(fresh)
    fresh.kill()  # SIGKILL, right after the last batches (and their rewrites)

    again = worker_factory("fresh-again", data_dir=tmp_path / "fresh", partitions=PARTITIONS, env=REWRITE).start()
    again.wait_ready()
    assert _infos(again) == latest
    again.stop()

    # the stale data dir: its offsets point before the log start, so its partitions are rebuilt
    stale = worker_factory("stale", data_dir=tmp_path / "first", partitions=PARTITIONS, env=REWRITE).start()
    stale.wait_ready()
    assert _infos(stale) == latest
    stale.stop()
    log = "".join(p.read_text() for p in tmp_path.glob("stale-*.log"))
    assert "compacted by a rewrite" in log and "sessions-changelog[0]" in log and "sessions-changelog[1]" in log


def test_rewrite_is_off_when_forced_off(broker, worker_factory, tmp_path, app_id) -> None:
    w = worker_factory("off", partitions=PARTITIONS, env=dict(REWRITE, LEARNSTREAM_CHANGELOG_REWRITE="false")).start()
    w.wait_ready()
    _write(w, 30)
    assert w.metric("learnstream_changelog_rewrites_total") == 0
    assert _log_starts(broker.bootstrap, f"{app_id}-sessions-changelog") == [0] * PARTITIONS


def test_sigkill_amid_rewrites_restarts_with_the_state_a_fresh_restore_reads(broker, worker_factory, tmp_path) -> None:
    """Rewrites every few batches while writes stream in; SIGKILL lands in or near one (best effort)."""
    eager = {"LEARNSTREAM_CHANGELOG_REWRITE_FLOOR": "4", "LEARNSTREAM_CHANGELOG_REWRITE_RATIO": "1"}
    w = worker_factory("killed", data_dir=tmp_path / "kept", partitions=PARTITIONS, env=eager).start()
    w.wait_ready()
    acked = 0
    stop = threading.Event()

    def writer() -> None:
        nonlocal acked
        i = 0
        while not stop.is_set():
            try:
                out = w.dispatch("record_loss", {"session_key": SESSIONS[i % len(SESSIONS)], "loss": 0.3 + 0.001 * i})
            except OSError:
                return  # the worker is gone
            if out.get("ok"):
                acked += 1
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    wait_until(lambda: acked >= 120 and w.metric("learnstream_changelog_rewrites_total") >= 4, 120, 0.05,
               "writes and rewrites")
    w.kill()
    stop.set()
    t.join(30)

    again = worker_factory("restarted", data_dir=tmp_path / "kept", partitions=PARTITIONS, env=eager).start()
    again.wait_ready()
    _write(again, 2, start=1000)  # acknowledged: everything before it on each partition is applied too
    after = _infos(again)
    assert _applied(after) >= acked + 2 * len(SESSIONS)  # no acknowledged write lost
    again.stop()

    fresh = worker_factory("fresh", data_dir=tmp_path / "fresh", partitions=PARTITIONS, env=eager).start()
    fresh.wait_ready()
    assert _infos(fresh) == after


def _applied(infos: dict[str, dict]) -> int:
    """Input records applied: per input partition, one past the last offset any session applied (every
    record of the test's input is one of these sessions' writes)."""
    last: dict[str, int] = {}
    for info in infos.values():
        for tp, offset in info["watermark"].items():
            last[tp] = max(last.get(tp, -1), offset)
    return sum(o + 1 for o in last.values())


def test_a_compact_only_changelog_from_before_is_altered_to_allow_the_cut(broker, worker_factory, app_id) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    changelog = f"{app_id}-sessions-changelog"

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:  # as workers created it before they compacted their changelogs
            await admin.create_topics([NewTopic(changelog, PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"})])
        finally:
            await admin.close()

    asyncio.run(create())
    w = worker_factory("old-topic", partitions=PARTITIONS, env=REWRITE).start()
    w.wait_ready()
    _write(w, 40)
    assert w.metric("learnstream_changelog_rewrites_total") >= 1
    assert min(_log_starts(broker.bootstrap, changelog)) > 0
    assert "is compact-only, which refuses DeleteRecords" in w.log_path.read_text()
