"""The agent SDK: publish what happened, one typed method per input topic, and
write-and-wait over any worker's HTTP API.

Every value is validated against its topic's JSON Schema before it is sent, so a
bad event fails in the agent with the field and rule named, not later in the DLQ.

Produced events of *different* topics are not ordered with each other (Kafka orders a
partition of one topic), so a session's set-up must be applied before its data flows:
:meth:`LearnstreamClient.apply` returns once the owning worker has applied a write. With a
``worker_url`` the client also does this by itself: a set-up verb (``SETUP_VERBS``) sent
through :meth:`~LearnstreamClient.command` is applied over HTTP, and every later send of that
session waits for it, so a fresh session's first data event cannot overtake its set-up.

>>> async with LearnstreamClient("127.0.0.1:9092", worker_url="http://127.0.0.1:6066") as c:  # doctest: +SKIP
...     await c.apply("agent-7", "init_instant", {"targets": ["small", "large"], "dim": 384})
...     await c.feedback("agent-7", embedding, model="small", quality=0.9)

``SyncClient`` offers the same methods for code without an event loop.
"""
from __future__ import annotations

import asyncio
import math
import ssl
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from workers.verbs.codec import encode_embedding_b64, encode_json
from workers.errors import ConfigError, LearnstreamError, ValidationError, VerbError
from workers.kafka.clients import started
from workers.kafka.topics import input_topics, topics

__all__ = ("LearnstreamClient", "SyncClient", "Sent", "Applied", "WriteNotConfirmed", "SETUP_VERBS", "worker_base_url",
           "worker_ssl_context")

_LINGER_MS = 5  # small batching window: many agents send bursts
_MAX_REQUEST = 1 << 20  # the producer's request limit (1 MiB), as a Kafka broker takes by default
_F32_MAX = float(np.finfo(np.float32).max)
# How long apply() keeps retrying (same idempotency key) while no worker answers: a worker
# restart plus a consumer-group rejoin on the embedded broker takes ~20-30 s.
_APPLY_DEADLINE_S = 60.0
_RETRY_FIRST_S, _RETRY_MAX_S = 0.2, 2.0
_ATTEMPT_MIN_S = 0.5  # the shortest wait for one answer, however near the deadline
# statuses after which the write may or may not be in the log: retry with the same key
_RETRY_STATUSES = frozenset({429, 502, 503, 504})  # 429: the worker's in-flight limit; not applied
_IDEMPOTENCY = "idempotency_key"  # the body field workers/state/idempotency.py reads
# Writes that set a session up: the data that follows fails ("not initialized") if applied first.
SETUP_VERBS = frozenset({"init_instant", "init_router", "init_attention", "init_learner", "configure_scoring"})


@dataclass(frozen=True)
class Applied:
    """A write the owning worker has applied: its id (``topic:partition:offset``) and its answer.

    ``duplicate`` is True when this call was a retry of a write applied before (same
    idempotency key): ``id`` and ``data`` are then those of the first application.
    """

    id: str
    data: Any
    idempotency_key: str
    duplicate: bool = False


class WriteNotConfirmed(LearnstreamError):
    """No worker confirmed a write before the deadline. It may still be applied (at most once):
    call again with the same ``idempotency_key`` to learn its outcome."""

    def __init__(self, verb: str, key: str, why: str) -> None:
        self.verb, self.idempotency_key = verb, key
        super().__init__(f"{verb}: not confirmed ({why}); retry with idempotency_key={key!r} "
                         "(it is applied at most once)")


def worker_ssl_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """What verifies an https worker: the system's CAs, or only ``ca_file``'s (ConfigError if unreadable)."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"ca_file {str(ca_file)!r}: not a readable CA file ({exc})") from None


def _tls_reason(exc: BaseException) -> str:
    cause = getattr(exc, "certificate_error", None) or exc.__cause__ or exc
    return getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or str(cause)


class Sent(tuple):
    """(topic, partition, offset) of a sent message."""


def _verb_kind(verb: str, *, writes: bool) -> None:
    """VerbError unless ``verb`` is a write (``apply``) or a read (``read``); an unknown verb is left to the
    worker, which names it."""
    from workers.verbs.surface import REGISTRY

    v = REGISTRY.get(verb)
    if v is not None and v.writes != writes:
        raise VerbError(f"{verb} is a {'read' if writes else 'write'}: use "
                        f"{'read()' if writes else 'apply()'} for it (apply() sends writes with an "
                        f"idempotency key and waits until applied; read() answers reads)")


def _is_number(x: Any) -> bool:
    """A real number, as the topics' schemas say: not a boolean, nor a string that reads as one."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _num(field: str, x: Any) -> float:
    """A finite number: JSON would carry a NaN as null, and the worker then said the field was missing.
    A boolean or a string is refused as over HTTP and on the topic (``float()`` took True as 1.0)."""
    if not _is_number(x):
        raise ValidationError(field, f"must be a number, got {type(x).__name__}")
    v = float(x)
    if not math.isfinite(v):
        raise ValidationError(field, "must be finite (NaN/Inf refused)")
    return v


def _nums(field: str, xs: Iterable[Any]) -> list[float]:
    if isinstance(xs, np.ndarray):
        if xs.dtype.kind not in "iuf":
            raise ValidationError(field, f"must be an array of numbers, got an array of {xs.dtype}")
        values = xs.astype(np.float64).ravel().tolist()
    elif isinstance(xs, (str, bytes, dict)) or not isinstance(xs, Iterable):
        raise ValidationError(field, f"must be an array of numbers, got {type(xs).__name__}")
    else:
        values = list(xs)
        if not all(map(_is_number, values)):
            raise ValidationError(field, "must be an array of numbers (no booleans, strings or nulls)")
        values = list(map(float, values))
    if not all(map(math.isfinite, values)):
        raise ValidationError(field, "must be finite (NaN/Inf refused)")
    return values


def _vec(x: Any, field: str = "embedding") -> dict:
    """A vector as ``<field>_b64`` (little-endian float32, ~3.6x smaller than a JSON array) when it is a
    NumPy array, else as a JSON array of numbers. A NaN or an infinity fails here, naming the rule, not
    later in the DLQ (base64 is beyond what a JSON Schema can check). A 1536-feature example as JSON text
    was ~32 kB, and an envelope of 40 went over the producer's 1 MB limit (an outside trial)."""
    if not isinstance(x, np.ndarray):
        values = _nums(field, x)
        if not values:
            raise ValidationError(field, "must not be empty")
        if max(map(abs, values)) > _F32_MAX:  # the worker reads float32: an infinity, dead-lettered
            raise ValidationError(field, "must be finite as float32 (float32 ends near 3.4e38)")
        return {field: values}
    if x.ndim != 1 or not x.size:
        raise ValidationError(field, f"must be one non-empty vector, got an array of shape {x.shape}")
    if x.dtype.kind not in "iuf":
        raise ValidationError(field, f"must be an array of numbers, got an array of {x.dtype}")
    with np.errstate(over="ignore"):  # beyond float32's range: an infinity, refused below
        x32 = np.ascontiguousarray(x, dtype="<f4")
    if not np.isfinite(x32).all():
        raise ValidationError(field, "must be finite as float32 (NaN/Inf refused; float32 ends near 3.4e38)")
    return {field + "_b64": encode_embedding_b64(x32)}


def _label(y: Any) -> int:
    """A class label: a class index (an integer >= 0), or a float that is one (a label column read as
    floats); ``int()`` took 1.7 as 1 and True as 1."""
    if isinstance(y, (bool, np.bool_)) or not isinstance(y, (int, float, np.integer, np.floating)) \
            or (isinstance(y, (float, np.floating)) and not float(y).is_integer()) or not 0 <= y < 2**31:
        raise ValidationError("label", f"must be a class index (an integer >= 0), got {y!r}")
    return int(y)


def worker_base_url(url: str, what: str) -> str:
    """A worker's base URL without its trailing slash; ConfigError naming ``what`` unless it is http(s)."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{what} wants a worker's base URL such as http://127.0.0.1:6066, got {url!r}")
    return url.rstrip("/")


class LearnstreamClient:
    """Async producer for learnstream's input topics (aiokafka underneath), and write-and-wait
    over a worker's HTTP API (aiohttp underneath).

    Parameters
    ----------
    bootstrap : str or None
        Kafka bootstrap servers, ``host:port[,host:port]``; None for an HTTP-only client.
    validate : bool
        Validate each value against its topic schema before sending (default True).
    worker_url : str or None
        Base URL of any worker (``http://host:6066``) for :meth:`apply` and :meth:`read`;
        it forwards to the session's owner.
    token : str or None
        Sent as ``Authorization: Bearer`` to the worker.
    apply_deadline_s : float
        How long :meth:`apply` retries while no worker answers (default 60 s).
    **kafka : Any
        Passed to :class:`aiokafka.AIOKafkaProducer` (SASL/TLS settings).
    """

    def __init__(self, bootstrap: str | None = None, *, validate: bool = True, worker_url: str | None = None,
                 token: str | None = None, ca_file: str | Path | None = None,
                 apply_deadline_s: float = _APPLY_DEADLINE_S, **kafka: Any) -> None:
        self.bootstrap = bootstrap
        self.validate = validate
        self.worker_url = worker_base_url(worker_url, "worker_url") if worker_url else None
        self.token = token
        # an https worker's certificate is verified against this CA file (a private CA), else the system's
        # (aiohttp's default context: none is built here for a client that never calls a worker)
        self.ssl_context = worker_ssl_context(ca_file) if ca_file else None
        self.apply_deadline_s = apply_deadline_s
        self.kafka = kafka
        self._producer: AIOKafkaProducer | None = None
        self._http: Any = None  # aiohttp.ClientSession
        self._setup: dict[str, asyncio.Future] = {}  # session -> its set-up write in flight

    async def start(self) -> LearnstreamClient:
        if self.bootstrap:
            self._producer = await started(AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=_LINGER_MS,
                                                            max_request_size=_MAX_REQUEST, **self.kafka))
        if self.worker_url:
            import aiohttp

            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._http = aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(ssl=self.ssl_context or True))
        return self

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> LearnstreamClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def flush(self) -> None:
        if self._producer is not None:
            await self._producer.flush()

    async def send(self, role: str, session_key: str, value: dict, *, wait: bool = True) -> Sent | asyncio.Future:
        """Validate and send ``value`` to the topic of ``role`` keyed by ``session_key``."""
        t = topics().get(role)
        if t is None:
            raise ValidationError("role", f"{role!r} is not an input topic's role (one of {sorted(t.role for t in input_topics())})")
        value = {"session_key": session_key, **value} if role != "commands" else value
        if self.validate:
            t.validate(value)
        setup = self._setup.get(session_key)
        if setup is not None:  # the session's set-up first: this event must not overtake it
            await setup  # a failed set-up raises here: the event would only be dead-lettered
        if self._producer is None:
            if self.bootstrap is None:
                raise RuntimeError("no Kafka bootstrap: pass LearnstreamClient(bootstrap, ...) to produce events")
            raise RuntimeError("client not started: use `async with LearnstreamClient(...)` or await start()")
        try:
            raw = encode_json(value)
        except ValueError as exc:  # checked before the send, as the schema is
            raise ValidationError("", f"the event is {exc}") from None
        from aiokafka.errors import MessageSizeTooLargeError

        try:
            fut = await self._producer.send(t.name, raw, key=session_key.encode())
        except MessageSizeTooLargeError:
            raise ValidationError("", f"the event is {len(raw):,} bytes of JSON, over the producer's limit of "
                                      f"{_MAX_REQUEST:,}: split it into smaller messages (a vector given as a NumPy "
                                      "array goes as base64, ~4x smaller than a list)") from None
        if not wait:
            return fut
        md = await fut
        return Sent((md.topic, md.partition, md.offset))

    # -- write-and-wait and reads over HTTP ---------------------------------------------
    async def apply(self, session_key: str, verb: str, body: dict | None = None, *,
                    idempotency_key: str | None = None) -> Applied:
        """Send write ``verb`` to a worker and return once the session's owner has applied it.

        Retries (same idempotency key, so never applied twice) while no worker answers, up to
        ``apply_deadline_s``; then raises :class:`WriteNotConfirmed`. A refused write raises
        :class:`~workers.errors.VerbError` with the verb's message.
        """
        _verb_kind(verb, writes=True)
        key = idempotency_key or uuid.uuid4().hex
        body = {**(body or {}), "session_key": session_key, _IDEMPOTENCY: key}
        out = await self._post(verb, body, retry_for=self.apply_deadline_s, key=key)
        return Applied(id=out["id"], data=out.get("data"), idempotency_key=key, duplicate=bool(out.get("duplicate")))

    async def read(self, session_key: str, verb: str, body: dict | None = None) -> Any:
        """Answer read ``verb`` from the session's owner (the ``data`` of the envelope)."""
        _verb_kind(verb, writes=False)  # a write here would be retried without an idempotency key
        out = await self._post(verb, {**(body or {}), "session_key": session_key}, retry_for=self.apply_deadline_s)
        return out.get("data")

    async def _post(self, verb: str, body: dict, *, retry_for: float, key: str | None = None) -> dict:
        import aiohttp

        try:  # checked first, as send() validates before it needs a producer
            payload = encode_json({"verb": verb, "body": body})
        except ValueError as exc:
            raise VerbError(f"parse: the body is {exc}") from None
        if self._http is None:
            raise RuntimeError("no worker_url: pass LearnstreamClient(..., worker_url='http://host:6066') "
                               "and start the client")
        loop = asyncio.get_running_loop()
        end, pause, why = loop.time() + retry_for, _RETRY_FIRST_S, ""
        while True:
            try:
                # each attempt ends with the deadline: a worker that accepts the connection and never
                # answers (stopped, wedged) held a caller for aiohttp's default 5 minutes (an outside trial)
                attempt = aiohttp.ClientTimeout(total=max(end - loop.time(), _ATTEMPT_MIN_S))
                async with self._http.post(self.worker_url + "/dispatch", data=payload, timeout=attempt,
                                           headers={"Content-Type": "application/json"}) as r:
                    raw = await r.read()
                    status = r.status
            except aiohttp.ClientSSLError as exc:  # a retry meets the same certificate: fail now
                raise LearnstreamError(f"{verb}: TLS with {self.worker_url} failed ({exc.__class__.__name__}: "
                                       f"{_tls_reason(exc)}); a worker certificate signed by a private CA needs "
                                       "ca_file= (LEARNSTREAM_TLS_CAFILE for the CLI and the MCP server)") from None
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                status, raw, why = 0, b"", f"worker unreachable: {exc.__class__.__name__}"
            if status and status not in _RETRY_STATUSES:
                try:
                    out = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise LearnstreamError(f"{verb}: worker answered {status} with non-JSON: {raw[:200]!r}") from None
                if not isinstance(out, dict) or not out.get("ok"):
                    raise VerbError(out.get("error", f"HTTP {status}") if isinstance(out, dict) else f"HTTP {status}")
                return out
            if status:
                why = f"HTTP {status}"
            if loop.time() + pause > end:
                if key is None:
                    raise LearnstreamError(f"{verb}: no answer ({why})")
                raise WriteNotConfirmed(verb, key, why)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RETRY_MAX_S)

    # -- one method per input topic -----------------------------------------------
    async def feedback(self, session_key: str, embedding: Any, *, model: str, quality: float,
                       relation: str | None = None, estimated_tokens: int | None = None,
                       now_ms: int | None = None, wait: bool = True) -> Any:
        return await self.send("feedback", session_key, _drop_none(
            {**_vec(embedding), "model": model, "quality": _num("quality", quality), "relation": relation,
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
        return await self.send("loss", session_key, _drop_none({"loss": _num("loss", loss), "now_ms": now_ms}), wait=wait)

    async def gradients(self, session_key: str, param_id: str, params: Iterable[float], grads: Iterable[float],
                        *, now_ms: int | None = None, wait: bool = True) -> Any:
        return await self.send("gradients", session_key, _drop_none({
            "param_id": param_id, "params": _nums("params", params), "grads": _nums("grads", grads),
            "now_ms": now_ms}), wait=wait)

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
            {**_vec(features, "features"), "label": _label(label), "task": task, "now_ms": now_ms}), wait=wait)

    async def examples(self, session_key: str, xs: Any, ys: Any, *, task: str | int | None = None,
                       now_ms: int | None = None, wait: bool = True) -> Any:
        """An envelope of many examples (one message)."""
        xs, ys = list(xs), list(ys)
        if len(xs) != len(ys):
            raise ValidationError("examples", f"{len(xs)} feature vectors but {len(ys)} labels")
        exs = [_drop_none({**_vec(x, "features"), "label": _label(y), "task": task, "now_ms": now_ms})
               for x, y in zip(xs, ys)]
        return await self.send("examples", session_key, {"examples": exs}, wait=wait)

    async def outcome(self, session_key: str, outcome: dict, *, wait: bool = True) -> Any:
        return await self.send("outcomes", session_key, outcome, wait=wait)

    async def memory_context(self, session_key: str, conversation_id: str, messages: list[dict],
                             *, wait: bool = True) -> Any:
        return await self.send("memory", session_key, {"conversation_id": conversation_id, "messages": messages},
                               wait=wait)

    async def command(self, session_key: str, verb: str, body: dict | None = None, *, wait: bool = True) -> Any:
        """Any other write verb (init_instant, init_router, reset_adapter, record_outcome, ...).

        With a ``worker_url``, a set-up verb (``SETUP_VERBS``) is applied over HTTP instead of
        produced, and the session's later sends wait for it: its result is an :class:`Applied`
        (with ``wait=False``, a future of one).
        """
        if verb in SETUP_VERBS and self._http is not None:
            earlier = self._setup.get(session_key)
            if earlier is not None:
                await earlier
            task = asyncio.ensure_future(self.apply(session_key, verb, body))
            self._setup[session_key] = task

            def applied(t: asyncio.Future) -> None:  # an applied set-up needs no more waiting
                if self._setup.get(session_key) is t and not t.cancelled() and t.exception() is None:
                    del self._setup[session_key]

            task.add_done_callback(applied)
            return await task if wait else task
        return await self.send("commands", session_key,
                               {"verb": verb, "body": {**(body or {}), "session_key": session_key}}, wait=wait)

    async def init_instant(self, session_key: str, targets: list[str], dim: int | None = None, **kw: Any) -> Any:
        return await self.command(session_key, "init_instant", _drop_none({"targets": targets, "dim": dim}), **kw)


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class SyncClient:
    """Blocking facade over :class:`LearnstreamClient` (its own loop in a daemon thread)."""

    def __init__(self, bootstrap: str | None = None, **kw: Any) -> None:
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
