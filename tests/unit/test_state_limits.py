"""Byte-size limits (workers/state/limits.py): refused up front by every entry point, or, when a
session still outgrows its limit, its events go to the DLQ as ``too_large`` and the worker goes on."""
from __future__ import annotations

import orjson
import pytest

from workers.verbs.session import LearnSession
from workers.state import MemoryStore
from workers.state.access import StoreStateAccess
from workers.state.limits import MAX_SESSION_BYTES, Limits, projected_bytes
from workers.stream.processor import Processor
from workers.stream.records import Record
from workers.kafka.topics import topics
from tests.helpers import by_topic

T = {role: t.name for role, t in topics().items()}
# the largest learner the verb's own bounds accept: ~300 MB of state once its replay is full
LARGEST_LEARNER = {"n_features": 4096, "n_classes": 1000, "hidden": 1024, "capacity": 10_000}


def _cmd(offset: int, verb: str, body: dict, key: str = "s1") -> Record:
    return Record(T["commands"], 0, offset, key.encode(), orjson.dumps({"verb": verb, "body": body}), 1000)


@pytest.mark.parametrize("verb,body,field", [
    ("init_learner", LARGEST_LEARNER, "capacity"),
    ("init_learner", {"n_features": 4096, "n_classes": 1000, "hidden": 1024, "capacity": 0}, "n_features"),
])
def test_configurations_that_outgrow_a_session_are_refused_naming_field_and_limit(verb, body, field) -> None:
    s = LearnSession()
    out = s.dispatch({"verb": verb, "body": body})
    assert not out["ok"]
    assert out["error"].startswith(f"{field}: ") and f"{MAX_SESSION_BYTES:,} bytes per session" in out["error"]
    assert "LEARNSTREAM_MAX_SESSION_BYTES" in out["error"]
    assert s.store.get(b"learner\x1fdefault") is None and s.store.get(b"session\x1fdefault") is None


def test_a_configuration_the_verb_refuses_itself_gets_the_verb_s_own_message() -> None:
    out = LearnSession().dispatch({"verb": "init_learner", "body": {**LARGEST_LEARNER, "n_features": 10**9}})
    assert not out["ok"] and "bytes per session" not in out["error"] and "n_features" in out["error"]


@pytest.mark.parametrize("verb,body", [
    ("init_learner", {"n_features": 3072, "n_classes": 10}),  # a common embedding size, default buffers
    ("init_learner", {"n_features": 1536, "n_classes": 10, "capacity": 1000}),
    ("init_instant", {"targets": ["a", "b"], "dim": 4096}),
])
def test_real_embedding_sizes_are_accepted(verb, body) -> None:
    assert LearnSession().dispatch({"verb": verb, "body": body})["ok"]
    assert projected_bytes(verb, body)[1] < MAX_SESSION_BYTES


def test_the_projection_bounds_the_real_state_from_above() -> None:
    import numpy as np

    s = LearnSession()
    body = {"session_key": "l", "n_features": 64, "n_classes": 4, "capacity": 50}
    assert s.dispatch({"verb": "init_learner", "body": body})["ok"]
    rng = np.random.default_rng(0)
    for _ in range(10):  # fills the replay
        ex = [{"features": rng.standard_normal(64).tolist(), "label": int(rng.integers(4))} for _ in range(20)]
        assert s.dispatch({"verb": "learn_example", "body": {"session_key": "l", "examples": ex}})["ok"]
    real = s.dispatch({"verb": "learner_info", "body": {"session_key": "l"}})["data"]["parts"]["learner"]["bytes"]
    assert real <= projected_bytes("init_learner", body)[1] < 4 * real


def test_the_worker_dead_letters_a_refused_configuration_as_invalid() -> None:
    p = Processor(StoreStateAccess(MemoryStore()))
    res = p.process([_cmd(0, "init_learner", LARGEST_LEARNER), _cmd(1, "init_instant", {"targets": ["a"]})])
    (d,) = [x.value for x in res.produce if x.role == "dlq"]
    assert d["reason_code"] == "invalid" and "capacity" in d["reason"] and d["source"]["offset"] == 0
    assert res.applied == 1  # the next event is applied: the worker went on


def test_a_session_grown_past_its_limit_goes_to_the_dlq_as_too_large_and_the_worker_goes_on() -> None:
    store = MemoryStore()
    init = {"targets": ["a", "b"], "dim": 64}
    first = Processor(StoreStateAccess(store))
    assert first.process([_cmd(0, "init_instant", init), _cmd(1, "init_instant", init, key="s2")]).applied == 2
    # restarted with a lower limit than the sessions were configured under (~20 kB with a full replay)
    p = Processor(StoreStateAccess(store), limits=Limits(max_session_bytes=15_000))
    before = LearnSession(store=store).value("session", "s1")
    x = [0.1] * 64
    fb = [_cmd(2 + i, "feedback", {"embedding": x, "model": "a", "quality": 0.9}) for i in range(70)]
    res = p.process([*fb, _cmd(72, "reset_adapter", {}, key="s2")])
    dlq = [x.value for x in res.produce if x.role == "dlq"]
    assert len(dlq) == 70 and {d["reason_code"] for d in dlq} == {"too_large"}
    assert "15000 bytes per session" in dlq[0]["reason"]
    assert not res.replies[(T["commands"], 0, 2)]["ok"] and res.replies[(T["commands"], 0, 72)]["ok"]
    assert by_topic(res.messages)[(T["commands"], "too_large")] == 70 and by_topic(res.messages)[(T["commands"], "applied")] == 1
    assert LearnSession(store=store).value("session", "s1") == before  # nothing of it was written
    # and the session still takes what fits
    assert p.process([_cmd(73, "feedback", {"embedding": x, "model": "a", "quality": 0.9})]).applied == 1
    assert LearnSession(store=store).value("session", "s1") != before


def test_a_refused_verb_leaves_the_same_state_in_process_and_in_the_worker() -> None:
    """One cache and one way to build a verb's context: a refused verb keeps the cached state in both."""
    init = {"targets": ["a", "b"], "dim": 8}
    bad = {"embedding": [0.0] * 7, "model": "a", "quality": 0.5}  # wrong dim: refused before any change
    good = {"embedding": [0.5] * 8, "model": "b", "quality": 0.9}
    s = LearnSession()
    p = Processor(StoreStateAccess(MemoryStore()))
    p.process([_cmd(0, "init_instant", init)])
    assert s.dispatch({"verb": "init_instant", "body": {"session_key": "s1", **init}})["ok"]
    kept_s = s.blob("session", "s1")
    kept_p = p.sessions.blob("session", "s1", 0)
    assert not s.dispatch({"verb": "feedback", "body": {"session_key": "s1", **bad}})["ok"]
    assert p.process([_cmd(1, "feedback", bad)]).rejected == 1
    assert s.blob("session", "s1") is kept_s and p.sessions.blob("session", "s1", 0) is kept_p  # not reloaded
    assert s.dispatch({"verb": "feedback", "body": {"session_key": "s1", **good}})["ok"]
    assert p.process([_cmd(2, "feedback", good)]).applied == 1
    info = {"verb": "session_info", "body": {"session_key": "s1"}}
    want = s.dispatch(info)["data"]
    got = LearnSession(store=p.state.store).dispatch(info)["data"]
    assert (got["digest"], got["parts"]) == (want["digest"], want["parts"])
