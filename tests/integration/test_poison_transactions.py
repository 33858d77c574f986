"""Poison input through the transactional path (issue 11 point 4 with LEARNSTREAM_TRANSACTIONS=true).

A real worker, real broker, one batch holding a kernel failure (injected into the worker process by a
``sitecustomize`` on its PYTHONPATH: a real exception raised inside the verb after it changed state),
``now_ms`` >= 2**63, a value too big for a whole DLQ entry, a keyless and a non-UTF-8-keyed event,
between good events. Each bad one must be dead-lettered once (read ``read_committed``: the
transaction holding it committed, it did not abort and loop), the good ones applied exactly once, and
a worker rebuilt from the changelogs alone must hold the same state.
"""
from __future__ import annotations

import asyncio
import functools
import base64
import hashlib
import textwrap
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.helpers import read_topic, wait_until
from workers.stream.processor import DLQ_MAX_BYTES
from workers.verbs.codec import encode_embedding_b64
from workers.verbs.session import LearnSession

pytestmark = pytest.mark.integration

FB, LOSS = "fb-1", "loss-1"
MODELS = ["a", "b", "c"]
INIT = [("init_instant", {"session_key": FB, "targets": MODELS, "dim": 8}),
        ("init_router", {"session_key": FB, "targets": MODELS, "in_dim": 8, "threshold": 50})]
POISON_LOSS = 13.0  # record_loss raises after changing the session, in the worker (see _FAULT)

_FAULT = textwrap.dedent(f"""
    import dataclasses
    from workers.verbs.surface import REGISTRY

    _v = REGISTRY["record_loss"]
    _real = _v.fn

    def _flaky(ctx, body):
        out = _real(ctx, body)
        if body["loss"] == {POISON_LOSS}:
            raise ZeroDivisionError("injected after the state changed")
        return out

    REGISTRY["record_loss"] = dataclasses.replace(_v, fn=_flaky)
""")


def _feedback(i: int, now_ms: int) -> dict:
    x = np.random.default_rng(i).standard_normal(8).astype(np.float32)
    return {"session_key": FB, "embedding_b64": encode_embedding_b64(x), "model": MODELS[i % 3],
            "quality": 0.3 + 0.05 * (i % 10), "relation": "entity", "now_ms": now_ms}


def _produce(bootstrap: str, records: list[tuple[str, bytes | None, bytes]]) -> None:
    async def go() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024, linger_ms=50)
        await p.start()
        try:
            # the bad events sit between good ones on the owners' partitions (keyless ones land anywhere)
            futs = [await p.send(t, v, key=k, partition=0 if k is None else None) for t, k, v in records]
            await asyncio.gather(*futs)
        finally:
            await p.stop()
    asyncio.run(go())


def _read_committed(bootstrap: str, topic: str, timeout: float = 10) -> list[dict]:
    return read_topic(bootstrap, topic, None, timeout, isolation_level="read_committed")


def _in_process(good_fb: list[dict], good_losses: list[float]) -> tuple[dict, dict]:
    s = LearnSession()
    for v, b in INIT:
        assert s.dispatch({"verb": v, "body": b})["ok"]
    for v in good_fb:
        assert s.dispatch({"verb": "learn_feedback", "body": v})["ok"]
    for x in good_losses:
        assert s.dispatch({"verb": "record_loss", "body": {"session_key": LOSS, "loss": x}})["ok"]
    return tuple(s.dispatch({"verb": "session_info", "body": {"session_key": k}})["data"]["parts"]  # type: ignore
                 for k in (FB, LOSS))


def test_poison_events_are_dead_lettered_once_and_the_rest_of_the_transaction_commits(
        broker, worker_factory, tmp_path: Path) -> None:
    fault = tmp_path / "fault"
    fault.mkdir()
    (fault / "sitecustomize.py").write_text(_FAULT)
    env = {"LEARNSTREAM_TRANSACTIONS": "true", "PYTHONPATH": str(fault)}
    w = worker_factory("a", env=env).start().wait_ready()
    for verb, body in INIT:
        out = w.dispatch(verb, body)
        assert out["ok"], out

    good_fb = [_feedback(i, 1000 * (i + 1)) for i in range(6)]
    overflow = _feedback(90, 2 ** 63)
    huge = orjson.dumps({"session_key": FB, "embedding": [0.125] * 120_000, "model": "a", "quality": 0.5})
    assert len(huge) * 4 // 3 > DLQ_MAX_BYTES  # whole, its base64 would not fit a DLQ entry
    losses = [0.5, 0.6, POISON_LOSS, 0.4, 0.5]
    fb_key, loss_key = FB.encode(), LOSS.encode()
    records = [("learn.feedback", fb_key, orjson.dumps(v)) for v in good_fb[:3]]
    records += [("learn.feedback", fb_key, orjson.dumps(overflow)), ("learn.feedback", fb_key, huge)]
    records += [("learn.feedback", fb_key, orjson.dumps(v)) for v in good_fb[3:]]
    records += [("learn.loss", loss_key, orjson.dumps({"session_key": LOSS, "loss": x})) for x in losses[:3]]
    records += [("learn.loss", None, orjson.dumps({"session_key": LOSS, "loss": 0.7})),
                ("learn.loss", b"\xff\xfe", orjson.dumps({"session_key": LOSS, "loss": 0.8}))]
    records += [("learn.loss", loss_key, orjson.dumps({"session_key": LOSS, "loss": x})) for x in losses[3:]]
    _produce(broker.bootstrap, records)

    want_fb, want_loss = _in_process(good_fb, [x for x in losses if x != POISON_LOSS])

    def parts(worker, sk: str) -> dict:
        out = worker.dispatch("session_info", {"session_key": sk})
        return out["data"]["parts"] if out.get("ok") else {}

    wait_until(lambda: parts(w, FB) == want_fb and parts(w, LOSS) == want_loss, 90,
               what="every good event applied")
    # each bad event dead-lettered exactly once, in a committed transaction (an aborted, retried one
    # would show nothing here, or a copy per retry)
    wait_until(lambda: len(_read_committed(broker.bootstrap, "learn.dlq", 3)) >= 5, 60, what="5 DLQ entries")
    dlq = _read_committed(broker.bootstrap, "learn.dlq")
    assert len(dlq) == 5, [(d["reason_code"], d["reason"][:80]) for d in dlq]
    assert len({d["id"] for d in dlq}) == 5
    by_value = {base64.b64decode(d["value_b64"])[:64]: d for d in dlq}
    internal = by_value[orjson.dumps({"session_key": LOSS, "loss": POISON_LOSS})[:64]]
    assert internal["reason_code"] == "internal"
    assert internal["reason"] == "ZeroDivisionError: injected after the state changed"
    assert by_value[orjson.dumps(overflow)[:64]]["reason_code"] in ("internal", "refused", "invalid")  # the schema checks now_ms first
    cut = by_value[huge[:64]]
    assert cut["truncated"] is True and cut["value_bytes"] == len(huge)
    assert cut["value_sha256"] == hashlib.sha256(huge).hexdigest()
    assert cut["source"]["topic"] == "learn.feedback" and cut["reason"]
    keys = sorted((d["key_b64"] or "") for d in dlq if d["reason_code"] == "bad_key")
    assert keys == sorted(["", base64.b64encode(b"\xff\xfe").decode()])
    assert w.metric("learnstream_dlq_total", reason="internal") >= 1

    # the committed changelog alone rebuilds the same state (nothing of an aborted attempt in it)
    w.stop()
    fresh = worker_factory("b", env=env).start().wait_ready()
    wait_until(lambda: parts(fresh, FB) == want_fb and parts(fresh, LOSS) == want_loss, 90,
               what="the state rebuilt from the changelogs")
    assert len(_read_committed(broker.bootstrap, "learn.dlq", 3)) == 5  # the restart re-emitted nothing


def test_an_event_too_big_to_re_route_is_dead_lettered_not_retried_forever(broker, worker_factory) -> None:
    """An event on a partition that does not own its key is re-written to the owner inside the
    batch's transaction; a copy bigger than the producer's request limit would fail that
    transaction on every retry (the input partition stuck for good). It goes to the DLQ instead."""
    from workers.stream.partitioning import owner_partition

    w = worker_factory("a", env={"LEARNSTREAM_TRANSACTIONS": "true"}).start().wait_ready()
    here = next(f"s{i}" for i in range(100) if owner_partition(f"s{i}", 4) == 0)
    elsewhere = next(f"s{i}" for i in range(100) if owner_partition(f"s{i}", 4) == 1)
    pad = 1_000_000 - len(orjson.dumps({"session_key": elsewhere, "loss": 0.5, "pad": ""}))
    big = orjson.dumps({"session_key": elsewhere, "loss": 0.5, "pad": "x" * pad})  # valid, <= 1 MiB

    _send_big(broker.bootstrap, [(big, elsewhere.encode(), 0),  # on the wrong partition
                                 (orjson.dumps({"session_key": here, "loss": 0.5}), here.encode(), 0)])
    window = functools.partial(_loss_window, w)

    wait_until(lambda: window(here) == 1, 60, what="the event after the big one applied")
    (entry,) = _read_committed(broker.bootstrap, "learn.dlq", 3)
    assert entry["reason_code"] == "oversized" and entry["source"] == {**entry["source"], "partition": 0, "offset": 0}
    assert entry["truncated"] is True and entry["value_sha256"] == hashlib.sha256(big).hexdigest()
    wait_until(lambda: window(elsewhere) == 0, 30, what="the big event not applied (a read answered)")


def _send_big(bootstrap: str, messages: list[tuple[bytes, bytes, int | None]]) -> None:
    """(value, key, partition) to ``learn.loss`` in order, with a producer that takes up to 2 MiB."""
    async def go() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 * 1024 * 1024)
        await p.start()
        try:
            for value, key, partition in messages:
                await p.send_and_wait("learn.loss", value, key=key, partition=partition)
        finally:
            await p.stop()
    asyncio.run(go())


def _loss_window(w, sk: str) -> int:
    """The session's loss window size (-1 while it has none)."""
    out = w.dispatch("health", {"session_key": sk})
    return out["data"]["loss_window_size"] if out.get("ok") else -1


def test_a_huge_message_key_is_dead_lettered_under_a_bounded_key(broker, worker_factory) -> None:
    """The DLQ record's key was the message key: a key near the broker's message limit made a DLQ
    record over the producer's limit, failing the batch's transaction on every retry."""
    from workers.stream.partitioning import owner_partition

    w = worker_factory("a", env={"LEARNSTREAM_TRANSACTIONS": "true"}).start().wait_ready()
    huge = b"k" * 950_000  # refused: a session_key is at most a few hundred characters
    owner = owner_partition(huge, 4)
    good = next(f"s{i}" for i in range(100) if owner_partition(f"s{i}", 4) == owner)

    _send_big(broker.bootstrap, [(b'{"loss": 0.5}', huge, None),  # on its owner: not re-routed
                                 (orjson.dumps({"session_key": good, "loss": 0.5}), good.encode(), None)])
    window = functools.partial(_loss_window, w)

    wait_until(lambda: window(good) == 1, 60, what="the event after the huge key applied")
    (entry,) = _read_committed(broker.bootstrap, "learn.dlq", 3)
    assert entry["reason_code"] == "invalid" and "session_key" in entry["reason"]
    assert huge.startswith(base64.b64decode(entry["key_b64"]))
    assert len(orjson.dumps(entry)) <= DLQ_MAX_BYTES


def test_a_worker_fenced_on_a_partition_it_still_holds_rejoins_and_goes_on(broker, worker_factory, app_id) -> None:
    """Another worker acting on a stale assignment starts partition p's transactional producer
    (fencing this worker's) after the group gave p back to this worker: no rebalance follows, and
    p's events were dropped as "another worker's" for ever (bench chaos, rebalance, seed 9). Here
    the test itself plays that worker: it fences partition p's producer, no rebalance happens."""
    from workers.stream.partitioning import owner_partition

    w = worker_factory("a", env={"LEARNSTREAM_TRANSACTIONS": "true"}).start().wait_ready()
    sk = "fenced-1"
    p = owner_partition(sk, 4)

    def window() -> int:
        out = w.dispatch("health", {"session_key": sk})
        return out["data"]["loss_window_size"] if out.get("ok") else -1

    def loss(x: float) -> None:
        async def go() -> None:
            prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
            await prod.start()
            try:
                await prod.send_and_wait("learn.loss", orjson.dumps({"session_key": sk, "loss": x}), key=sk.encode())
            finally:
                await prod.stop()
        asyncio.run(go())

    loss(0.5)
    wait_until(lambda: window() == 1, 60, what="the first loss applied")

    async def fence() -> None:  # InitProducerId with the worker's transactional id: its producer is fenced
        zombie = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=f"{app_id}-p{p}")
        await zombie.start()
        await zombie.stop()
    asyncio.run(fence())
    loss(0.6)
    loss(0.7)
    wait_until(lambda: window() == 3, 90, what="the losses after the fencing applied")
    assert "rejoining the group" in w.log_tail(10_000_000)
