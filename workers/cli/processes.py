"""Real ``learnstream worker`` subprocesses and their ``/metrics``: the one helper the demo, ``learnstream
mcp`` (its embedded worker), the benchmarks and the tests use to start, watch, measure and stop a worker.
"""
from __future__ import annotations

import functools
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from workers.cli.http_json import http_json
from workers.cli.waiting import wait_until
from workers.errors import WorkerExitedError
from workers.local import parent_death_signal

__all__ = ("ChildProcess", "WorkerProcess", "metric", "metric_by", "WORKER_COMMAND")

# ``python -m workers.cli worker``: the same as ``learnstream worker`` without needing the script on PATH.
WORKER_COMMAND = (sys.executable, "-m", "workers.cli", "worker")
_LOG_TAIL_BYTES = 4000


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample of ``/metrics`` text (0.0 when absent)."""
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def metric_by(text: str, name: str, label: str, **labels: str) -> dict[str, float]:
    """The samples of ``name`` (matching ``labels``) summed by the value of ``label``."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and label in s.labels and all(s.labels.get(k) == v for k, v in labels.items()):
                out[s.labels[label]] = out.get(s.labels[label], 0.0) + float(s.value)
    return out


class ChildProcess:
    """A child process that can be suspended and resumed (SIGSTOP / SIGCONT), measured for CPU time,
    and stopped; ``proc`` is set by a subclass's ``start``."""

    proc: subprocess.Popen | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- suspending and measuring (benchmarks) ----------------------------------------------------
    def _ps(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def pause(self) -> None:
        self._ps().suspend()

    def resume(self) -> float:
        """SIGCONT; returns the monotonic time just before the signal (the start of a measurement).
        A child that exited meanwhile raises RuntimeError with its exit code (and its log's tail)."""
        if not self.alive():
            code = self.proc.returncode if self.proc is not None else None
            tail = self.log_tail()
            raise RuntimeError(f"{' '.join(map(str, self.proc.args)) if self.proc else 'the child'} exited ({code}) "
                               f"while suspended" + (f"; log:\n{tail}" if tail else ""))
        ps = self._ps()
        t = time.monotonic()
        ps.resume()
        return t

    def log_tail(self) -> str:
        """The end of its output, where a subclass keeps it."""
        return ""

    def cpu_seconds(self) -> float:
        c = self._ps().cpu_times()
        return c.user + c.system

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit, no flush."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._stopped()

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (resuming a suspended process first), SIGKILL after ``timeout``."""
        if self.alive():
            try:
                self._ps().resume()  # a suspended process ignores SIGTERM until resumed
            except psutil.Error:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._stopped()

    def _stopped(self) -> None:
        """After the process ended (a subclass closes its log here)."""


class WorkerProcess(ChildProcess):
    """A ``learnstream worker`` child process with environment ``env`` serving HTTP on ``port``.

    ``log``: a file path (appended to) or an open stream for its output. ``ssl_context`` (a worker
    serving TLS) makes the URL ``https`` and verifies the worker with it; ``token`` is sent with
    :meth:`dispatch`. Stop it with :meth:`stop` (SIGTERM, then SIGKILL) or :meth:`kill` (SIGKILL).
    ``death_signal``: what the kernel sends it if this process dies without stopping it.
    """

    def __init__(self, env: Mapping[str, str], *, port: int, log: Path | IO[bytes] | IO[str],
                 command: list[str] | tuple[str, ...] | None = None, cwd: Path | None = None,
                 token: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 death_signal: int | None = None) -> None:
        self.env = dict(env)
        self.death_signal = death_signal  # sent by the kernel if this process dies first (None: nothing)
        self.port = port
        self.log_path = log if isinstance(log, Path) else None
        self._log_stream = None if isinstance(log, Path) else log
        self._log: Any = None
        self.command = list(command or WORKER_COMMAND)
        self.cwd = cwd
        self.token = token
        self.ssl_context = ssl_context
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.ready_at = 0.0

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> WorkerProcess:
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        out = self._log if self._log is not None else self._log_stream
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     preexec_fn=None if self.death_signal is None else
                                     functools.partial(parent_death_signal, self.death_signal))
        return self

    def log_tail(self, n: int = _LOG_TAIL_BYTES) -> str:
        if self.log_path is None:
            return "(its output went to this process's stderr)"
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def ready(self) -> bool:
        """Whether ``/ready`` answers 200; :class:`WorkerExitedError` (with its log) once it has exited."""
        if not self.alive():
            code = self.proc.returncode if self.proc is not None else None
            raise WorkerExitedError(f"the worker exited ({code}); log:\n{self.log_tail()}")
        try:
            return http_json(self.url + "/ready", timeout=5, context=self.ssl_context)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float, interval: float = 0.2, what: str = "worker /ready") -> float:
        """Block until ``/ready`` (a dead worker fails at once); seconds from start to ready."""
        wait_until(self.ready, timeout, interval, what, retry_on=())
        self.ready_at = time.monotonic()
        return self.ready_at - self.started_at

    def health(self) -> dict:
        return http_json(self.url + "/health", timeout=5, context=self.ssl_context)[1]

    def dispatch(self, verb: str, body: dict | None = None) -> tuple[int, Any]:
        """(HTTP status, envelope) of one verb on ``/dispatch``."""
        return http_json(self.url + "/dispatch", {"verb": verb, "body": body or {}}, token=self.token,
                         context=self.ssl_context)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=30, context=self.ssl_context) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.metrics(), name, **labels)

    def _stopped(self) -> None:
        if self._log is not None and not self._log.closed:
            self._log.close()
