"""The embedded Kafka-protocol broker: noida-db's Kafka service, persisting under a data directory.

Used when ``LEARNSTREAM_BROKER`` is unset, so ``learnstream demo`` and ``learnstream worker``
need no Kafka and no Docker. Chosen by the broker conformance suite (``tests/broker/``, the table
in the README): it persists its log across restarts, answers ListOffsets, group offsets,
idempotent and transactional producers, librdkafka and kcat correctly.

It listens on a free 127.0.0.1 port, is ready once it answers a Metadata request, and dies with
its parent (``PR_SET_PDEATHSIG`` sends SIGTERM, on which it saves its data and exits). Its data
lives in ``data_dir`` (the worker uses ``<LEARNSTREAM_DATA_DIR>/broker``), so stopping and starting
the worker keeps the log. It holds the retained log in memory and snapshots it to disk within
about a second of each change; :mod:`workers.kafka.broker_compat` gives every topic small segments so
compaction and retention keep that bounded. The binary ships in the ``noida-db`` wheel (the
``embedded`` extra); the production image leaves it out.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from workers.errors import BrokerError
from workers.kafka.broker_compat import MALLOC_TUNABLES
from workers.local import bind_error, free_port, parent_death_signal

__all__ = ("EmbeddedBroker", "wait_for_broker", "run_forever", "broker_env")

logger = logging.getLogger(__name__)

# The broker answers Metadata within ~100 ms of starting here; 30 s covers a loaded CI box
# and the load of a large saved log.
_START_TIMEOUT_S = 30.0
# SIGTERM makes it write its snapshot: the time that takes grows with the retained log.
_STOP_GRACE_S = 30.0
_INSTALL_HINT = "pip install 'learnstream[embedded]' (or set LEARNSTREAM_BROKER to an existing Kafka)"


def _die_with_parent(sig: int = signal.SIGTERM) -> None:  # runs in the child between fork and exec
    os.setsid()  # own process group: Ctrl-C in the terminal reaches us, not it, so we stop it in order
    parent_death_signal(sig)


async def metadata_ok(bootstrap: str, timeout_ms: int = 2000, **kafka: object) -> bool:
    """True when ``bootstrap`` answers a Metadata request (a plain TCP probe first)."""
    from aiokafka import AIOKafkaClient

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:  # aiokafka logs every refused connection as an ERROR; a refused TCP connect says enough
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout_ms / 1000)
        writer.close()
    except (OSError, asyncio.TimeoutError):
        return False

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, **kafka)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_ms / 1000 + 1)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return False
    finally:
        await client.close()


def wait_for_broker(bootstrap: str, timeout: float = _START_TIMEOUT_S,
                    proc: subprocess.Popen | None = None) -> None:
    """Block until ``bootstrap`` answers a Metadata request, or raise BrokerError.

    aiokafka's ERROR for a connection the broker accepted and then dropped while it was still loading its
    log (after a SIGKILL) is left out: it was a restarted worker's first line, before the one naming the
    broker's port (an outside trial). Nothing else uses aiokafka while this waits."""
    deadline = time.monotonic() + timeout
    aiokafka_log = logging.getLogger("aiokafka")
    aiokafka_log.addFilter(_not_yet_connected)
    try:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise BrokerError(f"broker exited with code {proc.returncode} before it was ready")
            if asyncio.run(metadata_ok(bootstrap)):
                return
            time.sleep(0.05)
    finally:
        aiokafka_log.removeFilter(_not_yet_connected)
    raise BrokerError(f"broker at {bootstrap} did not answer a metadata request within {timeout:g} s")


def _not_yet_connected(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Unable connect")


def broker_binary() -> str:
    """Path of the noida-db binary inside its wheel."""
    try:
        from importlib.resources import files

        import noida_db  # noqa: F401 - only to find its files
    except ImportError as exc:
        raise BrokerError(f"no embedded broker installed: {_INSTALL_HINT}") from exc
    name = "noida-db.exe" if os.name == "nt" else "noida-db"
    path = Path(str(files("noida_db").joinpath(name)))
    if not path.is_file():
        raise BrokerError(f"the noida-db wheel has no binary for this platform ({path}); "
                          "set LEARNSTREAM_BROKER to an existing Kafka instead")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)  # wheels do not keep the execute bit everywhere
    return str(path)


def _wait_for_previous_owner(data_dir: Path, timeout: float = _STOP_GRACE_S) -> None:
    """Wait for a broker still saving into ``data_dir`` to exit (a worker killed a moment ago sent it
    SIGTERM); two brokers on one data dir would overwrite each other's snapshot."""
    import psutil

    try:
        pid = int(orjson.loads((data_dir / "noida.control.json").read_bytes())["pid"])
        proc = psutil.Process(pid)
        if "noida" not in " ".join(proc.cmdline()):
            return  # a stale file from a broker that was killed; the pid is someone else's now
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError, psutil.Error):
        return
    logger.info("waiting for the previous broker (pid %d) to finish with %s", pid, data_dir)
    try:
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        raise BrokerError(f"another broker (pid {pid}) is using {data_dir}; stop it first") from None


class EmbeddedBroker:
    """The embedded broker process on 127.0.0.1, keeping its log in ``data_dir``.

    Without ``data_dir`` it uses a temporary directory removed on :meth:`stop` (tests, benchmarks).

    >>> with EmbeddedBroker(data_dir="./learnstream-data/broker") as b:   # doctest: +SKIP
    ...     print(b.bootstrap)                                            # 127.0.0.1:40123
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_path: str | Path | None = None,
                 data_dir: str | Path | None = None, death_signal: int = signal.SIGTERM) -> None:
        self.host = host
        # what it gets when this process dies: SIGTERM saves its log first; a benchmark, which keeps
        # its brokers suspended, asks for SIGKILL (a suspended process holds a SIGTERM until resumed)
        self.death_signal = death_signal
        self.port = port
        self.log_path = log_path
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._tmp: str | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @staticmethod
    def binary() -> str:
        return broker_binary()

    def start(self) -> EmbeddedBroker:
        if self.proc is not None:
            return self
        if self.port is None:
            self.port = free_port(self.host)
        elif (why := bind_error(self.host, self.port)) is not None:
            raise BrokerError(f"cannot listen on {self.host}:{self.port} ({why}); pick another port or omit it for a "
                              f"free one")
        if self.data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="learnstream-broker-")
            self.data_dir = Path(self._tmp)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _wait_for_previous_owner(self.data_dir)
        cmd = [self.binary(), "start", "--data-dir", str(self.data_dir), "--host", self.host, "--only", "kafka",
               "--kafka-port", str(self.port)]
        path = Path(self.log_path) if self.log_path else self.data_dir / "broker.log"
        self._log = open(path, "ab")  # noqa: SIM115 - lives as long as the process
        logger.info("starting embedded broker on %s, data in %s (log %s)", self.bootstrap, self.data_dir, path)
        env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=functools.partial(_die_with_parent, self.death_signal), env=env)
        try:
            wait_for_broker(self.bootstrap, proc=self.proc)
            if self.proc.poll() is not None:  # someone else answered on our port
                raise BrokerError(f"broker exited with code {self.proc.returncode}")
        except BrokerError as exc:
            self.stop()
            tail = path.read_bytes()[-2000:].decode(errors="replace")
            raise BrokerError(f"{exc}; broker log {path}:\n{tail}") from None
        return self

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (it saves its log and exits) or, with ``kill``, SIGKILL (whatever it had not saved is lost)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            if kill:
                proc.kill()
            else:
                proc.terminate()
            try:
                proc.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                logger.warning("embedded broker did not stop within %.0f s; killing it", _STOP_GRACE_S)
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self.data_dir = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def broker_env(bootstrap: str) -> dict[str, str]:
    """The environment a worker on an embedded broker at ``bootstrap`` needs."""
    return {"LEARNSTREAM_BROKER": bootstrap, "LEARNSTREAM_BROKER_KIND": "embedded"}


def run_forever(port: int | None = None, data_dir: str | Path | None = None) -> int:
    """``learnstream broker``: run until Ctrl-C / SIGTERM, keeping the log in ``data_dir``."""
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    # handlers first: a Ctrl-C right after "ready" must still stop the broker in order
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    broker = EmbeddedBroker(port=port, data_dir=data_dir).start()
    # both variables: a worker given only the address takes it for Kafka and leaves the embedded broker's
    # workarounds off (workers/kafka/broker_compat.py); the first SIGKILLed worker would then keep its
    # group slot for ever, and no worker after it would become ready
    # the second line is a shell command as it stands (a copied ")" once made a worker refuse its kind)
    print(f"learnstream broker ready on {broker.bootstrap}, data in {broker.data_dir}; its workers need:\n"
          f"export {' '.join(f'{k}={v}' for k, v in broker_env(broker.bootstrap).items())}", flush=True)
    try:
        while not stop and broker.proc is not None and broker.proc.poll() is None:
            time.sleep(0.2)
    finally:
        code = broker.proc.returncode if broker.proc is not None and broker.proc.poll() is not None else 0
        broker.stop()
    if code:
        print(f"broker exited with code {code}", file=sys.stderr)
    return 1 if code else 0
