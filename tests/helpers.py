"""Shared test helpers: waiting for conditions, and real worker processes."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from workers.broker import free_port
from workers.http import http_json
from workers.waiting import wait_until

__all__ = ("wait_until", "WorkerProc", "http_json", "read_topic", "send_raw", "applied")

# Tansu's group join takes ~5 s and a rejoin up to ~18 s; failover waits for the
# session timeout. Generous limits keep a loaded CI box from flaking.
READY_TIMEOUT_S = 90.0


class WorkerProc:
    """A real ``learnstream worker`` subprocess."""

    def __init__(self, bootstrap: str, data_dir: Path, *, app_id: str, partitions: int = 4,
                 log_dir: Path, name: str = "w", env: dict[str, str] | None = None,
                 token: str | None = None) -> None:
        self.port = free_port()
        self.token = token  # sent by dispatch()
        self.data_dir = data_dir
        self.name = name
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.env = dict(os.environ, LEARNSTREAM_BROKER=bootstrap, LEARNSTREAM_BROKER_KIND="embedded",
                        LEARNSTREAM_APP_ID=app_id, LEARNSTREAM_DATA_DIR=str(data_dir),
                        LEARNSTREAM_WEB_PORT=str(self.port), LEARNSTREAM_PARTITIONS=str(partitions),
                        LEARNSTREAM_SESSION_TIMEOUT_S="6", LEARNSTREAM_LOG_LEVEL="info",
                        **(env or {}))
        self.proc: subprocess.Popen | None = None
        # HTTPS when the worker serves TLS; its CA file verifies the certificate
        self.tls = "LEARNSTREAM_TLS_CERTFILE" in self.env
        self.ssl_context = None
        if self.tls:
            import ssl

            self.ssl_context = ssl.create_default_context(cafile=self.env.get("LEARNSTREAM_TLS_CAFILE"))

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> WorkerProc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> dict:
        return http_json(self.url + "/health", timeout=5, context=self.ssl_context)[1]

    def ready(self) -> bool:
        if not self.alive():
            raise AssertionError(f"worker {self.name} exited ({self.proc.returncode}); log:\n{self.log_tail()}")
        try:
            return http_json(self.url + "/ready", timeout=5, context=self.ssl_context)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> WorkerProc:
        wait_until(self.ready, timeout, 0.2, f"worker {self.name} /ready", retry_on=())  # a dead worker fails at once
        return self

    def dispatch(self, verb: str, body: dict | None = None) -> dict:
        return http_json(self.url + "/dispatch", {"verb": verb, "body": body or {}}, token=self.token,
                         context=self.ssl_context)[1]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit, no flush."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._log.close()

    def stop(self, timeout: float = 60) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        if not self._log.closed:
            self._log.close()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""


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


def read_topic(bootstrap: str, topic: str, n: int, timeout: float = 60) -> list[dict]:
    """At least ``n`` values of ``topic`` from the start (or what arrived within ``timeout``)."""
    async def go() -> list[dict]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False)
        await c.start()
        out: list[dict] = []
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout
            while len(out) < n and loop.time() < end:
                for msgs in (await c.getmany(timeout_ms=500)).values():
                    out += [orjson.loads(m.value) for m in msgs]
        finally:
            await c.stop()
        return out
    return asyncio.run(go())


def applied(w: WorkerProc, topic: str) -> float:
    """Events of ``topic`` this worker has applied, from its /metrics (0 when none yet)."""
    import re

    text = urllib.request.urlopen(w.url + "/metrics", timeout=10).read().decode()
    m = re.search(rf'learnstream_events_total{{outcome="applied",topic="{re.escape(topic)}"}} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0
