"""The learning loop (learn_feedback): formulas, boundaries, envelopes == event by event, atomicity."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from reference import deep_ref, instant_ref
from workers.verbs.codec import encode_embedding_b64
from workers.cores.deep import LAMBDA, DeepState
from workers.cores.instant import InstantState
from workers.cores.loop import QUALITY_EMA_RATE, LoopState
from workers.verbs.session import LearnSession
from workers.verbs.registry import REGISTRY

DIM = 6
TARGETS = ["small", "large"]
# q 0.9 for a while, then a collapse: the loss jumps and the z-score fires
QUALITIES = [0.9, 0.85, 0.95, 0.9, 0.88, 0.92, 0.9, 0.0] + [0.9, 0.92, 0.88, 0.9] * 3 + [0.1, 0.9, 0.5]


def _session(**kw) -> LearnSession:
    s = LearnSession(**kw)
    s.dispatch({"verb": "init_instant", "body": {"targets": TARGETS, "dim": DIM}})
    return s


def _event(i: int, q: float, x: np.ndarray, **extra) -> dict:
    return {"model": TARGETS[i % 2], "quality": q, "embedding_b64": encode_embedding_b64(x), "now_ms": 1000 + i,
            **extra}


def _parts(s: LearnSession, sk: str = "default") -> tuple:
    b = s.blob("session", sk)
    return b.get("instant", InstantState), b.get("deep", DeepState), b.get("loop", LoopState)


def _xs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def test_needs_an_instant_core() -> None:
    out = LearnSession().dispatch({"verb": "learn_feedback", "body": {"model": "a", "quality": 1, "embedding": [1]}})
    assert out["error"] == "instant not initialized; call init_instant"


def test_one_event_follows_the_formulas() -> None:
    """The whole loop against the NumPy references, event by event."""
    s = _session()
    X = _xs(len(QUALITIES))
    inst, deep = instant_ref.InstantRef(DIM, 2), deep_ref.DeepRef()
    window = deep_ref.LossWindowRef()
    ema = None
    boundaries = 0
    for i, q in enumerate(QUALITIES):
        out = s.dispatch({"verb": "learn_feedback", "body": _event(i, q, X[i], boundary="zscore")})
        assert out["ok"], out
        m = q if ema is None else ema
        q_eff = np.float32(0.7 * q + 0.3 * m)
        ema = m + QUALITY_EMA_RATE * (q - m)
        fired = window.record(max(1.0 - float(q_eff), 0.0))["boundary_fired"]
        inst.feedback(X[i], i % 2, float(q_eff), 1000 + i)
        if fired:
            boundaries += 1
            grads = np.array([X[i][k % DIM] for k in range(2 * (DIM + 2))], np.float32) * q_eff
            deep.consolidate("adapter", inst.theta, grads)
            inst.set_ewc(deep.fisher["adapter"], deep.snap["adapter"], LAMBDA)
            inst.reset()
        assert out["data"]["boundaries"] == int(fired)
        assert out["data"]["quality_ema"] == pytest.approx(ema)
        got_i, got_d, _ = _parts(s)
        np.testing.assert_allclose(got_i.theta, inst.theta, rtol=1e-5, atol=1e-7)
        assert got_i.feedback_count == i + 1 and np.float32(got_i.lr) == inst.lr
    assert boundaries >= 2  # the scenario exercised the boundary path
    got_i, got_d, loop = _parts(s)
    np.testing.assert_allclose(got_d.fisher["adapter"], deep.fisher["adapter"], rtol=1e-5, atol=1e-12)
    assert got_i.has_ewc and got_i.resets == boundaries and loop.boundaries == boundaries
    assert loop.events == len(QUALITIES)


def test_first_event_uses_its_own_quality_as_the_ema() -> None:
    s = _session()
    out = s.dispatch({"verb": "learn_feedback", "body": _event(0, 0.8, _xs(1)[0], boundary="zscore")})
    assert out["data"]["quality_ema"] == pytest.approx(0.8)
    _, deep, _ = _parts(s)
    assert deep.loss_window == [pytest.approx(0.2)]  # q_eff = q on the first event


def test_a_boundary_consolidates_resets_and_emits() -> None:
    s = _session()
    X = _xs(len(QUALITIES))
    src = {"topic": "learn.feedback", "partition": 0, "offset": 7}
    for i, q in enumerate(QUALITIES[:7]):
        assert s.dispatch({"verb": "learn_feedback", "body": _event(i, q, X[i], boundary="zscore")})["ok"]
    assert s.emitted == []
    verb = REGISTRY["learn_feedback"]  # called directly to give it a stream source, as the worker does
    ctx = s.context(verb, "default")
    ctx.source = src
    v = {"data": verb.fn(ctx, _event(7, QUALITIES[7], X[7]))}  # q 0.0: the collapse
    assert v["data"]["boundaries"] == 1 and v["data"]["adapter_norm"] == 0.0
    [(r1, b), (r2, c)] = s.emitted
    assert (r1, r2) == ("boundaries", "consolidations")
    assert b["cause"] == "loss_zscore" and b["source"] == src and b["boundaries_total"] == 1
    assert c["param_id"] == "adapter" and c["fisher_len"] == 2 * (DIM + 2) and c["cause"] == "boundary"
    assert c["source"] == src and c["fisher_max"] > 0
    inst, deep, _ = _parts(s)
    assert inst.has_ewc and not inst.theta.any() and inst.resets == 1
    assert np.array_equal(inst.ewc_f, deep.fisher["adapter"])


def _run_singles(events: list[dict]) -> LearnSession:
    s = _session()
    for ev in events:
        assert s.dispatch({"verb": "learn_feedback", "body": ev})["ok"]
    return s


# a lasting collapse: what the default (cusum) detector fires on
QUALITIES_LASTING = [0.9, 0.85, 0.95, 0.9, 0.88] * 4 + [0.1] * 8 + [0.9, 0.92] * 3


@pytest.mark.parametrize("split", [None, 5])
@pytest.mark.parametrize("mode", ["zscore", "cusum"])
def test_an_envelope_equals_event_by_event_exactly(split: int | None, mode: str) -> None:
    qualities = QUALITIES if mode == "zscore" else QUALITIES_LASTING
    X = _xs(len(qualities), seed=3)
    events = [_event(i, q, X[i], relation="entity", boundary=mode) for i, q in enumerate(qualities)]
    one = _run_singles(events)
    env = _session()
    chunks = [events] if split is None else [events[:split], events[split:]]
    for chunk in chunks:
        chunk = [{k: v for k, v in ev.items() if k != "boundary"} for ev in chunk]
        out = env.dispatch({"verb": "learn_feedback", "body": {"session_key": "default", "events": chunk,
                                                               "boundary": mode}})
        assert out["ok"] and out["data"]["events"] == len(chunk)
    a, b = _parts(one), _parts(env)
    assert a[0] == b[0] and a[1] == b[1]
    assert a[2].ema == b[2].ema and a[2].events == b[2].events and a[2].boundaries == b[2].boundaries
    strip = [(r, {k: v for k, v in p.items() if k != "event_index"}) for r, p in env.emitted]
    assert strip == one.emitted and len(one.emitted) >= 2


def test_a_bad_envelope_changes_nothing() -> None:
    s = _session()
    X = _xs(4)
    s.dispatch({"verb": "learn_feedback", "body": _event(0, 0.7, X[0])})
    before = s.store.get(b"session\x1fdefault")
    emitted = list(s.emitted)
    bad_events = [
        [_event(1, 0.9, X[1]), _event(2, 1.5, X[2])],
        [_event(1, 0.9, X[1]), {**_event(2, 0.9, X[2]), "model": "nope"}],
        [_event(1, 0.9, X[1]), {"model": "small", "quality": 0.9, "embedding": [1.0, 2.0]}],
        [_event(1, 0.9, X[1]), {**_event(2, 0.9, X[2]), "session_key": "other"}],
        [_event(1, 0.9, X[1]), {**_event(2, 0.9, X[2]), "estimated_tokens": -1}],
        [],
    ]
    errors = []
    for evs in bad_events:
        out = s.dispatch({"verb": "learn_feedback", "body": {"events": evs}})
        assert out["ok"] is False
        errors.append(out["error"])
    assert errors[:3] == ["events[1]: quality must be 0..1",
                          "events[1]: unknown model name; not in registered targets",
                          "events[1]: embedding wrong dim"]
    # what the topic schema refuses too: a negative now_ms, both forms of one embedding, an event's own
    # fields beside the envelope's events (they would be dropped without a word)
    for body, error in (
            ({"events": [_event(1, 0.9, X[1]), {**_event(2, 0.9, X[2]), "now_ms": -5}]},
             "events[1]: now_ms must be an integer (epoch ms) in [0, 9007199254740991]"),
            ({"events": [{**_event(1, 0.9, X[1]), "embedding": X[1].tolist()}]},
             "events[0]: embedding: give embedding or embedding_b64, not both"),
            ({"events": [_event(1, 0.9, X[1])], "now_ms": 5},
             "an envelope carries its events in events; now_ms beside them would be ignored: move them into each "
             "event"),
            ({"events": [_event(1, 0.9, X[1])], **_event(2, 0.9, X[2])},
             "an envelope carries its events in events; model, quality, embedding_b64, now_ms beside them would be "
             "ignored: move them into each event"),
            ({**_event(1, 0.9, X[1]), "now_ms": -1}, "now_ms must be an integer (epoch ms) in [0, 9007199254740991]")):
        assert s.dispatch({"verb": "learn_feedback", "body": body})["error"] == error
    assert s.store.get(b"session\x1fdefault") == before and s.emitted == emitted
    inst, _, loop = _parts(s)
    assert inst.feedback_count == 1 and loop.events == 1


def test_router_and_attention_parts_are_fed_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []

    class FakePart:
        def to_bytes(self) -> bytes:
            return b"fake"

        @classmethod
        def from_bytes(cls, data: bytes) -> FakePart:
            return cls()

        in_dim = DIM

        def record_outcomes(self, targets, qualities, X=None, estimated_tokens=None):
            for i, (target, quality) in enumerate(zip(targets, qualities)):
                calls.append(("outcome", target, quality, X[i].shape, estimated_tokens[i]))

        def nudge_relation(self, relation, signed_quality):
            calls.append(("nudge", relation, signed_quality))

    for mod, cls in (("workers.cores.router", "RouterState"), ("workers.cores.attention", "AttentionState")):
        fake = types.ModuleType(mod)
        setattr(fake, cls, FakePart)
        monkeypatch.setitem(sys.modules, mod, fake)
    s = _session()
    b = s.blob("session", "default")
    b.set("router", FakePart())
    b.set("attention", FakePart())
    X = _xs(2)
    out = s.dispatch({"verb": "learn_feedback", "body": {"events": [
        _event(0, 1.0, X[0], relation="entity", estimated_tokens=900), _event(1, 0.0, X[1])]}})
    assert out["ok"], out
    q1 = float(np.float32(0.7 * 0.0 + 0.3 * 1.0))
    assert calls == [("outcome", "small", 1.0, (DIM,), 900), ("outcome", "large", pytest.approx(q1), (DIM,), 0),
                     ("nudge", "entity", pytest.approx(1.0))]


def test_loop_state_round_trip_and_reopen(tmp_path) -> None:
    st = LoopState()
    assert LoopState.from_bytes(st.to_bytes()) == st and LoopState.from_bytes(st.to_bytes()).ema is None
    st.ema, st.events, st.boundaries, st.envelopes = 0.8125, 12, 2, 3
    assert LoopState.from_bytes(st.to_bytes()) == st
    X = _xs(len(QUALITIES), seed=9)
    events = [_event(i, q, X[i]) for i, q in enumerate(QUALITIES)]
    s = _session(path=tmp_path / "db")
    for ev in events[:9]:
        s.dispatch({"verb": "learn_feedback", "body": ev})
    s.close()
    s = LearnSession(path=tmp_path / "db")
    for ev in events[9:]:
        s.dispatch({"verb": "learn_feedback", "body": ev})
    twin = _run_singles(events)
    assert _parts(s)[0] == _parts(twin)[0] and _parts(s)[1] == _parts(twin)[1]
    assert _parts(s)[2].ema == _parts(twin)[2].ema
    s.close()


def test_the_deep_core_is_made_on_the_first_event_and_decoded_only_when_a_boundary_needs_it() -> None:
    s = _session()
    x = _xs(1)[0]
    assert s.dispatch({"verb": "learn_feedback", "body": _event(0, 0.9, x)})["ok"]
    b = s.blob("session", "default")
    assert b.has("deep") and "deep" not in b._live  # stored as bytes, never decoded by a quiet event
    assert b.get("deep", DeepState) == DeepState(b.get("deep", DeepState).lam)  # a fresh deep core
