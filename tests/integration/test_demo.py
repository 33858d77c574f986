"""`learnstream demo` works as the README says, and leaves no process behind."""
from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

pytestmark = pytest.mark.integration


def ours() -> set[int]:
    """Broker and worker processes that exist right now."""
    out = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "tansu" in cmd or "workers.cli worker" in cmd:
            out.add(p.info["pid"])
    return out


def test_demo_runs_and_reports(tmp_path) -> None:
    before = ours()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    r = subprocess.run([sys.executable, "-m", "workers.cli", "demo", "--events", "900"], env=env,
                       capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for section in ("model routing", "instant adapter", "task switches", "knowledge graph",
                    "continual learner", "dead-letter topic"):
        assert section in out, out
    assert "Where did Alice work at t=2500?" in out and "globex" in out
    assert "bad_json" in out  # the broken event was dead-lettered, and the demo went on
    assert ours() - before == set(), "the demo left a broker or worker running"
