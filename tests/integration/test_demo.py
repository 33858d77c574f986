"""`learnstream demo` works as the README says, and leaves no process behind."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psutil
import pytest

from workers.local import free_port

pytestmark = pytest.mark.integration


def leftovers(marker: str) -> list[str]:
    """Processes that inherited the demo's environment marker (its broker and worker) and still run."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.environ().get("LEARNSTREAM_TEST_MARKER") == marker and p.status() != psutil.STATUS_ZOMBIE:
                out.append(" ".join(p.info["cmdline"] or []))
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return out


def kill_marked(proc: subprocess.Popen, marker: str) -> None:
    """After a failed test: kill ``proc`` and whatever still carries its environment marker."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("LEARNSTREAM_TEST_MARKER") == marker:
                p.kill()
        except psutil.Error:
            pass


def test_demo_runs_and_reports(tmp_path) -> None:
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env["LEARNSTREAM_TEST_MARKER"] = marker
    port = free_port()  # --web-port is honoured (it was dropped with the embedded broker: issue 16)
    r = subprocess.run([sys.executable, "-m", "workers.cli", "demo", "--events", "900", "--web-port", str(port)],
                       env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert f"worker ready at http://127.0.0.1:{port} " in out, out
    for section in ("model routing", "instant adapter", "task switches", "knowledge graph",
                    "continual learner", "agent protocols", "memory importance", "dead-letter topic"):
        assert section in out, out
    assert "Where did Alice work at t=2500?" in out and "globex" in out
    assert "bad_json" in out  # the broken event was dead-lettered, and the demo went on
    assert leftovers(marker) == [], "the demo left a broker or worker running"


def test_demo_stopped_by_sigterm_stops_its_broker_and_worker(tmp_path) -> None:
    """SIGTERM mid-run (a cancelled job, `timeout`) ends the demo as Ctrl-C does: nothing is left behind."""
    from tests.helpers import wait_until

    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env["LEARNSTREAM_TEST_MARKER"] = marker
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "demo", "--events", "900"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path)
    try:
        wait_until(lambda: proc.poll() is None and "worker ready at" in log.read_text(), 240, 0.2,
                   "the demo's worker")
        proc.terminate()
        assert proc.wait(60) == 143, log.read_text()[-3000:]
        wait_until(lambda: leftovers(marker) == [], 30, 0.2, "the demo's broker and worker to exit")
    finally:
        kill_marked(proc, marker)
