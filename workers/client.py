"""The agent SDK: publish what happened, one typed method per input topic.

Every value is validated against its topic's JSON Schema before it is sent, so a
bad event fails in the agent with the field and rule named, not later in the DLQ.

>>> async with LearnstreamClient("127.0.0.1:9092") as c:      # doctest: +SKIP
...     await c.init_instant("agent-7", targets=["small", "large"], dim=384)
...     await c.feedback("agent-7", embedding, model="small", quality=0.9)

``SyncClient`` offers the same methods for code without an event loop.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from workers.codec import encode_embedding_b64
from workers.topics import topics

__all__ = ("LearnstreamClient", "SyncClient", "Sent")

_LINGER_MS = 5  # small batching window: many agents send bursts


class Sent(tuple):
    """(topic, partition, offset) of a sent message."""


def _vec(x: Any) -> dict:
    """An embedding as ``embedding_b64`` (fast) when it is an array, else as given."""
    if isinstance(x, np.ndarray):
        return {"embedding_b64": encode_embedding_b64(x)}
    return {"embedding": list(map(float, x))}


class LearnstreamClient:
    """Async producer for learnstream's input topics (aiokafka underneath).

    Parameters
    ----------
    bootstrap : str
        Kafka bootstrap servers, ``host:port[,host:port]``.
    validate : bool
        Validate each value against its topic schema before sending (default True).
    **kafka : Any
        Passed to :class:`aiokafka.AIOKafkaProducer` (SASL/TLS settings).
    """

    def __init__(self, bootstrap: str, *, validate: bool = True, **kafka: Any) -> None:
        self.bootstrap = bootstrap
        self.validate = validate
        self.kafka = kafka
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> LearnstreamClient:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=_LINGER_MS,
                                          max_request_size=1 << 20, **self.kafka)
        await self._producer.start()
        return self

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> LearnstreamClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def flush(self) -> None:
        if self._producer is not None:
            await self._producer.flush()

    async def send(self, role: str, session_key: str, value: dict, *, wait: bool = True) -> Sent | asyncio.Future:
        """Validate and send ``value`` to the topic of ``role`` keyed by ``session_key``."""
        t = topics()[role]
        value = {"session_key": session_key, **value} if role != "commands" else value
        if self.validate:
            t.validate(value)
        if self._producer is None:
            raise RuntimeError("client not started: use `async with LearnstreamClient(...)` or await start()")
        fut = await self._producer.send(t.name, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY),
                                        key=session_key.encode())
        if not wait:
            return fut
        md = await fut
        return Sent((md.topic, md.partition, md.offset))

    # -- one method per input topic -----------------------------------------------
    async def feedback(self, session_key: str, embedding: Any, *, model: str, quality: float,
                       relation: str | None = None, estimated_tokens: int | None = None,
                       now_ms: int | None = None, wait: bool = True) -> Any:
        return await self.send("feedback", session_key, _drop_none(
            {**_vec(embedding), "model": model, "quality": float(quality), "relation": relation,
             "estimated_tokens": estimated_tokens, "now_ms": now_ms}), wait=wait)

    async def feedback_batch(self, session_key: str, events: Sequence[dict], *, wait: bool = True) -> Any:
        """Many feedback events of one session in one message (one envelope, one watermark offset).

        Each event: ``{"embedding": ndarray|list, "model", "quality", ...}``.
        """
        evs = []
        for e in events:
            e = dict(e)
            emb = e.pop("embedding")
            evs.append(_drop_none({**_vec(emb), **e}))
        return await self.send("feedback", session_key, {"events": evs}, wait=wait)

    async def loss(self, session_key: str, loss: float, *, now_ms: int | None = None, wait: bool = True) -> Any:
        return await self.send("loss", session_key, _drop_none({"loss": float(loss), "now_ms": now_ms}), wait=wait)

    async def gradients(self, session_key: str, param_id: str, params: Iterable[float], grads: Iterable[float],
                        *, wait: bool = True) -> Any:
        return await self.send("gradients", session_key, {"param_id": param_id, "params": list(map(float, params)),
                                                          "grads": list(map(float, grads))}, wait=wait)

    async def insert_edge(self, session_key: str, edge: dict, *, wait: bool = True) -> Any:
        return await self.send("edges", session_key, {"op": "insert", "edge": edge}, wait=wait)

    async def invalidate_edge(self, session_key: str, edge_id: str, invalid_at: int, expired_at: int,
                              *, wait: bool = True) -> Any:
        return await self.send("edges", session_key, {"op": "invalidate", "edge_id": edge_id,
                                                      "invalid_at": invalid_at, "expired_at": expired_at}, wait=wait)

    async def contradict(self, session_key: str, edge: dict, contradicts: list[str], *, now_ms: int = 0,
                         wait: bool = True) -> Any:
        return await self.send("edges", session_key, {"op": "contradict", "edge": edge, "contradicts": contradicts,
                                                      "now_ms": now_ms}, wait=wait)

    async def example(self, session_key: str, features: Any, label: int, *, task: str | int | None = None,
                      now_ms: int | None = None, wait: bool = True) -> Any:
        return await self.send("examples", session_key, _drop_none(
            {"features": list(map(float, features)), "label": int(label), "task": task, "now_ms": now_ms}), wait=wait)

    async def examples(self, session_key: str, xs: Any, ys: Any, *, task: str | int | None = None,
                       now_ms: int | None = None, wait: bool = True) -> Any:
        """An envelope of many examples (one message)."""
        exs = [_drop_none({"features": list(map(float, x)), "label": int(y), "task": task, "now_ms": now_ms})
               for x, y in zip(xs, ys, strict=True)]
        return await self.send("examples", session_key, {"examples": exs}, wait=wait)

    async def outcome(self, session_key: str, outcome: dict, *, wait: bool = True) -> Any:
        return await self.send("outcomes", session_key, outcome, wait=wait)

    async def memory_context(self, session_key: str, conversation_id: str, messages: list[dict],
                             *, wait: bool = True) -> Any:
        return await self.send("memory", session_key, {"conversation_id": conversation_id, "messages": messages},
                               wait=wait)

    async def command(self, session_key: str, verb: str, body: dict | None = None, *, wait: bool = True) -> Any:
        """Any other write verb (init_instant, init_router, reset_adapter, record_outcome, ...)."""
        return await self.send("commands", session_key,
                               {"verb": verb, "body": {**(body or {}), "session_key": session_key}}, wait=wait)

    async def init_instant(self, session_key: str, targets: list[str], dim: int | None = None, **kw: Any) -> Any:
        return await self.command(session_key, "init_instant", _drop_none({"targets": targets, "dim": dim}), **kw)


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class SyncClient:
    """Blocking facade over :class:`LearnstreamClient` (its own loop in a daemon thread)."""

    def __init__(self, bootstrap: str, **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="learnstream-client", daemon=True)
        self._thread.start()
        self._client = LearnstreamClient(bootstrap, **kw)
        self._call(self._client.start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *a, **k: self._call(attr(*a, **k))

    def close(self) -> None:
        self._call(self._client.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
