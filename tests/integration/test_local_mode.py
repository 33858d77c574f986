"""The embedded default across restarts: ``learnstream worker`` with no broker configured, the same data dir.

The broker's log lives under the data dir, so SIGTERM or SIGKILL and a new ``learnstream worker`` keep
every learned state and apply every new event (none skipped as a duplicate). When the log is gone the
worker notices that its tables belong to another log, moves them aside with a clear line, and goes on.
"""
from __future__ import annotations

import psutil
import pytest

from tests.helpers import WorkerProc, wait_until

pytestmark = pytest.mark.integration

SESSION = "agent-7"


def _info(w: WorkerProc) -> dict:
    out = w.dispatch("session_info", {"session_key": SESSION})
    assert out["ok"], out
    return out["data"]


def _window(w: WorkerProc) -> int:
    """The last input offset applied to the session (its watermark; one session = one partition)."""
    wm = _info(w)["watermark"]
    return max(wm.values()) + 1 if wm else 0


def _write_losses(w: WorkerProc, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        out = w.dispatch("record_loss", {"session_key": SESSION, "loss": 0.5 + 0.01 * i})
        assert out["ok"], out  # acknowledged = applied


def _broker_pids(w: WorkerProc) -> list[int]:
    return [c.pid for c in psutil.Process(w.proc.pid).children(recursive=True) if "noida" in " ".join(c.cmdline())]


def _restart_keeps_state_and_applies_new_events(data, tmp_path, name: str, before: dict, applied: int,
                                                new: int) -> WorkerProc:
    """A new worker on ``data``: the session as ``before``, then ``new`` more events all applied after
    the ``applied`` ones. Returns the stopped worker (for its log)."""
    w = WorkerProc(None, data, app_id="learnstream", partitions=2, log_dir=tmp_path, name=name).start()
    try:
        w.wait_ready()
        assert _info(w) == before
        _write_losses(w, new, start=applied)
        assert _window(w) == applied + new
    finally:
        w.stop()
    return w


def test_sigterm_and_sigkill_then_restart_keep_state_and_apply_every_new_event(tmp_path) -> None:
    data = tmp_path / "data"
    w = WorkerProc(None, data, app_id="learnstream", partitions=2, log_dir=tmp_path, name="first").start().wait_ready()
    try:
        assert _broker_pids(w), "the worker runs its own embedded broker"
        _write_losses(w, 30)
        before = _info(w)
        assert _window(w) == 30
    finally:
        w.stop()  # SIGTERM
    assert (data / "broker").is_dir()  # the log lives under the data dir

    w = WorkerProc(None, data, app_id="learnstream", partitions=2, log_dir=tmp_path, name="after-term").start()
    try:
        w.wait_ready()
        assert _info(w) == before
        _write_losses(w, 5, start=30)
        assert _window(w) == 35  # every new event applied: none taken for a duplicate of the old log
        before = _info(w)
        w.kill()  # SIGKILL: no shutdown at all; the broker gets SIGTERM from the kernel and saves its log
    finally:
        w.stop()

    w = _restart_keeps_state_and_applies_new_events(data, tmp_path, "after-kill", before, 35, 5)
    assert "ConsistencyError" not in w.log_tail(100_000)


def test_sighup_while_stopped_stops_the_worker_as_sigterm_does(tmp_path) -> None:
    """A worker stopped (SIGSTOP) in a process group whose shell exits gets SIGHUP and SIGCONT from the
    kernel: it shuts down with its last commit (exit 0, not killed by the signal) and a restart has it all."""
    import signal

    data = tmp_path / "data"
    w = WorkerProc(None, data, app_id="learnstream", partitions=2, log_dir=tmp_path, name="hup").start().wait_ready()
    try:
        _write_losses(w, 12)
        before = _info(w)
        w.proc.send_signal(signal.SIGSTOP)
        w.proc.send_signal(signal.SIGHUP)
        w.proc.send_signal(signal.SIGCONT)
        assert w.proc.wait(90) == 0, w.log_tail()
    finally:
        w.stop()
    _restart_keeps_state_and_applies_new_events(data, tmp_path, "after-hup", before, 12, 3)


def test_tables_of_another_log_are_moved_aside_and_new_events_apply(tmp_path) -> None:
    import shutil

    data = tmp_path / "data"
    w = WorkerProc(None, data, app_id="learnstream", partitions=2, log_dir=tmp_path, name="first").start().wait_ready()
    try:
        _write_losses(w, 20)
    finally:
        w.stop()
    shutil.rmtree(data / "broker")  # the log is gone; the tables (offsets up to 20) are not

    w = WorkerProc(None, data, app_id="learnstream", partitions=2, log_dir=tmp_path, name="new-log").start()
    try:
        w.wait_ready()
        log = w.log_tail(100_000)
        assert "local tables belong to another log" in log and "stale-tables-" in log
        assert list(data.glob("stale-tables-*")), "the old tables were kept, not deleted"
        _write_losses(w, 3)  # offsets 0..2 of the new log: below the old watermark, and still applied
        wait_until(lambda: _window(w) == 3, 30, what="the new log's events applied")
        pid = w.proc.pid
    finally:
        w.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # and a restart on the new log keeps what it learned (no second move)
    w = WorkerProc(None, data, app_id="learnstream", partitions=2, log_dir=tmp_path, name="again").start()
    try:
        w.wait_ready()
        assert _window(w) == 3
        assert len(list(data.glob("stale-tables-*"))) == 1
    finally:
        w.stop()
