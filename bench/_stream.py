"""Shared parts of the end-to-end benchmarks (``feedback``, ``route_http``): a real
embedded broker, real ``learnstream worker`` subprocesses, a metrics reader.

Not a benchmark itself (the leading underscore keeps it out of ``learnstream bench``).

**Gating with SIGSTOP.** A consumer that is already a joined group member is
suspended (SIGSTOP), the events are produced, and the clock starts at SIGCONT. So
the measured time holds consumption only: neither the producer nor the group join.
A suspended member sends no heartbeats, so the suspension must stay well below the
session timeout (:data:`SESSION_TIMEOUT_S`); the embedded broker's group join takes
half the session timeout (measured: 3.0 / 5.0 / 10.0 / 15.0 / 30.0 s for 6 / 10 /
20 / 30 / 60 s), so the timeout cannot simply be made long.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from workers.cli import processes
from workers.cli.http_json import http_json
from workers.cli.processes import ChildProcess, metric
from workers.cli.waiting import wait_until as _wait_until
from workers.kafka.broker import EmbeddedBroker
from workers.local import free_port
from workers.stream.provision import ensure_topics
from workers.stream.settings import Settings

__all__ = ("SESSION_TIMEOUT_S", "SAFE_PAUSE_SHARE", "WorkerProcess", "ChildProcess", "teardown", "start_broker", "provision", "http_json", "metric",
           "wait_until", "balanced_keys", "machine_note", "worker_options", "worker_kwargs")

# A member suspended while one scenario is produced (a few seconds) must not be
# expelled; the join costs half of it (see above), paid once per consumer.
SESSION_TIMEOUT_S = 20.0
# Suspensions longer than this share of the session timeout risk a rejoin inside a measurement.
SAFE_PAUSE_SHARE = 0.6
# faust + table recovery + Tansu's ≈ 5 s group join, with room for a loaded box.
_READY_TIMEOUT_S = 120.0
_ROOT = Path(__file__).resolve().parent.parent


def start_broker(log_dir: Path) -> EmbeddedBroker:
    # SIGKILL if the benchmark dies: its brokers spend most of a run suspended, and a suspended
    # process holds a SIGTERM until someone resumes it (nobody would); their logs are disposable
    return EmbeddedBroker(log_path=log_dir / "broker.log", death_signal=signal.SIGKILL).start()


def teardown(procs: Iterable[Any], broker: EmbeddedBroker | None, log_dir: Path | None, keep_logs: bool) -> None:
    """The end of a benchmark run: stop its processes (a paused one is resumed first), then the broker,
    and remove the logs unless they are kept. Called from a ``finally`` while an error propagates (the
    run failed), it keeps them and says where: a failed run's logs are the ones to read. A run stopped on
    purpose (Ctrl-C, SIGTERM: ``KeyboardInterrupt``, ``SystemExit``) still removes them."""
    failed = sys.exc_info()[0]
    if failed is not None and issubclass(failed, Exception) and log_dir is not None and not keep_logs:
        keep_logs = True
        print(f"the run failed ({failed.__name__}): its broker and worker logs are kept in "
              f"{log_dir}", file=sys.stderr, flush=True)
    for p in procs:
        if p is not None:
            p.stop()
    if broker is not None:
        # SIGKILL: its log is in a temporary directory removed right after, and saving a 1 GB log on
        # SIGTERM took over 30 s at the end of `bench restore` (then it was killed anyway, with a warning)
        broker.stop(kill=True)
    if log_dir is not None and not keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)


def provision(bootstrap: str, partitions: int, extra: list[str] | None = None,
              retention_bytes: int | None = None) -> dict[str, int]:
    """Create every learnstream topic (what a worker does first), and ``extra`` topics, with ``partitions``
    (``retention_bytes``: the input topics' cap per partition on the embedded broker, else its default; give
    the workers the same, ``keep_input_env``, or they set their own when they start)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def go() -> dict[str, int]:
        kept = {} if retention_bytes is None else {"embedded_input_retention_bytes": retention_bytes}
        have = await ensure_topics(Settings(broker=bootstrap, partitions=partitions, **kept))
        if extra:
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(t, partitions, 1) for t in extra])
            finally:
                await admin.close()
        return have

    return asyncio.run(go())


def keep_input_env(retention_bytes: int) -> dict[str, str]:
    """A worker's environment for input topics provisioned with ``retention_bytes``: it keeps that cap."""
    return {"LEARNSTREAM_EMBEDDED_INPUT_RETENTION_BYTES": str(retention_bytes)}


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """The shared poller (workers.cli.waiting) with this module's argument order; exceptions propagate."""
    return _wait_until(cond, timeout, interval, what, retry_on=())


def balanced_keys(n: int, partitions: int, prefix: str = "agent-") -> list[str]:
    """``n`` session keys spread evenly over ``partitions`` (by the producer's murmur2 partitioner)."""
    from aiokafka.partitioner import murmur2

    per = -(-n // partitions)
    taken: dict[int, int] = {}
    keys: list[str] = []
    i = 0
    while len(keys) < n:
        k = f"{prefix}{i}"
        p = (murmur2(k.encode()) & 0x7FFFFFFF) % partitions
        if taken.get(p, 0) < per:
            taken[p] = taken.get(p, 0) + 1
            keys.append(k)
        i += 1
    return keys


def worker_options(p: argparse.ArgumentParser) -> None:
    """``--worker-env`` and ``--worker-cmd``: run the benchmark against a differently configured worker."""
    p.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of the worker (e.g. LEARNSTREAM_BATCH_WITHIN_S=0.02); repeatable")
    p.add_argument("--worker-cmd", default=None, metavar="CMD",
                   help="command that runs the worker (default: python -m workers.cli worker), e.g. a script "
                        "that patches something and then calls workers.cli.main; for experiments")


def worker_kwargs(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    try:
        env = dict(kv.split("=", 1) for kv in args.worker_env)
    except ValueError:
        p.error("--worker-env takes NAME=VALUE")
    return {"env": env, "command": shlex.split(args.worker_cmd) if args.worker_cmd else None}


def machine_note() -> str:
    load = os.getloadavg()
    return (f"{psutil.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, "
            f"Python {sys.version.split()[0]}")


class WorkerProcess(processes.WorkerProcess):
    """A real ``learnstream worker`` subprocess on the given broker (its own data dir and HTTP port),
    with the benchmarks' session timeout (see the module docstring)."""

    def __init__(self, bootstrap: str, *, partitions: int, app_id: str, data_dir: Path | None = None,
                 log_dir: Path, env: dict[str, str] | None = None, command: list[str] | None = None) -> None:
        port = free_port()
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="learnstream-bench-", dir=log_dir))
        # from the environment, as `learnstream worker` reads it: a LEARNSTREAM_* setting exported in the
        # bench's shell (LEARNSTREAM_CACHE_BYTES, ...) reaches its workers; s.env() names every setting,
        # so Settings(...) here once put the defaults over them
        s = Settings.from_env(broker=bootstrap, broker_kind="embedded", app_id=app_id, data_dir=self.data_dir,
                              web_port=port, partitions=partitions, session_timeout_s=SESSION_TIMEOUT_S,
                              log_level="warning")
        super().__init__({**os.environ, **s.env(), **(env or {})}, port=port, log=log_dir / f"worker-{port}.log",
                         command=command, cwd=_ROOT, death_signal=signal.SIGKILL)  # as start_broker's

    def wait_ready(self, timeout: float = _READY_TIMEOUT_S) -> float:  # type: ignore[override]
        """Block until /ready; returns seconds from process start (start-up + group join + recovery)."""
        return super().wait_ready(timeout, 0.05)

    def events(self, topic: str, outcome: str = "applied") -> float:
        return self.metric("learnstream_events_total", topic=topic, outcome=outcome)


def topic_bytes(bootstrap: str, topic: str, start: dict[int, int] | None = None) -> tuple[int, int, dict[int, int]]:
    """(records, key + value bytes) of ``topic`` from ``start`` (partition -> offset; default the
    beginning) to its end now, and the end offsets (the next call's ``start``)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def go() -> tuple[int, int, dict[int, int]]:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_bytes=64 << 20,
                             max_partition_fetch_bytes=16 << 20)
        await c.start()
        try:
            parts = c.partitions_for_topic(topic) or set()
            if not parts:
                await c.topics()
                parts = c.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            if not tps:
                return 0, 0, {}
            c.assign(tps)
            ends = await c.end_offsets(tps)
            n = size = 0
            for tp in tps:
                first = (start or {}).get(tp.partition, 0)
                if first >= ends[tp]:
                    continue
                c.seek(tp, first)
                pos = first
                while pos < ends[tp]:
                    for msgs in (await c.getmany(tp, timeout_ms=2000, max_records=50_000)).values():
                        for m in msgs:
                            if m.offset >= ends[tp]:
                                break
                            n += 1
                            size += len(m.key or b"") + len(m.value or b"")
                    # the position, not the last record: a transactional log ends in a commit marker,
                    # which is never delivered, and the position moves past it
                    pos = await c.position(tp)
            return n, size, {tp.partition: ends[tp] for tp in tps}
        finally:
            await c.stop()

    return asyncio.run(go())
