"""Property-based fuzzing of every verb (Hypothesis): hostile bodies get a clean answer.

Each verb starts from a valid body (so generated values reach deep into the verb, past the first
check) and Hypothesis replaces or adds fields with hostile values: integers far outside int64,
2^53 + 1, NaN and infinities, wrong types, long strings, nested containers. Whatever it sends,
``LearnSession.dispatch`` — the same ``run_verb`` the stream and HTTP use — must answer
``{ok: true, data}`` or ``{ok: false, error: str}``: no exception escapes, the process does not
crash, and the state of another session is byte for byte what it was.

The example count is bounded for CI (``_EXAMPLES``); raise it locally with
``LEARNSTREAM_FUZZ_EXAMPLES=20000 pytest tests/unit/test_fuzz_verbs.py``.
"""
from __future__ import annotations

import base64
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.dispatch import LearnSession, load_verbs, state_key
from workers.verbs import BLOB_TABLES

_EXAMPLES = int(os.environ.get("LEARNSTREAM_FUZZ_EXAMPLES", "400"))
NOW = 1_700_000_000_000
EMB = [0.1, -0.2, 0.05, 0.3]
MSGS = [{"role": "memory", "memory_id": "m1", "content": "The user prefers metric units."},
        {"role": "user", "content": "How far is it?"}, {"role": "assistant", "content": "About 5 kilometres."}]
EDGE = {"id": "e1", "src": "alice", "dst": "acme", "relation": "works_at", "valid_at": 1000, "created_at": 1000}
OUTCOME = {"id": "o1", "agent": "tester", "task": "test the login form", "success": True,
           "strategy": "fill fields then submit", "ts": NOW}

# A valid body of every verb; the fuzzer mutates these.
BASE: dict[str, dict] = {
    "health": {}, "session_info": {}, "learner_info": {}, "agent_info": {}, "memory_info": {},
    "init_instant": {"targets": ["a", "b"], "dim": 4},
    "feedback": {"embedding": EMB, "model": "a", "quality": 0.9, "now_ms": NOW},
    "apply_adapter": {"embedding": EMB},
    "reset_adapter": {},
    "learn_feedback": {"model": "a", "quality": 0.9, "embedding": EMB, "relation": "entity", "now_ms": NOW},
    "record_loss": {"loss": 0.42, "now_ms": NOW},
    "consolidate": {"param_id": "head", "params": [0.1, 0.2, -0.3], "grads": [0.01, -0.02, 0.0]},
    "ewc_penalty": {"param_id": "head", "params": [0.1, 0.2, -0.3]},
    "init_attention": {"dim": 4, "heads": 2},
    "attend": {"query": EMB, "subgraph": {"nodes": [EMB, EMB], "edges": [[0, 1, 0, 1000, 0.5]]}, "now_ms": NOW},
    "nudge_relation": {"relation": "entity", "signed_quality": 0.5},
    "init_router": {"targets": ["a", "b", "c"], "in_dim": 4, "threshold": 3},
    "route": {"embedding": EMB, "estimated_tokens": 100},
    "record_outcome": {"target": "a", "quality": 0.9, "embedding": EMB, "estimated_tokens": 100},
    "insert_edge": {"edge": EDGE},
    "query_at": {"src": "alice", "t": 2000, "limit": 10, "known_at": 2000},
    "get_edge": {"edge_id": "e1"},
    "invalidate_edge": {"edge_id": "e1", "invalid_at": 3000, "expired_at": 3000},
    "contradict": {"edge": {**EDGE, "id": "e2", "dst": "globex"}, "contradicts": ["e1"], "now_ms": 4000},
    "init_learner": {"n_features": 3, "n_classes": 2, "hidden": 4, "capacity": 100},
    "learn_example": {"features": [0.0, 0.5, 1.0], "label": 1, "task": "t1"},
    "predict": {"features": [0.0, 0.5, 1.0]},
    "evaluate": {"examples": [{"features": [0.0, 0.5, 1.0], "label": 1}]},
    "consolidate_learner": {"now_ms": NOW},
    "learner_state": {},
    "learn_outcome": OUTCOME,
    "add_preference": {"user_id": "u1", "category": "units", "preference": "metric", "now_ms": NOW},
    "add_knowledge": {"agent": "tester", "domain": "web", "fact": "login needs 2FA", "now_ms": NOW},
    "mark_used": {"ids": ["o1"], "agent": "tester", "importance": 0.5, "now_ms": NOW},
    "forget": {"older_than_days": 90, "below_confidence": 0.3, "now_ms": NOW},
    "retrieve": {"task": "test the login form", "agent": "tester", "top_k": 5, "token_budget": 500, "now_ms": NOW},
    "heuristics": {"agent": "tester", "include": ["outcomes", "knowledge", "preferences"], "now_ms": NOW},
    "score_conversation": {"conversation_id": "c1", "messages": MSGS, "now_ms": NOW},
    "configure_scoring": {"max_age_ms": 1000, "window": 10, "max_per_run": 4},
    "finetune_candidates": {"conversation_id": "c1", "count": 3},
    "memory_scores": {"memory_id": "m1"},
    "important_memories": {"conversation_id": "c1", "message_index": 2, "min_score": 0.0},
}
# Fields worth hitting in any verb (numeric ranges above all).
FIELDS = sorted({k for b in BASE.values() for k in b} | {
    "dim", "in_dim", "heads", "head_dim", "hidden", "capacity", "now_ms", "t", "known_at", "limit", "k", "top_k",
    "count", "window", "seed", "n_features", "n_classes", "batch_size", "epsilon", "threshold", "lr", "momentum",
    "ewc_lambda", "token_budget", "estimated_tokens", "invalid_at", "expired_at", "valid_at", "older_than_days",
    "message_index", "max_age_ms", "max_per_run", "finetune_count", "timeout_s", "embedding_b64", "events",
    "examples", "replay", "drift_window", "fisher_every", "consolidation_steps", "train_steps", "ts"})

HUGE_INTS = [2**63, 2**63 - 1, -(2**63) - 1, 2**64 - 1, 2**64, 2**53 + 1, 9007199254740993, 10**30, -1, 0]
scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -float("inf"),
                                                                    1e308, -1e308, 5e-324]),
    st.booleans(), st.none(), st.text(max_size=40),
    st.sampled_from(["x" * 100_000, "\x1f", "a\x00b", "tenant-b", "e1", "o1", "m1", "c1", "a"]),
    st.just(base64.b64encode(np.full(4, np.nan, "<f4").tobytes()).decode()),
    st.just(base64.b64encode(b"\x00" * 7).decode()),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                       st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)),
                      max_leaves=12)
hostile_body = st.tuples(st.sampled_from(sorted(BASE)), st.dictionaries(st.sampled_from(FIELDS), values, min_size=1,
                                                                        max_size=4),
                         st.lists(st.sampled_from(FIELDS), max_size=2))


def _setup(s: LearnSession, sk: str) -> None:
    """Every kind of state a session can hold, so reads reach their kernels."""
    for name in ("init_instant", "feedback", "init_attention", "init_router", "record_outcome", "insert_edge",
                 "init_learner", "learn_example", "learn_outcome", "add_preference", "add_knowledge",
                 "score_conversation", "record_loss", "consolidate"):
        out = s.dispatch({"verb": name, "body": {**BASE[name], "session_key": sk}})
        assert out["ok"], (name, out)


def _snapshot(s: LearnSession, sk: str) -> dict[bytes, bytes]:
    keys = [state_key(t, sk) for t in BLOB_TABLES]
    snap = {k: s.store.get(k) for k in keys}
    snap.update(s.store.iter_prefix(state_key("graph", sk)))
    return snap


@pytest.fixture(scope="module")
def fuzz_session():
    load_verbs()
    s = LearnSession()
    _setup(s, "victim")
    _setup(s, "fuzz")
    yield s
    s.close()


def test_every_verb_has_a_base_body() -> None:
    assert set(BASE) == set(load_verbs()), set(load_verbs()) ^ set(BASE)


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(case=hostile_body)
def test_hostile_bodies_get_a_clean_answer(fuzz_session, case) -> None:
    name, mutation, dropped = case
    body = {**BASE[name], **mutation}
    for k in dropped:
        body.pop(k, None)
    body["session_key"] = "fuzz"
    before = _snapshot(fuzz_session, "victim")
    out = fuzz_session.dispatch({"verb": name, "body": body})  # an exception escaping fails the test
    assert isinstance(out, dict) and out.get("verb") == name and isinstance(out.get("ok"), bool), out
    if not out["ok"]:
        assert isinstance(out.get("error"), str) and out["error"], out
    assert _snapshot(fuzz_session, "victim") == before, f"{name} changed another session"


@pytest.mark.parametrize("name,body,words", [
    ("init_router", {"targets": ["a", "b"], "in_dim": 18446744073709551615}, "in_dim"),
    ("init_instant", {"targets": ["a"], "dim": 9007199254740993}, "dim"),
    ("feedback", {"embedding": EMB, "model": "a", "quality": 0.5, "now_ms": 2**64}, "now_ms"),
    ("init_attention", {"dim": 4, "heads": 2**40}, "heads"),
    ("init_learner", {"n_features": 3, "n_classes": 2, "hidden": 2**31}, "hidden"),
])
def test_the_reported_crashes_are_validation_errors(name: str, body: dict, words: str) -> None:
    s = LearnSession()
    if name == "feedback":
        s.dispatch({"verb": "init_instant", "body": {"targets": ["a"], "dim": 4}})
    out = s.dispatch({"verb": name, "body": body})
    assert not out["ok"] and words in out["error"], out
