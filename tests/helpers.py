"""Shared test helpers: waiting for conditions, and real worker processes."""
from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from workers.cli.http_json import http_json
from workers.cli.processes import WorkerProcess
from workers.cli.waiting import wait_until
from workers.errors import WorkerExitedError
from workers.kafka.broker import broker_env
from workers.local import free_port

__all__ = ("wait_until", "WorkerProc", "http_json", "read_topic", "send_raw", "applied", "database_options")

# A group join takes seconds and a rejoin longer on a loaded box; failover waits for the
# session timeout. Generous limits keep a loaded CI box from flaking.
READY_TIMEOUT_S = 90.0


class WorkerProc(WorkerProcess):
    """A real ``learnstream worker`` subprocess (``bootstrap=None``: on its own embedded broker)."""

    def __init__(self, bootstrap: str | None, data_dir: Path, *, app_id: str, partitions: int = 4,
                 log_dir: Path, name: str = "w", env: dict[str, str] | None = None,
                 token: str | None = None) -> None:
        port = free_port()
        self.data_dir = data_dir
        self.name = name
        broker = broker_env(bootstrap) if bootstrap else {}
        full = {**{k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_BROKER")}, **broker,
                "LEARNSTREAM_APP_ID": app_id, "LEARNSTREAM_DATA_DIR": str(data_dir),
                "LEARNSTREAM_WEB_PORT": str(port), "LEARNSTREAM_PARTITIONS": str(partitions),
                "LEARNSTREAM_SESSION_TIMEOUT_S": "6", "LEARNSTREAM_LOG_LEVEL": "info", **(env or {})}
        # HTTPS when the worker serves TLS; its CA file verifies the certificate
        self.tls = "LEARNSTREAM_TLS_CERTFILE" in full
        context = ssl.create_default_context(cafile=full.get("LEARNSTREAM_TLS_CAFILE")) if self.tls else None
        super().__init__(full, port=port, log=log_dir / f"{name}-{port}.log", token=token, ssl_context=context)

    def ready(self) -> bool:
        try:
            return super().ready()
        except WorkerExitedError as exc:
            raise AssertionError(f"worker {self.name}: {exc}") from None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> WorkerProc:  # type: ignore[override]
        super().wait_ready(timeout, 0.2, f"worker {self.name} /ready")  # a dead worker fails at once
        return self

    def dispatch(self, verb: str, body: dict | None = None) -> dict:  # type: ignore[override]
        return super().dispatch(verb, body)[1]


def send_raw(bootstrap: str, topic: str, key: bytes, values: list[bytes]) -> None:
    async def go() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await p.start()
        try:
            for v in values:
                await p.send_and_wait(topic, v, key=key)
        finally:
            await p.stop()
    asyncio.run(go())


def read_topic(bootstrap: str, topic: str, n: int | None, timeout: float = 60,
               isolation_level: str = "read_uncommitted") -> list[dict]:
    """At least ``n`` values of ``topic`` from the start (or what arrived within ``timeout``; with
    ``n=None``, everything that arrived within it)."""
    async def go() -> list[dict]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, isolation_level=isolation_level)
        await c.start()
        out: list[dict] = []
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout
            while (n is None or len(out) < n) and loop.time() < end:
                for msgs in (await c.getmany(timeout_ms=500)).values():
                    out += [orjson.loads(m.value) for m in msgs]
        finally:
            await c.stop()
        return out
    return asyncio.run(go())


def applied(w: WorkerProc, topic: str) -> float:
    """Messages of ``topic`` this worker has applied, from its /metrics (0 when none yet); an envelope
    is one message (``learnstream_events_total`` counts its events)."""
    return w.metric("learnstream_messages_total", outcome="applied", topic=topic)


def database_options(db_dir: Path) -> dict[str, str]:
    """What a RocksDB database was last opened with, from the newest OPTIONS file it wrote: the
    ``name=value`` lines (sections merged; a name in several sections keeps its last value)."""
    newest = max(db_dir.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    out = {}
    for line in newest.read_text().splitlines():
        name, eq, value = line.strip().partition("=")
        if eq and not name.startswith("#"):
            out[name] = value
    return out


def by_topic(counts: dict[tuple[str, int, str], int]) -> dict[tuple[str, str], int]:
    """A batch's counts by (topic, partition, outcome) (``BatchResult.messages`` / ``.events``) summed
    over partitions: (topic, outcome) -> count."""
    out: dict[tuple[str, str], int] = {}
    for (topic, _, outcome), n in counts.items():
        out[(topic, outcome)] = out.get((topic, outcome), 0) + n
    return out


def bench_module(name: str) -> Any:
    """A module of ``bench/`` (its scripts import each other by bare name, so the folder joins sys.path)."""
    import importlib
    import sys

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)
