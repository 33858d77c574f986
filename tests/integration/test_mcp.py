"""The MCP server with the official MCP client, over stdio and streamable HTTP, on real workers.

- stdio with the embedded default (no worker configured: ``learnstream mcp`` starts one);
- streamable HTTP (the sidecar), bearer token required;
- a burst of writes while the worker is SIGKILLed (both transports): every acknowledged write is applied exactly
  once after the restart, every unacknowledged one is applied once or reported failed (and a
  retry with its idempotency key settles which, without applying it twice).
"""
from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import os
import json
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError

from tests.helpers import wait_until
from tests.integration.test_demo import kill_marked, leftovers
from workers.cli.processes import ChildProcess
from workers.local import free_port
from workers.mcp.tools import TOOLS
from workers.kafka.topics import topics

pytestmark = pytest.mark.integration

_ID = re.compile(r"^[a-z.\-]+:\d+:\d+$")
_DIM = 4


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    return {**env, **extra}


def _stdio(env: dict[str, str], *args: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "workers.cli", "mcp", *args], env=env,
                                 cwd=str(Path(__file__).resolve().parents[2]))


async def _call(s: ClientSession, tool: str, **args: Any) -> dict:
    res = await s.call_tool(tool, args)
    assert not res.isError, f"{tool}: {res.content[0].text}"
    return res.structuredContent


async def _error(s: ClientSession, tool: str, **args: Any) -> str:
    res = await s.call_tool(tool, args)
    assert res.isError, f"{tool} should have failed: {res.structuredContent}"
    return res.content[0].text


async def exercise_every_tool(s: ClientSession, sk: str) -> None:
    """List the tools and call each one as an agent would; check ids, retries and verb errors."""
    listed = {t.name: t for t in (await s.list_tools()).tools}
    assert set(listed) == set(TOOLS)
    assert "idempotency_key" in listed["learn_outcome"].inputSchema["properties"]
    assert "idempotency_key" not in listed["retrieve"].inputSchema["properties"]

    w = await _call(s, "init_instant", session_key=sk, targets=["small", "large"], dim=_DIM)
    assert _ID.match(w["id"]) and w["id"].startswith(topics()["commands"].name + ":")
    await _call(s, "init_router", session_key=sk, targets=["small", "large"], in_dim=_DIM, epsilon=0.0)
    k = await _call(s, "add_knowledge", session_key=sk, agent="coder", domain="repo", fact="tests use pytest")
    rid = k["data"]["record_id"]
    await _call(s, "add_preference", session_key=sk, user_id="u1", category="style", preference="short answers")
    o = await _call(s, "learn_outcome", session_key=sk, id="o1", agent="coder", task="run the tests",
                    success=True, strategy="pytest -q")
    assert o["id"].startswith(topics()["outcomes"].name + ":") and o["data"]["learned"] == 1
    m = await _call(s, "mark_used", session_key=sk, ids=[rid], idempotency_key="use-1")
    again = await _call(s, "mark_used", session_key=sk, ids=[rid], idempotency_key="use-1")
    assert again["duplicate"] is True and again["id"] == m["id"] and again["data"] == m["data"]
    r = await _call(s, "retrieve", session_key=sk, task="run the tests", agent="coder", token_budget=500)
    assert [x["record_id"] for x in r["knowledge"]] == [rid]
    assert (await _call(s, "heuristics", session_key=sk, include=["knowledge"]))["knowledge"][0]["accesses"] == 1
    route = await _call(s, "route", session_key=sk, embedding=[0.1, 0.2, 0.3, 0.4])
    assert route["model"] in ("small", "large")
    await _call(s, "record_outcome", session_key=sk, target="small", quality=0.8)
    f = await _call(s, "feedback", session_key=sk, embedding=[0.1, 0.2, 0.3, 0.4], model="small", quality=0.9)
    assert f["id"].startswith(topics()["feedback"].name + ":") and f["data"]["feedback_count"] == 1
    e = await _call(s, "insert_edge", session_key=sk,
                    edge={"id": "e1", "src": "alice", "dst": "acme", "relation": "works_at", "valid_at": 1000,
                          "created_at": 1000})
    assert e["id"].startswith(topics()["edges"].name + ":")
    await _call(s, "contradict", session_key=sk, contradicts=["e1"], now_ms=2000,
                edge={"id": "e2", "src": "alice", "dst": "globex", "relation": "works_at", "valid_at": 2000,
                      "created_at": 2000})
    q = await _call(s, "query_at", session_key=sk, src="alice", t=1500)
    assert [x["dst"] for x in q["edges"]] == ["acme"]
    assert (await _call(s, "memory_scores", session_key=sk))["memories"] == []
    assert await _error(s, "important_memories", session_key=sk, conversation_id="c1") == \
        "unknown conversation_id: c1 (send it with score_conversation, or publish it to memory.context, first)"
    # an agent scores a conversation through the tools alone (the builtin scorer: no endpoint needed)
    msgs = [{"role": "memory", "memory_id": "m1", "content": "The user's deploy target is Kubernetes 1.29."},
            {"role": "memory", "memory_id": "m2", "content": "The user likes green tea."},
            {"role": "user", "content": "Which Kubernetes version do we deploy to?"},
            {"role": "assistant", "content": "You deploy to Kubernetes 1.29."}]
    scored = await _call(s, "score_conversation", session_key=sk, conversation_id="c1", messages=msgs)
    assert scored["id"].startswith(topics()["memory"].name + ":") and scored["data"]["memories"] == 2
    important = await _call(s, "important_memories", session_key=sk, conversation_id="c1")
    assert set(important["memory_importance"]) == {"m1", "m2"} and important["responses"][0]["message_index"] == 3
    await _call(s, "forget", session_key=sk, older_than_days=3650)
    h = await _call(s, "health", session_key=sk)
    assert h["instant_ready"] is True and h["knowledge_count"] == 1
    # errors are MCP tool errors carrying the verb's own message
    assert await _error(s, "mark_used", session_key=sk, ids=[]) == \
        "ids must be a non-empty array of at most 1000 non-empty strings"
    assert await _error(s, "retrieve", session_key=sk, agent="coder") == "task required"
    assert "unknown tool" in await _error(s, "no_such_tool")
    # resources: the topic contracts and the session's heuristics
    uris = {str(r.uri) for r in (await s.list_resources()).resources}
    assert "learnstream://topics" in uris and "learnstream://topics/feedback" in uris
    contract = (await s.read_resource("learnstream://topics/outcomes")).contents[0].text
    assert '"name": "agent.outcomes"' in contract
    heur = (await s.read_resource(f"learnstream://sessions/{sk}/heuristics")).contents[0].text
    assert '"outcomes": 1' in heur
    templates = (await s.list_resource_templates()).resourceTemplates
    assert templates[0].uriTemplate == "learnstream://sessions/{session_key}/heuristics"


def test_stdio_with_the_embedded_default(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    env = _env(LEARNSTREAM_DATA_DIR=str(tmp_path / "data"), LEARNSTREAM_PARTITIONS="2",
               LEARNSTREAM_TEST_MARKER=marker)

    async def go() -> None:
        async with stdio_client(_stdio(env)) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            await exercise_every_tool(s, "agent-stdio")

    asyncio.run(asyncio.wait_for(go(), 240))
    # the embedded worker and its broker stop with the MCP server
    wait_until(lambda: leftovers(marker) == [], 60, 0.5, "the embedded worker and broker to exit")


class Sidecar(ChildProcess):
    """``learnstream mcp --http`` as a subprocess."""

    def __init__(self, worker_url: str, token: str, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "mcp", "--http", f"127.0.0.1:{self.port}", "--worker-url", worker_url],
            env=_env(LEARNSTREAM_MCP_TOKEN=token, **env), stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)

        def up() -> bool:
            assert self.proc.poll() is None, log.read_text()
            return httpx.post(self.url, json={}, timeout=3).status_code == 401

        wait_until(up, 60, 0.2, "the MCP sidecar", retry_on=(httpx.HTTPError,))

    def stop(self) -> None:  # type: ignore[override]
        super().stop(20)

    def _stopped(self) -> None:
        self._log.close()


def test_streamable_http_needs_the_bearer_token(worker_factory, tmp_path: Path) -> None:
    w = worker_factory("mcp-http").start().wait_ready()
    side = Sidecar(w.url, "s3cret", tmp_path / "sidecar.log", LEARNSTREAM_HTTP_HEADER_TIMEOUT_S="2",
                   LEARNSTREAM_HTTP_BODY_TIMEOUT_S="2")
    try:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "t", "version": "0"}}}
        hdr = {"Accept": "application/json, text/event-stream"}
        assert httpx.post(side.url, json=init, headers=hdr, timeout=10).status_code == 401
        assert httpx.post(side.url, json=init, headers={**hdr, "Authorization": "Bearer wrong"},
                          timeout=10).status_code == 401

        async def go() -> None:
            async with streamablehttp_client(side.url, headers={"Authorization": "Bearer s3cret"}) as (r, wr, _), \
                    ClientSession(r, wr) as s:
                await s.initialize()
                await exercise_every_tool(s, "agent-http")
                # a call over the SDK's 4 MiB body limit, or nested too deep, fails with a JSON-RPC error for
                # its id, and the session goes on (any HTTP error status ends the official client's session)
                huge = {"session_key": "agent-http", "model": "small", "quality": 0.5, "embedding": [0.1] * 1_200_000}
                with pytest.raises(McpError, match="over this server's limit of 4,194,304"):
                    await s.call_tool("feedback", huge)
                deep: Any = 1
                for _ in range(100):
                    deep = [deep]
                with pytest.raises(McpError, match="nested deeper than 64"):
                    await s.call_tool("health", {"session_key": "agent-http", "x": deep})
                assert (await _call(s, "health", session_key="agent-http"))["instant_ready"] is True
                # a number beyond a double's range counts as an infinity (README): the verb's own refusal,
                # not a parse error that ended the call with id null (an outside trial)
                text = await _error(s, "feedback", session_key="agent-http", model="small", quality=10**400,
                                    embedding=[0.1] * 8)
                assert "quality" in text, text

        asyncio.run(asyncio.wait_for(go(), 180))

        # an idle keep-alive connection outlives httpx's 5 s expiry (the official client's): when the server
        # closed it at 5 s too, a reused connection could be cut under a call (httpx.ReadError in the agent)
        conn = http.client.HTTPConnection("127.0.0.1", side.port, timeout=10)
        socks = []
        for pause in (5.5, 0):
            conn.request("POST", "/mcp", body=orjson.dumps(init), headers={**hdr, "Authorization": "Bearer s3cret",
                                                                            "Content-Type": "application/json"})
            r = conn.getresponse()  # RemoteDisconnected / BrokenPipeError if the server had closed it
            r.read()
            assert r.status == 200 and not r.will_close, r.status
            socks.append(conn.sock)
            time.sleep(pause)
        assert socks[0] is socks[1]  # the second request went over the first connection
        # a refused one is closed: kept alive, clients without a token held every connection slot (an outside
        # trial: 300 such keep-alive connections, and every agent got 503)
        conn.request("POST", "/mcp", body=b"{}", headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 401 and r.will_close
        conn.close()
        for method, path in (("GET", "/elsewhere"), ("POST", "/mcp/")):  # a 404, a 307 held their slots too
            conn = http.client.HTTPConnection("127.0.0.1", side.port, timeout=10)
            conn.request(method, path)
            r = conn.getresponse()
            r.read()
            assert r.status in (404, 307) and r.will_close, (path, r.status)
            conn.close()
        for tokens in (("s3cret", "wrong"), ("wrong", "s3cret")):  # the SDK took the first
            conn = http.client.HTTPConnection("127.0.0.1", side.port, timeout=10)
            conn.putrequest("POST", "/mcp")
            for t in tokens:
                conn.putheader("Authorization", f"Bearer {t}")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", "2")
            conn.endheaders(b"{}")
            r = conn.getresponse()
            assert r.status == 400 and b"more than one Authorization" in r.read() and r.will_close
            conn.close()
        # hostile nesting past orjson's own limit: no id can be read, a JSON-RPC parse error (400), not a
        # RecursionError inside the SDK (500)
        auth = {**hdr, "Authorization": "Bearer s3cret", "Content-Type": "application/json"}
        deep = b'{"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
        r = httpx.post(side.url, content=deep, headers=auth, timeout=10)
        assert r.status_code == 400 and "nested deeper than 64" in r.json()["error"]["message"], r.text
        # a body that is not UTF-8, or compressed: a parse error, not a 500 with a traceback (an outside trial)
        bad = b'{"jsonrpc": "2.0", "id": 3, "method": "initialize", "params": {"x": "\xff\xfe"}}'
        for body, extra, status, rid in ((bad, {}, 200, 3),  # its id still read: answered by id
                                         (gzip.compress(orjson.dumps(init)), {"Content-Encoding": "gzip"}, 400, None)):
            r = httpx.post(side.url, content=body, headers={**auth, **extra}, timeout=10)
            assert r.status_code == status and r.json()["id"] == rid and r.json()["error"]["code"] == -32700, r.text
        # a lone surrogate (JSON, not Unicode text: a JS agent's string cut mid-emoji) is a parse error for its id,
        # not a 400 with id null, which ends the official client's session
        cut = b'{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "health", "arguments": ' \
              b'{"session_key": "agent-http", "x": "\\ud800"}}}'
        r = httpx.post(side.url, content=cut, headers=auth, timeout=10)
        assert r.status_code == 200 and r.json()["id"] == 5 and r.json()["error"]["code"] == -32700, r.text
        big = b'{"jsonrpc": "2.0", "id": 4, "method": "initialize", "params": {"x": 1' + b"0" * 400 + b"}}"
        r = httpx.post(side.url, content=big, headers=auth, timeout=10)
        assert r.status_code != 400 or r.json()["error"]["code"] != -32700, r.text  # the SDK's to answer
        # 1e400 would reach the tool as null (the SDK writes no infinity) and be applied as an absent field
        inf = b'{"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "add_knowledge", "arguments": ' \
              b'{"session_key": "agent-http", "agent": "a", "domain": "d", "fact": "f", "importance": 1e400}}}'
        r = httpx.post(side.url, content=inf, headers=auth, timeout=10)
        assert r.status_code == 200 and r.json()["id"] == 6 and "as 1e400" in r.json()["error"]["message"], r.text
        huge_id = b'{"jsonrpc": "2.0", "id": 1' + b"0" * 400 + b', "method": "tools/list", "params": {"x": ' + \
            b"[" * 100 + b"]" * 100 + b"}}"
        r = httpx.post(side.url, content=huge_id, headers=auth, timeout=10)  # an id no answer can carry
        assert r.status_code == 400 and r.json()["id"] is None, r.text
        # an id that is not a string or an integer: the SDK took it for a notification (an empty 202, and a
        # validation dump in the log), where JSON-RPC says Invalid Request
        for rid in (b"1.5", b"null", b'{"a": 1}', b"[1]", b"true", b"1" + b"0" * 30):
            r = httpx.post(side.url, content=b'{"jsonrpc": "2.0", "id": %s, "method": "tools/list"}' % rid,
                           headers=auth, timeout=10)
            assert r.status_code == 400 and r.json()["error"]["code"] == -32600 and r.json()["id"] is None, (rid, r.text)
        assert httpx.post(side.url, json=init, headers=auth, timeout=10).status_code == 200   # still serving

        # a tools/call whose arguments are not an object: the SDK's -32602, and its ~90-line validation dump is
        # logged once per 10 s, not per call (30 calls made 2,731 lines)
        r = httpx.post(side.url, json=init, headers=auth, timeout=10)
        sid = {**auth, "mcp-session-id": r.headers["mcp-session-id"]}
        httpx.post(side.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=sid, timeout=10)
        for i in range(20):
            r = httpx.post(side.url, json={"jsonrpc": "2.0", "id": 100 + i, "method": "tools/call",
                                           "params": {"name": "health", "arguments": [1, 2]}}, headers=sid, timeout=10)
            assert r.json()["error"]["code"] == -32602, r.text
        assert (tmp_path / "sidecar.log").read_text().count("validation error") <= 2

        # slow clients (uvicorn has no timeout for them: ~300 such connections held every slot): a connection
        # with no head, or a head trickling in, is closed after the header timeout; a body after the body's
        head = (b"POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/json\r\n"
                b"Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{")
        silent, trickle, body = (socket.create_connection(("127.0.0.1", side.port), timeout=15) for _ in range(3))
        t0 = time.monotonic()
        body.sendall(head)
        cut = None
        for b in b"POST /mcp HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 100:  # a byte every 0.2 s
            try:
                trickle.sendall(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                cut = time.monotonic() - t0
                break
            time.sleep(0.2)
        assert cut is not None and 1.5 <= cut <= 8, cut  # the trickle did not push the timeout back
        with contextlib.suppress(ConnectionResetError):
            assert silent.recv(100) == b""
        closed = time.monotonic() - t0
        answer = body.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408") and b"body not received within 2 s" in answer, answer
        with contextlib.suppress(ConnectionResetError):
            assert body.recv(100) == b""
        assert closed <= 10, closed
        for c in (silent, trickle, body):
            c.close()
        assert httpx.post(side.url, json=init, headers=auth, timeout=10).status_code == 200   # still serving
    finally:
        side.stop()
    # a client that went away is not an error: the SDK logged one traceback per ordinary disconnect
    text = (tmp_path / "sidecar.log").read_text()
    assert "Error in standalone SSE writer" not in text and "ClosedResourceError" not in text, text[-3000:]
    assert "UnicodeDecodeError" not in text and "Traceback" not in text, text[-3000:]


def test_sigterm_stops_the_http_server_and_the_worker_it_started(tmp_path: Path) -> None:
    """A pod or service stop sends SIGTERM: the embedded worker and its broker must stop with the MCP
    server (uvicorn re-raises the SIGTERM it caught, which used to end the process before its cleanup)."""
    marker = uuid.uuid4().hex
    port, worker_port = free_port(), free_port()
    log = tmp_path / "mcp.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "mcp", "--http", f"127.0.0.1:{port}"],
                                env=_env(LEARNSTREAM_MCP_TOKEN="s3cret", LEARNSTREAM_DATA_DIR=str(tmp_path / "data"),
                                         LEARNSTREAM_PARTITIONS="2", LEARNSTREAM_TEST_MARKER=marker,
                                         LEARNSTREAM_WEB_PORT=str(worker_port)),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is None and "learnstream mcp ready" in log.read_text(), 240, 0.2,
                   "the MCP server with its embedded worker")
        # the embedded worker's API is where LEARNSTREAM_WEB_PORT says
        assert httpx.get(f"http://127.0.0.1:{worker_port}/ready", timeout=10).status_code == 200
        assert len(leftovers(marker)) >= 3, leftovers(marker)  # the server, its worker and the broker
        proc.terminate()
        assert proc.wait(60) == 143, log.read_text()[-3000:]
        wait_until(lambda: leftovers(marker) == [], 30, 0.2, "the embedded worker and broker to exit")
    finally:
        kill_marked(proc, marker)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_stdio_server_while_its_client_keeps_stdin_open(worker_factory, tmp_path: Path,
                                                                          sig: int, status: int) -> None:
    """The SDK read stdin in a thread nothing interrupts: SIGTERM and Ctrl-C waited for the client to close it."""
    w = worker_factory("mcp-sig").start().wait_ready()
    proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "mcp", "--worker-url", w.url], env=_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(tmp_path / "mcp.log", "wb"))
    try:
        assert proc.stdin is not None and proc.stdout is not None
        hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                 "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        proc.stdin.write(json.dumps(hello).encode() + b"\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == 1  # serving; stdin stays open from here on
        proc.send_signal(sig)
        assert proc.wait(20) == status, (tmp_path / "mcp.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stdio_answers_by_id_what_the_sdk_would_leave_unanswered(worker_factory, tmp_path: Path) -> None:
    """A lone surrogate (a JS agent's string cut mid-emoji) or JSON nested too deep: the SDK's stdio reader
    dropped the line without an answer, so the agent's call waited forever (an outside trial)."""
    w = worker_factory("mcp-lines").start().wait_ready()
    proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "mcp", "--worker-url", w.url], env=_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(tmp_path / "mcp.log", "wb"))

    def send(line: bytes) -> dict:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + b"\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    def call(rid: int, arguments: bytes, tool: bytes = b"health") -> bytes:
        return b'{"jsonrpc": "2.0", "id": %d, "method": "tools/call", "params": {"name": "%s", "arguments": %s}}' % (
            rid, tool, arguments)

    try:
        hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                 "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        assert send(json.dumps(hello).encode())["id"] == 1
        assert proc.stdin is not None
        proc.stdin.write(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        cut = send(call(2, b'{"session_key": "lines", "x": "\\ud800"}'))
        assert cut["id"] == 2 and cut["error"]["code"] == -32700 and "surrogate" in cut["error"]["message"], cut
        deep = send(call(3, b'{"session_key": "lines", "x": ' + b"[" * 100 + b"]" * 100 + b"}"))
        assert deep["id"] == 3 and "nested deeper than 64" in deep["error"]["message"], deep  # orjson read it: an id
        # 1e400 reached the tool as null over stdio too, and importance took its default
        inf = send(call(4, b'{"session_key": "lines", "agent": "a", "domain": "d", "fact": "f", "importance": 1e400}',
                        b"add_knowledge"))
        assert inf["id"] == 4 and "as 1e400" in inf["error"]["message"], inf
        # invalid UTF-8 was applied with replacement characters (another session_key): a parse error for its id
        bad = send(call(6, b'{"session_key": "lines-\xff", "agent": "a", "domain": "d", "fact": "f"}', b"add_knowledge"))
        assert bad["id"] == 6 and bad["error"]["code"] == -32700, bad
        # ids that are not a string or an integer, and batches, went unanswered: Invalid Request, id null
        # a request the SDK cannot read had only an "Internal Server Error" notification: Invalid Request by id
        for rid, line in ((8, b'{"id": 8, "method": "ping"}'), (9, b'{"jsonrpc": "2.0", "id": 9, "method": 5}'),
                          (10, b'{"jsonrpc": "2.0", "id": 10}'), ("b\ufffd", b'{"jsonrpc": "2.0", "id": "b\xef\xbf\xbd"}')):
            out = send(line)
            assert out["id"] == rid and out["error"]["code"] == -32600, (line, out)
        bom = send(b"\xef\xbb\xbf" + call(11, b'{"session_key": "lines"}'))  # a BOM before the message
        assert bom["id"] == 11 and "result" in bom, bom
        for line in (b'{"jsonrpc": "2.0", "id": null, "method": "ping"}', b'{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}',
                     b"5", b"{}", b'{"jsonrpc": "2.0", "id": "b\x80", "method": "ping"}',  # an id with an invalid byte
                     b'{"jsonrpc": "2.0", "id": ' + b"1" * 30 + b', "method": "ping"}',
                     b'[{"jsonrpc": "2.0", "id": 7, "method": "ping"}]'):
            out = send(line)
            assert out["id"] is None and out["error"]["code"] in (-32600, -32700), (line, out)
        # a blank line, and a notification the SDK cannot take, get no answer: the next answer is the next call's
        assert proc.stdin is not None
        proc.stdin.write(b"\n" + b'{"jsonrpc": "2.0", "method": "notifications/x", "params": {"v": 1e400}}\n')
        ok = send(call(5, b'{"session_key": "lines"}'))
        assert ok["id"] == 5 and not ok["result"].get("isError"), ok  # still serving
    finally:
        proc.kill()
        proc.wait()


def test_http_transport_refuses_to_start_without_a_token() -> None:
    r = subprocess.run([sys.executable, "-m", "workers.cli", "mcp", "--http", "127.0.0.1:1", "--worker-url",
                        "http://127.0.0.1:1"], env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "LEARNSTREAM_MCP_TOKEN" in r.stderr


_BURST = 48
_KILL_AFTER = 12       # acknowledged writes before the SIGKILL
_DEADLINE_S = "2"      # the MCP server's retries give up this soon: calls during the outage fail


@contextlib.asynccontextmanager
async def _session(transport: str, worker_url: str, tmp_path: Path) -> AsyncIterator[ClientSession]:
    """An initialized MCP client session over ``transport`` to a server whose retries give up soon."""
    if transport == "stdio":
        env = _env(LEARNSTREAM_APPLY_DEADLINE_S=_DEADLINE_S)
        async with stdio_client(_stdio(env, "--worker-url", worker_url)) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            yield s
        return
    side = await asyncio.to_thread(Sidecar, worker_url, "t", tmp_path / "sidecar.log",
                                   LEARNSTREAM_APPLY_DEADLINE_S=_DEADLINE_S)
    try:
        async with streamablehttp_client(side.url, headers={"Authorization": "Bearer t"}) as (r, w, _), \
                ClientSession(r, w) as s:
            await s.initialize()
            yield s
    finally:
        side.stop()


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_sigkill_in_a_burst_of_writes(worker_factory, tmp_path: Path, transport: str) -> None:
    w = worker_factory("mcp-kill").start().wait_ready()
    sk = "agent-kill"
    keys = [f"use-{i}" for i in range(_BURST)]

    async def go() -> None:
        async with _session(transport, w.url, tmp_path) as s:
            rid = (await _call(s, "add_knowledge", session_key=sk, agent="a", domain="d", fact="f"))["data"]["record_id"]
            acked: dict[str, str] = {}     # key -> id
            failed: dict[str, str] = {}    # key -> the error the agent saw
            killed = asyncio.Event()

            async def one(key: str) -> None:
                res = await s.call_tool("mark_used", {"session_key": sk, "ids": [rid], "idempotency_key": key})
                if res.isError:
                    failed[key] = res.content[0].text
                    return
                acked[key] = res.structuredContent["id"]
                if len(acked) == _KILL_AFTER and not killed.is_set():
                    killed.set()
                    await asyncio.to_thread(w.kill)  # SIGKILL: no shutdown, no commit, no flush

            sem = asyncio.Semaphore(8)  # a busy agent: several writes in flight at once

            async def limited(key: str) -> None:
                async with sem:
                    await one(key)

            await asyncio.gather(*(limited(k) for k in keys))
            assert killed.is_set() and len(acked) >= _KILL_AFTER
            assert failed, "some writes must have met the dead worker"
            assert all("not confirmed" in why and "idempotency_key" in why for why in failed.values()), failed
            assert len(set(acked.values())) == len(acked)  # one applied message per acknowledged write

            await asyncio.to_thread(lambda: w.start().wait_ready())
            # every acknowledged write is applied exactly once: retrying it applies nothing
            for key, first_id in acked.items():
                again = await _call(s, "mark_used", session_key=sk, ids=[rid], idempotency_key=key)
                assert again["duplicate"] is True and again["id"] == first_id
            # every failed write was applied once or not at all: its retry settles which, applying it at most once
            settled = {"applied before the kill": 0, "applied now": 0}
            for key in failed:
                out = await _call(s, "mark_used", session_key=sk, ids=[rid], idempotency_key=key)
                settled["applied before the kill" if out.get("duplicate") else "applied now"] += 1
            h = await _call(s, "heuristics", session_key=sk, include=["knowledge"])
            assert h["knowledge"][0]["accesses"] == _BURST, (len(acked), settled)
            print(f"acked {len(acked)}, failed {len(failed)}: {settled}")

    asyncio.run(asyncio.wait_for(go(), 240))


def test_sigterm_stops_the_sidecar_while_a_call_waits_for_a_stopped_worker(worker_factory, tmp_path: Path) -> None:
    """An outside trial: a tool call still waiting for a worker held the sidecar's SIGTERM off for over ten
    minutes (uvicorn waits for in-flight requests without a bound); it now stops within about 10 s."""
    import threading

    w = worker_factory("mcp-stop").start().wait_ready()
    side = Sidecar(w.url, "t", tmp_path / "sidecar.log")
    auth = {"Authorization": "Bearer t", "Accept": "application/json, text/event-stream"}
    try:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        r = httpx.post(side.url, json=init, headers=auth, timeout=10)
        hdr = {**auth, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
        import psutil

        def to_worker() -> bool:  # the sidecar's connection to the worker: the call forwarded, unanswered
            assert side.proc is not None
            return any(c.raddr and c.raddr.port == w.port and c.status == psutil.CONN_ESTABLISHED
                       for c in psutil.Process(side.proc.pid).net_connections("tcp"))

        assert not to_worker()  # initialize needs no worker: a connection below is the call's
        w.pause()
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "health", "arguments": {"session_key": "stop"}}}
        def waiting() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(side.url, json=call, headers=hdr, timeout=60)

        caller = threading.Thread(target=waiting, daemon=True)
        caller.start()
        wait_until(to_worker, 20, 0.05, "the call to reach the stopped worker")
        assert caller.is_alive()  # the call is in flight, waiting for the stopped worker
        assert side.proc is not None
        t0 = time.monotonic()
        side.proc.send_signal(signal.SIGTERM)
        side.proc.wait(30)
        assert time.monotonic() - t0 < 15
    finally:
        w.resume()
        side.stop()
