"""The HTTP listener's guards: authentication, scopes, request limits, TLS, safe forwarding.

:func:`web_options` returns faust's ``web_application_options`` (one aiohttp middleware and the
server's limits); the views call :func:`read_json`, :func:`deny` and :func:`forward`. Everything
that can go wrong on the way in answers a 4xx with a reason (or 503 + ``Retry-After`` when the
owning worker cannot be reached), never a 500.

Limits, all in :class:`~workers.stream.settings.Settings`:

- body size (``http_max_body_bytes``; 413), JSON nesting depth (``http_max_json_depth``; 400);
- requests in flight per worker (``http_max_concurrency``; 429 + ``Retry-After``), at most half of them
  per token; health and readiness probes exempt so a busy worker is not restarted for being busy;
- slow clients: a connection must send a complete request head within ``http_header_timeout_s``
  (aiohttp's keep-alive timer runs from the connection's start and closes it otherwise), and the
  body within ``http_body_timeout_s`` (408, then the connection is closed within about a second).
"""
from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from workers.errors import ConfigError
from workers.verbs.codec import loads
from workers.verbs.surface import envelope_error
from workers.stream import metrics
from workers.stream.auth import Authenticator, Principal

__all__ = ("Guard", "web_options", "server_ssl_context", "client_ssl_context", "json_depth", "FORWARDED", "RAW_BODY",
           "forwarded")

logger = logging.getLogger(__name__)

FORWARDED = "X-Learnstream-Forwarded"

_MOVED_CHECK_S = 1.0  # how often a forward asks whether its session has another owner now
# What a forwarded /route or /predict body gains: the {"verb":…,"body":…} around the client's bytes. A
# worker takes this much more from another worker, so a body the owner would take is not refused 413
# only because it was sent to another worker first (an outside trial: 1 MiB minus 20 bytes).
FORWARD_SLACK_BYTES = 256
# the request's body as read (decoded, not parsed again), set by read_json
RAW_BODY: web.RequestKey[bytes] = web.RequestKey("learnstream.raw_body", bytes)
_PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("learnstream.principal", Principal)
# Paths any client may call: probes (the kubelet has no token) and, when public, Prometheus.
_OPEN = ("/health", "/ready")
_RETRY_AFTER_S = "1"
# After answering before the body was read (408, 413) aiohttp drains the rest of the body this long
# before it closes the connection (10 s by default), so a client dribbling its body would keep the
# connection that much longer than http_body_timeout_s; one second still lets a fast client read the answer.
_LINGER_S = 1.0


def forwarded(request: web.Request) -> bool:
    """Whether another worker forwarded ``request`` (its header is exactly "1", as :meth:`Guard.forward` sends
    it: any other value, "0" included, had counted as forwarded too)."""
    return request.headers.get(FORWARDED) == "1"


def _json(data: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def json_depth(value: Any, limit: int) -> bool:
    """True when ``value`` nests no deeper than ``limit`` containers (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        if d > limit:
            return False
        stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return True


def server_ssl_context(settings: Any) -> ssl.SSLContext | None:
    """The listener's TLS context from ``tls_certfile``/``tls_keyfile`` (None: plain HTTP)."""
    if settings.tls_certfile is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(settings.tls_certfile), str(settings.tls_keyfile))
    except (OSError, ssl.SSLError) as exc:  # ssl's FileNotFoundError names neither file
        raise ConfigError(f"LEARNSTREAM_TLS_CERTFILE={settings.tls_certfile}, LEARNSTREAM_TLS_KEYFILE="
                          f"{settings.tls_keyfile}: not a readable certificate chain and its key ({exc})") from None
    return ctx


def client_ssl_context(settings: Any) -> ssl.SSLContext | None:
    """What forwarding verifies the owner's certificate with (``tls_cafile``, else the system CAs)."""
    if settings.tls_certfile is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(settings.tls_cafile) if settings.tls_cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"LEARNSTREAM_TLS_CAFILE={settings.tls_cafile}: not a readable CA file ({exc})") from None


_TLS_CHECK_S = 1.0  # how often the certificate files are stat'ed (at most; only while requests come)


class CertFiles:
    """Loads a renewed certificate, key or CA file into the running contexts (cert-manager renews a
    Secret's files in place, the kubelet swaps them atomically): checked at most once a second, by
    each file's inode, mtime and size. A pair that does not load (written half, or key and certificate
    from two renewals) keeps the previous one and is logged; the next change is tried again. Before,
    the listener served its start-up certificate until it expired (an outside review)."""

    def __init__(self, settings: Any, server: ssl.SSLContext | None, client: ssl.SSLContext | None) -> None:
        self.server, self.client = server, client
        self.files = [p for p in (settings.tls_certfile, settings.tls_keyfile, settings.tls_cafile) if p]
        self.settings = settings
        self._checked = 0.0
        self._sig = self._signature()

    def _signature(self) -> tuple:
        out = []
        for p in self.files:
            try:
                st = os.stat(p)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def check(self) -> bool:
        """Reload what changed; True when the contexts now hold new files."""
        if self.server is None:
            return False
        now = time.monotonic()
        if now - self._checked < _TLS_CHECK_S:
            return False
        self._checked = now
        sig = self._signature()
        if sig == self._sig:
            return False
        s = self.settings
        try:
            self.server.load_cert_chain(str(s.tls_certfile), str(s.tls_keyfile))
            if self.client is not None and s.tls_cafile:
                self.client.load_verify_locations(cafile=str(s.tls_cafile))  # adds: both CAs verify while peers renew
        except (OSError, ssl.SSLError) as exc:
            logger.error("TLS files changed but do not load (%s); serving the previous certificate", exc)
            return False
        self._sig = sig
        logger.info("TLS certificate reloaded from %s", s.tls_certfile)
        return True


def _denied(request: web.Request, status: int, reason: str, detail: str = "") -> None:
    """Count a refused credential and log it (never the token: its name at most; WARNINGs of one call
    site are let through once per 10 s, workers/stream/logs.py), for alerting on guessing or misuse."""
    metrics.HTTP_DENIED.labels(str(status), reason).inc()
    logger.warning("HTTP %d %s %s from %s: %s%s", status, request.method, _route(request), request.remote, reason,
                   f" ({detail})" if detail else "")


def _route(request: web.Request) -> str:
    """The path as the route it matched (``/graph/{session}/edges``): a denied request's own path can hold
    anything, a token a client put there included (an outside trial found one in these WARNINGs)."""
    resource = getattr(request.match_info.route, "resource", None)
    canonical = getattr(resource, "canonical", None)
    return canonical if isinstance(canonical, str) else "(no route)"


class Guard:
    """Per-worker request state: the authenticator and the number of requests in flight."""

    def __init__(self, settings: Any, auth: Authenticator | None = None, *, quiet: bool = False) -> None:
        self.settings = settings
        self.auth = auth or Authenticator(settings, quiet=quiet)
        self.in_flight = 0
        self.by_token: dict[str, int] = {}  # requests in flight per token name (tokens mode)
        self.server_ssl = server_ssl_context(settings)
        self.client_ssl = client_ssl_context(settings)
        self.certs = CertFiles(settings, self.server_ssl, self.client_ssl)

    def is_open(self, path: str) -> bool:
        return path in _OPEN or (self.settings.metrics_public and (path == "/metrics" or
                                                                   path.startswith("/metrics/")))

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.certs.check()  # a renewed certificate serves the next connections (probes come every few seconds)
        if self.is_open(request.path):
            return await handler(request)
        if len(request.headers.getall("Authorization", ())) > 1:
            # which one counts? The first did; a proxy adding its own could be overridden by a client's
            _denied(request, 400, "two_authorizations")
            return _json(envelope_error("?", "bad request: more than one Authorization header"), 400)
        header = request.headers.get("Authorization")
        principal = self.auth.authenticate(header)
        if principal is None:
            challenge = 'Bearer realm="learnstream"' + (', error="invalid_token"' if header else "")
            reason = "invalid token" if header else "missing bearer token (Authorization: Bearer <token>)"
            _denied(request, 401, "invalid_token" if header else "missing_token")
            return _json(envelope_error("?", f"unauthorized: {reason}"), 401, {"WWW-Authenticate": challenge})
        if principal.peer and not forwarded(request):
            _denied(request, 403, "peer_not_forwarding")
            return _json(envelope_error("?", "forbidden: the workers' peer credential only forwards requests"), 403)
        request[_PRINCIPAL] = principal
        limit = self.settings.http_max_concurrency
        if self.in_flight >= limit:
            return _json(envelope_error("?", f"too many requests in flight on this worker (limit {limit}); retry"),
                         429, {"Retry-After": _RETRY_AFTER_S})
        # One token holds at most half the slots (the workers' own, which carries every client's forwarded
        # requests, excepted): an outside trial's read-only token held all 64 with bodies it never sent, and
        # every other tenant got 429.
        name = principal.name if self.auth.enabled and not principal.peer else None
        if name is not None and self.by_token.get(name, 0) >= max(1, limit // 2):
            return _json(envelope_error("?", f"too many requests in flight for this token on this worker (limit "
                                             f"{max(1, limit // 2)}, half the worker's); retry"),
                         429, {"Retry-After": _RETRY_AFTER_S})
        self.in_flight += 1
        if name is not None:
            self.by_token[name] = self.by_token.get(name, 0) + 1
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1
            if name is not None:
                self.by_token[name] -= 1
                if not self.by_token[name]:
                    del self.by_token[name]  # only tokens with requests in flight stay listed

    def deny(self, request: web.Request, verb_name: str, session_key: str, writes: bool) -> web.Response | None:
        """403 when the caller may not touch ``session_key`` this way; None when it may.

        A forwarded request was checked by the worker the client called (the edge): the peer
        credential that carries it has no scopes of its own.
        """
        p: Principal | None = request.get(_PRINCIPAL)
        if p is None:  # an open path never reaches a verb; refuse rather than trust
            return _json(envelope_error(verb_name, "forbidden: no principal"), 403)
        if p.peer or p.may(session_key, writes=writes):
            return None
        what = "write" if writes else "read"
        # the session key is the caller's to see (below), not the log's: it can be anything, a token included
        _denied(request, 403, "scope", f"token {p.name!r} may not {what} the session named in the request")
        return _json(envelope_error(verb_name, f"forbidden: token {p.name!r} may not {what} session "
                                               f"{session_key!r}"), 403)

    async def read_json(self, request: web.Request, verb_name: str) -> Any:
        """The request's JSON body, or a 4xx response saying what is wrong with it."""
        s = self.settings
        def too_large() -> web.Response:  # built only when needed: read_json runs on every POST
            return _json(envelope_error(verb_name, f"body larger than {s.http_max_body_bytes} bytes"), 413)

        p = request.get(_PRINCIPAL)
        from_peer = forwarded(request) and (not self.auth.enabled or (p is not None and p.peer))
        limit = s.http_max_body_bytes + (FORWARD_SLACK_BYTES if from_peer else 0)
        if request.content_length is not None and request.content_length > limit:
            return too_large()
        try:
            raw = await asyncio.wait_for(request.read(), s.http_body_timeout_s)
        except asyncio.TimeoutError:
            return _json(envelope_error(verb_name, f"body not received within {s.http_body_timeout_s:g} s"), 408,
                         {"Connection": "close"})
        except web.HTTPRequestEntityTooLarge:
            return too_large()
        except Exception as exc:  # noqa: BLE001 - a body aiohttp cannot decode (e.g. a bad Content-Encoding)
            # the rest of that body cannot be read either: marked read, and the connection closed once
            # answered; else aiohttp drains it for keep-alive and logs the error again, as "Unhandled
            # exception" with a traceback at ERROR
            request.content.feed_eof()
            resp = _json(envelope_error(verb_name, f"cannot read the body: {type(exc).__name__}"), 400)
            resp.force_close()
            return resp
        if len(raw) > limit:  # a body without a Content-Length (chunked): the server's limit has the slack
            return too_large()
        try:
            value = loads(raw)
        except ValueError as exc:
            return _json(envelope_error(verb_name, f"parse: {exc}"), 400)
        if not json_depth(value, s.http_max_json_depth):
            return _json(envelope_error(verb_name, f"parse: JSON nested deeper than {s.http_max_json_depth}"), 400)
        request[RAW_BODY] = raw  # forwarded as received: JSON written again can outgrow the limit (1e5 -> 100000.0)
        return value

    async def forward(self, http: aiohttp.ClientSession, owner: str, req: dict, verb_name: str,
                      raw: bytes | None = None, moved: Callable[[], bool] | None = None) -> web.Response:
        """Send ``req`` (as ``raw`` when given: its JSON as the client sent it) to the owning worker's
        ``/dispatch``; 503 + Retry-After when it cannot answer, or refuses this worker's peer credential.
        ``moved()``, asked every second while the owner has not answered, says the session has another
        owner now: the request is then answered 503 (retry) at once. A forward to an owner that had
        stopped (SIGSTOP) waited out the forward timeout, 36 s, after the group had moved its partitions
        (an outside trial)."""
        if moved is None:
            return await self._forward(http, owner, req, verb_name, raw)
        call = asyncio.ensure_future(self._forward(http, owner, req, verb_name, raw))
        try:
            while True:
                done, _ = await asyncio.wait({call}, timeout=_MOVED_CHECK_S)
                if done:
                    return call.result()
                if moved():
                    logger.warning("forwarding %s to %s: the session has another owner now; answered 503",
                                   verb_name, owner)
                    return _json(envelope_error(verb_name, "the session's owner changed while its answer was "
                                                           "awaited (rebalancing); a write may have been taken: "
                                                           "retry with the same idempotency_key"), 503,
                                 {"Retry-After": _RETRY_AFTER_S})
        finally:
            call.cancel()  # answered, or the client went away: the forward goes too

    async def _forward(self, http: aiohttp.ClientSession, owner: str, req: dict, verb_name: str,
                       raw: bytes | None) -> web.Response:
        if self.settings.tls_certfile is not None and not owner.startswith("https:"):
            # its peer credential, a read and write credential for every session, would cross in cleartext,
            # and the answer come back unverified (an outside trial: a member started without TLS in a TLS
            # cluster's group captured the token and answered for the session)
            logger.error("not forwarding %s to %s: this worker serves HTTPS and the session's owner advertises "
                         "plain HTTP; start every worker of the group with TLS (LEARNSTREAM_TLS_*)", verb_name, owner)
            return _json(envelope_error(verb_name, "the worker owning this session serves no TLS; not forwarded"),
                         503, {"Retry-After": _RETRY_AFTER_S})
        headers = {FORWARDED: "1", "Content-Type": "application/json", **self.auth.peer_headers()}
        if self.auth.enabled and "Authorization" not in headers:
            return _json(envelope_error(verb_name, "another worker owns this session and this worker has no "
                                                   "peer credential to forward with"), 503,
                         {"Retry-After": _RETRY_AFTER_S})
        if http.closed:  # the worker is stopping: its client session closes before its web server does
            return _json(envelope_error(verb_name, "this worker is stopping; retry"), 503,
                         {"Retry-After": _RETRY_AFTER_S})
        try:
            async with http.post(owner + "/dispatch", data=orjson.dumps(req) if raw is None else raw,
                                 headers=headers, ssl=self.client_ssl if owner.startswith("https:") else None,
                                 timeout=aiohttp.ClientTimeout(total=self.settings.forward_timeout_s)) as r:
                body = await r.read()
                if r.status in (401, 403):
                    # the caller's token passed here; the owner refused this worker's peer token (tokens being
                    # rotated, or a peer entry missing there): not the caller's fault, so not its 401
                    logger.error("forwarding %s to %s: the owner refused this worker's peer token (HTTP %d); "
                                 "check the peer entry of its tokens file", verb_name, owner, r.status)
                    return _json(envelope_error(verb_name, "the worker owning this session refused this worker's "
                                                           "peer credential; retry"), 503,
                                 {"Retry-After": _RETRY_AFTER_S})
                out_headers = {"Retry-After": r.headers["Retry-After"]} if "Retry-After" in r.headers else None
                return web.Response(body=body, status=r.status, content_type="application/json",
                                    headers=out_headers)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            logger.warning("forwarding %s to %s failed: %s", verb_name, owner, type(exc).__name__)
            return _json(envelope_error(verb_name, "the worker owning this session cannot be reached "
                                                   "(rebalancing or down); retry"), 503,
                         {"Retry-After": _RETRY_AFTER_S})


def web_options(guard: Guard) -> dict:
    """faust's ``web_application_options``: the guard's middleware and the server's limits (and, with TLS,
    the process's TLS handshake timeout: :func:`bound_tls_handshakes`)."""
    s = guard.settings
    if guard.server_ssl is not None:
        bound_tls_handshakes(s.http_header_timeout_s)
    return {
        "middlewares": [guard.middleware],
        "client_max_size": s.http_max_body_bytes + FORWARD_SLACK_BYTES,  # the exact limit: read_json
        # aiohttp starts the keep-alive timer when a connection opens, so it also bounds a client
        # that never finishes its request head; idle keep-alive connections close after it too.
        "handler_args": {"keepalive_timeout": s.http_header_timeout_s, "max_field_size": 8190,
                         "max_line_size": 8190, "lingering_time": _LINGER_S},
    }


def bound_tls_handshakes(seconds: float) -> None:
    """Make every TLS handshake of this process end within ``seconds``: a connection that never sent a
    ClientHello held the worker's HTTPS listener for asyncio's default of 60 s, past the request-head
    timeout, which starts only after the handshake (an outside trial). aiohttp's server (through faust)
    takes no handshake timeout; asyncio reads this default whenever none is given, as for the forwards'
    and the Kafka clients' handshakes, which a few seconds also bound well."""
    import asyncio.constants

    asyncio.constants.SSL_HANDSHAKE_TIMEOUT = float(seconds)
