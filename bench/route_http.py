"""Benchmark: ``POST /route`` latency on loopback against a real worker (``learnstream bench route_http``).

One embedded broker, one ``learnstream worker`` subprocess. Two sessions get a
router through ``POST /dispatch`` (``init_router``, a write: answered once applied):
one stays untrained (the rule route), the other is trained past its threshold with
``record_outcome`` commands carrying embeddings through the commands topic (a
simulated world: the best of 8 models depends on which of 16 regions of
embedding space a query falls in). Then ``POST /route`` requests, 384-d
``embedding_b64`` bodies (and one row with a JSON-array embedding), over HTTP/1.1
keep-alive: sequentially from ``http.client`` (one connection), and from ``aiohttp``
with several concurrent clients (one connection each). The worker is otherwise
idle. For comparison, a row of sequential writes: ``record_outcome`` on ``/dispatch``,
each produced to the commands topic and answered once the worker applied it. Next to it: the same routes in process (``RouterState.route`` and the
``route`` verb through ``LearnSession.dispatch``), on a router trained by the same
commands.

Target (issue 5): HTTP ``/route`` p99 <= 5 ms (sequential, trained router).

``--tokens N`` runs the worker with authentication on: a tokens file of N entries (README
"Security"), every request carrying the last one's bearer token, so its cost shows in every row.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import random
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np
import orjson

from _stream import (WorkerProcess, machine_note, provision, start_broker, teardown, wait_until, worker_kwargs,
                     worker_options)
from workers.client import LearnstreamClient
from workers.verbs.codec import encode_embedding_b64
from workers.cores.router import RouterState
from workers.verbs.session import LearnSession

__all__ = ("main",)

# Request headers of every timed request (main adds the bearer token with --tokens).
HEADERS = {"Content-Type": "application/json"}

_DIM = 384
_TARGETS = ["small", "medium", "large", "code", "math", "legal", "medical", "creative"]
_REGIONS = 16
_SPREAD = 0.3
_TARGET_P99_MS = 5.0
_BODIES = 256             # distinct request bodies, cycled
_TRAINED, _UNTRAINED = "router-trained", "router-untrained"
_LEARNED_ALGOS = ("linucb", "fastgrnn")   # the learned route: the bandit, or FastGRNN while it knows nothing
_FIELDS = ("model", "context_bucket", "temperature", "top_p", "confidence", "algo", "exploration")


def _world(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((_REGIONS, _DIM))
    quality = rng.uniform(0.1, 0.5, (_REGIONS, len(_TARGETS)))
    quality[np.arange(_REGIONS), np.arange(_REGIONS) % len(_TARGETS)] = rng.uniform(0.8, 0.95, _REGIONS)
    return centers, quality


def training_commands(n: int, seed: int) -> list[dict]:
    """``record_outcome`` bodies: a random model per query, its noisy quality in the query's region."""
    centers, quality = _world(seed)
    rng = np.random.default_rng(seed + 1)
    out = []
    for _ in range(n):
        r = int(rng.integers(_REGIONS))
        x = (centers[r] + _SPREAD * rng.standard_normal(_DIM)).astype(np.float32)
        t = int(rng.integers(len(_TARGETS)))
        q = float(np.clip(quality[r, t] + 0.1 * rng.standard_normal(), 0.0, 1.0))
        out.append({"target": _TARGETS[t], "quality": q, "embedding_b64": encode_embedding_b64(x)})
    return out


def queries(n: int, seed: int) -> np.ndarray:
    centers, _ = _world(seed)
    rng = np.random.default_rng(seed + 2)
    r = rng.integers(_REGIONS, size=n)
    return (centers[r] + _SPREAD * rng.standard_normal((n, _DIM))).astype(np.float32)


def _stats(ms: np.ndarray) -> dict[str, float]:
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


# --------------------------------------------------------------------------- HTTP clients
def sequential(port: int, bodies: list[bytes], n: int, warmup: int) -> tuple[np.ndarray, dict]:
    """``n`` POST /route on one keep-alive connection (http.client); latencies in ms, and the last answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = HEADERS
    lat = np.empty(n)
    last: dict = {}
    clock = time.perf_counter_ns
    try:
        for i in range(warmup + n):
            body = bodies[i % len(bodies)]
            t0 = clock()
            conn.request("POST", "/route", body, headers)
            r = conn.getresponse()
            data = r.read()
            t1 = clock()
            if r.status != 200:
                raise RuntimeError(f"/route answered {r.status}: {data[:300]!r}")
            if i >= warmup:
                lat[i - warmup] = (t1 - t0) / 1e6
            if i == warmup + n - 1:
                last = orjson.loads(data)
    finally:
        conn.close()
    return lat, last


def writes(port: int, commands: list[dict], n: int) -> np.ndarray:
    """``n`` sequential ``record_outcome`` writes on /dispatch (produce, apply, answer); latencies in ms."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = HEADERS
    lat = np.empty(n)
    try:
        for i in range(n):
            body = orjson.dumps({"verb": "record_outcome",
                                 "body": {"session_key": _TRAINED, **commands[i % len(commands)]}})
            t0 = time.perf_counter_ns()
            conn.request("POST", "/dispatch", body, headers)
            r = conn.getresponse()
            data = r.read()
            lat[i] = (time.perf_counter_ns() - t0) / 1e6
            if r.status != 200:
                raise RuntimeError(f"/dispatch answered {r.status}: {data[:300]!r}")
    finally:
        conn.close()
    return lat


async def _concurrent(port: int, bodies: list[bytes], n: int, clients: int, warmup: int) -> tuple[np.ndarray, float]:
    url = f"http://127.0.0.1:{port}/route"
    per = n // clients
    lat: list[float] = []
    headers = HEADERS

    async def one(k: int, s: aiohttp.ClientSession, count: int, record: bool) -> None:
        clock = time.perf_counter_ns
        for i in range(count):
            t0 = clock()
            async with s.post(url, data=bodies[(k * per + i) % len(bodies)], headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"/route answered {r.status}")
            if record:
                lat.append((clock() - t0) / 1e6)

    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for _ in range(clients)]
    try:
        await asyncio.gather(*(one(k, s, max(warmup // clients, 1), False) for k, s in enumerate(sessions)))
        t0 = time.perf_counter()
        await asyncio.gather(*(one(k, s, per, True) for k, s in enumerate(sessions)))
        wall = time.perf_counter() - t0
    finally:
        for s in sessions:
            await s.close()
    return np.array(lat), len(lat) / wall


# --------------------------------------------------------------------------- in process
def in_process(commands: list[dict], X: np.ndarray, calls: int, threshold: int) -> list[tuple[str, dict]]:
    s = LearnSession(rng=random.Random(0))
    s.dispatch({"verb": "init_router", "body": {"targets": _TARGETS, "in_dim": _DIM, "threshold": threshold}})
    for c in commands:
        assert s.dispatch({"verb": "record_outcome", "body": c})["ok"]
    st = s.blob("session", "default").get("router", RouterState)
    assert st is not None and st.trained
    bodies = [{"verb": "route", "body": {"embedding_b64": encode_embedding_b64(x)}} for x in X[:_BODIES]]
    payloads = [orjson.dumps(b) for b in bodies]
    r = random.Random(0)
    rows = [
        ("RouterState.route (trained)", lambda i: st.route(X[i % len(X)], rng=r)),
        ("route verb, LearnSession.dispatch (b64 body)", lambda i: s.dispatch(bodies[i % len(bodies)])),
        ("route verb + JSON parse/serialize (dispatch_json)", lambda i: s.dispatch_json(payloads[i % len(payloads)])),
    ]
    out = []
    clock = time.perf_counter_ns
    for name, fn in rows:
        for i in range(min(calls, 2000)):
            fn(i)
        ts = np.empty(calls)
        for i in range(calls):
            t0 = clock()
            fn(i)
            ts[i] = clock() - t0
        out.append((name, _stats(ts / 1e6)))
    return out


# --------------------------------------------------------------------------- main
async def _train(bootstrap: str, commands: list[dict]) -> None:
    async with LearnstreamClient(bootstrap) as c:
        for body in commands:
            await c.command(_TRAINED, "record_outcome", body, wait=False)
        await c.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="learnstream bench route_http", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=5_000, help="timed sequential requests per row (default 5,000)")
    p.add_argument("--concurrency", default="4,16", help="comma-separated concurrent client counts (default 4,16)")
    p.add_argument("--train", type=int, default=None, help="record_outcome commands (default threshold + 100)")
    p.add_argument("--threshold", type=int, default=200, help="the router's training threshold (default 200)")
    p.add_argument("--inproc-calls", type=int, default=20_000, help="timed calls per in-process row")
    p.add_argument("--writes", type=int, default=20, help="timed sequential /dispatch writes (default 20)")
    worker_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-logs", action="store_true")
    p.add_argument("--tokens", type=int, default=0, help="authentication on, with a tokens file of N entries")
    args = p.parse_args(argv)
    worker_kw = worker_kwargs(p, args)
    token = None
    if args.tokens:
        import yaml

        from workers.stream.auth import hash_token, new_token

        token = new_token()
        others = [{"name": f"t{i}", "sha256": hash_token(new_token()), "write": [f"tenant-{i}/*"]}
                  for i in range(args.tokens - 1)]
        tokens_file = Path(tempfile.mkdtemp(prefix="learnstream-bench-tokens-")) / "tokens.yaml"
        tokens_file.write_text(yaml.safe_dump({"tokens": others + [
            {"name": "bench", "sha256": hash_token(token), "write": ["*"]}]}))
        HEADERS["Authorization"] = f"Bearer {token}"
        worker_kw["env"] = {**worker_kw["env"], "LEARNSTREAM_AUTH_TOKENS_FILE": str(tokens_file)}
    n_train = args.train if args.train is not None else args.threshold + 100
    concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    log_dir = Path(tempfile.mkdtemp(prefix="learnstream-bench-route-"))
    print(f"learnstream bench route_http: {_DIM}-d embeddings, {len(_TARGETS)} targets, threshold "
          f"{args.threshold}, {n_train} training outcomes, {args.requests:,} requests per row")
    if args.worker_env or args.worker_cmd:
        print(f"worker: {' '.join(args.worker_env)} {args.worker_cmd or ''}")
    print(f"machine: {machine_note()}; logs in {log_dir}", flush=True)
    if args.tokens:
        print(f"authentication on: {args.tokens} tokens in the file, each request bearer-authenticated")

    commands = training_commands(n_train, args.seed)
    X = queries(max(args.requests, _BODIES), args.seed)
    b64_bodies = {sk: [orjson.dumps({"session_key": sk, "embedding_b64": encode_embedding_b64(x)})
                       for x in X[:_BODIES]] for sk in (_TRAINED, _UNTRAINED)}
    json_bodies = [orjson.dumps({"session_key": _TRAINED, "embedding": x.tolist()}) for x in X[:_BODIES]]

    broker = start_broker(log_dir)
    worker = None
    try:
        provision(broker.bootstrap, 4)
        worker = WorkerProcess(broker.bootstrap, partitions=4, app_id=f"bench-route-{uuid.uuid4().hex[:6]}",
                               log_dir=log_dir, **worker_kw)
        worker.token = token
        worker.start()
        join = worker.wait_ready()
        for sk in (_TRAINED, _UNTRAINED):
            t0 = time.perf_counter()
            status, out = worker.dispatch("init_router", {"session_key": sk, "targets": _TARGETS, "in_dim": _DIM,
                                                          "threshold": args.threshold})
            if status != 200 or not out.get("ok"):
                raise RuntimeError(f"init_router failed: {status} {out}")
            print(f"worker ready after {join:.1f} s; init_router via /dispatch ({sk}) answered once applied in "
                  f"{(time.perf_counter() - t0) * 1e3:.0f} ms", flush=True)
        t0 = time.perf_counter()
        asyncio.run(_train(broker.bootstrap, commands))

        def trained() -> bool:
            out = worker.dispatch("route", {"session_key": _TRAINED, "embedding_b64": commands[0]["embedding_b64"]})[1]
            return out.get("ok") and out["data"]["algo"] in _LEARNED_ALGOS

        wait_until(trained, 120, "the router to pass its threshold", 0.1)
        print(f"{n_train} record_outcome commands produced and applied in {time.perf_counter() - t0:.1f} s", flush=True)

        rows: list[tuple[str, dict, float | None]] = []
        lat, last = sequential(worker.port, b64_bodies[_TRAINED], args.requests, 500)
        missing = [f for f in _FIELDS if f not in last.get("data", {})]
        if missing or last["data"]["algo"] not in _LEARNED_ALGOS:
            raise RuntimeError(f"unexpected /route answer {last}")
        rows.append(("trained, embedding_b64, sequential", _stats(lat), len(lat) / (lat.sum() / 1e3)))
        lat, last = sequential(worker.port, b64_bodies[_UNTRAINED], args.requests, 500)
        if last["data"]["algo"] != "rule":
            raise RuntimeError(f"unexpected /route answer {last}")
        rows.append(("untrained (rule), embedding_b64, sequential", _stats(lat), len(lat) / (lat.sum() / 1e3)))
        lat, _ = sequential(worker.port, json_bodies, args.requests, 500)
        rows.append(("trained, JSON-array embedding, sequential", _stats(lat), len(lat) / (lat.sum() / 1e3)))
        for c in concurrency:
            lat, rps = asyncio.run(_concurrent(worker.port, b64_bodies[_TRAINED], args.requests, c, 500))
            rows.append((f"trained, embedding_b64, {c} concurrent clients (aiohttp)", _stats(lat), rps))
        if args.writes:
            lat = writes(worker.port, commands, args.writes)
            rows.append(("write: /dispatch record_outcome, answered once applied", _stats(lat),
                         len(lat) / (lat.sum() / 1e3)))
    finally:
        teardown([worker], broker, log_dir, args.keep_logs)

    print("\nPOST /route over loopback keep-alive (ms)")
    print(f"{'client':<58} {'mean':>6} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>7} {'req/s':>7}")
    for name, s, rps in rows:
        print(f"{name:<58} {s['mean']:>6.3f} {s['p50']:>6.3f} {s['p90']:>6.3f} {s['p99']:>6.3f} {s['max']:>7.2f} "
              f"{rps:>7,.0f}")
    print(f"\nin process, the same router trained by the same commands (ms; {args.inproc_calls:,} calls per row)")
    for name, s in in_process(commands, X, args.inproc_calls, args.threshold):
        print(f"{name:<58} {s['mean']:>6.4f} {s['p50']:>6.4f} {s['p90']:>6.4f} {s['p99']:>6.4f} {s['max']:>7.3f}")
    p99 = rows[0][1]["p99"]
    ok = p99 <= _TARGET_P99_MS
    print(f"\ntarget: HTTP /route p99 (trained, sequential) {p99:.2f} ms <= {_TARGET_P99_MS:.0f} ms -> "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
