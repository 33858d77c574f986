from __future__ import annotations

import asyncio

import pytest

from workers.client import LearnstreamClient
from workers.errors import ValidationError


def test_client_validates_before_sending() -> None:
    c = LearnstreamClient("127.0.0.1:1")  # never started: validation must fail first
    with pytest.raises(ValidationError, match="quality"):
        asyncio.run(c.feedback("s", [0.1, 0.2], model="m", quality=1.5))
    with pytest.raises(ValidationError):
        asyncio.run(c.insert_edge("s", {"id": "a,b", "src": "x", "dst": "y", "valid_at": 1, "created_at": 1}))


def test_a_non_finite_embedding_fails_in_the_agent_not_in_the_dlq() -> None:
    """base64 is beyond what the topic schema can check, and JSON would carry a NaN as null: the client
    checks the embedding itself before anything is sent."""
    import numpy as np

    c = LearnstreamClient("127.0.0.1:1")  # never started: the check must come first
    for emb in (np.array([np.nan, 1.0], np.float32), np.array([1.0, np.inf]), [1.0, float("nan")]):
        with pytest.raises(ValidationError, match="embedding: must be finite"):
            asyncio.run(c.feedback("s", emb, model="m", quality=0.5))
        with pytest.raises(ValidationError, match="embedding: must be finite"):
            asyncio.run(c.feedback_batch("s", [{"embedding": emb, "model": "m", "quality": 0.5}]))


def test_a_non_finite_quality_loss_or_gradient_fails_in_the_agent() -> None:
    """An outside trial: ``feedback(quality=nan)`` was sent (orjson writes NaN as null) and dead-lettered as
    ``payload.quality required``."""
    c = LearnstreamClient("127.0.0.1:1")
    with pytest.raises(ValidationError, match="quality: must be finite"):
        asyncio.run(c.feedback("s", [0.1, 0.2], model="m", quality=float("nan")))
    with pytest.raises(ValidationError, match="loss: must be finite"):
        asyncio.run(c.loss("s", float("inf")))
    with pytest.raises(ValidationError, match="grads: must be finite"):
        asyncio.run(c.gradients("s", "p", [1.0], [float("nan")]))


def test_the_sdk_refuses_booleans_strings_and_nulls_where_the_schemas_want_numbers() -> None:
    """An outside trial: ``loss(sk, True)`` was applied as 1.0 and ``loss(sk, "0.5")`` as 0.5 (``float()``),
    where HTTP and the topic refuse them; ``loss(sk, None)`` raised a bare TypeError; a NaN in a raw
    ``apply()`` body was sent as null and came back as "loss required"; ``gradients`` had no ``now_ms``."""
    import numpy as np

    from workers.errors import VerbError

    c = LearnstreamClient("127.0.0.1:1", worker_url="http://127.0.0.1:1")  # never started: checks come first
    for bad in (True, "0.5", None, np.bool_(True)):
        with pytest.raises(ValidationError, match="loss: must be a number"):
            asyncio.run(c.loss("s", bad))  # type: ignore[arg-type]
    for params in ([True, False], ["0.1"], [None], np.array([True]), "abc", 5):
        with pytest.raises(ValidationError, match="params: must be an array of numbers"):
            asyncio.run(c.gradients("s", "p", params, [0.1]))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="quality: must be a number"):
        asyncio.run(c.feedback("s", [0.1, 0.2], model="m", quality="0.9"))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not started"):  # numbers of any NumPy kind pass, now_ms too
        asyncio.run(c.gradients("s", "p", np.array([1, 2], np.int32), [np.float32(0.1), 2], now_ms=5))
    with pytest.raises(VerbError, match=r"parse: the body is not JSON \(NaN and infinities have no JSON form\)"):
        asyncio.run(c.apply("s", "record_loss", {"loss": float("nan")}))
    with pytest.raises(VerbError, match="NaN and infinities"):
        asyncio.run(c.apply("s", "consolidate", {"param_id": "p", "params": np.array([np.inf]), "grads": [0.0]}))


def test_examples_features_and_labels_are_checked_in_the_agent() -> None:
    """``int(label)`` took 1.7 and True as 1; a 2-D array for one example was flattened; float64 features past
    float32's range became infinities the worker dead-lettered."""
    import numpy as np

    c = LearnstreamClient("127.0.0.1:1")  # never started: every check comes first
    for label in (1.7, True, "1", None, np.bool_(False), float("nan"), -1, 2**70, 1e300):
        with pytest.raises(ValidationError, match="label: must be a class index"):
            asyncio.run(c.example("s", [0.1, 0.2], label))  # type: ignore[arg-type]
    for features in (np.zeros((2, 2), np.float32), np.array([], np.float32)):
        with pytest.raises(ValidationError, match="features: must be one non-empty vector"):
            asyncio.run(c.example("s", features, 1))
    with pytest.raises(ValidationError, match="features: must not be empty"):
        asyncio.run(c.example("s", [], 1))
    for big in (np.array([[1e39, 0.0]]), [[1e39, 0.0]]):  # beyond float32: the worker's infinity
        with pytest.raises(ValidationError, match="features: must be finite as float32"):
            asyncio.run(c.examples("s", big, [0]))
    with pytest.raises(ValidationError, match="2 feature vectors but 1 labels"):
        asyncio.run(c.examples("s", np.ones((2, 3)), [0]))
    with pytest.raises(ValidationError, match="features: must be an array of numbers"):
        asyncio.run(c.example("s", [0.1, True], 0))
    with pytest.raises(RuntimeError, match="not started"):  # good ones pass every check
        asyncio.run(c.examples("s", np.ones((3, 4), np.float64), np.array([0.0, 1.0, 2.0])))


def test_an_unknown_role_is_a_validation_error_naming_the_roles() -> None:
    c = LearnstreamClient("127.0.0.1:1")
    with pytest.raises(ValidationError, match="'nosuch' is not an input topic's role .*'feedback'"):
        asyncio.run(c.send("nosuch", "s", {}))


def test_a_worker_that_never_answers_does_not_hold_apply_past_its_deadline() -> None:
    """An outside trial stopped a worker (SIGSTOP): the connection is accepted and nothing is answered, and
    ``apply(..., apply_deadline_s=5)`` was still waiting after 45 s (aiohttp's default: 5 minutes an attempt).
    A stand-in socket that accepts and never answers: the write gives up with its key near the deadline."""
    import time

    from workers.client import WriteNotConfirmed

    async def go() -> float:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(3600)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        t0 = time.monotonic()
        try:
            async with LearnstreamClient(worker_url=f"http://127.0.0.1:{port}", apply_deadline_s=1.5) as c:
                with pytest.raises(WriteNotConfirmed, match="k-stuck"):
                    await c.apply("s", "add_knowledge", {"agent": "a", "domain": "d", "fact": "f"},
                                  idempotency_key="k-stuck")
        finally:
            server.close()
        return time.monotonic() - t0

    assert asyncio.run(go()) < 10  # the deadline and one short last attempt, not minutes


def test_apply_takes_writes_and_read_takes_reads() -> None:
    """``apply`` with a read failed with a bare KeyError ('id'); ``read`` with a write applied it, and retried
    it without an idempotency key. Both say which to use, before anything is sent."""
    from workers.errors import VerbError

    c = LearnstreamClient(worker_url="http://127.0.0.1:1")  # never started: the check comes first
    with pytest.raises(VerbError, match=r"health is a read: use read\(\)"):
        asyncio.run(c.apply("s", "health", {}))
    with pytest.raises(VerbError, match=r"reset_adapter is a write: use apply\(\)"):
        asyncio.run(c.read("s", "reset_adapter", {}))


def test_a_worker_url_without_a_scheme_is_refused_when_the_client_is_made() -> None:
    """``worker_url="127.0.0.1:6066"`` used to fail at the first call (and, behind MCP, at every call)."""
    from workers.errors import ConfigError

    with pytest.raises(ConfigError, match="worker_url wants a worker's base URL"):
        LearnstreamClient(worker_url="127.0.0.1:6066")
    assert LearnstreamClient(worker_url="https://w.example:6066/").worker_url == "https://w.example:6066"


def test_unstarted_client_says_how_to_start() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(LearnstreamClient("127.0.0.1:1").loss("s", 0.5))


# -- write-and-wait over HTTP (issue 15) --------------------------------------------------------
def test_apply_gives_up_with_the_key_to_retry_when_no_worker_answers() -> None:
    from workers.local import free_port
    from workers.client import WriteNotConfirmed

    async def go() -> None:
        async with LearnstreamClient(worker_url=f"http://127.0.0.1:{free_port()}", apply_deadline_s=0.5) as c:
            with pytest.raises(WriteNotConfirmed, match="retry with idempotency_key='k-1'") as e:
                await c.apply("s", "add_knowledge", {"agent": "a", "domain": "d", "fact": "f"}, idempotency_key="k-1")
            assert e.value.idempotency_key == "k-1" and "worker unreachable" in str(e.value)
            with pytest.raises(RuntimeError, match="no Kafka bootstrap"):
                await c.loss("s", 0.5)

    asyncio.run(go())


def test_apply_sends_the_token_and_key_and_retries_busy_answers_with_the_same_key() -> None:
    """A stand-in for a worker's /dispatch (worker auth is not ours to test here): 503, then 429 (the
    worker's in-flight limit), then applied."""
    import orjson
    from aiohttp import web

    seen: list[tuple[str | None, dict]] = []

    async def dispatch(request: web.Request) -> web.Response:
        req = orjson.loads(await request.read())
        seen.append((request.headers.get("Authorization"), req))
        if len(seen) == 1:
            return web.json_response({"ok": False, "verb": req["verb"], "error": "rebalancing; retry"}, status=503)
        if len(seen) == 2:
            return web.json_response({"ok": False, "error": "too many requests in flight"}, status=429,
                                     headers={"Retry-After": "1"})
        if req["body"].get("fact") == "":
            return web.json_response({"ok": False, "verb": req["verb"], "error": "fact required"}, status=422)
        return web.json_response({"id": "learn.commands:3:7", "ok": True, "verb": req["verb"], "data": {"n": 1}})

    async def go() -> None:
        app = web.Application()
        app.router.add_post("/dispatch", dispatch)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with LearnstreamClient(worker_url=f"http://127.0.0.1:{port}", token="t0k") as c:
                done = await c.apply("s1", "add_knowledge", {"agent": "a", "domain": "d", "fact": "f"})
                assert (done.id, done.data, done.duplicate) == ("learn.commands:3:7", {"n": 1}, False)
                with pytest.raises(VerbError, match="^fact required$"):
                    await c.apply("s1", "add_knowledge", {"agent": "a", "domain": "d", "fact": ""})
        finally:
            await runner.cleanup()
        assert [h for h, _ in seen] == ["Bearer t0k"] * 4
        (_, a), (_, b), (_, c) = seen[:3]
        assert a == b == c and a["body"]["idempotency_key"] == done.idempotency_key and a["body"]["session_key"] == "s1"

    from workers.errors import VerbError
    asyncio.run(go())


def test_sync_client_can_be_http_only_and_says_what_is_missing() -> None:
    from workers.local import free_port
    from workers.client import SyncClient, WriteNotConfirmed

    with SyncClient(worker_url=f"http://127.0.0.1:{free_port()}", apply_deadline_s=0.3) as c:
        with pytest.raises(WriteNotConfirmed):
            c.apply("s", "mark_used", {"ids": ["x"]}, idempotency_key="k")
        with pytest.raises(RuntimeError, match="no Kafka bootstrap"):
            c.loss("s", 0.5)
