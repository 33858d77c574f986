"""The MCP server (official ``mcp`` SDK, low-level ``Server``) over a worker's HTTP API.

Tools are verbs (:mod:`workers.mcp.tools`); each call goes through the SDK's
:class:`~workers.client.LearnstreamClient`: a write returns once the session's owner
applied it, with its id, and carries an idempotency key (the caller's, or a fresh one)
so the client's retries while a worker restarts never apply it twice. A refused call
is an MCP tool error whose text is the verb's own message.

Resources: ``learnstream://topics`` (the topic contracts, one resource per topic) and
``learnstream://sessions/{session_key}/heuristics`` (what a session has learned).
"""
from __future__ import annotations

from typing import Any

import mcp.types as types
import orjson
from mcp.server.lowlevel import Server
from pydantic import AnyUrl

from workers.client import LearnstreamClient
from workers.verbs.surface import check_session_key
from workers.errors import LearnstreamError
from workers.mcp.tools import ToolSpec, tool_specs
from workers.kafka.topics import topics

__all__ = ("build_server", "SERVER_NAME")


SERVER_NAME = "learnstream"
_TOPICS_URI = "learnstream://topics"
_HEURISTICS = "learnstream://sessions/{session_key}/heuristics"
_INSTRUCTIONS = (
    "Continual learning memory for agents. Before a task call `retrieve` (heuristics, anti-patterns, "
    "preferences and knowledge that apply, within a token budget); after it call `learn_outcome`; say what "
    "you used with `mark_used`. Every write returns once applied, with its id; pass the same "
    "`idempotency_key` when you retry a write so it is applied once."
)


def _json(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_INDENT_2).decode()


def build_server(client: LearnstreamClient, *, default_session: str = "default") -> Server:
    """An MCP server whose tools and resources answer through ``client`` (started by the caller)."""
    specs: dict[str, ToolSpec] = tool_specs()
    # The verb judges its input and its message is what the agent should see, so the SDK's
    # schema check (whose messages name JSON Schema rules instead) is off.
    server: Server = Server(SERVER_NAME, instructions=_INSTRUCTIONS)

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        return [types.Tool(name=s.name, description=s.description, inputSchema=s.input_schema,
                           annotations=types.ToolAnnotations(readOnlyHint=not s.writes, idempotentHint=True))
                for s in specs.values()]

    @server.call_tool(validate_input=False)
    async def call_tool(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        spec = specs.get(name)
        if spec is None:
            raise LearnstreamError(f"unknown tool {name!r}; tools: {', '.join(specs)}")
        body = dict(arguments or {})
        sk = check_session_key(body.pop("session_key", default_session))
        if spec.writes:
            done = await client.apply(sk, spec.verb, body, idempotency_key=body.pop("idempotency_key", None))
            out: dict[str, Any] = {"id": done.id, "idempotency_key": done.idempotency_key, "data": done.data}
            if done.duplicate:
                out["duplicate"] = True
            return out
        data = await client.read(sk, spec.verb, body)
        return data if isinstance(data, dict) else {"data": data}

    @server.list_resources()
    async def list_resources() -> list[types.Resource]:
        out = [types.Resource(uri=AnyUrl(_TOPICS_URI), name="topics", mimeType="application/json",
                              description="every topic contract of topics/*.yaml: name, key, schema, example")]
        out += [types.Resource(uri=AnyUrl(f"{_TOPICS_URI}/{t.role}"), name=f"topic {t.name}",
                               mimeType="application/json", description=t.description or t.name)
                for t in topics().values()]
        out.append(types.Resource(uri=AnyUrl(_HEURISTICS.format(session_key=default_session)),
                                  name=f"heuristics of {default_session}", mimeType="application/json",
                                  description="the heuristics and anti-patterns this session has learned"))
        return out

    @server.list_resource_templates()
    async def list_templates() -> list[types.ResourceTemplate]:
        return [types.ResourceTemplate(uriTemplate=_HEURISTICS, name="heuristics of a session",
                                       mimeType="application/json",
                                       description="the heuristics and anti-patterns a session has learned")]

    @server.read_resource()
    async def read_resource(uri: AnyUrl) -> str:
        u = str(uri)
        if u == _TOPICS_URI:
            return _json([_contract(t) for t in topics().values()])
        if u.startswith(_TOPICS_URI + "/"):
            role = u[len(_TOPICS_URI) + 1:]
            if role not in topics():
                raise LearnstreamError(f"no topic {role!r}; topics: {', '.join(topics())}")
            return _json(_contract(topics()[role]))
        prefix, suffix = "learnstream://sessions/", "/heuristics"
        if u.startswith(prefix) and u.endswith(suffix):
            from urllib.parse import unquote

            sk = check_session_key(unquote(u[len(prefix):-len(suffix)]))
            return _json(await client.read(sk, "heuristics", {}))
        raise LearnstreamError(f"unknown resource {u}")

    return server


def _contract(t: Any) -> dict[str, Any]:
    return {"role": t.role, "name": t.name, "kind": t.kind, "key": t.key, "cleanup_policy": t.cleanup_policy,
            "retention_ms": t.retention_ms, "description": t.description, "verb": t.verb, "ops": t.ops,
            "schema": t.schema, "example": t.example}
