"""The worker's HTTP API on real parts: embedded broker, one worker subprocess, plain HTTP."""
from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest

from tests.helpers import http_json, wait_until
from workers.cli.processes import metric
from workers.state.layout import PIECE_BYTES

pytestmark = pytest.mark.integration

# the documented fields of a routing decision (README, HTTP API; RouterState.route)
ROUTE_FIELDS = {"model", "context_bucket", "temperature", "top_p", "confidence", "algo", "exploration"}
TARGETS = ["small", "medium", "large"]


def post_raw(url: str, data: bytes) -> tuple[int, dict]:
    import json

    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def dispatch(w, verb: str, body: dict) -> tuple[int, dict]:
    return http_json(w.url + "/dispatch", {"verb": verb, "body": body})


def test_http_api(worker_factory) -> None:
    w = worker_factory().start().wait_ready()

    status, health = http_json(w.url + "/health")
    assert status == 200 and health["status"] == "ok" and health["ready"] is True
    assert sorted(health["active_partitions"]) == [0, 1, 2, 3]
    assert get(w.url + "/ready")[0] == 200

    # a write verb on /dispatch answers once the owning worker applied it ...
    status, out = dispatch(w, "init_instant", {"session_key": "s1", "targets": ["a", "b"], "dim": 4})
    written = out.pop("id", None)  # the id of the message that carried it (topic:partition:offset)
    assert (status, out) == (200, {"ok": True, "verb": "init_instant", "data": {"targets": ["a", "b"], "dim": 4}})
    assert re.fullmatch(r"learn\.commands:[0-3]:\d+", written or ""), written
    # ... so a read right after it sees the state
    status, out = dispatch(w, "apply_adapter", {"session_key": "s1", "embedding": [0.1, 0.2, 0.3, 0.4]})
    assert status == 200 and out["ok"], out
    assert out["data"]["targets"] == ["a", "b"] and len(out["data"]["logits"]) == 2
    # another session was never initialized: the same read is refused (the write above was what made it work)
    status, out = dispatch(w, "apply_adapter", {"session_key": "s2", "embedding": [0.1, 0.2, 0.3, 0.4]})
    assert status == 422 and not out["ok"] and out["verb"] == "apply_adapter"

    # routers: one stays untrained, one passes its threshold of 3 samples
    for sk, threshold in (("untrained", 200), ("trained", 3)):
        status, out = dispatch(w, "init_router", {"session_key": sk, "targets": TARGETS, "in_dim": 4,
                                                  "threshold": threshold})
        assert status == 200 and out["ok"], out
    for i in range(3):
        status, out = dispatch(w, "record_outcome", {"session_key": "trained", "target": TARGETS[i % 3],
                                                     "quality": 0.9, "embedding": [1.0, -0.5, 0.25, float(i)]})
        assert status == 200 and out["ok"], out
    assert out["data"]["samples"] == 3 and out["data"]["trained"] is True

    status, out = http_json(w.url + "/route", {"session_key": "untrained", "embedding": [0.5, 0.1, -0.2, 0.3],
                                               "estimated_tokens": 100})
    assert status == 200 and out["ok"] and out["verb"] == "route", out
    assert set(out["data"]) == ROUTE_FIELDS
    assert out["data"]["algo"] == "rule" and out["data"]["model"] == TARGETS[0] and out["data"]["exploration"] is False

    status, out = http_json(w.url + "/route", {"session_key": "trained", "embedding": [0.5, 0.1, -0.2, 0.3]})
    assert status == 200 and out["ok"], out
    data = out["data"]
    assert set(data) == ROUTE_FIELDS and data["algo"] == "linucb" and data["model"] in TARGETS  # the learned mode
    assert 0.0 <= data["confidence"] <= 1.0 and isinstance(data["exploration"], bool)

    # a session without a router: the verb's error, not a crash
    status, out = http_json(w.url + "/route", {"session_key": "nobody", "embedding": [0.5, 0.1, -0.2, 0.3]})
    assert status == 422 and out == {"ok": False, "verb": "route", "error": "router not initialized"}

    # bad requests
    status, out = http_json(w.url + "/dispatch", {"verb": "x", "body": {}})
    assert (status, out) == (400, {"ok": False, "verb": "x", "error": "unknown verb: x"})
    status, out = post_raw(w.url + "/dispatch", b'{"verb": "route", "body": ')
    assert status == 400 and not out["ok"] and out["error"].startswith("parse: "), out
    status, out = post_raw(w.url + "/route", b"{not json")
    assert status == 400 and not out["ok"] and out["error"].startswith("parse: "), out
    # a body that is not an object is refused, as on a topic, and nothing is written (the metrics below
    # count the applied commands): not applied to the default session as a write with no fields
    status, out = http_json(w.url + "/dispatch", {"verb": "reset_adapter", "body": "junk"})
    assert (status, out) == (400, {"ok": False, "verb": "reset_adapter",
                                   "error": "parse: body must be a JSON object, got a string"})

    # metrics: the writes above were counted as applied commands
    status, text = get(w.url + "/metrics")
    assert status == 200 and "learnstream_events_total" in text
    status, faust_text = get(w.url + "/metrics/faust")  # faust's series alone (was a 500 on every scrape)
    assert status == 200 and "faust_" in faust_text and "learnstream_" not in faust_text
    # init_instant, 2 init_router, 3 record_outcome
    assert metric(text, "learnstream_events_total", outcome="applied", topic="learn.commands") == 6.0
    # and what they wrote: keys and bytes to the session tables (each also a changelog record)
    keys, nbytes = metric(text, "learnstream_state_writes_total"), metric(text, "learnstream_state_write_bytes_total")
    assert 6 <= keys and keys * (PIECE_BYTES + 1024) > nbytes > 20 * keys, (keys, nbytes)  # pieces of <= 2 kB
    # the session cache: each applied command looked its session up (s1, untrained and trained, each a miss
    # first; the three outcomes of trained hit it); reads do not count
    hits = metric(text, "learnstream_session_cache_lookups_total", result="hit")
    misses = metric(text, "learnstream_session_cache_lookups_total", result="miss")
    assert (hits, misses) == (3, 3), (hits, misses)
    assert metric(text, "learnstream_session_cache_evictions_total") == 0
    assert metric(text, "learnstream_session_cache_sessions") == 3 and metric(text, "learnstream_session_cache_bytes") > 0

    # a graph write's idempotency key (kept in the session table's value): its retry after a later write is
    # answered with the first reply, not applied again over that write
    e1 = {"id": "e1", "src": "alice", "dst": "acme", "valid_at": 1000, "created_at": 1000}
    insert = {"session_key": "g1", "edge": e1, "idempotency_key": "ins-1"}
    status, first = dispatch(w, "insert_edge", insert)
    assert status == 200 and first["ok"], first
    status, out = dispatch(w, "invalidate_edge", {"session_key": "g1", "edge_id": "e1", "invalid_at": 2000,
                                                  "expired_at": 2000})
    assert status == 200 and out["ok"], out
    status, again = dispatch(w, "insert_edge", insert)
    assert status == 200 and again == {**first, "duplicate": True}, (first, again)
    status, out = dispatch(w, "get_edge", {"session_key": "g1", "edge_id": "e1"})
    assert status == 200 and out["data"]["edge"]["invalid_at"] == 2000, out
    # a number beyond a double's range is an infinity for a write too (README): refused as the verb says, not
    # produced as null and applied as an absent field (an outside trial's importance: 1e400 stored the default)
    status, out = post_raw(w.url + "/dispatch", b'{"verb": "add_knowledge", "body": {"session_key": "s1", '
                                                b'"agent": "a", "domain": "d", "fact": "f", "importance": 1e400}}')
    assert status == 422 and out["error"] == "importance must be a number in [0.0, 1.0]", out
    status, out = post_raw(w.url + "/dispatch", b'{"verb": "record_outcome", "body": {"session_key": "s1", '
                                                b'"target": "a", "quality": -1' + b"0" * 400 + b'}}')
    assert (status, out["error"]) == (422, "router not initialized"), out  # as in process: not a parse error


class _Writers:
    """Threads sending ``add_knowledge`` writes to ``url`` in a loop until :meth:`stop`, each answer kept as
    (status, seconds, decoded body). ``retry_refused``: a refused connection (not listening yet) is retried,
    else it ends that thread (the worker is gone)."""

    def __init__(self, url: str, prefix: str, threads: int, *, sessions: int = 1, retry_refused: bool = False) -> None:
        import threading

        self.url, self.prefix, self.sessions, self.retry_refused = url, prefix, sessions, retry_refused
        self.answers: list[tuple[int, float, dict]] = []
        self._done = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        import time

        n = 0
        while not self._done.is_set():
            t0 = time.monotonic()
            body = {"session_key": f"{self.prefix}-{i}-{n % self.sessions}", "agent": "a", "domain": "d",
                    "fact": f"fact {n}"}
            try:
                status, out = http_json(self.url + "/dispatch", {"verb": "add_knowledge", "body": body}, timeout=90)
            except OSError:  # refused or reset
                if not self.retry_refused:
                    return
                time.sleep(0.05)
                continue
            self.answers.append((status, time.monotonic() - t0, out if isinstance(out, dict) else {}))
            n += 1

    def applied(self) -> int:
        return sum(a[0] == 200 for a in self.answers)

    def stop(self) -> None:
        self._done.set()
        for t in self._threads:
            t.join(90)


def test_sigterm_with_http_writes_in_flight_answers_them_and_stops_promptly(worker_factory) -> None:
    """A stopping worker applies nothing more, and its web server's stop waited for every write waiting
    for its result: ~30 s (the write timeout) with writes in flight, past a pod's grace period. Those
    writes now answer at the signal: 504 with the write's id (it is in the log and will be applied)."""
    import time

    w = worker_factory(env={"LEARNSTREAM_WRITE_TIMEOUT_S": "40"}).start().wait_ready()
    writers = _Writers(w.url, "sig", 8)
    wait_until(lambda: writers.applied() >= 40, 60, 0.05, "writes applied")
    t0 = time.monotonic()
    w.proc.terminate()
    w.proc.wait(60)
    stopped = time.monotonic() - t0
    writers.stop()
    assert stopped < 15, f"stopped in {stopped:.1f} s"
    late = [a for a in writers.answers if a[0] not in (200, 503, 504) or a[1] >= 15]
    assert not late, late[:10]
    for status, _, out in writers.answers:
        if status == 504:
            assert "stopping" in out["error"] and re.fullmatch(r"learn\.\w+:\d+:\d+", out["id"]), out


def test_writes_to_a_worker_that_is_joining_never_wait_out_their_timeout(worker_factory) -> None:
    """A write sent to a worker in its first seconds, before it had an assignment, was produced and waited
    for a local result; when another worker owned its session that took the whole write timeout (an outside
    trial's rolling restart: 30 s, then 504). Now it answers 503 at once (retry), and a write whose partition
    a rebalance gives to the other worker answers 504 when the new assignment comes."""
    env = {"LEARNSTREAM_WRITE_TIMEOUT_S": "25"}
    first = worker_factory("first", env=env).start().wait_ready()
    second = worker_factory("second", env=env).start()
    writers = _Writers(second.url, "join", 4, sessions=16, retry_refused=True)  # from its first second on
    try:
        second.wait_ready()
        wait_until(lambda: writers.applied() >= 40, 60, 0.1, "writes applied through the second")
    finally:
        writers.stop()
    assert first.ready()
    slow = [a for a in writers.answers if a[1] > 10]
    assert not slow, slow[:5]
    assert {a[0] for a in writers.answers} <= {200, 503, 504}, writers.answers


def test_writes_to_a_worker_resumed_after_a_long_pause_never_wait_out_their_timeout(worker_factory) -> None:
    """An outside trial stopped a worker (SIGSTOP) past the session timeout and sent writes to it as it resumed:
    the group had moved its partitions, and gave some back past the writes' offsets, with no assignment hook
    answering those writes; each waited its whole 30 s for a result another worker had applied long before,
    then 504. Each now answers within seconds: applied here (200), or 504 with the write's id and Retry-After
    (its partition moved, or another worker applied it; a retry with the same key answers it), or 503."""
    import signal

    env = {"LEARNSTREAM_WRITE_TIMEOUT_S": "40"}
    a = worker_factory("a", env=env, partitions=4).start().wait_ready()
    b = worker_factory("b", env=env, partitions=4).start().wait_ready()
    wait_until(lambda: a.health()["active_partitions"] and b.health()["active_partitions"] and a.ready() and b.ready(),
               120, 0.3, "both workers to own partitions")
    b.proc.send_signal(signal.SIGSTOP)
    try:  # past the session timeout (6 s): the group moves b's partitions to a
        wait_until(lambda: sorted(a.health()["active_partitions"]) == [0, 1, 2, 3], 120, 0.3,
                   "the running worker to take the stopped one's partitions")
    finally:
        b.proc.send_signal(signal.SIGCONT)
    writers = _Writers(b.url, "pause", 6, sessions=8)
    try:  # writes from the moment it resumes, through its rejoining, until some are applied here
        wait_until(lambda: writers.applied() >= 6, 90, 0.1, "writes applied through the resumed worker")
    finally:
        writers.stop()
    assert writers.answers
    slow = [a for a in writers.answers if a[1] > 12]
    assert not slow, slow[:5]
    assert {x[0] for x in writers.answers} <= {200, 503, 504}, writers.answers
    for status, _, out in writers.answers:
        if status == 504:
            assert re.fullmatch(r"agent\.\w+:\d+:\d+|learn\.\w+:\d+:\d+", out["id"]), out


def test_a_critical_log_level_holds_from_the_start(worker_factory) -> None:
    """An outside trial: LEARNSTREAM_LOG_LEVEL=critical still printed the start-up authentication WARNING (the
    root logger took the level only once faust set it up)."""
    w = worker_factory(env={"LEARNSTREAM_LOG_LEVEL": "critical"}).start().wait_ready()
    log = w.log_tail(1_000_000)
    assert "authentication is off" not in log and " WARNING " not in log, log[-2000:]
