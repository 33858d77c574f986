"""The learning parts on the stream: broker + worker == in-process LearnSession, SIGKILL included."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.helpers import applied, http_json, wait_until
from workers.cli.processes import metric
from workers.verbs.codec import encode_embedding_b64
from workers.verbs.session import LearnSession
from workers.kafka.topics import topics

pytestmark = pytest.mark.integration

DIM = 32
MODELS = ["small", "medium", "large"]


def feedback_stream(n_msgs: int, seed: int = 3) -> list[dict]:
    """Feedback values for one session: single events and envelopes, with a quality shift mid-way."""
    rng = np.random.default_rng(seed)
    out = []
    t = 0
    for i in range(n_msgs):
        k = 1 if i % 3 else 20  # every third message is an envelope of 20 events
        evs = []
        for _ in range(k):
            t += 1
            q = float(np.clip((0.9 if t < 150 else 0.2) + 0.05 * rng.standard_normal(), 0, 1))
            evs.append({"embedding_b64": encode_embedding_b64(rng.standard_normal(DIM).astype(np.float32)),
                        "model": MODELS[int(rng.integers(0, 3))], "quality": q, "relation": "entity",
                        "now_ms": 1000 * t})
        out.append({"session_key": "agent", **evs[0]} if k == 1 else {"session_key": "agent", "events": evs})
    return out


INIT = [("init_instant", {"session_key": "agent", "targets": MODELS, "dim": DIM}),
        ("init_router", {"session_key": "agent", "targets": MODELS, "in_dim": DIM, "threshold": 50}),
        ("init_attention", {"session_key": "agent", "dim": 16})]


def in_process(values: list[dict]) -> dict:
    s = LearnSession()
    for verb, body in INIT:
        assert s.dispatch({"verb": verb, "body": body})["ok"]
    for v in values:
        out = s.dispatch({"verb": "learn_feedback", "body": v})
        assert out["ok"], out
    return s.dispatch({"verb": "session_info", "body": {"session_key": "agent"}})["data"]["parts"]


def _partition_of_key(key: bytes) -> int:
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % 4


def stream_kill_restart(worker_factory, client, *, role: str, session: str, info_verb: str,
                        init: list[tuple[str, dict]], values: list[dict], kill_after: int, batch_max: str):
    """Stream ``values`` to a worker, SIGKILL it mid-stream, restart it on the same data dir and wait until
    the session's watermark covers the last message. Returns the restarted worker."""
    a = worker_factory("a", env={"LEARNSTREAM_BATCH_MAX": batch_max}).start().wait_ready()
    for verb, body in init:
        assert a.dispatch(verb, body)["ok"]
    topic = topics()[role].name
    for v in values:
        client.send(role, session, v, wait=False)
    client.flush()
    n = wait_until(lambda: (c := applied(a, topic)) >= kill_after and c, 120, 0.02, what="some events applied")
    a.kill()
    assert n < len(values), "the kill must land mid-stream"
    b = worker_factory("b", data_dir=a.data_dir).start().wait_ready()
    # only this session writes to its partition of the topic here, so its last offset is len - 1
    mark = f"{topic}:{_partition_of_key(session.encode())}"
    wait_until(lambda: b.dispatch(info_verb, {"session_key": session})["data"]["watermark"].get(mark)
               == len(values) - 1, 120, what="the rest applied after the restart")
    return b


def test_feedback_through_worker_equals_in_process_session(worker_factory, client) -> None:
    values = feedback_stream(60)
    w = worker_factory().start().wait_ready()
    for verb, body in INIT:
        assert w.dispatch(verb, body)["ok"]
    for v in values:
        client.send("feedback", "agent", v, wait=False)
    client.flush()
    fb = topics()["feedback"].name
    wait_until(lambda: applied(w, fb) == len(values), 120, what="all feedback applied")
    got = w.dispatch("session_info", {"session_key": "agent"})["data"]["parts"]
    want = in_process(values)
    assert set(got) == {"instant", "deep", "router", "attention", "loop", "boundary"}  # boundary: the CUSUM
    assert got == want  # adapter, lr, counts, replay, Fisher, loss ring, boundaries, router, attention
    h = w.dispatch("health", {"session_key": "agent"})["data"]
    assert h["boundaries_detected"] >= 1  # the quality shift fired at least once
    text = w.metrics()
    assert 0 < metric(text, "learnstream_adapter_norm") <= 5.0
    for kind in ("boundaries", "consolidations"):
        assert metric(text, "learnstream_downstream_events_total", kind=kind) == h["boundaries_detected"]
    assert metric(text, "learnstream_kernel_seconds_count", kernel="learn_feedback") > 0


def test_sigkill_mid_stream_ends_in_the_uninterrupted_state(worker_factory, client) -> None:
    values = feedback_stream(150, seed=11)
    b = stream_kill_restart(worker_factory, client, role="feedback", session="agent", info_verb="session_info",
                            init=INIT, values=values, kill_after=20, batch_max="5")
    assert b.dispatch("session_info", {"session_key": "agent"})["data"]["parts"] == in_process(values)


def test_alice_history_through_graph_edges_topic(worker_factory, client) -> None:
    w = worker_factory().start().wait_ready()
    client.insert_edge("kg", {"id": "e1", "src": "alice", "dst": "acme", "relation": "works_at",
                              "valid_at": 1000, "created_at": 1000})
    client.contradict("kg", {"id": "e2", "src": "alice", "dst": "globex", "relation": "works_at",
                             "valid_at": 2000, "created_at": 2050}, ["e1"], now_ms=2050)

    def dsts(t: int, **kw: int) -> list[str]:
        qs = "&".join([f"src=alice&t={t}"] + [f"{k}={v}" for k, v in kw.items()])
        with urllib.request.urlopen(f"{w.url}/graph/kg/edges?{qs}", timeout=10) as r:
            return [e["dst"] for e in json.loads(r.read())["data"]["edges"]]

    wait_until(lambda: dsts(2500) == ["globex"], 60, what="the contradiction applied")
    assert dsts(1500) == ["acme"]
    assert dsts(2500, known_at=2040) == ["acme"]  # before the contradiction was recorded
    e1 = w.dispatch("get_edge", {"session_key": "kg", "edge_id": "e1"})["data"]["edge"]
    assert e1["invalid_at"] == 2000 and e1["expired_at"] == 2050  # acme keeps its history
    # a session key with a slash (tenant-a/agent-7 is a usual shape: scopes end in /*) goes URL-encoded
    w.dispatch("insert_edge", {"session_key": "team/kg", "edge": {"id": "e9", "src": "alice", "dst": "acme",
                                                                  "relation": "works_at", "valid_at": 1000, "created_at": 1000}})
    with urllib.request.urlopen(f"{w.url}/graph/team%2Fkg/edges?src=alice&t=2000", timeout=10) as r:
        assert [e["id"] for e in json.loads(r.read())["data"]["edges"]] == ["e9"]
    for qs, error in (("src=alice&t=soon", "query parameter t must be an integer, got 'soon'"),
                      ("t=2000", "query parameter src required"),
                      ("src=alice", "query parameter t required")):  # 422 from the verb before: a 400 as src's
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(f"{w.url}/graph/kg/edges?{qs}", timeout=10)
        assert bad.value.code == 400 and json.loads(bad.value.read())["error"] == error
    # a limit past int64 is refused as in a POSTed query_at (it was taken as "no limit")
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(f"{w.url}/graph/kg/edges?src=alice&t=2000&limit={2 ** 70}", timeout=10)
    assert bad.value.code == 422 and "limit must be a non-negative integer" in json.loads(bad.value.read())["error"]


def examples_stream(n_msgs: int, seed: int = 5) -> list[dict]:
    rng = np.random.default_rng(seed)
    means = 3 * rng.standard_normal((4, 8))
    out = []
    for i in range(n_msgs):
        classes = [0, 1] if i < n_msgs // 2 else [2, 3]
        y = rng.choice(classes, 10)
        x = means[y] + rng.standard_normal((10, 8))
        out.append({"session_key": "learner", "examples": [
            {"features": xi.tolist(), "label": int(yi), "task": "A" if i < n_msgs // 2 else "B",
             "now_ms": 1000 * (10 * i + j)} for j, (xi, yi) in enumerate(zip(x, y))]})
    return out


LEARNER = {"session_key": "learner", "n_features": 8, "n_classes": 4, "model": "mlp", "hidden": 16}


def test_examples_through_worker_equal_in_process_learner_even_after_sigkill(worker_factory, client) -> None:
    values = examples_stream(80)
    s = LearnSession()
    assert s.dispatch({"verb": "init_learner", "body": LEARNER})["ok"]
    for v in values:
        assert s.dispatch({"verb": "learn_example", "body": v})["ok"]
    want = s.dispatch({"verb": "learner_info", "body": {"session_key": "learner"}})["data"]["parts"]

    b = stream_kill_restart(worker_factory, client, role="examples", session="learner", info_verb="learner_info",
                            init=[("init_learner", LEARNER)], values=values, kill_after=15, batch_max="3")
    assert b.dispatch("learner_info", {"session_key": "learner"})["data"]["parts"] == want
    x = values[-1]["examples"][0]["features"]
    status, out = http_json(b.url + "/predict", {"session_key": "learner", "features": x})
    assert status == 200 and out["data"] == s.dispatch({"verb": "predict", "body": {"session_key": "learner",
                                                                                     "features": x}})["data"]

