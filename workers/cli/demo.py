"""``learnstream demo``: a broker, a worker, a scripted agent simulation and a readable report.

Everything is real: the embedded Kafka-protocol broker (unless LEARNSTREAM_BROKER
is set), a ``learnstream worker`` subprocess with RocksDB tables, events produced
through the agent SDK, answers read over the worker's HTTP API. The simulation:

- **routing**: three models whose answer quality depends on the region of
  embedding space a request falls in; the agent tries models at random and
  publishes feedback; the router and the instant adapter learn from it;
- **task switches**: a training-loss stream with two task switches; the deep
  core's z-score detector should find them;
- **knowledge graph**: people change employers; point-in-time questions are
  answered before and after each change, plus one "what did we believe then";
- **continual learner**: two tasks in sequence; accuracy on the first is checked
  after learning the second;
- **agent protocols**: task outcomes become a heuristic and an anti-pattern;
- **memory importance**: which memories the assistant's answers depend on;
- **bad input**: two broken events go to the dead-letter topic, nothing stops.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from tqdm import tqdm

from workers.kafka.broker import EmbeddedBroker
from workers.kafka.clients import started
from workers.local import free_port
from workers.client import LearnstreamClient
from workers.stream.provision import ensure_topics_sync
from workers.stream.settings import Settings
from workers.verbs.codec import encode_embedding_b64
from workers.cli.http_json import http_json
from workers.cli.processes import WorkerProcess, metric_by
from workers.kafka.topics import topics
from workers.cli.waiting import wait_until

__all__ = ("run_demo",)

_DIM = 384
_MODELS = ["small", "medium", "large"]
# True answer quality by region (rows) and model (columns): no model is best everywhere.
_QUALITY = np.array([[0.90, 0.60, 0.50],    # chit-chat: the small model is best
                     [0.30, 0.85, 0.70],    # code: medium
                     [0.20, 0.40, 0.90]])   # math: large
_REGIONS = ["chit-chat", "code", "math"]
_ENVELOPE = 100           # feedback events per message
_TEST_QUERIES = 300
_READY_TIMEOUT_S = 120.0
_DRAIN_TIMEOUT_S = 180.0


# -- plumbing ------------------------------------------------------------------------
class Worker(WorkerProcess):
    """The demo's worker: a verb that fails raises (the demo stops with its reason)."""

    def call(self, verb: str, body: dict) -> dict:
        status, out = self.dispatch(verb, body)
        if not out or not out.get("ok"):
            raise RuntimeError(f"{verb} failed ({status}): {out}")
        return out["data"]

    def applied(self) -> dict[str, float]:
        """Input events handled per topic (applied + duplicate + rejected), from /metrics."""
        return metric_by(self.metrics(), "learnstream_events_total", "topic")


@dataclass
class Sent:
    """Messages sent per topic, to know when the worker has handled them all."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, role: str, n: int = 1) -> None:
        name = topics()[role].name
        self.counts[name] = self.counts.get(name, 0) + n


def _start_worker(settings: Settings, data_dir: Path, web_port: int | None = None) -> Worker:
    port = web_port or free_port()  # a free port unless asked: 6066 may be a running worker's
    env = {**os.environ, **settings.env(), "LEARNSTREAM_WEB_PORT": str(port), "LEARNSTREAM_DATA_DIR": str(data_dir),
           "LEARNSTREAM_PARTITIONS": "4"}
    w = Worker(env, port=port, log=data_dir.parent / "worker.log").start()
    w.wait_ready(_READY_TIMEOUT_S, 0.2, "the worker to become ready (table recovery + group join)")
    return w


# -- the simulation ------------------------------------------------------------------------
def _centers(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((len(_REGIONS), _DIM)).astype(np.float32)


def _queries(rng: np.random.Generator, centers: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    regions = rng.integers(0, len(_REGIONS), n)
    x = centers[regions] + 0.5 * rng.standard_normal((n, _DIM)).astype(np.float32)
    return x.astype(np.float32), regions


def _route_quality(w: Worker, session: str, xs: np.ndarray, regions: np.ndarray) -> tuple[float, float, dict]:
    """Mean true quality of the routed model, regret vs the oracle, and choices per region."""
    got, choices = [], {r: {} for r in _REGIONS}
    for x, r in zip(xs, regions, strict=True):
        status, out = http_json(w.url + "/route", {"session_key": session, "embedding_b64": encode_embedding_b64(x)})
        model = out["data"]["model"]
        got.append(_QUALITY[r, _MODELS.index(model)])
        choices[_REGIONS[r]][model] = choices[_REGIONS[r]].get(model, 0) + 1
    oracle = _QUALITY[regions].max(axis=1)
    q = float(np.mean(got))
    return q, float(np.sum(oracle - np.array(got))), choices


async def _produce_feedback(c: LearnstreamClient, session: str, rng: np.random.Generator, centers: np.ndarray,
                            n: int, sent: Sent) -> None:
    xs, regions = _queries(rng, centers, n)
    picks = rng.integers(0, len(_MODELS), n)  # the agent explores: any model may answer
    q = np.clip(_QUALITY[regions, picks] + 0.05 * rng.standard_normal(n), 0, 1)
    with tqdm(total=n, desc="feedback events", unit="ev", leave=False) as bar:
        for i in range(0, n, _ENVELOPE):
            evs = [{"embedding": xs[j], "model": _MODELS[picks[j]], "quality": float(q[j]),
                    "relation": "entity", "now_ms": 1_000 * (j + 1)} for j in range(i, min(n, i + _ENVELOPE))]
            await c.feedback_batch(session, evs, wait=False)
            sent.add("feedback")
            bar.update(len(evs))
        await c.flush()


def _loss_stream(rng: np.random.Generator, steps: int = 200, tasks: int = 3) -> tuple[list[float], list[int]]:
    losses, switches = [], []
    for t in range(tasks):
        if t:
            switches.append(len(losses))
        base = 2.0 + 0.7 * t
        for s in range(steps):
            losses.append(float(base * np.exp(-s / 40) + 0.3 + 0.01 * rng.standard_normal()))
    return losses, switches


async def _consume(bootstrap: str, role: str, stop_after_s: float = 3.0) -> list[dict]:
    from aiokafka import AIOKafkaConsumer

    c = await started(AIOKafkaConsumer(topics()[role].name, bootstrap_servers=bootstrap,
                                       auto_offset_reset="earliest", enable_auto_commit=False))
    out: list[dict] = []
    try:
        idle = 0.0
        while idle < stop_after_s:
            batch = await c.getmany(timeout_ms=500)
            msgs = [m for ms in batch.values() for m in ms]
            idle = 0.0 if msgs else idle + 0.5
            out += [orjson.loads(m.value) for m in msgs]
    finally:
        await c.stop()
    return out


def _blobs(rng: np.random.Generator, classes: list[int], n: int, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = rng.choice(classes, n)
    return (means[y] + rng.standard_normal((n, means.shape[1]))).astype(np.float32), y


# -- the report ------------------------------------------------------------------------
def _h(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 74 - len(title)))


def run_demo(settings: Settings, *, events: int = 3000, keep_data: bool = False, web_port: int | None = None) -> int:
    """Run the demo; ``web_port`` is the worker's HTTP port (None: a free one)."""
    t_start = time.monotonic()
    rng = np.random.default_rng(7)
    workdir = Path(tempfile.mkdtemp(prefix="learnstream-demo-"))
    broker = None
    worker: Worker | None = None
    try:
        if not settings.broker:
            broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
            settings = dataclasses.replace(settings, broker=broker.bootstrap, broker_kind="embedded")
            print(f"embedded broker (noida-db) on {broker.bootstrap}")
        else:
            print(f"broker {settings.broker}")
        ensure_topics_sync(dataclasses.replace(settings, partitions=4))
        print(f"topics: {len(topics())} created from topics/*.yaml")
        worker = _start_worker(settings, workdir / "data", web_port)
        print(f"worker ready at {worker.url} (pid {worker.proc.pid})")
        report = asyncio.run(_simulate(settings.broker, worker, rng, events))
        _print_report(report)
        print(f"\ndemo finished in {time.monotonic() - t_start:.0f} s")
        return 0
    finally:
        if worker is not None:
            worker.stop(30)
        if broker is not None:
            broker.stop()
        if keep_data:
            print(f"data kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _simulate(bootstrap: str, w: Worker, rng: np.random.Generator, n_feedback: int) -> dict:
    rep: dict[str, Any] = {}
    sent = Sent()
    centers = _centers(rng)
    agent, trainer, kg, learner = "agent-demo", "trainer-demo", "kg-demo", "learner-demo"
    test_x, test_r = _queries(np.random.default_rng(99), centers, _TEST_QUERIES)

    # set-up through HTTP /dispatch: each write travels through learn.commands and returns once applied
    w.call("init_instant", {"session_key": agent, "targets": _MODELS, "dim": _DIM})
    w.call("init_router", {"session_key": agent, "targets": _MODELS, "in_dim": _DIM, "epsilon": 0.0})
    w.call("init_attention", {"session_key": agent, "dim": 16})
    rep["route_before"] = _route_quality(w, agent, test_x, test_r)
    rep["adapter_before"] = {_REGIONS[r]: w.call("apply_adapter", {"session_key": agent, "embedding": centers[r]})
                             for r in range(len(_REGIONS))}

    async with LearnstreamClient(bootstrap) as c:
        t0 = time.monotonic()
        await _produce_feedback(c, agent, rng, centers, n_feedback, sent)
        losses, switches = _loss_stream(rng)
        offsets = []
        for i, loss in enumerate(tqdm(losses, desc="loss events", unit="ev", leave=False)):
            offsets.append(await c.loss(trainer, loss, now_ms=i, wait=False))
        offsets = [await f for f in offsets]
        sent.add("loss", len(losses))
        rep["loss"] = {"switches": switches, "offset_to_step": {md.offset: i for i, md in enumerate(offsets)}}

        # the knowledge graph: Alice moves from Acme to Globex; Bob leaves Initech
        await c.insert_edge(kg, {"id": "alice-acme", "src": "alice", "dst": "acme", "relation": "works_at",
                                 "valid_at": 1000, "created_at": 1000})
        await c.insert_edge(kg, {"id": "bob-initech", "src": "bob", "dst": "initech", "relation": "works_at",
                                 "valid_at": 1500, "created_at": 1500})
        await c.contradict(kg, {"id": "alice-globex", "src": "alice", "dst": "globex", "relation": "works_at",
                                "valid_at": 2000, "created_at": 2050}, ["alice-acme"], now_ms=2050)
        await c.invalidate_edge(kg, "bob-initech", invalid_at=3000, expired_at=3100)
        sent.add("edges", 4)

        # the continual learner: task A (classes 0,1) then task B (classes 2,3)
        means = 3.0 * np.random.default_rng(5).standard_normal((4, 16)).astype(np.float32)
        # through /dispatch, which answers once applied: topics have no order between them, so an
        # init sent to learn.commands could be applied after the first examples on learn.examples
        w.call("init_learner", {"session_key": learner, "n_features": 16, "n_classes": 4, "model": "mlp",
                                    "hidden": 32})
        xa, ya = _blobs(rng, [0, 1], 600, means)
        xb, yb = _blobs(rng, [2, 3], 600, means)
        for task, (xs, ys) in (("A", (xa, ya)), ("B", (xb, yb))):
            for i in range(0, len(xs), 50):
                await c.examples(learner, xs[i:i + 50], ys[i:i + 50], task=task, now_ms=1000 * i, wait=False)
                sent.add("examples")
        await c.flush()

        # agent protocols: outcomes of a testing agent become a heuristic and an anti-pattern
        t0_ms = 1_700_000_000_000
        outcomes = [("fill fields then submit the form", True, None)] * 4 + [
            ("sleep then click submit", False, f"TimeoutError: waited {3000 + 500 * i} ms for #btn-{40 + i}")
            for i in range(3)]
        for i, (strategy, ok, error) in enumerate(outcomes):
            o = {"id": f"o{i}", "agent": "tester", "task": f"test the signup form #{i}", "success": ok,
                 "strategy": strategy, "ts": t0_ms + 60_000 * i}
            if error:
                o["error"] = error
            await c.outcome(agent, o, wait=False)
            sent.add("outcomes")

        # memory importance: which memories do the assistant's answers depend on?
        await c.memory_context(agent, "conv-1", [
            {"role": "memory", "memory_id": "dog", "content": "Our dog is called Biscuit and loves the beach."},
            {"role": "memory", "memory_id": "units", "content": "The user prefers metric units, kilometres."},
            {"role": "memory", "memory_id": "lisbon", "content": "The user once visited Lisbon in spring."},
            {"role": "user", "content": "Any plans for the weekend?"},
            {"role": "assistant", "content": "Take Biscuit to the beach, the dog loves it."},
            {"role": "user", "content": "How far is it?"},
            {"role": "assistant", "content": "About five kilometres, in metric units."},
            {"role": "user", "content": "And what should we eat?"},
            {"role": "assistant", "content": "A picnic on the beach; bring water for Biscuit."},
        ])
        sent.add("memory")

        # bad input: goes to learn.dlq, the worker goes on
        await c._producer.send_and_wait(topics()["feedback"].name, b"{this is not json", key=agent.encode())
        await c._producer.send_and_wait(topics()["feedback"].name, orjson.dumps(
            {"session_key": agent, "model": "small", "quality": 0.9, "embedding": [0.1, 0.2]}), key=agent.encode())
        sent.add("feedback", 2)

        def drained() -> bool:
            got = w.applied()
            return all(got.get(t, 0) >= n for t, n in sent.counts.items())

        wait_until(drained, _DRAIN_TIMEOUT_S, 0.2, "the worker to handle every event", retry_on=(OSError,))
        rep["elapsed"] = time.monotonic() - t0
        rep["sent"] = dict(sent.counts)

    rep["route_after"] = _route_quality(w, agent, test_x, test_r)
    rep["adapter_after"] = {_REGIONS[r]: w.call("apply_adapter", {"session_key": agent, "embedding": centers[r]})
                            for r in range(len(_REGIONS))}
    rep["health"] = w.call("health", {"session_key": agent})
    rep["trainer_health"] = w.call("health", {"session_key": trainer})
    rep["graph"] = [(q, w_, _graph(w, kg, **q)) for q, w_ in (
        ({"src": "alice", "t": 1500}, "Where did Alice work at t=1500?"),
        ({"src": "alice", "t": 2500}, "Where did Alice work at t=2500?"),
        ({"src": "bob", "t": 2000}, "Where did Bob work at t=2000?"),
        ({"src": "bob", "t": 3500}, "Where did Bob work at t=3500?"),
        ({"src": "alice", "t": 2500, "known_at": 2040},
         "At t'=2040, what did we believe about Alice at t=2500?"),
    )]
    rep["learner"] = {
        "A": w.call("evaluate", {"session_key": learner, "examples": _ex(*_blobs(np.random.default_rng(1), [0, 1], 300, means))}),
        "B": w.call("evaluate", {"session_key": learner, "examples": _ex(*_blobs(np.random.default_rng(2), [2, 3], 300, means))}),
        "state": w.call("learner_state", {"session_key": learner}),
    }
    rep["protocols"] = w.call("retrieve", {"session_key": agent, "task": "test the checkout form",
                                               "agent": "tester", "now_ms": 1_700_000_600_000})
    rep["heuristic_events"] = await _consume(bootstrap, "heuristics", 0.5)
    rep["memory"] = w.call("memory_scores", {"session_key": agent})
    rep["boundaries"] = await _consume(bootstrap, "boundaries")
    rep["consolidations"] = await _consume(bootstrap, "consolidations", 0.5)
    rep["drift"] = await _consume(bootstrap, "drift", 0.5)
    rep["dlq"] = await _consume(bootstrap, "dlq", 0.5)
    rep["sessions"] = (agent, trainer)
    return rep


def _ex(xs: np.ndarray, ys: np.ndarray) -> list[dict]:
    return [{"features": x.tolist(), "label": int(y)} for x, y in zip(xs, ys, strict=True)]


def _graph(w: Worker, session: str, **q: Any) -> list[str]:
    qs = "&".join(f"{k}={v}" for k, v in q.items())
    status, out = http_json(f"{w.url}/graph/{session}/edges?{qs}")
    if status != 200:
        raise RuntimeError(f"graph query failed: {out}")
    return [e["dst"] for e in out["data"]["edges"]]


def _print_report(rep: dict) -> None:
    agent, trainer = rep["sessions"]
    n_msgs = sum(rep["sent"].values())
    _h("what was sent")
    for t, n in sorted(rep["sent"].items()):
        print(f"  {t:24} {n:6d} messages")
    print(f"  all {n_msgs} messages applied by the worker in {rep['elapsed']:.1f} s")

    _h("model routing (router learns from feedback through the learning loop)")
    qb, rb, cb = rep["route_before"]
    qa, ra, ca = rep["route_after"]
    oracle = float(_QUALITY.max(axis=1).mean())
    print(f"  {_TEST_QUERIES} test requests, mean answer quality of the routed model (oracle {oracle:.2f}):")
    print(f"    before learning: {qb:.3f}   cumulative regret {rb:7.1f}   (untrained rule route)")
    print(f"    after learning:  {qa:.3f}   cumulative regret {ra:7.1f}   "
          f"({100 * (1 - ra / rb):.0f}% less regret)" if rb > 0 else "")
    for region in _REGIONS:
        best = _MODELS[int(_QUALITY[_REGIONS.index(region)].argmax())]
        print(f"    {region:9} best={best:6}  before={_fmt(cb[region])}  after={_fmt(ca[region])}")

    _h("instant adapter (rank-2 Hebbian MicroLoRA)")
    h = rep["health"]
    print(f"  adapter applied to each region's centre: logits per model {_MODELS}")
    for region in _REGIONS:
        lb = rep["adapter_before"][region]["logits"]
        la = rep["adapter_after"][region]["logits"]
        print(f"    {region:9} before {_vec(lb)}  after {_vec(la)}  -> prefers {_MODELS[int(np.argmax(la))]}")
    # Why "code" can disagree with the router: the spec's update gives both ranks the same b while B
    # is 0, so they stay equal (tests/unit/test_instant.py) and all logits lie along one vector.
    print("  (the reference's rule moves both ranks together from the zero start, so every query's logits are a")
    print("   multiple of one vector: the models keep one order, reversed or not, and the middle one never comes")
    print("   first; choosing a model per request is the router's job, above)")
    print(f"  boundaries in the feedback loop: {h['boundaries_detected']} (its default CUSUM detector fires on a "
          f"lasting quality drop, not on noise; each boundary consolidates and resets the adapter)")

    _h("task switches in the loss stream (deep core, z-score > 2.5)")
    o2s = rep["loss"]["offset_to_step"]
    found = sorted(o2s[b["source"]["offset"]] for b in rep["boundaries"]
                   if b["session_key"] == trainer and b["source"]["offset"] in o2s)
    true = rep["loss"]["switches"]
    hits = [s for s in true if any(0 <= f - s <= 2 for f in found)]
    false = [f for f in found if not any(0 <= f - s <= 2 for s in true)]
    near = [f for f in found if any(0 <= f - s <= 2 for s in true)]
    print(f"  true switches at steps {true}; boundaries found right after them at steps {near}")
    print(f"  detected {len(hits)}/{len(true)} switches within 2 steps, {len(false)} false alarms "
          f"in {len(o2s)} steps")
    print("  (the reference detector compares each loss with only the last 10: it catches every switch,")
    print("   and ordinary noise also crosses z = 2.5 on a few percent of steps)")

    _h("knowledge graph (bi-temporal, point in time)")
    for q, question, answer in rep["graph"]:
        print(f"  {question:56} {', '.join(answer) or '(nobody)'}")

    _h("continual learner (task A, then task B, one pass)")
    lr = rep["learner"]
    print(f"  accuracy on task A after learning B: {lr['A']['accuracy']:.3f}   on task B: {lr['B']['accuracy']:.3f}")
    st = lr["state"]
    keys = [k for k in ("examples_seen", "consolidations", "drift_alarms", "boundaries") if k in st]
    print("  " + "  ".join(f"{k}={st[k]}" for k in keys))

    _h("agent protocols (task outcomes -> heuristics and anti-patterns)")
    pr = rep["protocols"]
    print(f"  retrieve('test the checkout form') -> task type {pr['task_type']}")
    for h in pr["heuristics"]:
        print(f"    heuristic:    '{h['strategy']}'  confidence {h['confidence']:.2f}, "
              f"posterior {h['posterior']:.2f} over {h['occurrences']} outcomes")
    for a in pr["anti_patterns"]:
        print(f"    anti-pattern: '{a['pattern']}' fails with '{a['why_bad']}'"
              f" ({a['occurrences']}x); instead: '{a.get('better_alternative') or '-'}'")
    print(f"  agent.heuristics events: {len(rep['heuristic_events'])}")

    _h("memory importance (log-prob drop of the answers without the memory)")
    weights = {m["memory_id"]: m["weight"] for m in rep["memory"]["memories"]}
    for mid in ("dog", "units", "lisbon"):
        w_ = weights.get(mid)
        print(f"    {mid:8} " + (f"weight {w_:7.3f}" if w_ is not None else "not scored") +
              ("   (no answer depends on it)" if w_ is not None and w_ < 0.01 else ""))

    _h("downstream events")
    print(f"  learn.boundaries      {len(rep['boundaries'])}")
    print(f"  learn.consolidations  {len(rep['consolidations'])}")
    print(f"  learn.drift           {len(rep['drift'])}")
    _h("dead-letter topic (bad input never stops a worker)")
    for d in rep["dlq"]:
        src = d["source"]
        print(f"  {src['topic']}[{src['partition']}]@{src['offset']}: {d['reason_code']}: {d['reason'][:70]}")


def _fmt(counts: dict) -> str:
    return ",".join(f"{m}:{n}" for m, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def _vec(v: list[float]) -> str:
    return "[" + " ".join(f"{x:+.2f}" for x in v) + "]"
