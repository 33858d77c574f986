"""Issue 10 (restore) on real parts: a worker restarted on its data dir after SIGKILL reads only the
changelog records its RocksDB does not hold, never the whole changelog (workers/stream/restore.py,
faust_internals patches 5 and 10)."""
from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.helpers import applied, wait_until
from workers.kafka import broker_compat
from workers.kafka.topics import topics

pytestmark = pytest.mark.integration

MODELS = ["small", "large"]


def _changelog_records(bootstrap: str, app_id: str) -> int:
    """Committed records in all of the app's changelog topics (transaction markers and aborted records
    are not records a restore applies)."""
    broker_compat.ignore_finished_aborts()  # the embedded broker's abort listing (broker_compat, item 3)

    async def go() -> int:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed",
                             auto_offset_reset="earliest")
        await c.start()
        try:
            names = [t for t in await c.topics() if t.startswith(f"{app_id}-") and t.endswith("-changelog")]
            tps = [TopicPartition(t, p) for t in names for p in sorted(c.partitions_for_topic(t) or ())]
            c.assign(tps)
            ends = await c.end_offsets(tps)
            await c.seek_to_beginning(*tps)
            n = 0
            todo = {tp for tp in tps if ends[tp] > 0}
            while todo:
                for tp, msgs in (await c.getmany(*todo, timeout_ms=1000)).items():
                    n += sum(1 for m in msgs if m.offset < ends[tp])
                todo = {tp for tp in todo if await c.position(tp) < ends[tp]}
            return n
        finally:
            await c.stop()

    return asyncio.run(go())


def _feed(client, rng: np.random.Generator, sessions: list[str], n: int, t0: int) -> None:
    for i in range(n):
        for sk in sessions:
            client.feedback(sk, rng.standard_normal(32).astype(np.float32), model=MODELS[i % 2], quality=0.8,
                            now_ms=1000 * (t0 + i), wait=False)
    client.flush()


def _worker_with_sessions(worker_factory, client, rng: np.random.Generator, sessions: list[str], per: int):
    """Worker "a", ready, with ``sessions`` initialized and ``per`` feedback events each applied."""
    a = worker_factory("a").start().wait_ready()
    for sk in sessions:
        assert a.dispatch("init_instant", {"session_key": sk, "targets": MODELS, "dim": 32})["ok"]
    _feed(client, rng, sessions, per, 0)
    wait_until(lambda: applied(a, topics()["feedback"].name) == per * len(sessions), 120,
               what=f"{per} events per session applied")
    return a


def _restored(w) -> tuple[float, float]:
    return w.metric("learnstream_restored_records_total"), w.metric("learnstream_recovery_probed_records_total")


@pytest.mark.timeout(600)
def test_a_restart_after_sigkill_reads_only_the_changelog_tail(broker, worker_factory, client, app_id,
                                                                 tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    sessions = [f"agent-{i:02d}" for i in range(12)]
    fb = topics()["feedback"].name
    a = _worker_with_sessions(worker_factory, client, rng, sessions, 10)
    a.kill()
    held = _changelog_records(broker.bootstrap, app_id)
    assert held > 12 * 10  # many keys per session
    # the tables as the killed worker left them (RocksDB, WAL on, unsynced)
    snapshot = tmp_path / "snapshot"
    shutil.copytree(a.data_dir, snapshot)

    a2 = worker_factory("a2", data_dir=a.data_dir).start().wait_ready()
    missed, probed = _restored(a2)  # what the kill cut between a commit and the RocksDB write: at most a batch
    assert probed == 0 and missed < held / 4
    _feed(client, rng, sessions, 10, 10)
    wait_until(lambda: applied(a2, fb) == 10 * len(sessions), 120, what="second events applied")
    want = {sk: a2.dispatch("session_info", {"session_key": sk})["data"]["digest"] for sk in sessions}
    a2.kill()
    tail = _changelog_records(broker.bootstrap, app_id) - held
    assert tail > 0

    # Started on the first worker's tables: exactly the records written since are read, in bulk.
    a3 = worker_factory("a3", data_dir=snapshot).start().wait_ready()
    restored, probed = _restored(a3)
    assert (restored, probed) == (tail + missed, 0)
    assert {sk: a3.dispatch("session_info", {"session_key": sk})["data"]["digest"] for sk in sessions} == want


_NO_BULK_RESTORE = """
import sys
from workers.stream import restore


async def _refuse(*args, **kwargs):
    raise RuntimeError("bulk restore off in this test")


restore.restore = _refuse
from workers.cli.main import main
sys.exit(main(["worker"]))
"""


@pytest.mark.timeout(600)
def test_without_the_bulk_restore_fausts_recovery_reads_the_changelogs(worker_factory, client, tmp_path: Path) -> None:
    """The bulk restore failing leaves every changelog to faust's own recovery: its consumer must then
    fetch the changelog partitions it keeps paused otherwise (faust_internals, patch 12)."""
    rng = np.random.default_rng(5)
    sessions = [f"agent-{i:02d}" for i in range(8)]
    a = _worker_with_sessions(worker_factory, client, rng, sessions, 5)
    want = {sk: a.dispatch("session_info", {"session_key": sk})["data"]["digest"] for sk in sessions}
    a.kill()
    script = tmp_path / "no_bulk_restore.py"
    script.write_text(_NO_BULK_RESTORE)
    b = worker_factory("b")
    b.command = [sys.executable, str(script)]
    b.start().wait_ready()
    assert _restored(b)[0] == 0  # nothing came through the bulk path
    assert {sk: b.dispatch("session_info", {"session_key": sk})["data"]["digest"] for sk in sessions} == want
