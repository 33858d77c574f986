"""Benchmark: how long a worker takes to serve N sessions' state (``learnstream bench restore``).

The ``sessions`` table is filled with ``--sessions`` learning-loop sessions (384-d instant
core with a full replay buffer, ~108 kB each): their keys, in the layout a worker writes
(``workers.state.layout``), are produced straight to the table's changelog topic, on each
session's partition. Then a worker is timed from process start until ``/ready`` (table
recovery done) in two cases:

- **fresh**: a new data dir, everything restored from the changelog;
- **after SIGKILL**: that worker killed (no shutdown, no flush) and restarted on the same
  data dir: its RocksDB (WAL on) and its persisted changelog offsets make the replay empty.

First, for scale, a worker of another app id (empty tables) is timed the same way: its
start-up alone (imports, group join, faust's recovery handshake). Each case also reads a sample
of sessions back over HTTP and checks their digests against the state that was written.
Reports seconds, sessions/s, changelog MB/s, the time the bulk restore
(``workers/stream/restore.py``) took of it (``learnstream_restore_seconds_total``) and the
worker's RSS.
Goals (issue 10): 10,000 sessions ready in < 60 s fresh, < 10 s after SIGKILL.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stream import (WorkerProcess, machine_note, metric, provision, start_broker, teardown, topic_bytes,  # noqa: E402
                     worker_kwargs, worker_options)
from workers.cores.instant import REPLAY_CAP, InstantState  # noqa: E402
from workers.state.layout import SessionState, digest  # noqa: E402

__all__ = ("main",)

_TARGETS = ["small", "medium", "large", "code"]
_GOAL_FRESH_S = 60.0
_GOAL_KILLED_S = 10.0
_SAMPLE = 20


def _session(rng: np.random.Generator, dim: int, sk: str) -> SessionState:
    inst = InstantState(_TARGETS, dim)
    X = rng.standard_normal((REPLAY_CAP + 8, dim)).astype(np.float32)
    inst.feedback_batch(X, rng.integers(0, len(_TARGETS), len(X)), np.full(len(X), 0.9, np.float32),
                        np.arange(len(X), dtype=np.int64) * 1000)
    s = SessionState()
    s.blob.set("instant", inst)
    s.blob.watermark.advance("learn.feedback", 0, len(X))
    return s


async def _fill(bootstrap: str, topic: str, partitions: int, n: int, dim: int, seed: int) -> tuple[int, dict]:
    """Produce n sessions' keys; returns (bytes, {session: digest}) of a sample."""
    rng = np.random.default_rng(seed)
    templates = [_session(rng, dim, f"t{i}") for i in range(8)]  # content does not change restore speed
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, acks=1,
                         max_request_size=8 << 20)
    await p.start()
    sample = set(random.Random(seed).sample(range(n), min(_SAMPLE, n)))
    want: dict[str, str] = {}
    total = 0
    try:
        for i in range(n):
            sk = f"agent-{i:06d}"
            s = templates[i % len(templates)]
            ops, _ = s.changes(sk.encode())
            part = (murmur2(sk.encode()) & 0x7FFFFFFF) % partitions
            for k, v in ops.items():
                total += len(k) + len(v or b"")
                await p.send(topic, v, key=k, partition=part)
            if i in sample:
                want[sk] = digest(s.blob)[0]
        await p.flush()
    finally:
        await p.stop()
    return total, want


def _timed(w: WorkerProcess) -> float:
    return w.wait_ready(timeout=900.0)


def _check(w: WorkerProcess, want: dict[str, str]) -> int:
    bad = 0
    for sk, d in want.items():
        status, out = w.dispatch("session_info", {"session_key": sk})
        if status != 200 or out["data"]["digest"] != d:
            bad += 1
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="learnstream bench restore", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=10_000, help="sessions in the table (default 10,000)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-logs", action="store_true")
    worker_options(p)
    args = p.parse_args(argv)
    wkw = worker_kwargs(p, args)
    log_dir = Path(tempfile.mkdtemp(prefix="learnstream-bench-restore-"))
    print(f"learnstream bench restore: {args.sessions:,} sessions at {args.dim}-d with full replay buffers, "
          f"{args.partitions} partitions")
    print(f"machine: {machine_note()}; logs in {log_dir}", flush=True)
    app_id = f"bench-{uuid.uuid4().hex[:6]}"
    changelog = f"{app_id}-sessions-changelog"
    broker = start_broker(log_dir)
    workers: list[WorkerProcess] = []
    try:
        provision(broker.bootstrap, args.partitions, extra=[changelog])
        t0 = time.monotonic()
        nbytes, want = asyncio.run(_fill(broker.bootstrap, changelog, args.partitions, args.sessions, args.dim,
                                         args.seed))
        records, stored, _ = topic_bytes(broker.bootstrap, changelog)
        print(f"filled: {records:,} changelog records, {stored / 1e6:,.0f} MB in {time.monotonic() - t0:.0f} s "
              f"({stored / args.sessions / 1e3:,.0f} kB per session)", flush=True)

        empty = WorkerProcess(broker.bootstrap, partitions=args.partitions, app_id=f"{app_id}-empty",
                              data_dir=Path(tempfile.mkdtemp(prefix="data-empty-", dir=log_dir)), log_dir=log_dir,
                              **wkw)
        workers.append(empty.start())
        startup = _timed(empty)
        print(f"  {'start-up':<14} ready in {startup:6.1f} s (another app id, empty tables: no recovery)", flush=True)
        empty.stop()

        data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=log_dir))
        results = []
        for case in ("fresh", "after SIGKILL"):
            w = WorkerProcess(broker.bootstrap, partitions=args.partitions, app_id=app_id, data_dir=data_dir,
                              log_dir=log_dir, **wkw).start()
            workers.append(w)
            secs = _timed(w)
            m = w.metrics()
            restore_s = metric(m, "learnstream_restore_seconds_total")
            restored = metric(m, "learnstream_restored_bytes_total")
            probed = metric(m, "learnstream_recovery_probed_records_total")
            bad = _check(w, want)
            rss = w._ps().memory_info().rss / 1e6
            results.append((case, secs, bad))
            print(f"  {case:<14} ready in {secs:6.1f} s: {args.sessions / secs:,.0f} sessions/s, "
                  f"{stored / 1e6 / secs:,.1f} changelog MB/s; bulk restore {restored / 1e6:,.0f} MB in "
                  f"{restore_s:.1f} s; {probed:,.0f} records probed; worker RSS {rss:,.0f} MB; "
                  f"sample of {len(want)} digests: "
                  f"{'all equal' if not bad else f'{bad} DIFFER'}", flush=True)
            if case == "fresh":
                w.proc.send_signal(signal.SIGKILL)
                w.proc.wait(30)
        ok = True
        for case, secs, bad in results:
            goal = _GOAL_FRESH_S if case == "fresh" else _GOAL_KILLED_S
            passed = secs < goal and not bad
            ok = ok and passed
            print(f"  {case:<14} {secs:6.1f} s (process start to /ready)  goal < {goal:.0f} s -> "
                  f"{'PASS' if passed else 'FAIL'}")
        return 0 if ok else 1
    finally:
        teardown(workers, broker, log_dir, args.keep_logs)


if __name__ == "__main__":
    raise SystemExit(main())
