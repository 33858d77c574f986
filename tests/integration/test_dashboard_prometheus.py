"""The Grafana dashboard against a real Prometheus scrape: a real Prometheus (Debian's ``prometheus``
binary) scrapes a real worker's /metrics while traffic touches every panel's metric, then every panel's
PromQL (Grafana's variables substituted) is evaluated through Prometheus' HTTP API and must return data:
a non-empty result with a finite value."""
from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.unit.scoring_servers import MSGS, LMServer
from workers.cli.processes import ChildProcess
from workers.cli.waiting import wait_until
from workers.local import free_port
from workers.stream.partitioning import owner_partition

PROMETHEUS = shutil.which("prometheus")
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (apt-get install prometheus; "
                                                            ".ci/run installs it)")]

DASHBOARD = Path(__file__).parents[2] / "deploy" / "helm" / "learnstream" / "dashboards" / "learnstream.json"
NAMESPACE, POD = "dash-test", "w-0"
PARTITIONS = 2
# Grafana's $__rate_interval is at least 4 scrape intervals; 1 s scrapes, and a window that still holds
# the traffic of the last seconds
RATE_INTERVAL = "30s"


def _panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, with the dashboard's variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$__rate_interval", RATE_INTERVAL).replace("$namespace", NAMESPACE)
                    .replace("$pod", POD))
            assert "$" not in expr, f"an unknown variable in {expr}"
            out.append((panel["title"], expr))
    return out


class Prometheus(ChildProcess):
    """A Prometheus server on 127.0.0.1 scraping ``target`` every second, its data in ``data_dir``."""

    def __init__(self, target: str, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = data_dir / "prometheus.yml"
        data_dir.mkdir(parents=True, exist_ok=True)
        # the labels a Kubernetes scrape adds (the chart's pod annotations): the dashboard filters on them
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "learnstream", "static_configs": [
                {"targets": [target], "labels": {"namespace": NAMESPACE, "pod": POD}}]}]}))  # YAML is JSON
        self._log = open(data_dir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={data_dir / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def api(self, path: str, **params: str) -> dict:
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10) as r:
            out = json.loads(r.read())
        assert out["status"] == "success", out
        return out["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    def target_up(self) -> bool:
        try:
            return any(t["health"] == "up" for t in self.api("targets")["activeTargets"])
        except OSError:
            return False

    def stop(self) -> None:  # type: ignore[override]
        super().stop(20)

    def _stopped(self) -> None:
        self._log.close()


def _has_data(result: list[dict]) -> bool:
    return any(math.isfinite(float(s["value"][1])) for s in result)


def _traffic(bootstrap: str, client, stop: threading.Event) -> None:
    """Keeps every panel's metric moving: losses with jumps (kernels, boundaries, consolidations), a
    conversation to score (scoring calls), a bad event (DLQ), an event on a partition that does not own
    its key (re-routed; its copy is written in a transaction, whose marker makes an offset gap)."""
    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            i = 0
            while not stop.is_set():
                for s in ("dash-a", "dash-b", "dash-c"):
                    client.loss(s, 5.0 if i % 7 == 6 else 0.5 + 0.01 * (i % 7), wait=False)
                if i % 10 == 0:
                    client.memory_context("dash-a", f"c{i}", MSGS, wait=False)
                    await producer.send_and_wait("learn.loss", b"{not json", key=b"dash-bad")
                    wrong = 1 - owner_partition("dash-moved", PARTITIONS)
                    await producer.send_and_wait("learn.loss", orjson.dumps(
                        {"verb": "record_loss", "session_key": "dash-moved", "loss": 0.5}),
                        key=b"dash-moved", partition=wrong)
                client.flush()
                i += 1
                await asyncio.sleep(0.3)
        finally:
            await producer.stop()
    asyncio.run(go())


def test_every_dashboard_panel_returns_data_from_a_real_scrape(broker, worker_factory, client, tmp_path) -> None:
    queries = _panel_queries()
    assert queries
    with LMServer() as server:
        w = worker_factory(partitions=PARTITIONS, env={"LEARNSTREAM_SCORING_ENDPOINTS": server.url}).start()
        w.wait_ready()
        # outbound scoring calls (the scoring panels): a session scored through the /v1/score contract
        cfg = w.dispatch("configure_scoring", {"session_key": "dash-a", "backend": "score_api",
                                               "base_url": server.url + "/v1", "model": "m", "tokenizer": "builtin"})
        assert cfg["ok"], cfg
        prom = Prometheus(f"127.0.0.1:{w.port}", tmp_path / "prometheus")
        stop = threading.Event()
        traffic = threading.Thread(target=_traffic, args=(broker.bootstrap, client, stop), daemon=True)
        try:
            wait_until(prom.target_up, 60, 0.5, "Prometheus scraping the worker")
            traffic.start()
            empty: list[tuple[str, str]] = []

            def all_have_data() -> bool:
                empty[:] = [(title, q) for title, q in queries if not _has_data(prom.query(q))]
                return not empty
            try:
                wait_until(all_have_data, 120, 2.0, "every panel to return data")
            except TimeoutError:
                pytest.fail(f"panels without data after 120 s of traffic: {empty}")
            # the dashboard's pod variable (label_values(learnstream_ready{namespace=...}, pod))
            pods = prom.api("label/pod/values", **{"match[]": f'learnstream_ready{{namespace="{NAMESPACE}"}}'})
            assert pods == [POD]
        finally:
            stop.set()
            traffic.join(30)
            prom.stop()
    assert not re.search(r"level=error", (tmp_path / "prometheus" / "prometheus.log").read_text()), \
        "Prometheus logged errors"
