"""The shared check suite of every part of a session's state (the cores', the protocols', scoring's, ...).

A part lives in a session's table value (:class:`~workers.state.blob.StateBlob`) and so in RocksDB and
its changelog: after a restart, a rebalance or a restore, the worker carries on from its bytes. So for
every part (:data:`PARTS`), driven through the verbs that write it:

- :func:`check_roundtrip`: ``from_bytes(to_bytes())`` gives the same bytes;
- :func:`check_restored_behaviour`: a session restored from the stored value answers the same further
  verbs with the same replies and ends with the same bytes, part by part, as the session that never
  stopped (its random generator restored too);
- :func:`check_corrupt_refused`: truncated or foreign bytes are refused with
  :class:`~workers.errors.CorruptStateError` (the worker dead-letters the event, never guesses);
- :func:`check_bad_input_changes_nothing`: a refused verb leaves every byte of the session as it was.

The online learner's own parts pass :mod:`workers.online.checks` as well (its estimators one by one).
:data:`VALID_BODIES` holds a valid body of every verb (the fuzzer in the tests starts from them).

Examples
--------
>>> for check in yield_checks("deep"):
...     check()
"""
from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from workers.cores.attention import AttentionState
from workers.cores.bandit import BanditState
from workers.cores.boundary import LossCusum
from workers.cores.deep import DeepState
from workers.cores.instant import InstantState
from workers.cores.loop import LoopState, ModelLevels
from workers.cores.router import RouterState
from workers.errors import CorruptStateError
from workers.online.learner import ContinualLearner
from workers.protocols.memory import ProtocolsState
from workers.scoring.part import ScoringState
from workers.state import MemoryStore
from workers.verbs.session import LearnSession

__all__ = ("PARTS", "PartCase", "VALID_BODIES", "yield_checks", "check_roundtrip", "check_restored_behaviour",
           "check_corrupt_refused", "check_bad_input_changes_nothing")

NOW = 1_700_000_000_000
EMB = [0.1, -0.2, 0.05, 0.3]
_MSGS = [{"role": "memory", "memory_id": "m1", "content": "The user prefers metric units."},
         {"role": "user", "content": "How far is it?"}, {"role": "assistant", "content": "About 5 kilometres."}]
_EDGE = {"id": "e1", "src": "alice", "dst": "acme", "relation": "works_at", "valid_at": 1000, "created_at": 1000}
_OUTCOME = {"id": "o1", "agent": "tester", "task": "test the login form", "success": True,
            "strategy": "fill fields then submit", "ts": NOW}

# A valid body of every verb.
VALID_BODIES: dict[str, dict] = {
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
    "attend": {"query": EMB, "now_ms": NOW, "subgraph": {
        "nodes": [{"id": "n1", "embedding": EMB, "created_at": 1000}, {"id": "n2", "embedding": EMB[::-1]}],
        "edges": [{"src": "q", "dst": "n1", "relation": "entity", "weight": 1.0},
                  {"src": "n1", "dst": "n2", "relation": "mention", "weight": 0.5}]}},
    "nudge_relation": {"relation": "entity", "signed_quality": 0.5},
    "init_router": {"targets": ["a", "b", "c"], "in_dim": 4, "threshold": 3},
    "route": {"embedding": EMB, "estimated_tokens": 100},
    "record_outcome": {"target": "a", "quality": 0.9, "embedding": EMB, "estimated_tokens": 100},
    "insert_edge": {"edge": _EDGE},
    "query_at": {"src": "alice", "t": 2000, "limit": 10, "known_at": 2000},
    "get_edge": {"edge_id": "e1"},
    "invalidate_edge": {"edge_id": "e1", "invalid_at": 3000, "expired_at": 3000},
    "contradict": {"edge": {**_EDGE, "id": "e2", "dst": "globex"}, "contradicts": ["e1"], "now_ms": 4000},
    "init_learner": {"n_features": 3, "n_classes": 2, "hidden": 4, "capacity": 100},
    "learn_example": {"features": [0.0, 0.5, 1.0], "label": 1, "task": "t1"},
    "predict": {"features": [0.0, 0.5, 1.0]},
    "evaluate": {"examples": [{"features": [0.0, 0.5, 1.0], "label": 1}]},
    "consolidate_learner": {"now_ms": NOW},
    "learner_state": {},
    "learn_outcome": _OUTCOME,
    "add_preference": {"user_id": "u1", "category": "units", "preference": "metric", "now_ms": NOW},
    "add_knowledge": {"agent": "tester", "domain": "web", "fact": "login needs 2FA", "now_ms": NOW},
    "mark_used": {"ids": ["o1"], "agent": "tester", "importance": 0.5, "now_ms": NOW},
    "forget": {"older_than_days": 90, "below_confidence": 0.3, "now_ms": NOW},
    "retrieve": {"task": "test the login form", "agent": "tester", "top_k": 5, "token_budget": 500, "now_ms": NOW},
    "heuristics": {"agent": "tester", "include": ["outcomes", "knowledge", "preferences"], "now_ms": NOW},
    "score_conversation": {"conversation_id": "c1", "messages": _MSGS, "now_ms": NOW},
    "configure_scoring": {"max_age_ms": 1000, "window": 10, "max_per_run": 4},
    "finetune_candidates": {"conversation_id": "c1", "count": 3},
    "memory_scores": {"memory_id": "m1"},
    "important_memories": {"conversation_id": "c1", "message_index": 2, "min_score": 0.0},
}

Step = tuple[str, dict]  # (verb, body changes over VALID_BODIES[verb])


@dataclass(frozen=True)
class PartCase:
    """How the suite reaches one part: its name in the blob, its class, the table holding it, the
    verbs that create it (``setup``), the verbs run on the original and on the restored session
    (``further``), and requests its verbs refuse (``bad``)."""

    name: str
    cls: type
    table: str
    setup: tuple[Step, ...]
    further: tuple[Step, ...]
    bad: tuple[Step, ...]
    nested: tuple[type, ...] = field(default=())  # parts serialized inside this one


def _steps(*names: str | Step) -> tuple[Step, ...]:
    return tuple((n, {}) if isinstance(n, str) else n for n in names)


# the loop's loss is 1 - quality: steady, then a lasting rise (the CUSUM's boundary)
_STEADY = tuple(("learn_feedback", {"quality": 0.9, "now_ms": NOW + i}) for i in range(6))
_RISE = tuple(("learn_feedback", {"quality": 0.9 if i < 4 else 0.1, "now_ms": NOW + 10 + i}) for i in range(12))

PARTS: dict[str, PartCase] = {c.name: c for c in (
    PartCase("instant", InstantState, "session", _steps("init_instant", "feedback"),
             _steps("feedback", ("feedback", {"model": "b", "quality": 0.1}), "apply_adapter", "reset_adapter"),
             _steps(("feedback", {"embedding": [1.0, 2.0]}), ("feedback", {"model": "nope"}))),
    PartCase("deep", DeepState, "session", _steps("record_loss", "consolidate"),
             _steps(*(("record_loss", {"loss": 0.4 + 0.05 * i}) for i in range(12)), ("record_loss", {"loss": 9.0}),
                    "consolidate", "ewc_penalty"),
             _steps(("record_loss", {"loss": "x"}), ("consolidate", {"grads": [1.0]}))),
    PartCase("loop", LoopState, "session", _steps("init_instant", "learn_feedback"),
             _steps("learn_feedback", ("learn_feedback", {"model": "b", "quality": 0.2})),
             _steps(("learn_feedback", {"embedding": [1.0]}),), nested=(ModelLevels,)),
    PartCase("boundary", LossCusum, "session", _steps("init_instant", *_STEADY), _RISE,
             _steps(("learn_feedback", {"quality": "high"}), ("learn_feedback", {"boundary": "nope"}))),
    PartCase("router", RouterState, "session", _steps("init_router", "record_outcome"),
             _steps("route", "record_outcome", ("record_outcome", {"target": "b", "quality": 0.2}), "route"),
             _steps(("route", {"embedding": [1.0, 2.0]}), ("record_outcome", {"quality": "x"})),
             nested=(BanditState,)),
    PartCase("attention", AttentionState, "session", _steps("init_attention", "nudge_relation"),
             _steps("attend", ("nudge_relation", {"relation": "mention", "signed_quality": -0.3}), "attend"),
             _steps(("attend", {"query": [1.0]}), ("nudge_relation", {"signed_quality": "x"}))),
    PartCase("learner", ContinualLearner, "learner", _steps("init_learner", "learn_example"),
             _steps(*(("learn_example", {"features": [0.1 * i, 0.5, 1.0 - 0.1 * i], "label": i % 2})
                      for i in range(8)), "consolidate_learner", "predict"),
             _steps(("learn_example", {"features": [1.0]}), ("learn_example", {"label": 7}))),
    PartCase("protocols", ProtocolsState, "agent", _steps("learn_outcome", "add_preference", "add_knowledge"),
             _steps("mark_used", ("learn_outcome", {"id": "o2", "success": False}), "retrieve", "forget"),
             _steps(("learn_outcome", {"task": ""}), ("mark_used", {"importance": 7}))),
    PartCase("scoring", ScoringState, "memory", _steps("configure_scoring", "score_conversation"),
             _steps(("score_conversation", {"conversation_id": "c2", "now_ms": NOW + 5000}), "memory_scores",
                    "finetune_candidates"),
             _steps(("score_conversation", {"messages": "x"}), ("configure_scoring", {"window": -1}))),
)}

_SK = "checks"
_SEED = 20_261_202


def _run(s: LearnSession, steps: tuple[Step, ...], *, ok: bool = True) -> list[dict]:
    out = []
    for verb, change in steps:
        reply = s.dispatch({"verb": verb, "body": {**VALID_BODIES[verb], **change, "session_key": _SK}})
        if ok:
            assert reply["ok"], (verb, reply)
        out.append(reply)
    return out


def _session(case: PartCase) -> LearnSession:
    s = LearnSession(rng=random.Random(_SEED))
    _run(s, case.setup)
    assert s.blob(case.table, _SK).has(case.name), f"{case.name}: the setup verbs did not create the part"
    return s


def _bytes(s: LearnSession, table: str) -> bytes | None:
    return s.value(table, _SK)


def check_roundtrip(case: PartCase) -> None:
    part = _session(case).blob(case.table, _SK).get(case.name, case.cls)
    b = part.to_bytes()
    assert case.cls.from_bytes(b).to_bytes() == b, f"{case.name}: from_bytes(to_bytes()) differs"


def check_restored_behaviour(case: PartCase) -> None:
    a = _session(case)
    store = MemoryStore()
    for k, v in a.store.iter_prefix(b""):
        store.put(k, v)
    rng = random.Random()
    rng.setstate(a.rng.getstate())
    b = LearnSession(store=store, rng=rng)  # a new process reading the stored value
    assert _run(a, case.further) == _run(b, case.further), f"{case.name}: the restored session answers otherwise"
    assert _bytes(a, case.table) == _bytes(b, case.table), f"{case.name}: restored state differs after the same verbs"


def check_corrupt_refused(case: PartCase) -> None:
    b = _session(case).blob(case.table, _SK).get(case.name, case.cls).to_bytes()
    for bad in (b[: len(b) // 2], b[:-1], b"", b"\x00" * 7, b"not a part at all"):
        try:
            case.cls.from_bytes(bad)
        except CorruptStateError:
            continue
        raise AssertionError(f"{case.name}: {len(bad)} corrupt bytes were loaded, not refused")


def check_bad_input_changes_nothing(case: PartCase) -> None:
    s = _session(case)
    stored, live = _bytes(s, case.table), s.blob(case.table, _SK).to_bytes()
    for reply in _run(s, case.bad, ok=False):
        assert reply["ok"] is False, f"{case.name}: a bad request was applied: {reply}"
    # the session as cached in memory too: the worker keeps it for the next batch
    assert (_bytes(s, case.table), s.blob(case.table, _SK).to_bytes()) == (stored, live), \
        f"{case.name}: a refused request changed the state"


def yield_checks(name: str) -> Iterator[Callable[[], None]]:
    """Every check of part ``name`` (a key of :data:`PARTS`), as callables named after the check."""
    case = PARTS[name]
    for check in (check_roundtrip, check_restored_behaviour, check_corrupt_refused, check_bad_input_changes_nothing):
        fn: Any = functools.partial(check, case)
        fn.__name__ = check.__name__
        yield fn
