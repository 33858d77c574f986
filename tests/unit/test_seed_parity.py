"""The reference hosts' verb bodies (spec: cores.md): feedback {embedding, model, payload: {quality, signal?},
now_ms} through feedback, learn_feedback (single and envelope) and the feedback topic's schema."""
from __future__ import annotations

import numpy as np
import pytest
from reference import instant_ref as ref

from workers.verbs.session import LearnSession
from workers.kafka.topics import topics

TARGETS = ["small", "medium", "large"]
X = [0.5, -1.0, 0.25, 2.0]


def _session() -> LearnSession:
    s = LearnSession()
    assert s.dispatch({"verb": "init_instant", "body": {"targets": TARGETS, "dim": 4}})["ok"]
    return s


@pytest.mark.parametrize("verb", ["feedback", "learn_feedback"])
def test_the_reference_body_learns_as_the_flat_one(verb: str) -> None:
    nested, flat = _session(), _session()
    a = nested.dispatch({"verb": verb, "body": {"embedding": X, "model": "large",
                                                "payload": {"quality": 0.9, "signal": "thumbs up"}, "now_ms": 7}})
    b = flat.dispatch({"verb": verb, "body": {"embedding": X, "model": "large", "quality": 0.9, "now_ms": 7}})
    assert a["ok"] and a == b
    logits = nested.dispatch({"verb": "apply_adapter", "body": {"embedding": X}})["data"]["logits"]
    if verb == "feedback":
        r = ref.InstantRef(4, 3)
        r.feedback(np.array(X, np.float32), 2, 0.9, 7)
        np.testing.assert_allclose(logits, r.logits(np.array(X, np.float32)), rtol=1e-5)
    assert logits == flat.dispatch({"verb": "apply_adapter", "body": {"embedding": X}})["data"]["logits"]


def test_an_envelope_of_reference_bodies() -> None:
    s = _session()
    evs = [{"embedding": X, "model": "small", "payload": {"quality": q}} for q in (0.2, 0.8, 0.9)]
    out = s.dispatch({"verb": "learn_feedback", "body": {"session_key": "default", "events": evs}})
    assert out["ok"] and out["data"]["events"] == 3


@pytest.mark.parametrize("verb", ["feedback", "learn_feedback"])
@pytest.mark.parametrize("body, error", [
    ({"embedding": X, "model": "small"}, "payload.quality required"),
    ({"embedding": X, "model": "small", "payload": {}}, "payload.quality required"),
    ({"embedding": X, "model": "small", "payload": {"signal": "x"}}, "payload.quality required"),
    ({"embedding": X, "model": "small", "payload": 0.9}, "payload must be an object"),
    ({"embedding": X, "model": "small", "payload": {"quality": 1.5}}, "quality must be 0..1"),
    ({"embedding": X, "model": "small", "payload": {"quality": float("nan")}}, "quality must be 0..1"),
    ({"embedding": X, "model": "small", "payload": {"quality": 0.5, "signal": 3}}, "payload.signal must be a string"),
    ({"embedding": X, "model": "small", "quality": 0.4, "payload": {"quality": 0.5}},
     "quality and payload.quality disagree"),
    ({"model": "small", "payload": {"quality": 0.5}}, "embedding required"),
    ({"embedding": X, "payload": {"quality": 0.5}}, "model required"),
    ({"embedding": [1.0], "model": "small", "payload": {"quality": 0.5}}, "embedding wrong dim"),
    ({"embedding": X, "model": "xl", "payload": {"quality": 0.5}}, "unknown model name; not in registered targets"),
])
def test_errors_name_the_field_in_the_spec_order(verb: str, body: dict, error: str) -> None:
    s = _session()
    assert s.dispatch({"verb": verb, "body": body}) == {"ok": False, "verb": verb, "error": error}


def test_both_forms_agreeing_is_fine() -> None:
    s = _session()
    out = s.dispatch({"verb": "feedback", "body": {"embedding": X, "model": "small", "quality": 0.5,
                                                   "payload": {"quality": 0.5}}})
    assert out["ok"]


def test_the_feedback_topic_schema_takes_both_forms() -> None:
    t = topics()["feedback"]
    t.validate({"session_key": "a", "model": "m", "embedding": [0.1], "payload": {"quality": 0.9, "signal": "ok"},
                "now_ms": 5})
    t.validate({"session_key": "a", "model": "m", "embedding": [0.1], "quality": 0.9})
    t.validate({"session_key": "a", "events": [{"model": "m", "embedding": [0.1], "payload": {"quality": 0.2}}]})
    for bad in ({"model": "m", "embedding": [0.1]},
                {"model": "m", "embedding": [0.1], "payload": {"signal": "x"}},
                {"model": "m", "embedding": [0.1], "payload": {"quality": 2}}):
        with pytest.raises(Exception):
            t.validate(bad)


def test_the_feedback_verbs_published_schema_takes_both_forms() -> None:
    """What the ``feedback`` verb publishes (its ``params``: the MCP tools' and the SDK's body schema for
    it) takes the reference hosts' body as the verb does; before, it required a flat ``quality``."""
    import jsonschema

    from workers.mcp import body_schema
    from workers.verbs.surface import REGISTRY

    v = jsonschema.Draft202012Validator(body_schema(REGISTRY["feedback"]))
    assert v.is_valid({"model": "m", "embedding": [0.1], "payload": {"quality": 0.9, "signal": "ok"}, "now_ms": 5})
    assert v.is_valid({"model": "m", "embedding_b64": "AACAPw==", "quality": 0.9})
    for bad in ({"model": "m", "embedding": [0.1]},                                 # no quality in any form
                {"model": "m", "embedding": [0.1], "payload": {"signal": "x"}},
                {"model": "m", "quality": 0.9},                                    # no embedding
                {"model": "m", "quality": 0.9, "embedding": [0.1], "embedding_b64": "AACAPw=="},
                {"model": "m", "quality": 0.9, "embedding": [0.1], "now_ms": -1}):
        assert not v.is_valid(bad), bad
