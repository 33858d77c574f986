"""``learnstream mcp``: the MCP server over stdio (desktop and CLI agents) or streamable HTTP
(remote agents), talking to a worker's HTTP API.

Without a worker URL it starts ``learnstream worker`` with the embedded broker as a child
process (its output goes to stderr: stdout is the MCP channel) and stops it on exit.
The HTTP transport is a sidecar: it leaves the worker's own web server untouched and
requires a bearer token (``LEARNSTREAM_MCP_TOKEN``) from every remote agent.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

from workers.local import bind_error, free_port
from workers.client import LearnstreamClient
from workers.errors import ConfigError
from workers.cli.processes import WorkerProcess
from workers.mcp.server import build_server
from workers.stream.settings import Settings

__all__ = ("run_mcp", "http_app", "StaticTokenVerifier", "embedded_worker")


# A cold embedded worker: broker start, topic creation, group join (Tansu's join takes ~5 s).
_WORKER_READY_S = 120.0


class StaticTokenVerifier:
    """The mcp SDK's ``TokenVerifier`` for one shared secret (compared in constant time)."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def verify_token(self, token: str) -> Any:
        from mcp.server.auth.provider import AccessToken

        if hmac.compare_digest(token.encode(), self._token):
            return AccessToken(token=token, client_id="learnstream-agent", scopes=[])
        return None


def http_app(client: LearnstreamClient, *, token: str, default_session: str = "default",
             body_timeout_s: float = 10.0) -> Any:
    """The Starlette app serving MCP's streamable HTTP at ``/mcp``, bearer token required; a POST body
    must arrive within ``body_timeout_s`` (:func:`request_guard`)."""
    from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.routing import Route

    server = build_server(client, default_session=default_session)
    manager = StreamableHTTPSessionManager(app=server, json_response=True)  # plain JSON answers: no SSE stream per call

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        async with manager.run():
            yield

    async def mcp_endpoint(scope: Any, receive: Any, send: Any) -> None:  # an ASGI app, not a request handler
        await manager.handle_request(scope, receive, send)

    endpoint = RequireAuthMiddleware(request_guard(mcp_endpoint, body_timeout_s), required_scopes=[])
    return _closing_refusals(Starlette(routes=[Route("/mcp", endpoint=endpoint)], lifespan=lifespan,
                                       middleware=[Middleware(AuthenticationMiddleware,
                                                              backend=BearerAuthBackend(StaticTokenVerifier(token)))]))


def _closing_refusals(app: Any) -> Any:
    """An ASGI wrapper closing the connection of every answer that is not a 2xx (401, 403, a 404 for another
    path, a 307 for /mcp/, ...): kept alive, each held one of the sidecar's :data:`MAX_CONNECTIONS` slots, so clients without a
    token, sending a request every few seconds on 256 connections, kept every agent out (503) for as long
    as they liked (outside trials: with 401s, then with 404s). An agent's tool call that fails is a JSON-RPC
    error in an HTTP 200, whose connection stays.
    A request with more than one Authorization header is refused (400) as on the worker: the SDK took
    the first."""
    import orjson

    refused = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {
        "code": -32600, "message": "Invalid request: more than one Authorization header"}})

    async def closing(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        if sum(name.lower() == b"authorization" for name, _ in scope.get("headers", ())) > 1:
            await send({"type": "http.response.start", "status": 400, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(refused)).encode()),
                (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": refused})
            return

        async def send_closing(message: Any) -> None:
            if message["type"] == "http.response.start" and not 200 <= message.get("status", 200) < 300:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await app(scope, receive, send_closing)

    return closing


@contextlib.contextmanager
def embedded_worker(settings: Settings) -> Iterator[str]:
    """A ``learnstream worker`` child process (embedded broker unless one is set); yields its URL.

    It listens on 127.0.0.1 at ``LEARNSTREAM_WEB_PORT`` when that is set (its dashboard and API at a
    known address), else on a free port (the default 6066 may be another worker's)."""
    if os.environ.get("LEARNSTREAM_WEB_PORT"):
        port = settings.web_port
        if (why := bind_error("127.0.0.1", port)) is not None:
            raise ConfigError(f"LEARNSTREAM_WEB_PORT={port}: the worker cannot listen there ({why})")
    else:
        port = free_port()
    env = {**os.environ, **settings.env(), "LEARNSTREAM_WEB_PORT": str(port), "LEARNSTREAM_WEB_HOST": "127.0.0.1"}
    w = WorkerProcess(env, port=port, log=sys.stderr).start()  # stdout may be the MCP channel
    try:
        w.wait_ready(_WORKER_READY_S, 0.2, "the embedded worker to become ready")
        yield w.url
    finally:
        w.stop(30)


# The longest line stdin may send (one JSON-RPC message); the HTTP transport reads up to _READ_CAP.
_STDIN_LINE_MAX = 64 * 1024 * 1024


class _StdinLines:
    """stdin's lines, read on the event loop (a pipe, socket or terminal: ``connect_read_pipe``).

    The SDK's default reads stdin in a worker thread, which nothing interrupts: a SIGTERM or Ctrl-C
    left the server running until the client closed stdin (asyncio.run waits for that thread).
    A message :func:`refusal` refuses never reaches the SDK: a request is answered here with a JSON-RPC
    error for its id (id null when it cannot be told), on ``out``. The SDK dropped a lone surrogate, JSON
    nested too deep, bad ids and batches unanswered; it applied invalid UTF-8 with replacement characters
    (another session_key, another fact) and a float beyond a double's range as null."""

    def __init__(self, reader: asyncio.StreamReader, out: _Lines) -> None:
        self._reader, self._out = reader, out

    @classmethod
    async def open(cls, out: _Lines) -> _StdinLines | None:
        """None when stdin cannot be read on the loop (a regular file): the SDK's default reads it then."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_STDIN_LINE_MAX)
        try:
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
        except (OSError, ValueError):
            return None
        return cls(reader, out)

    def __aiter__(self) -> _StdinLines:
        return self

    async def __anext__(self) -> str:
        import orjson

        while True:
            try:
                line = await self._reader.readline()
            except ValueError:  # longer than _STDIN_LINE_MAX (asyncio dropped it): handed on as a message that is not one
                return "{}"
            if not line:
                raise StopAsyncIteration
            line = line.removeprefix(b"\xef\xbb\xbf")  # a BOM a client wrote before its message
            if not line.strip():
                continue  # a blank line is no message (the SDK answered it with an error notification)
            rid, error, answer = refusal(line)
            if error is None:
                return line.decode("utf-8", errors="replace")
            if answer:  # JSON-RPC: id null when it cannot be told; a notification gets no answer
                code, message = error
                await self._out.write(orjson.dumps({"jsonrpc": "2.0", "id": rid,
                                                    "error": {"code": code, "message": message}}).decode() + "\n")


class _Lines:
    """stdout as the SDK writes it (``anyio.wrap_file``), shared with :class:`_StdinLines`' answers: each
    line is written and flushed whole under a lock, so two writers never interleave."""

    def __init__(self) -> None:
        import anyio
        from io import TextIOWrapper

        self._out = anyio.wrap_file(TextIOWrapper(sys.stdout.buffer, encoding="utf-8"))
        self._lock = anyio.Lock()

    async def write(self, text: str) -> None:
        async with self._lock:
            await self._out.write(text)
            await self._out.flush()

    async def flush(self) -> None:
        """Each line was flushed with it."""


async def _serve_stdio(client: LearnstreamClient, session: str) -> None:
    from mcp.server.stdio import stdio_server

    server = build_server(client, default_session=session)
    out = _Lines()
    stdin = await _StdinLines.open(out)
    async with client, stdio_server(stdin=stdin, stdout=out) as (read, write):  # type: ignore[arg-type]
        await server.run(read, write, server.create_initialization_options())


MAX_NESTING = 64              # JSON containers in one request (a verb body needs a handful)
_SDK_BODY_LIMIT = 4 * 1024 * 1024   # the SDK answers a larger body 413 itself, before parsing
# A body up to this size is read whole even past the SDK's limit, to answer its request by id
_READ_CAP = 4 * _SDK_BODY_LIMIT


def _id_of(body: bytes) -> str | int | None:
    """The JSON-RPC id of a request orjson refused, when the standard library reads it (a lone surrogate
    in a string, which is JSON but not Unicode text: the answer was a 400 with id null, and any HTTP error
    ends the official client's session); None when there is none to answer."""
    import json

    try:
        msg = json.loads(body.decode("utf-8", errors="replace"))  # an invalid byte in a string spares the id
    except (ValueError, RecursionError):
        return None
    rid = msg.get("id") if isinstance(msg, dict) and "method" in msg else None
    if isinstance(rid, str) and (not rid.isprintable() or "\ufffd" in rid
                                 or any(0xD800 <= ord(c) <= 0xDFFF for c in rid)):
        return None  # an answer could not carry it, or would carry another id (an invalid byte read as U+FFFD)
    return rid if _answerable(rid) else None


def _answerable(rid: Any) -> bool:
    """Whether a JSON-RPC id can be written back in an answer (an integer id beyond 64 bits is the SDK's
    to refuse)."""
    return isinstance(rid, str) or isinstance(rid, int) and not isinstance(rid, bool) and -2**63 <= rid < 2**64


def refusal(body: bytes) -> tuple[str | int | None, tuple[int, str] | None, bool]:
    """The id an answer to a JSON-RPC message can carry (or None), the error to answer it with when the SDK
    cannot take it well (or None), and whether JSON-RPC wants an answer to it at all (a request, or a
    message whose id cannot be told; not a notification): not JSON or not UTF-8 (a lone surrogate is JSON but not Unicode
    text: a JS agent's string cut mid-emoji, whose id can still be read), or nested deeper than
    :data:`MAX_NESTING`: the SDK answers neither by id (over HTTP a 400 with id null, which ends the
    official client's session; over stdio no answer at all, so the agent's call waited forever). Or a float
    literal beyond a double's range (as 1e400): the SDK reads it as an infinity and hands the tool a null for
    it (it re-validates the request through JSON, which has no infinity), so the verb applied it as an
    absent field (outside trials, over both transports). Or a request whose id is neither a string nor an
    integer (null, 1.5, an object, beyond 64 bits), or a batch (MCP has none since 2025-06-18): JSON-RPC's
    Invalid Request, with id null."""
    import json

    from mcp.types import JSONRPCMessage
    from pydantic import ValidationError

    from workers.stream.http_guard import json_depth
    from workers.verbs.codec import has_non_finite, loads

    try:
        msg = loads(body)  # a number beyond a double's range is an infinity here too (the SDK reads it)
    except ValueError as exc:
        reason = f"JSON nested deeper than {MAX_NESTING}" if "depth" in str(exc) else str(exc)[:200]
        return _id_of(body), (-32700, f"Parse error: {reason}"), True
    if isinstance(msg, list):
        return None, (-32600, "Invalid request: a batch (MCP has none since 2025-06-18): send each message "
                              "alone"), True
    if not isinstance(msg, dict):
        return None, (-32600, "Invalid request: a JSON-RPC message is an object"), True
    request = "id" in msg or "method" not in msg  # anything but a notification wants an answer
    rid = msg.get("id")
    if "id" in msg and not _answerable(rid):
        # the SDK took it for a notification: an empty 202 (no answer over stdio) and a ~25-line dump in the log
        return None, (-32600, "Invalid request: an id is a string or an integer of at most 64 bits (MCP); a "
                              "notification has none"), True
    if msg is not None and not json_depth(msg, MAX_NESTING):
        return rid, (-32700, f"Parse error: JSON nested deeper than {MAX_NESTING}"), request
    if has_non_finite(msg) and has_non_finite(json.loads(body)):  # a float literal: a written-out integer
        # stays an integer in the SDK (the verbs count it as an infinity), and passes
        return rid, (-32602, "Invalid params: a number beyond a double's range (as 1e400) would reach the "
                             "tool as null; send the finite value the field should take"), request
    try:  # what the SDK reads next: a request it cannot read (no "jsonrpc", a method that is a number) went
        # unanswered over stdio, with an "Internal Server Error" notification only
        JSONRPCMessage.model_validate(msg)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first.get("loc", ()))) or "message"
        return rid, (-32600, f"Invalid request: not a JSON-RPC 2.0 message ({where}: {first.get('msg', '')})"), \
            request
    return rid, None, request


def request_guard(app: Any, body_timeout_s: float = 10.0) -> Any:
    """An ASGI wrapper answering the kinds of POST the SDK cannot answer well, each with a JSON-RPC error:

    - a body that does not arrive within ``body_timeout_s`` (408, the connection closed): uvicorn waits
      for it forever, so slow bodies could hold every connection slot;

    - what :func:`refusal` names: a body that is not JSON or not UTF-8; JSON nested deeper than
      :data:`MAX_NESTING` (the SDK parses with the standard library, whose recursion a few thousand nested
      arrays exhaust: an HTTP 500 from inside it); a float literal beyond a double's range (as 1e400),
      which would reach the tool as null; an id that is neither a string nor an integer;
    - a body over the SDK's 4 MiB limit (up to :data:`_READ_CAP`), which the SDK answers 413.

    The official client takes any HTTP error status as the end of its session (``raise_for_status``
    in its post writer): one oversized tool call lost the agent its connection. So when the request's
    ``id`` can be read, the answer is HTTP 200 with a JSON-RPC error for that id: the call fails with a
    clear message and the session goes on. Without one (JSON too deep for orjson, a body past the cap,
    not a request) it stays 400, or the SDK's 413. Any other body goes on to the SDK unchanged."""
    import orjson

    async def answer(status: int, rid: Any, code: int, message: str, send: Any, close: bool = False) -> None:
        out = orjson.dumps({"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
        if close:  # uvicorn closes a connection whose response says so
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST":
            await app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body_timeout_s
        while more and size <= _READ_CAP:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                await answer(408, None, -32600, f"Invalid request: body not received within {body_timeout_s:g} s",
                             send, close=True)
                return
            if message["type"] != "http.request":  # the client went away: let the SDK see it
                chunks.append(message)
                break
            chunks.append(message)
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        if not more and size <= _READ_CAP:
            body = b"".join(m.get("body", b"") for m in chunks if m["type"] == "http.request")
            rid, error, _ = refusal(body)
            if error is not None:
                await answer(200 if rid is not None else 400, rid, *error, send)
                return
            if size > _SDK_BODY_LIMIT and rid is not None:
                await answer(200, rid, -32600, f"Invalid request: {size:,} bytes, over this server's limit of "
                             f"{_SDK_BODY_LIMIT:,} (send embeddings as embedding_b64, or split the call)", send)
                return
        replay = iter(chunks)

        async def again() -> Any:
            return next(replay, None) or await receive()

        await app(scope, again, send)

    return guarded


class GoneClientFilter(logging.Filter):
    """Drops the MCP SDK's ERROR (with a traceback) for a stream whose client went away: it logged one
    ``Error in standalone SSE writer`` (``anyio.ClosedResourceError``) per ordinary disconnect, which
    buried real errors. Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        import anyio

        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, (anyio.ClosedResourceError, anyio.BrokenResourceError))


# How long an idle keep-alive connection stays open. uvicorn's default (5 s) equals httpx's (the MCP
# SDK's client) keep-alive expiry, so the server could close a connection just as the client reused it:
# the agent's call failed with ``httpx.ReadError``. A server must outlast its clients' idle timeouts.
KEEP_ALIVE_S = 75
# Connections and requests at once; beyond, uvicorn answers 503. A request head or body that never
# finishes is cut off after LEARNSTREAM_HTTP_HEADER_TIMEOUT_S / _BODY_TIMEOUT_S (timed_heads, request_guard).
MAX_CONNECTIONS = 256
# In-flight requests a SIGTERM waits for before the server stops anyway (uvicorn waits without a bound).
_STOP_GRACE_S = 10


def timed_heads(header_timeout_s: float) -> type:
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request head has not arrived
    ``header_timeout_s`` after the connection opened, or after the first byte of a head that follows a
    response: uvicorn has no such timeout, so connections that never finish a head held the sidecar's
    every slot (the worker's own HTTP server closes them after ``LEARNSTREAM_HTTP_HEADER_TIMEOUT_S`` too)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedHeads(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:  # part of a head came
                self._arm()
            elif self.conn.their_state is not h11.IDLE:  # a head came: uvicorn's keep-alive timer after it
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:  # once per head: bytes trickling in do not push it back
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout_s, self._late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _late(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return TimedHeads


def quiet_server_logs() -> None:
    """uvicorn logs a WARNING for every connection it refuses past :data:`MAX_CONNECTIONS` ("Exceeded
    concurrency limit."): a flood of connections was a flood of lines. Its records are rate-limited per
    source line and have secrets redacted, as the worker's are (``workers.stream.logs``)."""
    from workers.stream.logs import RepeatedWarnings, Secrets

    log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, RepeatedWarnings) for f in log.filters):
        log.addFilter(Secrets())
        log.addFilter(RepeatedWarnings())


async def _serve_http(client: LearnstreamClient, host: str, port: int, token: str, session: str,
                      settings: Settings) -> None:
    import uvicorn

    logging.getLogger("mcp.server.streamable_http").addFilter(GoneClientFilter())

    async with client:
        app = http_app(client, token=token, default_session=session, body_timeout_s=settings.http_body_timeout_s)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                                timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=MAX_CONNECTIONS,
                                http=timed_heads(settings.http_header_timeout_s),
                                # a tool call still waiting for a worker held a SIGTERM off for minutes
                                timeout_graceful_shutdown=_STOP_GRACE_S)
        quiet_server_logs()  # after the Config: it sets uvicorn's loggers up

        class Listening(uvicorn.Server):
            """uvicorn's server, saying when it listens (its ``startup`` exits the process on failure)."""

            def __init__(self, config: uvicorn.Config) -> None:
                super().__init__(config)
                self.listening = asyncio.Event()

            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets=sockets)
                self.listening.set()

        server = Listening(config)
        serving = asyncio.create_task(server.serve())
        listening = asyncio.create_task(server.listening.wait())
        await asyncio.wait({serving, listening}, return_when=asyncio.FIRST_COMPLETED)  # "ready" once it listens
        listening.cancel()
        if server.listening.is_set():
            print(f"learnstream mcp ready: http://{host}:{port}/mcp (bearer token required)", file=sys.stderr,
                  flush=True)
        await serving


def _host_port(spec: str) -> tuple[str, int]:
    """``--http HOST:PORT``, checked: a port in 1..65535 that this host can listen on now."""
    host, _, port = spec.rpartition(":")
    host = host or "127.0.0.1"
    try:
        n = int(port)
    except ValueError:
        raise ConfigError(f"--http wants HOST:PORT, got {spec!r}") from None
    if (why := bind_error(host, n)) is not None:
        raise ConfigError(f"--http {spec}: cannot listen there ({why})")
    return host, n


def run_mcp(settings: Settings, *, worker_url: str | None = None, http: str | None = None,
            session: str = "default") -> int:
    """Serve MCP until the client disconnects (stdio) or SIGINT/SIGTERM (HTTP)."""
    if http and not settings.mcp_token:
        raise ConfigError("the HTTP transport needs a bearer token for remote agents: set LEARNSTREAM_MCP_TOKEN")
    address = _host_port(http) if http else None  # before a worker is started for it
    with contextlib.ExitStack() as stack:
        if not worker_url:
            worker_url = stack.enter_context(embedded_worker(settings))
        client = LearnstreamClient(worker_url=worker_url, token=settings.api_token, ca_file=settings.tls_cafile,
                                   apply_deadline_s=settings.apply_deadline_s)
        if address is not None:
            asyncio.run(_serve_http(client, *address, settings.mcp_token or "", session, settings))
        else:
            asyncio.run(_serve_stdio(client, session))
    return 0
