"""Scoring calls off the event loop: noted while verbs run, made asynchronously, answered on a rerun.

A worker applies a batch synchronously (the processor runs every verb of the batch in one go), so a
blocking HTTP call inside a verb would freeze everything the event loop serves — ``/health``,
reads, forwarding, Kafka heartbeats — for as long as the scoring endpoint takes. Instead the worker
runs a batch (or a read) through :func:`settle` with a :class:`CallBook` active:

1. Every scoring call a verb makes (:func:`workers.scoring.transport.post_json`) is looked up in
   the book by URL and request body. An unknown call is noted and the backend goes on with a
   placeholder answer, so one pass notes every call the batch needs. A remote tokenizer's answer
   decides which scoring calls follow, so while one is unknown no scoring call is noted.
2. If anything was noted, that pass is thrown away (nothing of it was saved, sent or answered),
   and the noted calls are made concurrently on aiohttp: each bounded by its ``timeout_s`` as a
   whole, at most :data:`_PARALLEL` at once, no redirects, answers capped in size; after
   :data:`_FAILURES_PER_ENDPOINT` failures of one endpoint its remaining calls fail at once. Every
   answer or failure goes into the book.
3. The batch runs again, answered from the book. The last allowed pass (:data:`_PASSES`) fails any
   call still unknown instead of noting it, so a batch always finishes.

Effectively-once is kept because the pass that counts runs on fixed answers: it is as deterministic
as a verb on the built-in model, and its results (the scores, the proposed candidates) are written
in the same table value as the session's watermark. Once that value is saved, a redelivered event is
skipped by the watermark and the endpoint is never called for it again; table recovery restores the
recorded scores from the changelog. Before it is saved, nothing of the batch exists anywhere but in
its downstream events, whose ids are deterministic (``<topic>:<partition>:<offset>``): applying it
again (after a crash) calls again, and consumers dedup on the ids. Rebuilding state by replaying the
input topics from the start calls the endpoint again too (a language model at temperature 0 over the
same prompt gives the same log-probabilities, up to the server's numerics).

Outside a worker (no book: :class:`workers.verbs.session.LearnSession`, the CLI, offline jobs) calls are
made at once, blocking, with the same bounds.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import orjson

from workers.stream import metrics

__all__ = ("Call", "CallBook", "Deferred", "current", "settle", "MAX_ANSWER_BYTES", "ERROR_QUOTE")

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Passes of one batch at most: tokenize (remote tokenizer), score, then the pass that counts; one
# spare for a verb whose second call depends on its first answer.
_PASSES = 4
# Calls in flight per batch: enough to hide a scoring server's latency, few enough not to swamp it.
_PARALLEL = 8
# An endpoint that failed this often in one batch is down: its other calls fail without being made,
# so a dead endpoint costs one timeout per batch, not one per call.
_FAILURES_PER_ENDPOINT = 2
# Largest answer read (per-token log-probabilities of a long prompt stay far below this).
MAX_ANSWER_BYTES = 64 << 20
# Characters of an answer quoted in an error.
ERROR_QUOTE = 300


class Deferred(Exception):
    """The answer of this call is not known yet: it was noted and will be made before the next pass.

    Raised by :func:`workers.scoring.transport.post_json` inside a pass; the backends answer a
    placeholder instead, never letting it escape a verb.
    """


@dataclass(frozen=True)
class Call:
    """One POST: what is noted and later made. ``headers`` may carry the API key: never logged."""

    url: str
    body: bytes
    timeout_s: float
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def key(self) -> tuple[str, bytes]:
        return (self.url, self.body)

    @property
    def origin(self) -> str:
        u = urllib.parse.urlsplit(self.url)
        return f"{u.scheme}://{u.netloc}"


@dataclass
class CallBook:
    """The answers of one batch's (or one read's) calls; a failure is kept as its message."""

    answers: dict[tuple[str, bytes], tuple[bool, Any]] = field(default_factory=dict)
    pending: dict[tuple[str, bytes], Call] = field(default_factory=dict)
    final: bool = False     # the last pass: unknown calls fail instead of being noted
    tainted: bool = False   # a placeholder tokenization in this pass: scoring calls would be bogus
    made: int = 0           # calls actually sent, over all passes

    def answer(self, call: Call, *, uses_tokens: bool = True) -> tuple[bool, Any]:
        """(True, decoded answer) or (False, error message); raises :class:`Deferred` when unknown.

        ``uses_tokens``: the body carries token ids, so it is not noted while a tokenization of
        this pass is a placeholder (:meth:`taint`); it is noted on the pass after.
        """
        got = self.answers.get(call.key)
        if got is not None:
            return got
        if self.final:
            return False, f"POST {call.url}: not called (the batch needed more than {_PASSES} passes of calls)"
        if not (uses_tokens and self.tainted):
            self.pending.setdefault(call.key, call)
        raise Deferred(call.url)

    def taint(self) -> None:
        """A tokenization is still unknown: scoring calls built on its placeholder are not noted."""
        self.tainted = True

    async def fetch(self, http: aiohttp.ClientSession) -> None:
        """Make every noted call concurrently; record each answer or failure. The pass takes at most the
        longest ``timeout_s`` of its calls: a call that cannot start, or finish, within it fails (its memory
        is scored when an event carries it again). Calls queued behind a slow endpoint held the whole
        worker 20 s with a timeout of 5 (an outside trial: 33 calls of 4 s, 8 at a time)."""
        calls, self.pending = list(self.pending.values()), {}
        gate = asyncio.Semaphore(_PARALLEL)
        failures: dict[str, int] = {}
        loop = asyncio.get_running_loop()
        budget = max((c.timeout_s for c in calls), default=0.0)
        deadline = loop.time() + budget

        async def one(call: Call) -> None:
            async with gate:
                if failures.get(call.origin, 0) >= _FAILURES_PER_ENDPOINT:
                    self.answers[call.key] = (False, f"POST {call.url}: not called, {failures[call.origin]} calls "
                                                     f"to {call.origin} failed in this batch")
                    metrics.SCORING_CALLS.labels("skipped").inc()
                    return
                left = deadline - loop.time()
                if left <= 0.05:
                    self.answers[call.key] = (False, f"POST {call.url}: not called, the batch's calls took their "
                                                     f"{budget:g} s (timeout_s) before its turn")
                    metrics.SCORING_CALLS.labels("skipped").inc()
                    return
                self.made += 1
                t0 = time.perf_counter()
                ok, value = await _post(http, call, left)
                metrics.SCORING_CALL_SECONDS.observe(time.perf_counter() - t0)
                metrics.SCORING_CALLS.labels("ok" if ok else "failed").inc()
                if not ok:
                    failures[call.origin] = failures.get(call.origin, 0) + 1
                    logger.warning("scoring call failed: %s", value)
                self.answers[call.key] = (ok, value)

        await asyncio.gather(*(one(c) for c in calls))


async def _post(http: aiohttp.ClientSession, call: Call, timeout_s: float | None = None) -> tuple[bool, Any]:
    """One call, never raising: (True, decoded JSON) or (False, a message naming the URL). ``timeout_s``:
    what is left of the batch's pass, when less than the call's own."""
    where = f"POST {call.url}"
    # the pass's remainder when it cuts the call short; else the call's own timeout, as its error says
    cut = timeout_s is not None and timeout_s < call.timeout_s - 0.05
    limit = timeout_s if cut else call.timeout_s
    try:
        async with http.post(call.url, data=call.body, headers=dict(call.headers), allow_redirects=False,
                             timeout=aiohttp.ClientTimeout(total=limit)) as r:
            if r.status >= 300:
                detail = (await r.content.read(ERROR_QUOTE)).decode(errors="replace").strip()
                why = " (redirects are not followed)" if 300 <= r.status < 400 else ""
                return False, f"{where}: HTTP {r.status} {r.reason}{why}" + (f": {detail}" if detail else "")
            # read to the end: read(n) answers with what has arrived, at most n (an outside trial's
            # answers over ~32 kB came back cut and "not JSON", depending on timing)
            raw = bytearray()
            async for chunk in r.content.iter_any():
                raw += chunk
                if len(raw) > MAX_ANSWER_BYTES:
                    return False, f"{where}: answer exceeds {MAX_ANSWER_BYTES} bytes"
    except asyncio.TimeoutError:
        why = f"{limit:.3g} s, what the batch's calls left it" if cut else f"{limit:g} s"
        return False, f"{where}: timed out after {why}"
    except (aiohttp.ClientError, OSError) as exc:  # refused, reset, bad TLS, ...
        return False, f"{where}: {type(exc).__name__}: {exc}"
    try:
        return True, orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return False, f"{where}: answer is not JSON ({exc})"


_CURRENT: contextvars.ContextVar[CallBook | None] = contextvars.ContextVar("learnstream_scoring_calls",
                                                                           default=None)


def current() -> CallBook | None:
    """The book of the pass running now, or None (calls are then made at once, blocking)."""
    return _CURRENT.get()


async def settle(run: Callable[[], T], http: Callable[[], aiohttp.ClientSession],
                 discard: Callable[[], None] = lambda: None) -> T:
    """``run()`` (synchronous, e.g. applying a batch) until it needs no call it has no answer for.

    Between passes ``discard()`` drops what the thrown-away pass changed (the processor's cache of
    unsaved session values) and the noted calls are made without blocking the loop, on the
    session ``http()`` returns (asked for only when a call is needed).
    """
    book = CallBook()
    for n in range(1, _PASSES + 1):
        book.final, book.tainted = n == _PASSES, False
        token = _CURRENT.set(book)
        try:
            out = run()
        finally:
            _CURRENT.reset(token)
        if not book.pending:
            return out
        discard()
        await book.fetch(http())
    raise AssertionError("unreachable: the final pass notes nothing")
