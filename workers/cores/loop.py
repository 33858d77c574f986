"""The learning loop: what a worker does with feedback events (spec: cores.md, The learning loop).

Per event, with the session's quality EMA m (first event: m = q)::

    q_eff = 0.7 q + 0.3 m;  loss = max(1 - q_eff, 0);  boundary = deep.record_loss(loss)
    instant.feedback(q_eff)
    on a boundary: deep.consolidate("adapter", [A; B], g_i = x[i mod dim] q_eff), hand the EWC
                   state to the instant core, reset the adapter, emit boundary + consolidation
    router.record_outcome(model, q_eff, embedding=x)          if a "router" part exists
    attention.nudge_relation(relation, 2 (q_eff - 0.5))       if an "attention" part exists
                                                               and the event names a relation

An envelope ``{session_key, events: [...]}`` carries many events of one session.
All events are validated before anything changes. Then the losses go first (the
loss window depends on nothing else), and the instant updates between two
boundaries run as one GIL-free batch kernel call; the result equals applying the
events one by one exactly, because the batch kernel is the per-event kernel in a loop.
"""
from __future__ import annotations

import logging
import struct
from typing import Any

import numpy as np

from workers.cores.deep import DeepState, boundary_event, consolidation_event, hand_ewc
from workers.cores.instant import (NOT_INITIALIZED, InstantState, read_embedding, read_model, read_now_ms,
                                   read_quality)
from workers.errors import CorruptStateError, VerbError
from workers.verbs import VerbContext, verb

__all__ = ("QUALITY_EMA_RATE", "Q_WEIGHT", "LoopState", "learn_feedback", "ADAPTER_PARAM_ID")

logger = logging.getLogger(__name__)

# The session quality EMA moves 10% toward each raw quality: a memory of about ten
# events, the same horizon as the router's outcome EMA (0.9 old + 0.1 new).
QUALITY_EMA_RATE = 0.1
Q_WEIGHT = 0.7                    # q_eff = 0.7 q + 0.3 EMA (the spec's mix)
ADAPTER_PARAM_ID = "adapter"      # the param_id the loop consolidates θ = [A; B] under
_CONSOLIDATION_CAUSE = "boundary"
# an envelope larger than this is refused whole (the topic schema's maxItems)
_MAX_EVENTS = 10_000

_FMT = struct.Struct("<3sB?dqqq")   # magic, version, has_ema, ema, events, boundaries, envelopes
_MAGIC = b"LSL"
_VERSION = 1


class LoopState:
    """The loop's own counters: the session quality EMA, events, boundaries, envelopes."""

    __slots__ = ("ema", "events", "boundaries", "envelopes")

    def __init__(self) -> None:
        self.ema: float | None = None
        self.events = 0
        self.boundaries = 0
        self.envelopes = 0

    def to_bytes(self) -> bytes:
        return _FMT.pack(_MAGIC, _VERSION, self.ema is not None, self.ema or 0.0,
                         self.events, self.boundaries, self.envelopes)

    @classmethod
    def from_bytes(cls, data: bytes) -> LoopState:
        try:
            magic, version, has_ema, ema, events, boundaries, envelopes = _FMT.unpack(data)
        except struct.error:
            raise CorruptStateError(f"loop state has {len(data)} bytes, expected {_FMT.size}") from None
        if magic != _MAGIC or version != _VERSION:
            raise CorruptStateError("not a loop state of this version")
        obj = cls()
        obj.ema = ema if has_ema else None
        obj.events, obj.boundaries, obj.envelopes = events, boundaries, envelopes
        return obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoopState) and other.to_bytes() == self.to_bytes()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"LoopState(ema={self.ema}, events={self.events}, boundaries={self.boundaries})"


def _optional_part(ctx: VerbContext, module: str, cls_name: str, part: str) -> Any:
    """A part of another core, if both its module and the part exist (imported lazily)."""
    if not ctx.state.has(part):
        return None
    import importlib

    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ModuleNotFoundError, AttributeError):
        return None
    return ctx.state.get(part, cls)


def _events_of(ctx: VerbContext, body: dict) -> tuple[list[dict], bool]:
    events = body.get("events")
    if events is None:
        return [body], False
    if not isinstance(events, list) or not events:
        raise VerbError("events must be a non-empty array")
    if len(events) > _MAX_EVENTS:
        raise VerbError(f"events: at most {_MAX_EVENTS} per envelope")
    for i, ev in enumerate(events):
        if not isinstance(ev, dict):
            raise VerbError(f"events[{i}]: must be an object")
        sk = ev.get("session_key", ctx.session_key)
        if sk != ctx.session_key:
            raise VerbError(f"events[{i}]: session_key differs from the envelope's")
    return events, True


def _validate(instant: InstantState, events: list[dict], envelope: bool) -> tuple:
    """Every event checked (the spec's order) into arrays, before anything changes."""
    n = len(events)
    X = np.empty((n, instant.dim), np.float32)
    T = np.empty(n, np.int64)
    Q = np.empty(n, np.float64)
    NOW = np.empty(n, np.int64)
    relations: list[str | None] = [None] * n
    tokens: list[int | None] = [None] * n
    for i, ev in enumerate(events):
        p = f"events[{i}]: " if envelope else ""
        Q[i] = read_quality(ev, p)                 # the spec's order: quality, embedding, model
        X[i] = read_embedding(ev, instant.dim, p)
        T[i] = read_model(ev, instant, p)
        NOW[i] = read_now_ms(ev, p)
        rel = ev.get("relation")
        if rel is not None and not isinstance(rel, str):
            raise VerbError(f"{p}relation must be a string")
        relations[i] = rel or None
        tok = ev.get("estimated_tokens")
        if tok is not None and (isinstance(tok, bool) or not isinstance(tok, int) or tok < 0):
            raise VerbError(f"{p}estimated_tokens must be a non-negative integer")
        tokens[i] = tok
    return X, T, Q, NOW, relations, tokens


@verb("learn_feedback", table="session", writes=True, topic="feedback")
def learn_feedback(ctx: VerbContext, body: dict) -> dict:
    """One feedback event, or ``{session_key, events: [...]}``, through the whole learning loop.

    Returns ``{events, boundaries, adapter_norm, lr, feedback_count, quality_ema}``.
    """
    events, envelope = _events_of(ctx, body)
    instant = ctx.state.get("instant", InstantState)
    if instant is None:
        raise VerbError(NOT_INITIALIZED)
    X, T, Q, NOW, relations, tokens = _validate(instant, events, envelope)
    n = len(events)
    # -- everything is valid: apply -------------------------------------------
    deep = ctx.state.get("deep", DeepState) or DeepState()
    loop = ctx.state.get("loop", LoopState) or LoopState()
    ctx.state.set("deep", deep)
    ctx.state.set("loop", loop)

    q_eff = np.empty(n, np.float32)
    outcomes = []
    for i in range(n):
        q = float(Q[i])
        ema = q if loop.ema is None else loop.ema
        q_eff[i] = Q_WEIGHT * q + (1.0 - Q_WEIGHT) * ema
        loop.ema = ema + QUALITY_EMA_RATE * (q - ema)
        o = deep.observe_loss(max(1.0 - float(q_eff[i]), 0.0))
        if o.boundary_fired:
            outcomes.append((i, o))

    start = 0
    for i, o in outcomes:
        instant.feedback_batch(X[start:i + 1], T[start:i + 1], q_eff[start:i + 1], NOW[start:i + 1])
        start = i + 1
        # grads_i = x[i mod dim] * q_eff: np.resize repeats x cyclically
        grads = np.resize(X[i], instant.n_params) * q_eff[i]
        deep.consolidate(ADAPTER_PARAM_ID, instant.theta, grads)
        hand_ewc(deep, instant, ADAPTER_PARAM_ID)
        instant.reset()
        logger.debug("session %s: loss boundary (z=%.3g) at event %d; adapter consolidated and reset",
                     ctx.session_key, o.z, i)
        extra = {"event_index": i} if envelope else {}
        ctx.emit("boundaries", boundary_event(ctx.session_key, o, ctx.source, **extra))
        ctx.emit("consolidations", consolidation_event(ctx.session_key, deep, ADAPTER_PARAM_ID,
                                                       _CONSOLIDATION_CAUSE, ctx.source, **extra))
    if start < n:
        instant.feedback_batch(X[start:], T[start:], q_eff[start:], NOW[start:])

    router = _optional_part(ctx, "workers.cores.router", "RouterState", "router")
    if router is not None:
        # one training kernel call for the whole envelope (equal to record_outcome row by row); an
        # embedding of another width than the router's trains nothing, as in record_outcome
        router.record_outcomes([instant.targets[t] for t in T], [float(q) for q in q_eff],
                               X if X.shape[1] == router.in_dim else None,
                               [t if t is not None else 0 for t in tokens])
    attention = _optional_part(ctx, "workers.cores.attention", "AttentionState", "attention")
    if attention is not None:
        for i in range(n):
            if relations[i] is not None:
                attention.nudge_relation(relations[i], 2.0 * (float(q_eff[i]) - 0.5))

    loop.events += n
    loop.boundaries += len(outcomes)
    loop.envelopes += 1
    return {"events": n, "boundaries": len(outcomes), "adapter_norm": instant.adapter_norm,
            "lr": instant.lr, "feedback_count": instant.feedback_count, "quality_ema": loop.ema}
