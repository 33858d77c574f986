"""Tokens, scopes and the authentication modes (workers/stream/auth.py), the HTTP guard's pieces."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from workers.local import free_port
from workers.errors import ConfigError
from workers.stream.auth import Authenticator, Principal, TokenStore, hash_token, new_token, parse_tokens
from workers.stream.http_guard import Guard, json_depth
from workers.stream.settings import Settings


def settings(**kw: object) -> Settings:
    return dataclasses.replace(Settings(), **kw)


@contextlib.asynccontextmanager
async def serving(app: Any, ssl_context: Any = None) -> AsyncIterator[int]:
    """``app`` (an aiohttp Application) served on 127.0.0.1 at a free port, the port yielded."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    try:
        yield port
    finally:
        await runner.cleanup()


def test_scopes_exact_prefix_and_write_implies_read() -> None:
    p = Principal("t", read=["tenant-a/*", "shared"], write=["tenant-a/w/*"])
    assert p.may("tenant-a/x", writes=False) and not p.may("tenant-a/x", writes=True)
    assert p.may("tenant-a/w/1", writes=True) and p.may("tenant-a/w/1", writes=False)
    assert p.may("shared", writes=False) and not p.may("shared-2", writes=False)
    assert not p.may("tenant-ab", writes=False) and not p.may("tenant-b/x", writes=False)
    assert Principal("all", read=["*"]).may("anything", writes=False)


@pytest.mark.parametrize("text,words", [
    ("tokens: {}", "tokens` list"),
    ("tokens: [{sha256: abc}]", "64 hex digits"),
    ("tokens: [{sha256: " + "a" * 64 + ", read: [a*b]}]", "only at its end"),
    ("tokens: [{sha256: " + "a" * 64 + ", write: 5}]", "list of session_key patterns"),
    ("tokens: [{sha256: " + "a" * 64 + ", peer: yes-please}]", "peer must be"),
    # a typo or a wish passed silently as a token without it (an outside trial's `admin: true`)
    ("tokens: [{sha256: " + "a" * 64 + ", wirte: ['*']}]", r"tokens\[0\]: unknown key 'wirte' \(an entry has name, "),
    ("tokens: [{sha256: " + "a" * 64 + ", admin: true}]", "unknown key 'admin'"),
    ("tokens: []\npeers: [{sha256: " + "a" * 64 + "}]", "unknown key 'peers' beside `tokens`"),
])
def test_a_bad_tokens_file_names_the_entry(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_tokens(text)


def test_lookup_by_hash_and_reload_keeps_old_tokens_on_a_bad_file(tmp_path, caplog) -> None:
    t1, t2 = new_token(), new_token()
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens: [{{name: one, sha256: {hash_token(t1)}, read: ['a']}}]")
    store = TokenStore(path)
    assert store.lookup(t1).name == "one" and store.lookup(t2) is None and store.lookup("") is None
    assert t1 not in path.read_text()  # only the hash is stored
    path.write_text("tokens: [{sha256: nope}]")
    store._checked = 0.0
    with caplog.at_level(logging.ERROR):
        assert store.lookup(t1).name == "one"  # a broken file keeps the previous tokens
    assert "not reloaded" in caplog.text and t1 not in caplog.text
    path.write_text(f"tokens: [{{name: two, sha256: {hash_token(t2)}}}]")
    store._checked = 0.0
    assert store.lookup(t2).name == "two" and store.lookup(t1) is None
    path.write_text("tokens: []")  # every client refused from now on: said at WARNING, not INFO
    store._checked = 0.0
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert store.lookup(t2) is None
    assert "now lists no tokens" in caplog.text


def test_modes(tmp_path, caplog) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens: [{{sha256: {hash_token('x')}}}]")
    # a public address without tokens refuses to start ...
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0 without tokens"):
        Authenticator(settings(web_bind="0.0.0.0"))
    # ... unless told explicitly, and then says so
    with caplog.at_level(logging.WARNING):
        assert not Authenticator(settings(web_bind="0.0.0.0", auth="off")).enabled
    assert "authentication is OFF" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        loopback = Authenticator(settings(web_host="127.0.0.1"))
    assert not loopback.enabled and "loopback" in caplog.text
    assert loopback.authenticate(None).everything
    with pytest.raises(ConfigError, match="needs LEARNSTREAM_AUTH_TOKENS_FILE"):
        Authenticator(settings(auth="tokens"))
    with pytest.raises(ConfigError, match="LEARNSTREAM_AUTH_TOKENS_FILE"):
        Authenticator(settings(auth_tokens_file=tmp_path / "missing.yaml"))
    a = Authenticator(settings(web_bind="0.0.0.0", auth_tokens_file=path))
    assert a.enabled and a.authenticate("Bearer x") is not None
    empty = tmp_path / "empty.yaml"
    empty.write_text("tokens: []")
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # every token-bearing request refused: said at start, not silent
        assert Authenticator(settings(web_bind="0.0.0.0", auth_tokens_file=empty)).authenticate("Bearer x") is None
    assert "lists no tokens" in caplog.text
    # the worker's own peer token must be a peer entry of the tokens file, else every forward is refused
    peer_file = tmp_path / "peer.txt"
    for i, (entry, said) in enumerate(((f"{{sha256: {hash_token('q')}}}", "is not in the tokens file"),
                                       (f"{{sha256: {hash_token('p')}}}", "is not a peer: true entry"),
                                       (f"{{sha256: {hash_token('p')}, peer: true}}", None))):
        tokens = tmp_path / f"t{i}.yaml"
        tokens.write_text(f"tokens: [{{sha256: {hash_token('x')}}}, {entry}]")
        peer_file.write_text("p\n")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            Authenticator(settings(web_bind="0.0.0.0", auth_tokens_file=tokens, peer_token_file=peer_file))
        assert (said in caplog.text) if said else "LEARNSTREAM_PEER_TOKEN_FILE" not in caplog.text, caplog.text
    # an empty peer token file, beside an empty tokens file: both said, in one record (WARNINGs of one call
    # site are rate-limited: the second was lost)
    peer_file.write_text("\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Authenticator(settings(web_bind="0.0.0.0", auth_tokens_file=empty, peer_token_file=peer_file))
    assert len(caplog.records) == 1 and "lists no tokens" in caplog.text and "is empty" in caplog.text, caplog.text
    for header in (None, "", "Bearer", "Bearer y", "Basic x", "x"):
        assert a.authenticate(header) is None, header
    # a peer token file that cannot be read is said at start (it was an ERROR at the first forward), not
    # refused: a worker alone never forwards; quiet, the warning waits for warn()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        q = Authenticator(settings(auth_tokens_file=path, peer_token_file=tmp_path / "peer"), quiet=True)
        assert q.enabled and caplog.text == ""
        q.warn()
    assert f"LEARNSTREAM_PEER_TOKEN_FILE={tmp_path / 'peer'}: cannot be read (No such file or directory): " \
           "requests for sessions another worker owns cannot be forwarded" in caplog.text


def test_settings_from_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LEARNSTREAM_AUTH", "tokens")
    monkeypatch.setenv("LEARNSTREAM_AUTH_TOKENS_FILE", str(tmp_path / "t.yaml"))
    monkeypatch.setenv("LEARNSTREAM_METRICS_PUBLIC", "false")
    monkeypatch.setenv("LEARNSTREAM_SCORING_ENDPOINTS", "http://a:1/v1/, https://b/v1")
    s = Settings.from_env()
    assert s.auth == "tokens" and s.auth_tokens_file == tmp_path / "t.yaml" and not s.metrics_public
    assert s.scoring_endpoints == ("http://a:1/v1", "https://b/v1")
    env = s.env()
    assert env["LEARNSTREAM_AUTH_TOKENS_FILE"] == str(tmp_path / "t.yaml") and env["LEARNSTREAM_AUTH"] == "tokens"
    monkeypatch.setenv("LEARNSTREAM_AUTH", "maybe")
    with pytest.raises(ConfigError, match="LEARNSTREAM_AUTH"):
        Settings.from_env()
    monkeypatch.setenv("LEARNSTREAM_AUTH", "off")
    monkeypatch.setenv("LEARNSTREAM_TLS_CERTFILE", "/c.pem")
    with pytest.raises(ConfigError, match="go together"):
        Settings.from_env()


def test_json_depth() -> None:
    assert json_depth({"a": [1, {"b": 2}]}, 3) and not json_depth({"a": [1, {"b": 2}]}, 2)
    assert json_depth(5, 1) and json_depth([], 1) and not json_depth([[[]]], 2)
    deep: list = []
    for _ in range(100_000):  # no recursion: a very deep value is measured, not a RecursionError
        deep = [deep]
    assert not json_depth(deep, 32)


def test_metrics_open_or_closed() -> None:
    assert Guard(settings()).is_open("/metrics") and Guard(settings()).is_open("/metrics/faust")
    closed = Guard(settings(metrics_public=False))
    assert not closed.is_open("/metrics") and closed.is_open("/health") and closed.is_open("/ready")
    assert not closed.is_open("/metricsx") and not closed.is_open("/dispatch")


def test_forwarding_to_an_owner_that_is_down_answers_503_with_retry_after() -> None:
    guard = Guard(settings(forward_timeout_s=5.0))

    async def go() -> tuple[int, str | None, bytes]:
        async with aiohttp.ClientSession() as http:
            r = await guard.forward(http, f"http://127.0.0.1:{free_port()}", {"verb": "route", "body": {}}, "route")
            return r.status, r.headers.get("Retry-After"), r.body

    status, retry, body = asyncio.run(go())
    assert status == 503 and retry == "1" and b"cannot be reached" in body


def test_a_forward_to_an_owner_that_stopped_answering_ends_when_the_session_has_another_owner() -> None:
    """An outside trial: a forward to an owner that was stopped (SIGSTOP) waited out the forward timeout (36 s)
    though the group had moved its partitions to another worker long before."""
    import time

    from aiohttp import web

    guard = Guard(settings(forward_timeout_s=30.0))
    t0 = time.monotonic()

    async def go(moved_after: float) -> tuple[int, str | None, bytes, float]:
        release = asyncio.Event()

        async def silent(request: web.Request) -> web.Response:  # answers only once the test is done
            await release.wait()
            return web.json_response({})

        app = web.Application()
        app.router.add_post("/dispatch", silent)
        async with serving(app) as port:
            try:
                async with aiohttp.ClientSession() as http:
                    start = time.monotonic()
                    r = await guard.forward(http, f"http://127.0.0.1:{port}", {"verb": "route", "body": {}}, "route",
                                            moved=lambda: time.monotonic() > start + moved_after)
                    return r.status, r.headers.get("Retry-After"), r.body, time.monotonic() - start
            finally:
                release.set()

    status, retry, body, took = asyncio.run(go(1.5))
    assert status == 503 and retry == "1" and b"owner changed" in body and took < 4, (status, body, took)
    assert time.monotonic() - t0 < 10


def test_forwarding_while_the_worker_stops_answers_503_not_500() -> None:
    """During a graceful stop the worker's client session closes before its web server: aiohttp raised
    RuntimeError("Session is closed") and the request got a plain-text 500 (an outside trial)."""
    guard = Guard(settings())

    async def go() -> tuple[int, str | None, bytes]:
        http = aiohttp.ClientSession()
        await http.close()
        r = await guard.forward(http, f"http://127.0.0.1:{free_port()}", {"verb": "route", "body": {}}, "route")
        return r.status, r.headers.get("Retry-After"), r.body

    status, retry, body = asyncio.run(go())
    assert status == 503 and retry == "1" and b"stopping" in body


def test_forwarding_verifies_the_owners_certificate(tmp_path) -> None:
    """An owner whose certificate the CA file does not vouch for gets no request (503), a trusted one does."""
    import ssl

    import trustme
    from aiohttp import web

    ours, theirs = trustme.CA(), trustme.CA()
    ours.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ours.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "me.pem"))
    s = settings(tls_certfile=tmp_path / "me.pem", tls_keyfile=tmp_path / "me.pem", tls_cafile=tmp_path / "ca.pem")
    guard = Guard(s)
    seen: list[str] = []

    async def dispatch(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"ok": True, "verb": "route"})

    async def go(ca: trustme.CA) -> int:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
        app = web.Application()
        app.router.add_post("/dispatch", dispatch)
        async with serving(app, server_ctx) as port, aiohttp.ClientSession() as http:
            r = await guard.forward(http, f"https://127.0.0.1:{port}", {"verb": "route", "body": {}}, "route")
            return r.status

    assert asyncio.run(go(theirs)) == 503 and seen == []
    assert asyncio.run(go(ours)) == 200 and len(seen) == 1


def test_a_tls_worker_sends_nothing_to_an_owner_that_advertises_plain_http(tmp_path, monkeypatch) -> None:
    """An outside trial: a member started without TLS joined a TLS cluster's group, took partitions, and got
    every forwarded request with the peer token in cleartext, its made-up answer passed back to the client."""
    import trustme
    from aiohttp import web

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "me.pem"))
    peer = tmp_path / "peer.txt"
    peer.write_text("lst_peer_secret\n")
    s = settings(tls_certfile=tmp_path / "me.pem", tls_keyfile=tmp_path / "me.pem", tls_cafile=tmp_path / "ca.pem",
                 peer_token_file=peer)
    seen: list[str] = []

    async def dispatch(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"ok": True, "verb": "health", "data": {"captured": True}})

    async def go(guard: Guard) -> tuple[int, bytes]:
        app = web.Application()
        app.router.add_post("/dispatch", dispatch)
        async with serving(app) as port, aiohttp.ClientSession() as http:
            r = await guard.forward(http, f"http://127.0.0.1:{port}", {"verb": "health", "body": {}}, "health")
            return r.status, r.body

    status, body = asyncio.run(go(Guard(s)))
    assert status == 503 and b"serves no TLS" in body and seen == []
    # a plain-HTTP worker forwards over plain HTTP, as it serves
    assert asyncio.run(go(Guard(settings(peer_token_file=peer))))[0] == 200 and len(seen) == 1


def test_only_the_forwarded_header_a_worker_sends_counts() -> None:
    """``X-Learnstream-Forwarded: 0`` (any value) had counted as forwarded."""
    from aiohttp.test_utils import make_mocked_request

    from workers.stream.http_guard import forwarded

    for value, want in (("1", True), ("0", False), ("true", False), ("", False)):
        assert forwarded(make_mocked_request("POST", "/dispatch", headers={"X-Learnstream-Forwarded": value})) is want
    assert not forwarded(make_mocked_request("POST", "/dispatch"))


def test_learnstream_token_prints_a_token_and_its_entry(capsys) -> None:
    from workers.cli.main import main

    assert main(["token", "--name", "tenant-a", "--write", "tenant-a/*", "--read", "shared"]) == 0
    out, err = capsys.readouterr()
    token = err.strip().rsplit(": ", 1)[1]
    ((h, p),) = parse_tokens(out)
    assert h == hash_token(token) and token not in out
    assert (p.name, p.read, p.write, p.peer) == ("tenant-a", ("shared",), ("tenant-a/*",), False)
    assert main(["token", "--name", "workers", "--peer"]) == 0
    assert parse_tokens(capsys.readouterr().out)[0][1].peer


def test_learnstream_token_add_to_builds_one_valid_tokens_file(tmp_path, capsys) -> None:
    """--add-to appends each new entry to one file a worker reads (printing entries and concatenating
    them made several `tokens:` documents); a name already there, or a file a worker would refuse, is
    refused and the file is left as it was."""
    from workers.cli.main import main

    path = tmp_path / "tokens.yaml"
    tokens = []
    for args in (["--name", "agents", "--write", "agent-*"], ["--name", "reader", "--read", "agent-1"],
                 ["--name", "workers", "--peer"]):
        assert main(["token", *args, "--add-to", str(path)]) == 0
        out, err = capsys.readouterr()
        assert out == "" and "sha256" not in err
        tokens.append(err.strip().rsplit(": ", 1)[1])
    entries = parse_tokens(path.read_text())
    assert [p.name for _, p in entries] == ["agents", "reader", "workers"]
    assert [h for h, _ in entries] == [hash_token(t) for t in tokens] and not any(t in path.read_text() for t in tokens)
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.read_text()
    assert main(["token", "--name", "reader", "--read", "x", "--add-to", str(path)]) == 2
    assert "a token named 'reader' is already there" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokens: [{name: x, sha256: not-a-hash}]\n")
    assert main(["token", "--name", "y", "--read", "x", "--add-to", str(bad)]) == 2
    assert "sha256 must be 64 hex digits" in capsys.readouterr().err
    assert path.read_text() == before and bad.read_text() == "tokens: [{name: x, sha256: not-a-hash}]\n"
    store = TokenStore(path)
    assert store.lookup(tokens[1]).name == "reader"


def test_a_denied_request_is_logged_by_its_route_never_its_path_or_session(tmp_path, caplog) -> None:
    """An outside trial: a token put in the URL path (/graph/<token>/edges, /dispatch/<token>) or used as a
    session key was logged whole by these WARNINGs."""
    import yaml
    from aiohttp import web

    secret, scoped = new_token(), new_token()
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"tokens": [{"name": "tenant-a", "sha256": hash_token(scoped),
                                                "write": ["tenant-a/*"]}]}))
    guard = Guard(settings(auth_tokens_file=path))

    async def edges(request: web.Request) -> web.Response:
        denied = guard.deny(request, "query_at", request.match_info["session"], False)
        return denied or web.json_response({"ok": True})

    async def go() -> list[int]:
        app = web.Application(middlewares=[guard.middleware])
        app.router.add_get("/graph/{session}/edges", edges)
        async with serving(app) as port, aiohttp.ClientSession() as http:
            out = []
            for token in (secret, scoped):  # a 401 (unknown token), then a 403 (out of its scopes)
                async with http.get(f"http://127.0.0.1:{port}/graph/{secret}/edges",
                                    headers={"Authorization": f"Bearer {token}"}) as r:
                    out.append(r.status)
            return out

    with caplog.at_level(logging.WARNING, logger="workers.stream.http_guard"):
        assert asyncio.run(go()) == [401, 403]
    logged = [r.getMessage() for r in caplog.records if r.name == "workers.stream.http_guard"]
    assert len(logged) == 2 and all("GET /graph/{session}/edges" in m for m in logged), logged
    assert not any(secret[4:] in m for m in logged), logged


def test_raw_request_bytes_aiohttp_quotes_are_not_logged(caplog) -> None:
    """An outside trial: a folded Authorization header (`Bearer\\r\\n <token>`), a token in another header
    with a control character, a header line over 8190 bytes: aiohttp logs the raw bytes it could not parse,
    and no pattern can tell a token in them. Those bytes are not logged, only their length."""
    from workers.stream.logs import Secrets

    token = new_token()[4:]  # without its lst_ prefix, as the trial's plain tokens were
    log, secrets = logging.getLogger("aiohttp.server.test"), Secrets()
    log.addFilter(secrets)
    try:
        with caplog.at_level(logging.ERROR, logger="aiohttp.server.test"):
            log.error("Error handling request: Unexpected whitespace after header value:\n  b' %s'\n    ^", token)
            logging.getLogger("workers.test").error("kept as is: b'%s'", "not aiohttp")
    finally:
        log.removeFilter(secrets)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert token not in text and "characters redacted" in text and "kept as is: b'not aiohttp'" in text


def test_a_tls_connection_that_never_says_hello_is_closed_in_the_header_timeout(tmp_path) -> None:
    """An outside trial: a TCP connection to a TLS worker that sent nothing was held for asyncio's 60 s
    handshake timeout, past LEARNSTREAM_HTTP_HEADER_TIMEOUT_S."""
    import asyncio.constants
    import socket
    import time

    import trustme
    from aiohttp import web

    from workers.stream.http_guard import web_options

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "me.pem"))
    guard = Guard(settings(tls_certfile=tmp_path / "me.pem", tls_keyfile=tmp_path / "me.pem", http_header_timeout_s=1.0))
    before = asyncio.constants.SSL_HANDSHAKE_TIMEOUT
    try:
        web_options(guard)

        async def go() -> float:
            async with serving(web.Application(), guard.server_ssl) as port:
                sock = socket.create_connection(("127.0.0.1", port))
                sock.setblocking(False)
                t0 = time.monotonic()
                loop = asyncio.get_running_loop()
                assert await asyncio.wait_for(loop.sock_recv(sock, 1), 10) == b""  # closed by the server
                sock.close()
                return time.monotonic() - t0

        assert asyncio.run(go()) < 4
    finally:
        asyncio.constants.SSL_HANDSHAKE_TIMEOUT = before
