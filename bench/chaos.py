"""Chaos benchmark: SIGKILLs, restarts, fresh data dirs, reads during recovery, rebalances
(``learnstream bench chaos``).

Each seed builds one deterministic mixed stream: ``--sessions`` session keys spread evenly over
``--partitions`` partitions; a third of them learn from feedback (single events and envelopes, a
quality shift half-way), a third from losses (jumps fire task boundaries), a third from labelled
examples (a task switch half-way). Every session is initialized first (``init_*`` commands over HTTP,
answered once applied), then the stream is produced at ``--rate`` messages/s while the chaos runs:

- **kills**: one worker, SIGKILLed ``--kills`` times 0.3-6 s (seeded) after it became ready, restarted
  on the same data dir, except the 3rd restart which gets a fresh one (state rebuilt from the
  changelog alone);
- **rebalance**: two workers; ``--cycles`` times one of them is SIGKILLed (2 -> 1: the other takes
  all partitions over once the dead member is dropped from the group, which the bench does after the
  session timeout since the embedded broker never does) and restarted on its data dir (1 -> 2).

In both, ``--readers`` threads hammer ``POST /dispatch`` with ``session_info`` / ``learner_info`` reads
of random sessions the whole time (recovery included). At the end every session's state digest
(``*_info`` parts: size + sha256 of each part) is compared with the in-process
:class:`~workers.verbs.session.LearnSession` fed the same messages (``--baseline`` also runs each seed
uninterrupted, no kills and no readers, and compares with that run too), and the downstream topics with the ids the in-process run
emits (``<topic>:<partition>:<offset>[:n]`` of the offsets the broker gave each message).

Per seed it prints: sessions compared / mismatched, downstream ids expected / missing / duplicated
(an id a ``read_committed`` consumer sees more than once: each batch's downstream events, state and
input offsets are one transaction, so a crash re-emits only what was aborted) and of those
conflicting (the same id with a different event) / unexpected, the aborted copies a
``read_uncommitted`` consumer would also see (what the transactions removed),
examples lost (learner sessions: examples the in-process run counted and the worker did not),
DLQ entries (the stream holds no bad event), and the reads by answer (200 with state, 503 while
recovering, 200 with an *empty* state: a wrong answer, connection errors while a worker was down).
Exit status 1 when any seed had a mismatch, a missing, duplicated, conflicting or unexpected id, a lost
example, a DLQ entry or an empty read.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from _stream import (WorkerProcess, balanced_keys, http_json, machine_note, provision, start_broker, wait_until,
                     worker_kwargs, worker_options)
from workers.stream.peers import expel_group_members
from workers.verbs.codec import encode_embedding_b64
from workers.verbs.session import LearnSession
from workers.kafka.topics import topics

__all__ = ("Stream", "make_stream", "expected", "run_seed", "Outcome", "main")

DIM = 16
MODELS = ["small", "medium", "large"]
# Tansu notices a dead member after the session timeout: short, so a rebalance takes seconds.
_SESSION_TIMEOUT_S = "6"
_READY_TIMEOUT_S = 120.0
_FINAL_TIMEOUT_S = 240.0
# SIGKILL delay after readiness, seconds (the probe: 0.3-6 s).
_KILL_AFTER_S = (0.3, 6.0)
# This restart (1-based) gets a fresh data dir: the state comes from the changelogs alone.
_FRESH_DIR_RESTART = 3


@dataclass
class SessionSpec:
    key: str
    kind: str                                  # feedback | loss | examples
    init: list[tuple[str, dict]]
    info_verb: str                              # session_info | learner_info


@dataclass
class Stream:
    sessions: list[SessionSpec]
    messages: list[tuple[str, str, dict]]       # (role, session key, value), in production order


def _feedback_value(rng: np.random.Generator, key: str, t: int, shifted: bool, k: int) -> dict:
    evs = []
    for _ in range(k):
        t += 1
        q = float(np.clip((0.2 if shifted else 0.9) + 0.05 * rng.standard_normal(), 0, 1))
        evs.append({"embedding_b64": encode_embedding_b64(rng.standard_normal(DIM).astype(np.float32)),
                    "model": MODELS[int(rng.integers(0, 3))], "quality": q, "relation": "entity",
                    "now_ms": 1000 * t})
    return {"session_key": key, **evs[0]} if k == 1 else {"session_key": key, "events": evs}


def make_stream(seed: int, n_messages: int, n_sessions: int, partitions: int) -> Stream:
    """The deterministic mixed stream of one seed."""
    rng = np.random.default_rng(seed)
    keys = balanced_keys(n_sessions, partitions, prefix=f"chaos{seed}-")
    sessions = []
    for i, key in enumerate(keys):
        kind = ("feedback", "loss", "examples")[i % 3]
        if kind == "feedback":
            init = [("init_instant", {"session_key": key, "targets": MODELS, "dim": DIM}),
                    ("init_router", {"session_key": key, "targets": MODELS, "in_dim": DIM, "threshold": 50}),
                    ("init_attention", {"session_key": key, "dim": 16})]
            sessions.append(SessionSpec(key, kind, init, "session_info"))
        elif kind == "loss":
            sessions.append(SessionSpec(key, kind, [], "session_info"))
        else:
            init = [("init_learner", {"session_key": key, "n_features": 8, "n_classes": 4, "model": "mlp",
                                      "hidden": 16, "seed": seed})]
            sessions.append(SessionSpec(key, kind, init, "learner_info"))
    means = 3 * rng.standard_normal((4, 8))
    clock = {s.key: 0 for s in sessions}
    messages: list[tuple[str, str, dict]] = []
    for m in range(n_messages):
        s = sessions[int(rng.integers(0, len(sessions)))]
        late = m >= n_messages // 2
        t = clock[s.key]
        if s.kind == "feedback":
            k = 1 if rng.random() < 0.75 else 8
            messages.append(("feedback", s.key, _feedback_value(rng, s.key, t, late, k)))
            clock[s.key] = t + k
        elif s.kind == "loss":
            base = 0.5 if (t // 40) % 2 == 0 else 4.0  # a jump every 40 losses fires a boundary
            messages.append(("loss", s.key, {"session_key": s.key, "loss": base + 0.01 * float(rng.standard_normal()),
                                             "now_ms": 1000 * (t + 1)}))
            clock[s.key] = t + 1
        else:
            classes = [2, 3] if late else [0, 1]
            y = rng.choice(classes, 10)
            x = means[y] + rng.standard_normal((10, 8))
            messages.append(("examples", s.key, {"session_key": s.key, "examples": [
                {"features": xi.tolist(), "label": int(yi), "task": "B" if late else "A",
                 "now_ms": 1000 * (t + j + 1)} for j, (xi, yi) in enumerate(zip(x, y))]}))
            clock[s.key] = t + 10
    return Stream(sessions, messages)


_VERB = {"feedback": "learn_feedback", "loss": "record_loss", "examples": "learn_example"}


@dataclass
class Expected:
    parts: dict[str, dict]                      # session key -> *_info parts
    emitted: list[list[str]]                    # per message: roles of its downstream events, in order
    examples: dict[str, int]                    # learner session -> examples counted (seen + pending)


def expected(stream: Stream) -> Expected:
    """What an uninterrupted run ends with: the in-process LearnSession fed the same messages."""
    s = LearnSession(rng=random.Random(0))
    for spec in stream.sessions:
        for verb, body in spec.init:
            out = s.dispatch({"verb": verb, "body": body})
            assert out["ok"], out
    emitted: list[list[str]] = []
    for role, _key, value in stream.messages:
        before = len(s.emitted)
        out = s.dispatch({"verb": _VERB[role], "body": value})
        assert out["ok"], out
        emitted.append([r for r, _ in s.emitted[before:]])
    parts = {spec.key: s.dispatch({"verb": spec.info_verb, "body": {"session_key": spec.key}})["data"]["parts"]
             for spec in stream.sessions}
    examples = {spec.key: _examples_counted(s.dispatch({"verb": "learner_state", "body": {"session_key": spec.key}}))
                for spec in stream.sessions if spec.kind == "examples"}
    return Expected(parts, emitted, examples)


def _examples_counted(out: dict) -> int:
    d = out["data"]
    return int(d["examples_seen"]) + int(d["pending"])


# -- the cluster side ----------------------------------------------------------------------------
class Producer:
    """Produces the stream at a fixed rate in a thread; records the offset the broker gave each message."""

    def __init__(self, bootstrap: str, stream: Stream, rate: float) -> None:
        self.bootstrap, self.stream, self.rate = bootstrap, stream, rate
        self.offsets: list[tuple[str, int, int] | None] = [None] * len(stream.messages)
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="chaos-producer", daemon=True)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self.error is not None:
            raise RuntimeError(f"producer failed: {self.error!r}")
        if not self.done.is_set():
            raise TimeoutError("producer did not finish")

    def _run(self) -> None:
        try:
            asyncio.run(self._produce())
            self.done.set()
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    async def _produce(self) -> None:
        names = {r: topics()[r].name for r in ("feedback", "loss", "examples")}
        p = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=2, acks="all")
        await p.start()
        try:
            t0 = time.monotonic()
            pending: list[tuple[int, asyncio.Future]] = []
            for i, (role, key, value) in enumerate(self.stream.messages):
                due = t0 + i / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                pending.append((i, await p.send(names[role], orjson.dumps(value), key=key.encode())))
                if len(pending) >= 64:
                    await self._settle(pending)
            await self._settle(pending)
        finally:
            await p.stop()

    async def _settle(self, pending: list[tuple[int, asyncio.Future]]) -> None:
        for i, fut in pending:
            md = await fut
            self.offsets[i] = (md.topic, md.partition, md.offset)
        pending.clear()


class Readers:
    """Threads reading random sessions from whichever worker URLs are current, counting the answers."""

    def __init__(self, stream: Stream, urls: Callable[[], list[str]], n: int, seed: int) -> None:
        self.stream, self.urls, self.n = stream, urls, n
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rng = random.Random(seed)
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def start(self) -> Readers:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Counter[str]:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        return self.counts

    def _run(self, i: int) -> None:
        rng = random.Random(self._rng.random() + i)
        while not self._stop.is_set():
            urls = self.urls()
            if not urls:
                time.sleep(0.05)
                continue
            spec = rng.choice(self.stream.sessions)
            url = rng.choice(urls)
            try:
                status, out = http_json(url + "/dispatch", {"verb": spec.info_verb, "body": {"session_key": spec.key}},
                                        timeout=5)
            except OSError:
                outcome = "error"
                time.sleep(0.05)
            else:
                if status == 200 and isinstance(out, dict) and out.get("ok"):
                    outcome = "200" if out["data"]["parts"] else "200_empty"
                else:
                    outcome = str(status)
            with self._lock:
                self.counts[outcome] += 1


def _kill(w: WorkerProcess) -> None:
    if w.proc is not None and w.proc.poll() is None:
        w.proc.kill()
        w.proc.wait(30)
    log = getattr(w, "_log", None)
    if log is not None and not log.closed:
        log.close()


def _info(url: str, spec: SessionSpec) -> dict | None:
    try:
        status, out = http_json(url + "/dispatch", {"verb": spec.info_verb, "body": {"session_key": spec.key}},
                                timeout=10)
    except OSError:
        return None
    return out["data"] if status == 200 and out.get("ok") else None


def _caught_up(url: str, stream: Stream, offsets: list) -> bool:
    """Every session's watermark covers its last message."""
    last: dict[str, tuple[str, int, int]] = {}
    for (_role, key, _v), off in zip(stream.messages, offsets):
        assert off is not None
        last[key] = off
    for spec in stream.sessions:
        if spec.key not in last:
            continue
        topic, partition, offset = last[spec.key]
        d = _info(url, spec)
        if d is None or d["watermark"].get(f"{topic}:{partition}", -1) < offset:
            return False
    return True


def _read_all(bootstrap: str, names: list[str], isolation_level: str = "read_committed") -> list[tuple[str, dict]]:
    """Every value of the given topics, from the start to their current end, as a consumer with
    ``isolation_level`` sees them (``read_committed``: what a downstream service should use)."""
    async def go() -> list[tuple[str, dict]]:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                             isolation_level=isolation_level)
        await c.start()
        try:
            tps = [TopicPartition(t, p) for t in names for p in (c.partitions_for_topic(t) or set())]
            if not tps:
                return []
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            end = await c.end_offsets(tps)
            out: list[tuple[str, dict]] = []
            deadline = time.monotonic() + 60
            async def behind() -> bool:
                return any([await c.position(tp) < end[tp] for tp in tps])

            while await behind() and time.monotonic() < deadline:
                for tp, msgs in (await c.getmany(timeout_ms=500)).items():
                    out += [(tp.topic, orjson.loads(m.value)) for m in msgs]
            return out
        finally:
            await c.stop()

    return asyncio.run(go())


@dataclass
class Outcome:
    seed: int
    scenario: str
    compared: int = 0
    mismatched: list[str] = field(default_factory=list)
    ids_expected: int = 0
    missing: int = 0
    duplicated: int = 0      # ids a read_committed consumer sees more than once (with the same event)
    uncommitted_copies: int = 0  # extra copies a read_uncommitted consumer sees: aborted transactions
    conflicting: int = 0     # ids present more than once with different events: wrong
    unexpected: int = 0
    examples_lost: int = 0
    dlq: int = 0
    reads: Counter = field(default_factory=Counter)
    kills: int = 0
    seconds: float = 0.0
    stuck: bool = False                                     # never caught up with the stream
    offsets: list = field(default_factory=list)             # (topic, partition, offset) of each message
    parts: dict[str, dict] = field(default_factory=dict)    # session key -> what the worker ended with
    baseline_mismatched: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.stuck or self.mismatched or self.missing or self.duplicated or self.conflicting
                    or self.unexpected or self.examples_lost or self.dlq or self.reads.get("200_empty")
                    or self.baseline_mismatched)

    def line(self) -> str:
        r = self.reads
        return (f"seed {self.seed:>4} {self.scenario:9} kills {self.kills:>2}  sessions {self.compared} compared / "
                f"{len(self.mismatched)} mismatched  downstream {self.ids_expected} ids: {self.missing} missing / "
                f"{self.duplicated} duplicated ({self.conflicting} conflicting) / {self.unexpected} unexpected "
                f"(+{self.uncommitted_copies} aborted copies)  "
                f"examples lost {self.examples_lost}  "
                f"dlq {self.dlq}  reads 200 {r.get('200', 0)} / 503 {r.get('503', 0)} / empty {r.get('200_empty', 0)}"
                f" / other {sum(v for k, v in r.items() if k not in ('200', '503', '200_empty'))}"
                f"  {self.seconds:.0f} s" + ("  NEVER CAUGHT UP" if self.stuck else "")
                + ("" if self.clean else "  <-- WRONG"))


class Cluster:
    """Workers of one consumer group on one broker, started and SIGKILLed by the scenario."""

    def __init__(self, bootstrap: str, partitions: int, log_dir: Path, env: dict[str, str],
                 command: list[str] | None = None) -> None:
        self.bootstrap, self.partitions, self.log_dir, self.command = bootstrap, partitions, log_dir, command
        self.app_id = f"chaos-{uuid.uuid4().hex[:8]}"
        self.env = {"LEARNSTREAM_SESSION_TIMEOUT_S": _SESSION_TIMEOUT_S, **env}
        self.workers: dict[str, WorkerProcess] = {}
        self._dirs = 0

    def data_dir(self) -> Path:
        self._dirs += 1
        d = self.log_dir / f"data-{self._dirs}"
        d.mkdir()
        return d

    def start(self, name: str, data_dir: Path | None = None) -> WorkerProcess:
        w = WorkerProcess(self.bootstrap, partitions=self.partitions, app_id=self.app_id,
                          data_dir=data_dir or self.data_dir(), log_dir=self.log_dir, env=self.env,
                          command=self.command)
        w.start()
        self.workers[name] = w
        return w

    def urls(self) -> list[str]:
        return [w.url for w in list(self.workers.values()) if w.alive()]

    def kill(self, name: str) -> WorkerProcess:
        w = self.workers.pop(name)
        _kill(w)
        return w

    def wait_ready(self) -> None:
        for w in list(self.workers.values()):
            w.wait_ready(_READY_TIMEOUT_S)

    def stop(self) -> None:
        for w in self.workers.values():
            w.stop()
        self.workers.clear()


def _init_sessions(url: str, stream: Stream) -> None:
    for spec in stream.sessions:
        for verb, body in spec.init:
            status, out = wait_until(lambda: (r := http_json(url + "/dispatch", {"verb": verb, "body": body},
                                                              timeout=60))[0] != 503 and r,
                                     _READY_TIMEOUT_S, f"{verb} {spec.key}", interval=0.2)
            if status != 200 or not out.get("ok"):
                raise RuntimeError(f"{verb} {spec.key}: {status} {out}")


def _all_have_state(url: str, stream: Stream) -> None:
    """Wait until every session holds state (loss sessions have no init: their first loss creates it),
    so that from then on an empty answer is a wrong answer."""
    def ready() -> bool:
        return all((d := _info(url, spec)) is not None and d["parts"] for spec in stream.sessions)

    wait_until(ready, _READY_TIMEOUT_S, "every session has state", 0.2)


def _owns_all(w: WorkerProcess, partitions: int) -> bool:
    try:
        h = http_json(w.url + "/health", timeout=5)[1]
    except OSError:
        return False
    return bool(h.get("ready")) and len(h.get("active_partitions", [])) == partitions


def _split(ws: list[WorkerProcess], partitions: int) -> bool:
    seen: list[int] = []
    for w in ws:
        try:
            h = http_json(w.url + "/health", timeout=5)[1]
        except OSError:
            return False
        if not h.get("ready") or not h.get("active_partitions"):
            return False
        seen += h["active_partitions"]
    return sorted(seen) == list(range(partitions))


def run_seed(seed: int, *, scenario: str, n_messages: int, sessions: int, partitions: int, rate: float,
             kills: int, cycles: int, readers: int, log_dir: Path, env: dict[str, str] | None = None,
             command: list[str] | None = None, kill_after: tuple[float, float] = _KILL_AFTER_S,
             fresh_restart: int = _FRESH_DIR_RESTART, progress: Callable[[str], None] = lambda s: None) -> Outcome:
    """One seed of one scenario (``kills`` or ``rebalance``) on its own broker; the outcome compared."""
    t_start = time.monotonic()
    stream = make_stream(seed, n_messages, sessions, partitions)
    want = expected(stream)
    seed_dir = Path(tempfile.mkdtemp(prefix=f"seed{seed}-{scenario}-", dir=log_dir))
    out = Outcome(seed, scenario)
    broker = start_broker(seed_dir)
    try:
        provision(broker.bootstrap, partitions)
        rng = random.Random(seed)
        cluster = Cluster(broker.bootstrap, partitions, seed_dir, env or {}, command)
        try:
            if scenario == "kills":
                _kills(cluster, stream, rate, kills, readers, rng, out, progress, kill_after, fresh_restart)
            else:
                _rebalance(cluster, stream, rate, cycles, readers, rng, out, progress, kill_after)
            _compare(cluster, broker.bootstrap, stream, want, out)
        finally:
            cluster.stop()
    finally:
        broker.stop()
    out.seconds = time.monotonic() - t_start
    return out


def _final(caught_up: Callable[[], bool], out: Outcome, progress: Callable[[str], None]) -> None:
    """Wait until every session's watermark covers its last message; a run that never gets there is
    compared anyway (and reported as stuck)."""
    try:
        wait_until(caught_up, _FINAL_TIMEOUT_S, "the workers caught up", 0.5)
    except TimeoutError:
        out.stuck = True
        progress(f"not caught up after {_FINAL_TIMEOUT_S:.0f} s; comparing what is there")


def _kills(cluster: Cluster, stream: Stream, rate: float, kills: int, readers: int, rng: random.Random,
           out: Outcome, progress: Callable[[str], None], kill_after: tuple[float, float],
           fresh_restart: int) -> None:
    data = cluster.data_dir()
    w = cluster.start("w", data)
    w.wait_ready(_READY_TIMEOUT_S)
    _init_sessions(w.url, stream)
    producer = Producer(cluster.bootstrap, stream, rate).start()
    _all_have_state(w.url, stream)
    reads = Readers(stream, cluster.urls, readers, rng.random()).start()
    try:
        for k in range(kills):
            time.sleep(rng.uniform(*kill_after))
            cluster.kill("w")
            out.kills += 1
            fresh = k + 1 == fresh_restart
            if fresh:
                data = cluster.data_dir()  # this restart rebuilds the state from the changelogs alone
            progress(f"kill {k + 1}/{kills}, restart on {'a fresh' if fresh else 'the same'} data dir")
            w = cluster.start("w", data)
            w.wait_ready(_READY_TIMEOUT_S)
        producer.join(len(stream.messages) / rate + 120)
        _final(lambda: _caught_up(w.url, stream, producer.offsets), out, progress)
    finally:
        out.reads = reads.stop()
    out.offsets = producer.offsets


def _rebalance(cluster: Cluster, stream: Stream, rate: float, cycles: int, readers: int, rng: random.Random,
               out: Outcome, progress: Callable[[str], None], kill_after: tuple[float, float]) -> None:
    dirs = {"a": cluster.data_dir(), "b": cluster.data_dir()}
    cluster.start("a", dirs["a"])
    cluster.start("b", dirs["b"])
    cluster.wait_ready()
    wait_until(lambda: _split(list(cluster.workers.values()), cluster.partitions), _READY_TIMEOUT_S, "2 workers split")
    _init_sessions(cluster.workers["a"].url, stream)
    producer = Producer(cluster.bootstrap, stream, rate).start()
    _all_have_state(cluster.workers["a"].url, stream)
    reads = Readers(stream, cluster.urls, readers, rng.random()).start()
    try:
        for c in range(cycles):
            victim = rng.choice(["a", "b"])
            other = "b" if victim == "a" else "a"
            time.sleep(rng.uniform(*kill_after))
            cluster.kill(victim)
            out.kills += 1
            progress(f"cycle {c + 1}/{cycles}: {victim} SIGKILLed, 2 -> 1")
            _session_timeout(cluster)
            wait_until(lambda: _owns_all(cluster.workers[other], cluster.partitions), _READY_TIMEOUT_S,
                       f"{other} owns every partition")
            time.sleep(rng.uniform(*kill_after))
            progress(f"cycle {c + 1}/{cycles}: {victim} restarted, 1 -> 2")
            cluster.start(victim, dirs[victim])
            cluster.wait_ready()
            wait_until(lambda: _split(list(cluster.workers.values()), cluster.partitions), _READY_TIMEOUT_S,
                       "2 workers split")
        producer.join(len(stream.messages) / rate + 120)
        url = cluster.workers["a"].url
        _final(lambda: _caught_up(url, stream, producer.offsets), out, progress)
    finally:
        out.reads = reads.stop()
    out.offsets = producer.offsets


def _session_timeout(cluster: Cluster) -> None:
    """What Kafka does to a SIGKILLed member once its session times out: drop it from the group, so
    the survivors rebalance and take its partitions over. The embedded broker never does (README,
    "The embedded broker": noida expires no member that died without leaving), so after the session
    timeout the bench makes every member whose worker does not answer leave, as a worker does before
    it joins; the live one gets every partition in the rebalance that follows, as on Kafka."""
    time.sleep(float(_SESSION_TIMEOUT_S))
    asyncio.run(expel_group_members(cluster.bootstrap, cluster.app_id))


def _compare(cluster: Cluster, bootstrap: str, stream: Stream, want: Expected, out: Outcome) -> None:
    url = cluster.urls()[0]
    for spec in stream.sessions:
        d = wait_until(lambda: _info(url, spec), 60, f"{spec.info_verb} {spec.key}", 0.2)
        out.compared += 1
        out.parts[spec.key] = d["parts"]
        if d["parts"] != want.parts[spec.key]:
            out.mismatched.append(spec.key)
        if spec.kind == "examples":
            status, st = http_json(url + "/dispatch", {"verb": "learner_state", "body": {"session_key": spec.key}},
                                   timeout=10)
            got = _examples_counted(st) if status == 200 and st.get("ok") else 0
            out.examples_lost += max(want.examples[spec.key] - got, 0)
    ids: list[tuple[str, str]] = []
    for (topic, partition, offset), roles in zip(out.offsets, want.emitted):
        base = f"{topic}:{partition}:{offset}"
        ids += [(role, base if n == 0 else f"{base}:{n}") for n, role in enumerate(roles)]
    out.ids_expected = len(ids)
    all_topics = topics()
    downstream = sorted({role for role, _ in ids} | {t.role for t in all_topics.values() if t.kind == "downstream"})
    got = _read_all(bootstrap, [all_topics[r].name for r in downstream])
    name_to_role = {all_topics[r].name: r for r in downstream}
    seen = Counter((name_to_role[t], v.get("id")) for t, v in got)
    bodies: dict[tuple[str, str], set[bytes]] = {}
    for t, v in got:  # the same id twice must carry the same event (ts_ms is the emitting clock)
        bodies.setdefault((name_to_role[t], v.get("id")), set()).add(
            orjson.dumps({k: x for k, x in v.items() if k != "ts_ms"}, option=orjson.OPT_SORT_KEYS))
    want_ids = set(ids)
    out.missing = sum(1 for i in want_ids if i not in seen)
    out.duplicated = sum(1 for i, n in seen.items() if n > 1)
    out.conflicting = sum(1 for b in bodies.values() if len(b) > 1)
    out.unexpected = sum(1 for i in seen if i not in want_ids)
    out.uncommitted_copies = len(_read_all(bootstrap, [all_topics[r].name for r in downstream], "read_uncommitted")) \
        - len(got)
    out.dlq = len(_read_all(bootstrap, [all_topics["dlq"].name]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="learnstream bench chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds to run (default 3)")
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--kills", type=int, default=8, help="SIGKILLs per seed in the kills scenario (default 8)")
    p.add_argument("--cycles", type=int, default=2, help="2 -> 1 -> 2 cycles per seed in the rebalance scenario")
    p.add_argument("--scenarios", default="kills,rebalance", help="comma-separated: kills, rebalance")
    p.add_argument("--messages", type=int, default=6000, help="messages per seed (default 6,000)")
    p.add_argument("--rate", type=float, default=200.0, help="messages/s produced during the chaos (default 200)")
    p.add_argument("--sessions", type=int, default=9)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--readers", type=int, default=3, help="reader threads hammering the HTTP API (default 3)")
    p.add_argument("--baseline", action="store_true",
                   help="also run each seed uninterrupted (no kills, no readers) and compare the digests with it")
    worker_options(p)
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not scenarios or not set(scenarios) <= {"kills", "rebalance"}:
        p.error("--scenarios: kills and/or rebalance")
    wk = worker_kwargs(p, args)
    env = wk["env"]
    log_dir = Path(tempfile.mkdtemp(prefix="learnstream-bench-chaos-"))
    print(f"learnstream bench chaos: {args.messages:,} messages/seed at {args.rate:.0f}/s, {args.sessions} sessions over "
          f"{args.partitions} partitions, {args.readers} readers; kills {args.kills}, rebalance cycles {args.cycles}; "
          f"{machine_note()}; logs {log_dir}", flush=True)
    outcomes = []
    baselines: dict[int, Outcome] = {}
    for scenario in scenarios:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            def run(scenario: str, kills: int, readers: int, seed: int = seed) -> Outcome:
                return run_seed(seed, scenario=scenario, n_messages=args.messages, sessions=args.sessions,
                                partitions=args.partitions, rate=args.rate, kills=kills, cycles=args.cycles,
                                readers=readers, log_dir=log_dir, env=env, command=wk["command"],
                                progress=lambda s: print(f"  seed {seed} {scenario}: {s}", file=sys.stderr, flush=True))
            if args.baseline and seed not in baselines:
                baselines[seed] = b = run("kills", 0, 0)
                b.scenario = "baseline"
                outcomes.append(b)
                print(b.line(), flush=True)
            o = run(scenario, args.kills, args.readers)
            if seed in baselines:
                o.baseline_mismatched = [k for k, v in o.parts.items() if baselines[seed].parts.get(k) != v]
            outcomes.append(o)
            print(o.line() + (f"  vs uninterrupted run: {len(o.baseline_mismatched)} mismatched"
                              if seed in baselines else ""), flush=True)
    bad = [o for o in outcomes if not o.clean]
    print(f"{len(outcomes) - len(bad)}/{len(outcomes)} runs exact")
    if not args.keep_logs and not bad:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
