"""The verb envelope (spec: cores.md, Envelope)."""
from __future__ import annotations

import orjson

from workers.verbs.session import LearnSession


def test_unknown_verb_names_it() -> None:
    assert LearnSession().dispatch({"verb": "nope"}) == {"ok": False, "verb": "nope", "error": "unknown verb: nope"}


def test_a_long_unknown_verb_is_named_cut_short() -> None:
    """An outside trial's 100,000-character verb came back whole, twice, in a 200 kB answer."""
    out = LearnSession().dispatch({"verb": "x" * 100_000})
    assert out["error"] == f"unknown verb: {'x' * 64}... (100000 characters)" and out["verb"] == out["error"][14:]


def test_unparsable_json_is_a_parse_error() -> None:
    out = orjson.loads(LearnSession().dispatch_json("{bad"))
    assert out["ok"] is False and out["verb"] == "?" and out["error"].startswith("parse: ")
    assert "data" not in out


def test_missing_verb_field_is_a_parse_error() -> None:
    out = LearnSession().dispatch({"body": {}})
    assert out == {"ok": False, "verb": "?", "error": "parse: missing field `verb`"}


def test_the_envelope_rules_each_name_what_is_wrong() -> None:
    s = LearnSession()
    assert s.dispatch([1, 2]) == {"ok": False, "verb": "?", "error": "parse: request must be a JSON object"}
    for verb, words in ((123, "a number"), (None, "null"), (["health"], "an array"), (True, "a boolean")):
        assert s.dispatch({"verb": verb, "body": {}}) == {
            "ok": False, "verb": "?", "error": f"parse: field `verb` must be a string, got {words}"}
    # a missing or null body is the reference's null: required fields say so
    assert s.dispatch({"verb": "record_loss"}) == {"ok": False, "verb": "record_loss", "error": "loss required"}
    assert s.dispatch({"verb": "record_loss", "body": None}) == {
        "ok": False, "verb": "record_loss", "error": "loss required"}
    # any other body that is not an object is refused as on a topic: a write that needs no field
    # (reset_adapter) must not be applied to the default session as if the body were empty
    s.dispatch({"verb": "init_instant", "body": {"targets": ["a"], "dim": 4}})
    before = s.dispatch({"verb": "session_info"})["data"]["digest"]
    for body, words in (([], "an array"), ("x", "a string"), (3, "a number"), (True, "a boolean")):
        for verb in ("record_loss", "reset_adapter"):
            assert s.dispatch({"verb": verb, "body": body}) == {
                "ok": False, "verb": verb, "error": f"parse: body must be a JSON object, got {words}"}
    assert s.dispatch({"verb": "session_info"})["data"]["digest"] == before


def test_empty_session_key_is_refused() -> None:
    out = LearnSession().dispatch({"verb": "health", "body": {"session_key": ""}})
    assert out == {"ok": False, "verb": "health", "error": "session_key must be a non-empty string"}


def test_success_omits_error_field() -> None:
    out = LearnSession().dispatch({"verb": "health"})
    assert out["ok"] is True and "error" not in out


def test_session_key_with_control_characters_is_refused() -> None:
    out = LearnSession().dispatch({"verb": "health", "body": {"session_key": "a\x1fb"}})
    assert out["ok"] is False and "control characters" in out["error"]


def test_health_reads_each_contributor_table() -> None:
    s = LearnSession()
    h = s.dispatch({"verb": "health"})["data"]
    assert h["heuristics_count"] == 0 and "instant_ready" in h
    for verb in ("session_info", "learner_info", "agent_info", "memory_info"):
        assert s.dispatch({"verb": verb})["ok"]


def test_health_sees_the_agent_table_change() -> None:
    s = LearnSession()
    for i in range(3):
        out = s.dispatch({"verb": "learn_outcome", "body": {
            "id": f"o{i}", "agent": "tester", "task": "test the login form", "task_type": "form_testing",
            "success": True, "strategy": "fill fields then submit", "ts": 1_700_000_000_000 + i}})
        assert out["ok"], out
    assert s.dispatch({"verb": "health"})["data"]["heuristics_count"] == 1
