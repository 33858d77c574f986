"""MCP tool schemas come from the one place each body is described (topics/*.yaml or the verb registry)."""
from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from workers.mcp.tools import TOOLS, body_schema, tool_specs
from workers.kafka.topics import topics
from workers.verbs.registry import REGISTRY

ISSUE_TOOLS = {"retrieve", "learn_outcome", "add_preference", "add_knowledge", "mark_used", "forget", "route",
               "record_outcome", "feedback", "query_at", "insert_edge", "contradict", "important_memories",
               "memory_scores", "health"}


def test_every_tool_an_agent_needs_is_there() -> None:
    assert ISSUE_TOOLS <= set(tool_specs())


def test_topic_verbs_use_their_topic_schema_itself_not_a_copy() -> None:
    specs = tool_specs()
    outcomes, feedback, edges = topics()["outcomes"], topics()["feedback"], topics()["edges"]
    assert specs["learn_outcome"].input_schema["oneOf"] is outcomes.schema["oneOf"]
    assert specs["learn_outcome"].input_schema["$defs"] is outcomes.schema["$defs"]
    assert specs["feedback"].verb == "learn_feedback" and specs["feedback"].input_schema["oneOf"] is \
        feedback.schema["oneOf"]
    # ops verbs: the topic's branch for the op, with the topic's $defs
    branch = next(b["then"] for b in edges.schema["allOf"] if b["if"]["properties"]["op"]["const"] == "insert")
    assert specs["insert_edge"].input_schema["required"] is branch["required"]
    assert specs["insert_edge"].input_schema["$defs"] is edges.schema["$defs"]
    assert specs["contradict"].input_schema["properties"]["contradicts"] is \
        next(b["then"] for b in edges.schema["allOf"]
             if b["if"]["properties"]["op"]["const"] == "contradict")["properties"]["contradicts"]


def test_other_verbs_use_the_registry_params() -> None:
    specs = tool_specs()
    for name in ("retrieve", "add_preference", "add_knowledge", "mark_used", "forget", "route", "record_outcome",
                 "query_at", "important_memories", "memory_scores", "health"):
        v = REGISTRY[TOOLS[name]]
        assert v.params is not None, name
        assert body_schema(v) is v.params
        for field, rule in v.params["properties"].items():
            assert specs[name].input_schema["properties"][field] is rule


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_schemas_are_valid_and_writes_take_an_idempotency_key(name: str) -> None:
    spec = tool_specs()[name]
    Draft202012Validator.check_schema(spec.input_schema)
    assert spec.input_schema["type"] == "object"
    props = spec.input_schema["properties"]
    assert "session_key" in props
    assert ("idempotency_key" in props) == spec.writes == REGISTRY[spec.verb].writes
    assert spec.description


def test_the_topic_example_satisfies_the_tool_schema() -> None:
    specs = tool_specs()
    for tool, role in (("learn_outcome", "outcomes"), ("feedback", "feedback")):
        Draft202012Validator(specs[tool].input_schema).validate(topics()[role].example)
    example = dict(topics()["edges"].example)
    assert example.pop("op") == "insert"
    Draft202012Validator(specs["insert_edge"].input_schema).validate(example)


def test_every_tool_lists_its_verbs_fields() -> None:
    """A client that builds its call from the tool schema can pass every field the verb reads: each tool's
    schema names its fields (configure_scoring's did not: only session_key and idempotency_key)."""
    for name, spec in tool_specs().items():
        props = set(spec.input_schema["properties"]) - {"session_key", "idempotency_key"}
        branches = spec.input_schema.get("oneOf") or spec.input_schema.get("allOf")
        assert props or branches or name == "health", name


@pytest.mark.parametrize("body,valid", [
    ({"backend": "builtin", "window": 5}, True),
    ({"backend": "score_api", "base_url": "http://x/v1", "model": "m", "tokenizer": "char"}, True),
    ({"backend": "openai", "base_url": "http://x/v1", "model": "m", "tokenizer": "remote",
      "tokenizer_url": "http://x/tokenize", "logprobs_mode": "echo", "timeout_s": 5, "max_age_ms": 0,
      "threshold": 0.5, "max_per_run": 10, "finetune_count": 3}, True),
    ({"backend": "gpu"}, False), ({"window": 0}, False), ({"timeout_s": 0}, False), ({"timeout_s": 121}, False),
    ({"tokenizer": "words"}, False), ({"max_per_run": 10_001}, False), ({"finetune_count": -1}, False),
])
def test_the_configure_scoring_schema_and_the_verb_agree(body: dict, valid: bool) -> None:
    from workers.scoring import endpoints
    from workers.verbs.session import LearnSession

    assert Draft202012Validator(tool_specs()["configure_scoring"].input_schema).is_valid(body) is valid
    endpoints.configure(["http://x/v1", "http://x/tokenize"])  # the operator's allowlist
    try:
        out = LearnSession().dispatch({"verb": "configure_scoring", "body": body})
    finally:
        endpoints.configure([])
    assert out["ok"] is valid, out


def test_the_sidecars_refused_connections_are_logged_at_a_bounded_rate() -> None:
    """uvicorn logs one WARNING per connection refused past the sidecar's cap: 500 refused connections
    were 500 lines (an outside trial). Through uvicorn's own logging set-up, one line per period."""
    import logging

    import uvicorn

    from workers.mcp.main import quiet_server_logs

    uvicorn.Config(lambda scope, receive, send: None, log_level="warning")  # configures uvicorn's loggers
    quiet_server_logs()
    quiet_server_logs()  # once: a second call adds nothing
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    log = logging.getLogger("uvicorn.error")
    keep = Keep()
    log.addHandler(keep)
    try:
        for _ in range(500):
            log.warning("Exceeded concurrency limit.")
        log.warning("a token lst_%s in a line", "A" * 40)
    finally:
        log.removeHandler(keep)
    assert [r.getMessage() for r in seen][0] == "Exceeded concurrency limit."
    assert len(seen) == 2 and "AAAA" not in seen[1].getMessage(), [r.getMessage() for r in seen]
