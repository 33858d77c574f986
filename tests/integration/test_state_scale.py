"""Issue 10 on real parts: real embedding sizes persist through a worker, SIGKILL and restarts; the
largest refused configuration is refused cleanly; a crash between two keys of a session is never seen."""
from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from tests.helpers import applied, database_options, http_json, read_topic, send_raw, wait_until
from workers.verbs.codec import encode_embedding_b64
from workers.verbs.session import LearnSession
from workers.kafka.topics import topics

pytestmark = pytest.mark.integration

MODELS = ["small", "medium", "large"]


def _feedback(rng: np.random.Generator, sk: str, dim: int, n: int, t0: int = 0) -> list[dict]:
    return [{"session_key": sk, "embedding_b64": encode_embedding_b64(rng.standard_normal(dim).astype(np.float32)),
             "model": MODELS[int(rng.integers(0, 3))], "quality": float(rng.uniform(0.6, 1.0)), "now_ms": 1000 * (t0 + i)}
            for i in range(n)]


def _examples(rng: np.random.Generator, sk: str, d: int, n_msgs: int) -> list[dict]:
    out = []
    for i in range(n_msgs):
        y = rng.integers(0, 10, 20)
        x = rng.standard_normal((20, d)).astype(np.float32) + y[:, None].astype(np.float32) * 0.1
        out.append({"session_key": sk, "examples": [
            {"features_b64": encode_embedding_b64(xi), "label": int(yi), "now_ms": 1000 * (20 * i + j)}
            for j, (xi, yi) in enumerate(zip(x, y))]})
    return out


def _digests(w_or_session, plan: dict[str, str]) -> dict[str, tuple]:
    out = {}
    for sk, info_verb in plan.items():
        req = {"verb": info_verb, "body": {"session_key": sk}}
        data = (w_or_session.dispatch(req) if isinstance(w_or_session, LearnSession)
                else w_or_session.dispatch(info_verb, {"session_key": sk}))["data"]
        out[sk] = (data["digest"], data["parts"])
    return out


# init_learner bounds accept this; once its replay is full it holds ~300 MB: over the session limit
LARGEST = {"session_key": "huge", "n_features": 4096, "n_classes": 1000, "hidden": 1024, "capacity": 10_000}


@pytest.mark.timeout(600)
def test_real_embedding_sizes_learn_survive_sigkill_and_restart_as_in_process(broker, worker_factory, client) -> None:
    rng = np.random.default_rng(7)
    init = [("init_instant", {"session_key": "inst3072", "targets": MODELS, "dim": 3072}),
            ("init_learner", {"session_key": "lrn1536", "n_features": 1536, "n_classes": 10, "capacity": 100}),
            ("init_learner", {"session_key": "lrn3072", "n_features": 3072, "n_classes": 10, "capacity": 100})]
    # full replay buffers: the instant core's 64 slots, the learners' 100
    stream = ([("feedback", "inst3072", v) for v in _feedback(rng, "inst3072", 3072, 70)]
              + [("examples", "lrn1536", v) for v in _examples(rng, "lrn1536", 1536, 6)]
              + [("examples", "lrn3072", v) for v in _examples(rng, "lrn3072", 3072, 6)])
    plan = {"inst3072": "session_info", "lrn1536": "learner_info", "lrn3072": "learner_info"}

    s = LearnSession()
    for verb, body in init:
        assert s.dispatch({"verb": verb, "body": body})["ok"]
    for role, _, v in stream:
        verb = "learn_feedback" if role == "feedback" else "learn_example"
        assert s.dispatch({"verb": verb, "body": v})["ok"]
    want = _digests(s, plan)
    assert want["lrn3072"][1]["learner"]["bytes"] > 3_000_000  # far over one Kafka message: many keys

    a = worker_factory("a").start().wait_ready()
    # the largest refused configuration: HTTP 400 naming field and limit, nothing reaches the log
    status, out = http_json(a.url + "/dispatch", {"verb": "init_learner", "body": LARGEST})
    assert status == 400 and out["error"].startswith("capacity: ") and "bytes per session" in out["error"]
    for verb, body in init:
        assert a.dispatch(verb, body)["ok"]
    for role, sk, v in stream:
        client.send(role, sk, v, wait=False)
    client.flush()
    # ... and sent to the topic anyway, it is dead-lettered as invalid and the worker goes on
    send_raw(broker.bootstrap, topics()["commands"].name, b"huge",
             [orjson.dumps({"verb": "init_learner", "body": LARGEST})])
    (dlq,) = read_topic(broker.bootstrap, "learn.dlq", 1)
    assert dlq["reason_code"] == "invalid" and "capacity" in dlq["reason"]
    fb, ex = topics()["feedback"].name, topics()["examples"].name
    wait_until(lambda: applied(a, fb) == 70 and applied(a, ex) == 12, 300, what="all events applied")
    assert _digests(a, plan) == want
    assert a.dispatch("learner_info", {"session_key": "huge"})["data"]["parts"] == {}
    # Restarted, a worker serves what its store and changelog hold (every batch the broker had
    # acknowledged), then re-applies the redelivered rest: it ends exactly as in process.
    a.kill()
    # its table partitions have the options of every learnstream database (workers/state/rocksdb.py)
    tables = [p.parent for p in a.data_dir.rglob("CURRENT")]
    assert tables and all(database_options(t)["compaction_style"] == "kCompactionStyleUniversal" and
                          database_options(t)["filter_policy"] == "bloomfilter" for t in tables), tables
    a2 = worker_factory("a2", data_dir=a.data_dir).start().wait_ready()  # same data dir
    wait_until(lambda: _digests(a2, plan) == want, 120, 0.5, what="same data dir: as in process")
    a2.kill()
    b = worker_factory("b").start().wait_ready()  # fresh data dir: from the changelog alone
    wait_until(lambda: _digests(b, plan) == want, 120, 0.5, what="fresh data dir: as in process")
    # ... restored in bulk (workers/stream/restore.py), not record by record through faust
    text = __import__("urllib.request").request.urlopen(b.url + "/metrics", timeout=10).read().decode()
    restored = [line for line in text.splitlines() if line.startswith("learnstream_restored_records_total ")]
    assert restored and float(restored[0].split()[1]) > 1000, restored


@pytest.mark.timeout(600)
def test_sigkill_at_random_points_over_many_sessions_never_shows_a_torn_session(worker_factory, client) -> None:
    """A long stream over many sessions, the worker SIGKILLed at random points (between any two keys of
    any session, as it happens) and restarted on the same data dir, then on a fresh one: every session
    ends exactly as in process, and no stored state was ever unreadable."""
    seed = random.randrange(1 << 30)
    prng = random.Random(seed)
    rng = np.random.default_rng(seed)
    sessions = [f"agent-{i:02d}" for i in range(16)]
    init = [("init_instant", {"session_key": sk, "targets": MODELS, "dim": 96}) for sk in sessions]
    per = {sk: _feedback(rng, sk, 96, 25) for sk in sessions}
    order = [sk for sk in sessions for _ in range(25)]
    prng.shuffle(order)
    stream, taken = [], {sk: 0 for sk in sessions}
    for sk in order:
        stream.append((sk, per[sk][taken[sk]]))
        taken[sk] += 1

    s = LearnSession()
    for verb, body in init:
        assert s.dispatch({"verb": verb, "body": body})["ok"]
    for _, v in stream:
        assert s.dispatch({"verb": "learn_feedback", "body": v})["ok"]
    plan = dict.fromkeys(sessions, "session_info")
    want = _digests(s, plan)

    env = {"LEARNSTREAM_BATCH_MAX": "7"}  # many small batches: many places to die
    w = worker_factory("w0", env=env).start().wait_ready()
    for verb, body in init:
        assert w.dispatch(verb, body)["ok"]
    for sk, v in stream:
        client.send("feedback", sk, v, wait=False)
    client.flush()
    fb = topics()["feedback"].name
    for k in range(2):
        at = prng.randrange(10, 120)
        wait_until(lambda: applied(w, fb) >= at, 180, 0.01, what=f"kill {k} (seed {seed})")
        w.kill()
        w = worker_factory(f"w{k + 1}", data_dir=w.data_dir, env=env).start().wait_ready()

    differ: list = []

    def done() -> bool:
        got = _digests(w, plan)
        differ[:] = [(sk, w.dispatch("session_info", {"session_key": sk})["data"]["watermark"])
                     for sk in sessions if got[sk] != want[sk]]
        return not differ

    try:
        wait_until(done, 240, 0.5, what=f"every session as in process (seed {seed})")
    except TimeoutError:
        raise AssertionError(f"seed {seed}: sessions differ: {differ}") from None
    text = __import__("urllib.request").request.urlopen(w.url + "/metrics", timeout=10).read().decode()
    assert "corrupt_state" not in text
    w.kill()
    fresh = worker_factory("fresh", env=env).start().wait_ready()
    wait_until(lambda: _digests(fresh, plan) == want, 120, 0.5, what=f"fresh data dir as in process (seed {seed})")


@pytest.mark.timeout(600)
def test_a_router_fits_its_projection_across_a_sigkill_as_in_process(broker, worker_factory) -> None:
    """Routers with 1536-d queries learn through the commands topic past the bandit's fit (its kept
    outcomes, then the fitted projection and the replay), the worker SIGKILLed at a random point on the
    way: every router ends as in process, on the same data dir and on a fresh one."""
    seed = random.randrange(1 << 30)
    prng = random.Random(seed)
    rng = np.random.default_rng(seed)
    from workers.cores.bandit import FIT_AFTER
    n = FIT_AFTER + 60
    sessions = ["router-a", "router-b"]
    init = [{"session_key": sk, "targets": MODELS, "in_dim": 1536, "threshold": 0} for sk in sessions]
    per = {sk: [{"session_key": sk, "target": MODELS[int(rng.integers(0, 3))], "quality": float(rng.random()),
                 "cost": float(rng.uniform(0, 0.2)),
                 "embedding_b64": encode_embedding_b64(rng.standard_normal(1536).astype(np.float32))}
                for _ in range(n)] for sk in sessions}
    s = LearnSession()
    for body in init:
        assert s.dispatch({"verb": "init_router", "body": body})["ok"]
    for sk in sessions:
        for body in per[sk]:
            assert s.dispatch({"verb": "record_outcome", "body": body})["ok"]
    plan = dict.fromkeys(sessions, "session_info")
    want = _digests(s, plan)
    from workers.cores.router import PART, RouterState
    for sk in sessions:  # past the fit: the projection was fitted and the kept outcomes dropped
        bandit = s.blob("session", sk).get(PART, RouterState).bandit
        assert bandit.info()["fitted"] is True and bandit.kept is None

    cmd = topics()["commands"].name
    w = worker_factory("r0").start().wait_ready()
    for body in init:
        assert w.dispatch("init_router", body)["ok"]
    for sk in sessions:
        send_raw(broker.bootstrap, cmd, sk.encode(),
                 [orjson.dumps({"verb": "record_outcome", "body": body}) for body in per[sk]])
    at = prng.randrange(50, 2 * n - 50)
    wait_until(lambda: applied(w, cmd) >= at, 180, 0.01, what=f"kill at {at} (seed {seed})")
    w.kill()
    w = worker_factory("r1", data_dir=w.data_dir).start().wait_ready()
    wait_until(lambda: _digests(w, plan) == want, 180, 0.5, what=f"same data dir as in process (seed {seed})")
    w.kill()
    fresh = worker_factory("r2").start().wait_ready()
    wait_until(lambda: _digests(fresh, plan) == want, 120, 0.5, what=f"fresh data dir as in process (seed {seed})")
