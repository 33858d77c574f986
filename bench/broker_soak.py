"""Embedded-broker memory in a long local run (``learnstream bench broker_soak``).

``learnstream worker`` with no broker configured (the embedded default, its log under the data dir)
and a steady stream of 384-d feedback events (``embedding_b64``) over many sessions for ``--minutes``.
Every ``--sample-s`` the broker process's RSS, its snapshot size on disk, the worker's RSS and the
events applied are recorded. Judged: the broker's RSS levels off (retention, compaction, and with
transactions the worker's own changelog rewrites, see workers/kafka/broker_compat.py) instead of
growing with everything ever written. Reports start, peak,
last and the slope over the second half.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil

from workers.cli.processes import metric, metric_by
from workers.local import free_port
from workers.client import LearnstreamClient

__all__ = ("main",)


def _metric(url: str, name: str) -> float:
    try:
        return metric(urllib.request.urlopen(url + "/metrics", timeout=10).read().decode(), name)
    except OSError:
        return float("nan")


def _applied(url: str) -> float:
    try:
        text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    except OSError:
        return float("nan")
    return sum(metric_by(text, "learnstream_events_total", "topic", outcome="applied").values())


def _bootstrap_of(log: Path, timeout: float = 60) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = re.search(r"embedded broker on (\S+?),", log.read_text(errors="replace") if log.exists() else "")
        if m:
            return m.group(1)
        time.sleep(0.2)
    raise TimeoutError("the worker did not start its embedded broker")


async def _produce(bootstrap: str, rate: float, seconds: float, sessions: int, dim: int) -> int:
    rng = np.random.default_rng(0)
    sent = 0
    async with LearnstreamClient(bootstrap, validate=False) as c:
        for n in range(sessions):
            await c.send("commands", f"soak-{n}", {"verb": "init_instant", "body": {
                "session_key": f"soak-{n}", "targets": [f"m{k}" for k in range(4)], "dim": dim}}, wait=False)
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < seconds:
            due = int(elapsed * rate) - sent
            for _ in range(max(due, 0)):
                emb = rng.standard_normal(dim).astype(np.float32)
                await c.feedback(f"soak-{sent % sessions}", emb, model=f"m{sent % 4}", quality=float(rng.random()),
                                 wait=False)
                sent += 1
            await asyncio.sleep(0.05)
        await c.flush()
    return sent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="learnstream bench broker_soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=100.0, help="feedback events per second (default 100)")
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--sample-s", type=float, default=15.0)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="learnstream-bench-soak-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env.update(LEARNSTREAM_DATA_DIR=str(work / "data"), LEARNSTREAM_WEB_PORT=str(port))
    log = work / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker"], env=env, stdout=open(log, "wb"),
                              stderr=subprocess.STDOUT)
    samples: list[tuple[float, int, int, int, float]] = []
    try:
        bootstrap = _bootstrap_of(log)
        url = f"http://127.0.0.1:{port}"
        from workers.cli.http_json import http_json
        from workers.cli.waiting import wait_until

        # producing before the worker created its topics would let the broker auto-create them
        wait_until(lambda: http_json(url + "/ready", timeout=3)[0] == 200, 120, 0.3, "the worker /ready",
                   retry_on=(OSError,))
        broker = next(c for c in psutil.Process(worker.pid).children(recursive=True) if "noida" in " ".join(c.cmdline()))
        seconds = args.minutes * 60
        print(f"soak: {args.rate:.0f} feedback events/s ({args.dim}-d) over {args.sessions} sessions for "
              f"{args.minutes:g} min; broker pid {broker.pid}", file=sys.stderr, flush=True)

        async def run() -> int:
            prod = asyncio.create_task(_produce(bootstrap, args.rate, seconds, args.sessions, args.dim))
            t0 = time.monotonic()
            while not prod.done():
                snap = work / "data" / "broker" / "kafka.json"
                samples.append((time.monotonic() - t0, broker.memory_info().rss,
                                snap.stat().st_size if snap.exists() else 0,
                                psutil.Process(worker.pid).memory_info().rss, _applied(url)))
                s = samples[-1]
                print(f"  t={s[0]:6.0f}s broker RSS {s[1] / 2**20:7.1f} MiB  snapshot {s[2] / 2**20:7.1f} MiB  "
                      f"worker RSS {s[3] / 2**20:7.1f} MiB  applied {s[4]:.0f}", file=sys.stderr, flush=True)
                await asyncio.wait([prod], timeout=args.sample_s)
            return prod.result()

        sent = asyncio.run(run())
        rewrites = [_metric(url, "learnstream_changelog_rewrites_total"),
                    _metric(url, "learnstream_changelog_rewrite_bytes_total")]
    finally:
        worker.terminate()
        worker.wait(120)
        if worker.returncode not in (0, -15):
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
    rss = [s[1] / 2**20 for s in samples]
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    slope = (np.polyfit([s[0] / 60 for s in half], [s[1] / 2**20 for s in half], 1)[0] if len(half) > 2
             else float("nan"))
    print(f"| measure ({args.minutes:g} min, {args.rate:.0f} events/s, {sent} events) | value |")
    print("|---|---|")
    print(f"| broker RSS at start / peak / end | {rss[0]:.0f} / {max(rss):.0f} / {rss[-1]:.0f} MiB |")
    print(f"| broker RSS slope over the second half | {slope:+.1f} MiB/min |")
    print(f"| broker snapshot on disk at end | {samples[-1][2] / 2**20:.0f} MiB |")
    print(f"| worker RSS at end | {samples[-1][3] / 2**20:.0f} MiB |")
    print(f"| events applied (of {sent}) | {samples[-1][4]:.0f} |")
    print(f"| changelog rewrites by the worker (bytes re-produced) | {rewrites[0]:.0f} ({rewrites[1] / 2**20:.0f} MiB) |")
    shutil.rmtree(work, ignore_errors=True)
    return 0
