"""A short chaos run on every CI build: SIGKILLs mid-stream, a fresh data dir, reads hammering the API.

The same harness as ``learnstream bench chaos`` (bench/chaos.py), smaller: one seed that rotates
by day (printed, so a failure can be replayed with ``learnstream bench chaos --first-seed N
--seeds 1``), a few hundred messages, two kills (the second restart on a fresh data dir).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos  # noqa: E402

pytestmark = pytest.mark.integration


def test_kills_restarts_and_reads_during_recovery_lose_nothing(tmp_path) -> None:
    seed = int(time.time() // 86400) % 1000
    out = chaos.run_seed(seed, scenario="kills", n_messages=600, sessions=6, partitions=4, rate=150.0, kills=2,
                         cycles=0, readers=2, log_dir=tmp_path, kill_after=(0.3, 2.5), fresh_restart=2)
    print(out.line())
    assert out.compared == 6 and out.kills == 2
    assert out.mismatched == [], f"seed {seed}: sessions differ from the in-process run: {out.mismatched}"
    # exactly once for a read_committed consumer: no id missing, none twice (transactions per batch)
    assert (out.missing, out.duplicated, out.conflicting, out.unexpected) == (0, 0, 0, 0), out.line()
    assert out.examples_lost == 0 and out.dlq == 0, out.line()
    assert out.reads.get("200_empty", 0) == 0, out.line()  # never an unrecovered (empty) answer
    assert out.reads.get("200", 0) > 0  # the readers did read
