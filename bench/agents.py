"""Benchmark: what an agent waits for (``learnstream bench agents``).

One embedded broker, one ``learnstream worker`` subprocess, everything on loopback:

- **SDK write-and-wait**: ``LearnstreamClient.apply`` (``mark_used``, each with its own
  idempotency key), one at a time and with many in flight; each returns once the owning
  worker applied it (produced to ``learn.commands``, consumed, applied, state written);
- **MCP tool calls** with the official MCP client: a write (``mark_used``) and a read
  (``retrieve``) over stdio and over streamable HTTP (the ``learnstream mcp --http`` sidecar);
- **the set-up race**: fresh sessions, ``init_instant`` then one feedback event each, no send
  awaited one by one; counted are the feedback events the worker refused ("instant not
  initialized", dead-lettered), for set-up produced to Kafka (the old README), set-up through
  ``apply``, and produce-style set-up on a client with a ``worker_url`` (the SDK holds the
  session's sends until its set-up is applied).

No speed target is set by the issue; the race rows must read 0 for the two safe ways.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from _stream import WorkerProcess, machine_note, provision, start_broker, teardown, wait_until
from workers.cli.processes import metric
from workers.local import free_port
from workers.client import LearnstreamClient
from workers.kafka.topics import topics

__all__ = ("main",)

_ROOT = Path(__file__).resolve().parent.parent


def _ms(xs: list[float]) -> str:
    a = np.array(xs) * 1000
    return f"{np.percentile(a, 50):.1f} / {np.percentile(a, 99):.1f}"


async def _sdk(url: str, n: int, inflight: int) -> dict[str, str]:
    async with LearnstreamClient(worker_url=url) as c:
        rid = (await c.apply("bench-sdk", "add_knowledge", {"agent": "a", "domain": "d", "fact": "f"})).data["record_id"]
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            await c.apply("bench-sdk", "mark_used", {"ids": [rid]})
            lat.append(time.perf_counter() - t0)
        sessions = [f"bench-sdk-{i}" for i in range(inflight)]
        rids = {s: (await c.apply(s, "add_knowledge", {"agent": "a", "domain": "d", "fact": "f"})).data["record_id"]
                for s in sessions}
        per = max(1, n // inflight)

        async def one(s: str) -> None:
            for _ in range(per):
                await c.apply(s, "mark_used", {"ids": [rids[s]]})

        t0 = time.perf_counter()
        await asyncio.gather(*(one(s) for s in sessions))
        rate = per * inflight / (time.perf_counter() - t0)
    return {"sequential p50 / p99 ms": _ms(lat), f"{inflight} in flight, writes/s": f"{rate:.0f}"}


async def _mcp_calls(session, n: int) -> dict[str, str]:  # noqa: ANN001 - mcp.ClientSession
    await session.initialize()
    k = await session.call_tool("add_knowledge", {"session_key": "bench-mcp", "agent": "a", "domain": "d",
                                                  "fact": "run the tests with pytest"})
    rid = k.structuredContent["data"]["record_id"]
    w, r = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        res = await session.call_tool("mark_used", {"session_key": "bench-mcp", "ids": [rid]})
        w.append(time.perf_counter() - t0)
        assert not res.isError, res.content
        t0 = time.perf_counter()
        res = await session.call_tool("retrieve", {"session_key": "bench-mcp", "task": "run tests", "agent": "a"})
        r.append(time.perf_counter() - t0)
        assert not res.isError, res.content
    return {"write (mark_used) p50 / p99 ms": _ms(w), "read (retrieve) p50 / p99 ms": _ms(r)}


async def _mcp_stdio(url: str, n: int) -> dict[str, str]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "workers.cli", "mcp", "--worker-url", url],
                                   env={k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")},
                                   cwd=str(_ROOT))
    async with stdio_client(params) as (rd, wr), ClientSession(rd, wr) as s:
        return await _mcp_calls(s, n)


async def _mcp_http(url: str, n: int, log_dir: Path) -> dict[str, str]:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    port, token = free_port(), uuid.uuid4().hex
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}, "LEARNSTREAM_MCP_TOKEN": token}
    with open(log_dir / "sidecar.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "mcp", "--http", f"127.0.0.1:{port}",
                                 "--worker-url", url], env=env, cwd=_ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            mcp_url = f"http://127.0.0.1:{port}/mcp"

            def up() -> bool:
                try:
                    return httpx.post(mcp_url, json={}, timeout=2).status_code == 401
                except httpx.HTTPError:
                    return False

            wait_until(up, 60, "the MCP sidecar")
            async with streamablehttp_client(mcp_url, headers={"Authorization": f"Bearer {token}"}) as (rd, wr, _), \
                    ClientSession(rd, wr) as s:
                return await _mcp_calls(s, n)
        finally:
            proc.terminate()
            proc.wait(30)


def _events(url: str, outcome: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return metric(text, "learnstream_events_total", outcome=outcome, topic=topics()["feedback"].name)


async def _race(bootstrap: str, url: str, sessions: int, how: str) -> int:
    """Feedback events refused for want of set-up, of ``sessions`` fresh sessions."""
    before = _events(url, "applied") + _events(url, "rejected"), _events(url, "rejected")
    names = [f"race-{how}-{i}" for i in range(sessions)]
    rng = np.random.default_rng(0)
    async with LearnstreamClient(bootstrap, worker_url=url if how != "produce" else None) as c:
        if how == "apply":
            await asyncio.gather(*(c.apply(s, "init_instant", {"targets": ["a", "b"], "dim": 8}) for s in names))
        else:
            for s in names:
                await c.init_instant(s, targets=["a", "b"], dim=8, wait=False)
        sends = [asyncio.ensure_future(c.feedback(s, rng.standard_normal(8).astype(np.float32), model="a",
                                                  quality=0.9, wait=False)) for s in names]
        await asyncio.gather(*sends)
        await c.flush()
    wait_until(lambda: _events(url, "applied") + _events(url, "rejected") >= before[0] + sessions, 120,
               "the feedback events to be handled")
    return int(_events(url, "rejected") - before[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="learnstream bench agents", description=__doc__.split("\n\n")[0])
    p.add_argument("--writes", type=int, default=300, help="SDK writes timed one at a time (default 300)")
    p.add_argument("--inflight", type=int, default=32, help="sessions writing at once (default 32)")
    p.add_argument("--calls", type=int, default=200, help="MCP calls of each kind per transport (default 200)")
    p.add_argument("--sessions", type=int, default=200, help="fresh sessions in the race (default 200)")
    p.add_argument("--keep-logs", action="store_true", help="keep the broker/worker logs (their folder is printed)")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="learnstream-bench-agents-"))
    broker, w = start_broker(tmp), None
    try:
        provision(broker.bootstrap, 4)
        w = WorkerProcess(broker.bootstrap, partitions=4, app_id=f"bench-agents-{uuid.uuid4().hex[:6]}",
                          log_dir=tmp).start()
        w.wait_ready()
        print(f"learnstream bench agents: 1 worker, 4 partitions, embedded broker; {machine_note()}")
        rows = {"SDK apply": asyncio.run(_sdk(w.url, args.writes, args.inflight)),
                "MCP stdio": asyncio.run(_mcp_stdio(w.url, args.calls)),
                "MCP streamable HTTP": asyncio.run(_mcp_http(w.url, args.calls, tmp))}
        for name, vals in rows.items():
            for k, v in vals.items():
                print(f"| {name}: {k} | {v} |")
        for how, label in (("produce", "set-up produced to Kafka (old README)"),
                           ("apply", "set-up through apply()"),
                           ("client", "set-up produced, client with worker_url")):
            n = asyncio.run(_race(broker.bootstrap, w.url, args.sessions, how))
            print(f"| race, {args.sessions} fresh sessions: {label} | {n} feedback events dead-lettered |")
    finally:  # the worker, the broker, and their folder unless kept (a failed run keeps it and says where)
        teardown([w], broker, tmp, args.keep_logs)
        if args.keep_logs:
            print(f"logs in {tmp}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
