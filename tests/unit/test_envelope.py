"""The verb envelope (spec: cores.md, Envelope)."""
from __future__ import annotations

import orjson

from workers.verbs.session import LearnSession


def test_unknown_verb_names_it() -> None:
    assert LearnSession().dispatch({"verb": "nope"}) == {"ok": False, "verb": "nope", "error": "unknown verb: nope"}


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
    # a body that is not an object is a missing body (the reference's null): required fields say so
    for body in (None, [], "x", 3):
        assert s.dispatch({"verb": "record_loss", "body": body}) == {
            "ok": False, "verb": "record_loss", "error": "loss required"}


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
