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


# Checks the embedded default is known to fail, with the workaround learnstream uses instead. In the
# test suite they are reported as xfail without running (each costs minutes of waiting);
# ``learnstream bench brokers`` sets LEARNSTREAM_CONFORMANCE_ALL=1 and runs them for the table.
KNOWN_DEFECTS = {
    "noida": {
        "test_a_member_that_dies_without_leaving_is_expired":
            "noida-db 0.2.3 never expires a dead group member; worked around by "
            "workers/stream/peers.py (expel_group_members, DeadPeers)",
        "test_compaction_drops_superseded_transactional_values":
            "noida-db 0.2.3 never compacts records written in transactions; worked around by the "
            "worker's changelog rewrites, workers/kafka/changelog_rewrite.py (README, 'The embedded broker')",
    },
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import os

    spec = os.environ.get("LEARNSTREAM_CONFORMANCE_BROKER") or "noida"
    if os.environ.get("LEARNSTREAM_CONFORMANCE_ALL"):
        return
    for item in items:
        reason = KNOWN_DEFECTS.get(spec, {}).get(item.originalname)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, run=False))
