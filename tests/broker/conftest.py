"""The broker under test: one per module (topics and groups are uuid-named per test), and a fresh
one per test for the restart checks."""
from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.candidates import Candidate, candidate


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Candidate]:
    c = candidate(data_dir=tmp_path_factory.mktemp("broker") / "data").start()
    yield c
    c.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Candidate]:
    """A broker this test may stop and restart (skips for an external address)."""
    c = candidate(data_dir=tmp_path / "data")
    if not c.restartable:
        pytest.skip(f"cannot restart the external broker {c.bootstrap}")
    c.start()
    yield c
    c.stop()
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


@pytest.fixture
def name() -> str:
    return f"conf-{uuid.uuid4().hex[:10]}"
