"""`learnstream worker` as a user starts it: one line once it is ready, and its flags are kept."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workers.local import free_port

pytestmark = pytest.mark.integration

_READY_S = 120.0


def test_worker_prints_one_ready_line_and_keeps_its_flags_with_the_embedded_broker(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}  # embedded broker
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", "--log-level", "info", "--web-port",
                                 str(port), "--data-dir", str(tmp_path / "data"), "--partitions", "2"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            end = time.monotonic() + _READY_S
            while "learnstream worker ready:" not in log.read_text() and time.monotonic() < end:
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.2)
            # a second worker on the same data dir (and the same broker) is refused before it joins the
            # group: it used to take partitions and crash on their RocksDB LOCK files mid-rebalance
            first_broker = log.read_text().splitlines()[0].removeprefix("embedded broker on ").split(",")[0]
            second = subprocess.run([sys.executable, "-m", "workers.cli", "worker", "--web-port", str(free_port()),
                                     "--data-dir", str(tmp_path / "data"), "--broker", first_broker],
                                    env=env, capture_output=True, text=True, timeout=60)
            assert second.returncode == 2, second.stderr[-3000:]
            assert f"is in use by another worker (pid {proc.pid})" in second.stderr, second.stderr[-3000:]
            assert proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(60)
    text = log.read_text()
    ready = [line for line in text.splitlines() if line.startswith("learnstream worker ready:")]
    # "embedded broker on HOST:PORT, data in DIR"
    broker = text.splitlines()[0].removeprefix("embedded broker on ").split(",")[0]
    assert ready == [f"learnstream worker ready: http://127.0.0.1:{port} broker={broker} (embedded) "
                     f"pid={proc.pid}"], text[-3000:]
    # --log-level info was kept when the embedded broker was started (it used to fall back to warning)
    assert "[INFO]" in text
    assert (tmp_path / "data").is_dir()  # --data-dir too


def test_a_worker_whose_http_port_is_taken_says_so_before_starting_anything(tmp_path: Path) -> None:
    """faust used to fail on the bind only after the embedded broker and the tables were up, with a traceback."""
    import socket

    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "workers.cli", "worker", "--web-port", str(port),
                            "--data-dir", str(tmp_path / "data")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use); pick another HTTP port" in r.stderr
    assert not (tmp_path / "data" / "broker").exists()  # no broker was started
