"""Fixtures on real parts: a fresh embedded broker per test (no shared topics or
groups between tests), real worker subprocesses, a real producer."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import WorkerProc
from workers.kafka.broker import EmbeddedBroker
from workers.client import SyncClient

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as b:
        yield b


@pytest.fixture
def app_id() -> str:
    return f"ls-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def worker_factory(broker: EmbeddedBroker, tmp_path: Path, app_id: str) -> Iterator:
    started: list[WorkerProc] = []

    def make(name: str = "w", data_dir: Path | None = None, **kw: object) -> WorkerProc:
        w = WorkerProc(broker.bootstrap, data_dir or (tmp_path / f"data-{name}-{len(started)}"), app_id=app_id,
                       log_dir=tmp_path, name=name, **kw)
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop(timeout=20)


@pytest.fixture
def client(broker: EmbeddedBroker) -> Iterator[SyncClient]:
    c = SyncClient(broker.bootstrap)
    yield c
    c.close()
