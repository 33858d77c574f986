"""The online learner's verbs through LearnSession: shapes, validation first, events, determinism."""
from __future__ import annotations

import numpy as np
import pytest

from workers.verbs.codec import encode_embedding_b64
from workers.verbs.session import LearnSession
from workers.online.learner import ContinualLearner

D, C = 6, 3


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, D), dtype=np.float32)
    return X, np.minimum((X[:, 0] * C).astype(int), C - 1)


def _init(s: LearnSession, key: str = "s1", **extra) -> dict:
    return s.dispatch({"verb": "init_learner", "body": {"session_key": key, "n_features": D, "n_classes": C,
                                                          "hidden": 16, "batch_size": 5, **extra}})


def _learn(s: LearnSession, X, y, key: str = "s1", **fields) -> dict:
    ex = [{"features": X[i].tolist(), "label": int(y[i]), **fields} for i in range(len(X))]
    return s.dispatch({"verb": "learn_example", "body": {"session_key": key, "examples": ex}})


def test_init_learner_answers_its_config() -> None:
    out = _init(LearnSession())
    assert out["ok"] and out["data"]["n_params"] == 16 * D + 16 + C * 16 + C
    cfg = out["data"]["config"]
    assert cfg["n_features"] == D and cfg["hidden"] == 16 and cfg["batch_size"] == 5
    soft = LearnSession().dispatch({"verb": "init_learner", "body": {"n_features": 4, "n_classes": 2,
                                                                      "model": "softmax"}})
    assert soft["ok"] and soft["data"]["n_params"] == 2 * 4 + 2


def test_init_learner_config_names_every_field_with_the_value_in_force() -> None:
    from workers.online.verbs import _INIT_PARAMS
    fields = set(_INIT_PARAMS["properties"])
    cfg = LearnSession().dispatch({"verb": "init_learner", "body": {"session_key": "a", "n_features": 4,
                                                                     "n_classes": 3}})["data"]["config"]
    assert set(cfg) == fields and None not in {k: v for k, v in cfg.items() if k != "time_threshold_ms"}.values()
    assert (cfg["hidden"], cfg["lr"], cfg["capacity"], cfg["replay"], cfg["batch_size"], cfg["drift_window"],
            cfg["boundary_on_drift"], cfg["time_threshold_ms"]) == (128, 0.02, 200, "prioritized", 10, 200, True, None)
    soft = LearnSession().dispatch({"verb": "init_learner", "body": {"n_features": 4, "n_classes": 2,
                                                                      "model": "softmax", "lr": 0.5}})["data"]["config"]
    assert set(soft) == fields - {"hidden"} and soft["lr"] == 0.5 and soft["model"] == "softmax"
    # the config sent back as a body builds the same learner: same config, same state
    a, b = LearnSession(), LearnSession()
    body = {"session_key": "k", "n_features": 4, "n_classes": 3, "hidden": 8, "capacity": 20, "ewc_lambda": 5.0}
    cfg = a.dispatch({"verb": "init_learner", "body": body})["data"]["config"]
    again = b.dispatch({"verb": "init_learner", "body": {"session_key": "k", **cfg}})["data"]
    assert again["config"] == cfg and "ignored_fields" not in again
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((30, 4)).astype(np.float32), rng.integers(0, 3, 30)
    for s in (a, b):
        _learn(s, X, y, key="k")
    for verb, extra in (("learner_state", {}), ("predict", {"examples": [{"features": X[i].tolist()} for i in range(5)]})):
        assert a.dispatch({"verb": verb, "body": {"session_key": "k", **extra}})["data"] == \
            b.dispatch({"verb": verb, "body": {"session_key": "k", **extra}})["data"]


@pytest.mark.parametrize("body, error", [
    ({"n_classes": 3}, "n_features required"),
    ({"n_features": 4}, "n_classes required"),
    ({"n_features": 0, "n_classes": 3}, "n_features must be an integer in [1, 4096]"),
    ({"n_features": 4, "n_classes": 1}, "n_classes must be an integer in [2, 1000]"),
    ({"n_features": 4, "n_classes": 2, "model": "rnn"}, 'model must be "softmax" or "mlp"'),
    ({"n_features": 4, "n_classes": 2, "model": "softmax", "hidden": 8}, 'hidden applies to model "mlp" only'),
    ({"n_features": 4, "n_classes": 2, "replay": "lifo"}, 'replay must be "uniform", "reservoir" or "prioritized"'),
    ({"n_features": 4, "n_classes": 2, "lr": float("nan")}, "lr must be a number in [1e-06, 10.0]"),
    ({"n_features": 4, "n_classes": 2, "capacity": -1}, "capacity must be an integer in [0, 10000]"),
])
def test_init_learner_refuses_bad_config(body: dict, error: str) -> None:
    s = LearnSession()
    assert s.dispatch({"verb": "init_learner", "body": body}) == {"ok": False, "verb": "init_learner",
                                                                  "error": error}


def test_verbs_before_init_say_what_to_do() -> None:
    s = LearnSession()
    for v in ("learn_example", "predict", "evaluate", "consolidate_learner", "learner_state"):
        out = s.dispatch({"verb": v, "body": {"features": [0.0] * D, "label": 0}})
        assert out == {"ok": False, "verb": v, "error": "learner not initialized; call init_learner first"}


def test_learn_predict_evaluate_state() -> None:
    s = LearnSession()
    _init(s)
    X, y = _data(400)
    one = s.dispatch({"verb": "learn_example", "body": {"session_key": "s1", "features_b64": encode_embedding_b64(X[0]),
                                                        "label": int(y[0])}})
    assert one["ok"] and one["data"]["learned"] == 1 and one["data"]["pending"] == 1
    for i in range(1, 300, 50):
        assert _learn(s, X[i:i + 50], y[i:i + 50])["ok"]
    pred = s.dispatch({"verb": "predict", "body": {"session_key": "s1", "features": X[350].tolist()}})["data"]
    assert set(pred) == {"label", "proba"} and len(pred["proba"]) == C and abs(sum(pred["proba"]) - 1) < 1e-5
    many = s.dispatch({"verb": "predict", "body": {"session_key": "s1",
                                                   "examples": [{"features": x.tolist()} for x in X[300:310]]}})
    assert len(many["data"]["labels"]) == 10
    ev = s.dispatch({"verb": "evaluate", "body": {"session_key": "s1", "examples": [
        {"features": X[i].tolist(), "label": int(y[i])} for i in range(300, 400)]}})["data"]
    assert ev["n"] == 100 and ev["accuracy"] > 0.45  # above chance (1/3) after 300 examples
    st = s.dispatch({"verb": "learner_state", "body": {"session_key": "s1"}})["data"]
    assert st["examples_seen"] + st["pending"] == 301 and st["replay_size"] > 0 and "config" in st


def test_an_envelope_is_validated_whole_before_anything_is_learned() -> None:
    s = LearnSession()
    _init(s)
    X, y = _data(10)
    ex = [{"features": X[i].tolist(), "label": int(y[i])} for i in range(10)]
    before = s.dispatch({"verb": "learner_state", "body": {"session_key": "s1"}})["data"]
    for bad, error in [({"label": 7}, "examples[6].label must be an integer in [0, 3)"),
                       ({"label": None}, "examples[6].label required"),
                       ({"features": [1.0] * (D + 1)}, "examples[6].features: wrong dimension: expected 6, got 7"),
                       ({"features": [float("nan")] * D}, "examples[6].features: must be finite (NaN/Inf, and values beyond float32's range, refused)"),
                       ({"task": True}, "examples[6].task must be a non-empty string of at most 256 characters "
                                        "or a 64-bit integer"),
                       # an outside trial's 900 kB task names stayed in the state and made 1.8 MB boundary events
                       ({"task": "t" * 257}, "examples[6].task must be a non-empty string of at most 256 "
                                             "characters or a 64-bit integer"),
                       ({"task": 2 ** 64}, "examples[6].task must be a non-empty string of at most 256 "
                                           "characters or a 64-bit integer"),
                       # a float label is not an integer, whole or not (the topic schema says so too)
                       ({"label": 2.0}, "examples[6].label must be an integer in [0, 3)"),
                       ({"now_ms": -5}, "examples[6].now_ms must be a non-negative integer")]:
        body = [dict(e) for e in ex]
        body[6].update(bad)
        out = s.dispatch({"verb": "learn_example", "body": {"session_key": "s1", "examples": body}})
        assert out == {"ok": False, "verb": "learn_example", "error": error}
    after = s.dispatch({"verb": "learner_state", "body": {"session_key": "s1"}})["data"]
    assert after == before and not s.emitted
    assert s.dispatch({"verb": "learn_example", "body": {"session_key": "s1", "examples": []}})["error"] == (
        "examples must be a non-empty array")
    # the feedback envelope's field name: named as such, not "features: required"
    for verb in ("learn_example", "predict", "evaluate"):
        assert s.dispatch({"verb": verb, "body": {"session_key": "s1", "events": ex}})["error"] == (
            "an envelope of examples is {session_key, examples: [...]} (events is learn_feedback's)")
    assert s.dispatch({"verb": "learner_state", "body": {"session_key": "s1"}})["data"] == before


def test_events_are_emitted_with_the_session_key() -> None:
    s = LearnSession()
    _init(s, examples_threshold=0)
    X, y = _data(40)
    _learn(s, X[:20], y[:20], task="a")
    _learn(s, X[20:40], y[20:40], task="b")
    roles = [r for r, _ in s.emitted]
    assert roles == ["boundaries", "consolidations"]
    b, c = (p for _, p in s.emitted)
    assert b["session_key"] == "s1" and b["cause"] == "task" and b["stats"]["task"] == "b"
    assert c["session_key"] == "s1" and c["cause"] == "boundary" and c["index"] == 1
    rep = s.dispatch({"verb": "consolidate_learner", "body": {"session_key": "s1", "now_ms": 5}})["data"]
    assert rep["cause"] == "manual" and rep["index"] == 2 and s.emitted[-1][0] == "consolidations"


def test_the_time_trigger_uses_event_time_only() -> None:
    s = LearnSession()
    _init(s, examples_threshold=0, time_threshold_ms=60_000)
    X, y = _data(30)
    _learn(s, X[:10], y[:10], now_ms=1_000)
    _learn(s, X[10:20], y[10:20], now_ms=60_999)
    assert not s.emitted
    _learn(s, X[20:30], y[20:30], now_ms=61_000)
    assert [(r, p["cause"], p["now_ms"]) for r, p in s.emitted] == [("consolidations", "time", 61_000)]


def test_replaying_the_same_events_gives_the_same_model() -> None:
    X, y = _data(200)
    states = []
    for _ in range(2):
        s = LearnSession()
        _init(s, time_threshold_ms=500, examples_threshold=70)
        for i in range(0, 200, 20):
            _learn(s, X[i:i + 20], y[i:i + 20], task=i // 100, now_ms=i * 10)
        states.append((s.value("learner", "s1"), s.emitted))
    assert states[0][0] == states[1][0]
    assert states[0][1] == states[1][1] and states[0][1]


def test_sessions_are_independent_and_state_survives_a_restart(tmp_path) -> None:
    X, y = _data(60)
    s = LearnSession(path=tmp_path / "db")
    _init(s, "a")
    _init(s, "b")
    _learn(s, X, y, key="a")
    probe = {"features": X[0].tolist()}
    pa = s.dispatch({"verb": "predict", "body": {"session_key": "a", **probe}})["data"]["proba"]
    pb = s.dispatch({"verb": "predict", "body": {"session_key": "b", **probe}})["data"]["proba"]
    assert pa != pb
    s.close()
    s2 = LearnSession(path=tmp_path / "db")
    assert s2.dispatch({"verb": "predict", "body": {"session_key": "a", **probe}})["data"]["proba"] == pa
    raw = s2.value("learner", "a")
    assert raw is not None
    s2.close()


def test_the_part_is_a_continual_learner_in_the_blob() -> None:
    s = LearnSession()
    _init(s)
    blob = s.blob("learner", "s1")
    learner = blob.get("learner", ContinualLearner)
    assert isinstance(learner, ContinualLearner) and learner.n_features == D


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the diverging steps overflow on purpose
def test_a_learner_whose_sgd_diverged_is_refused_not_answered_with_nan() -> None:
    """An outside trial: ten examples with one feature at 10 (finite, so accepted), replayed with their stored
    logits at the default lr and momentum, took the weights to NaN ~150 examples later; predict answered NaN
    probabilities and evaluate an accuracy of 1.0 (argmax of NaN), both as ok. Now every verb that would use
    the model says it diverged and what to do; learner_state still answers, with ``diverged``."""
    s = LearnSession()
    d = lambda verb, body: s.dispatch({"verb": verb, "body": body})  # noqa: E731
    assert d("init_learner", {"n_features": 4, "n_classes": 3, "seed": 0})["ok"]
    assert d("learn_example", {"examples": [{"features": [10.0, 0, 0, 0], "label": i % 3} for i in range(10)]})["ok"]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 4))
    y = (X[:, 0] > 0).astype(int)
    refused = None
    for i in range(0, 2000, 50):
        out = d("learn_example", {"examples": [{"features": x.tolist(), "label": int(v)} for x, v in zip(X[i:i + 50], y[i:i + 50])]})
        if not out["ok"]:
            refused = out["error"]
            break
    assert refused is not None and refused.startswith("learner diverged"), refused
    for verb, body in (("predict", {"features": [0.1, 0, 0, 0]}), ("evaluate", {"features": [0.1, 0, 0, 0], "label": 0}),
                       ("consolidate_learner", {})):
        assert d(verb, body)["error"].startswith("learner diverged"), verb
    state = d("learner_state", {})
    assert state["ok"] and state["data"]["diverged"] is True
    assert d("init_learner", {"n_features": 4, "n_classes": 3, "seed": 0})["ok"]  # a new one works
    assert d("learner_state", {})["data"]["diverged"] is False and d("predict", {"features": [0.1, 0, 0, 0]})["ok"]
