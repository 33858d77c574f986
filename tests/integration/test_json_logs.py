"""``LEARNSTREAM_LOG_FORMAT=json``: every line a real worker writes is one JSON object.

The worker runs at INFO through a start (our warnings logged before faust sets up logging, the
printed "ready" line), applied writes, a broker outage (aiokafka's ERRORs, faust's warnings, our
own ERROR) and a SIGTERM; stdout and stderr go to one file, and every line of it must parse as a
JSON object with the documented keys. A traceback's rendering (``exception``, still one line) is
checked in tests/unit/test_logs.py: no request makes a healthy worker raise one on demand.
"""
from __future__ import annotations

import json

import pytest

from tests.helpers import WorkerProc, http_json, wait_until
from workers.kafka.broker import EmbeddedBroker

pytestmark = pytest.mark.integration

_KEYS = {"timestamp", "level", "logger", "event"}


def test_every_line_of_a_json_worker_is_one_json_object(tmp_path, app_id) -> None:
    broker = EmbeddedBroker(data_dir=tmp_path / "log", log_path=tmp_path / "broker.log").start()
    port = broker.port
    w = WorkerProc(broker.bootstrap, tmp_path / "data", app_id=app_id, partitions=2, log_dir=tmp_path, name="w",
                   env={"LEARNSTREAM_LOG_FORMAT": "json",
                        "LEARNSTREAM_BROKER_UNREACHABLE_S": "2", "LEARNSTREAM_WRITE_TIMEOUT_S": "3"})
    try:
        w.start().wait_ready()
        out = w.dispatch("record_loss", {"session_key": "json-1", "loss": 0.5})
        assert out.get("ok"), out
        broker.stop()  # the outage: aiokafka and faust log connection errors, /ready turns 503
        wait_until(lambda: http_json(w.url + "/ready", timeout=5)[0] == 503, 60, 0.2, "/ready 503")
        broker = EmbeddedBroker(port=port, data_dir=tmp_path / "log", log_path=tmp_path / "broker.log").start()
        wait_until(lambda: http_json(w.url + "/ready", timeout=5)[0] == 200, 120, 0.3, "/ready 200 again")
        assert w.dispatch("record_loss", {"session_key": "json-1", "loss": 0.4}).get("ok")
    finally:
        w.stop()
        broker.stop()
    lines = w.log_path.read_text().splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {n} of {len(lines)} is not JSON: {line!r}") from None
        assert isinstance(rec, dict) and _KEYS <= rec.keys(), f"line {n}: {line!r}"
        records.append(rec)
    loggers = {r["logger"] for r in records}
    assert any(lg.startswith("workers") for lg in loggers), loggers           # ours
    assert any(lg.startswith(("faust", "mode")) for lg in loggers), loggers   # faust's (and mode's)
    assert any(lg.startswith("aiokafka") for lg in loggers), loggers          # aiokafka's
    assert any(r["level"] == "error" for r in records)
    assert all(isinstance(r.get("exception", ""), str) for r in records)
    assert any("learnstream worker ready:" in r["event"] for r in records)    # the printed lines too
