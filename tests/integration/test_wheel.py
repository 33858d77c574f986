"""The built wheel works on its own: topics/*.yaml and bench/ inside the package, a worker runs from it
with no LEARNSTREAM_TOPICS_DIR and no checkout around it."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import http_json, wait_until
from workers.local import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_worker_runs_from_the_built_wheel(tmp_path, broker) -> None:
    # Reuses the CMake build of the editable install (build-dir in pyproject), so only packaging runs.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, timeout=900)
    (wheel,) = (tmp_path / "dist").glob("learnstream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "workers/topics/feedback.yaml" in names and "workers/bench/broker_soak.py" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    # -S: no .pth files, so not the editable install of this checkout; dependencies from this venv.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env.update(PYTHONPATH=f"{target}{os.pathsep}{sysconfig.get_paths()['purelib']}", LEARNSTREAM_BROKER=broker.bootstrap,
               LEARNSTREAM_PARTITIONS="2", LEARNSTREAM_DATA_DIR=str(tmp_path / "data"))
    where = subprocess.run([sys.executable, "-S", "-c", "import workers.kafka.topics as t; print(t.topics_dir())"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(target / "workers" / "topics")
    bench = subprocess.run([sys.executable, "-S", "-m", "workers.cli", "bench"], env=env, cwd=tmp_path,
                           capture_output=True, text=True)
    assert "broker_soak" in bench.stderr and "feedback" in bench.stderr
    port = free_port()
    env["LEARNSTREAM_WEB_PORT"] = str(port)
    w = subprocess.Popen([sys.executable, "-S", "-m", "workers.cli", "worker"], env=env, cwd=tmp_path,
                         stdout=open(tmp_path / "w.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: w.poll() is None and http_json(f"http://127.0.0.1:{port}/ready", timeout=3)[0] == 200,
                   120, 0.3, "the worker from the wheel", retry_on=(OSError,))
        status, out = http_json(f"http://127.0.0.1:{port}/dispatch",
                                {"verb": "record_loss", "body": {"session_key": "w", "loss": 0.5}})
        assert status == 200 and out["ok"], out
    finally:
        w.terminate()
        w.wait(60)
    assert "topics/*.yaml not found" not in (tmp_path / "w.log").read_text(errors="replace")
