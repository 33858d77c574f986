"""The MCP tools: which verbs an agent calls in its loop, and their input schemas.

Nothing here restates a contract. A tool's input schema is derived from the one place
its body is described: the verb's topic schema in ``topics/*.yaml`` when the verb is
applied from its own topic (``learn_outcome``, ``feedback`` = ``learn_feedback``), the
topic's branch for the verb's ``op`` (``insert_edge``, ``contradict`` on ``graph.edges``),
else the verb's ``params`` in the verb registry. The server adds the two fields every
tool shares: ``session_key`` and, on writes, ``idempotency_key``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

from workers.verbs.surface import REGISTRY, Verb
from workers.kafka.topics import Topic, body_schema, topics

__all__ = ("ToolSpec", "TOOLS", "tool_specs", "body_schema")

# tool name -> verb (the same name, except feedback: the whole learning loop, as the SDK's feedback())
TOOLS: dict[str, str] = {
    "retrieve": "retrieve", "learn_outcome": "learn_outcome", "add_preference": "add_preference",
    "add_knowledge": "add_knowledge", "mark_used": "mark_used", "forget": "forget", "route": "route",
    "record_outcome": "record_outcome", "feedback": "learn_feedback", "query_at": "query_at",
    "insert_edge": "insert_edge", "contradict": "contradict", "important_memories": "important_memories",
    "memory_scores": "memory_scores", "health": "health", "heuristics": "heuristics",
    # a conversation with the memories it showed, scored (then important_memories answers for it)
    "score_conversation": "score_conversation", "configure_scoring": "configure_scoring",
    # set-up a session needs before route / feedback answer
    "init_router": "init_router", "init_instant": "init_instant",
}

_SESSION_KEY = {"type": "string", "minLength": 1, "maxLength": 256,
                "description": "the agent, tenant or learner this call is about (default: the server's session)"}
_IDEMPOTENCY_KEY = {"type": "string", "minLength": 1, "maxLength": 128,
                    "description": "any unique string; retrying a call with the same key never applies it twice "
                                   "(default: a fresh key per call)"}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    verb: str
    writes: bool
    description: str
    input_schema: dict


def _topic_of(v: Verb) -> Topic | None:
    return topics()[v.topic] if v.topic else None


def _description(name: str, v: Verb) -> str:
    doc = inspect.getdoc(v.fn) or ""
    t = _topic_of(v)
    if t is not None and t.verb == v.name and t.description:
        doc = f"{t.description}\n\n{doc}" if doc else t.description
    how = ("A write: returns once the session's worker has applied it, as {id (topic:partition:offset), "
           "idempotency_key, data: the reply above} (duplicate: true when the key was applied before)."
           if v.writes else "A read, answered by the worker that owns the session.")
    return f"{doc}\n\n{how}".strip() if doc else how


def _input_schema(v: Verb) -> dict:
    body = body_schema(v)
    props = {**body.get("properties", {}), "session_key": _SESSION_KEY}
    if v.writes:
        props["idempotency_key"] = _IDEMPOTENCY_KEY
    return {**body, "type": "object", "properties": props}


def tool_specs() -> dict[str, ToolSpec]:
    """Every MCP tool by name."""
    out = {}
    for name, verb_name in TOOLS.items():
        v = REGISTRY[verb_name]
        out[name] = ToolSpec(name, verb_name, v.writes, _description(name, v), _input_schema(v))
    return out
