"""The learning loop: what a worker does with feedback events (spec: cores.md, The learning loop).

Per event, with the session's quality EMA m (first event: m = q)::

    q_eff = 0.7 q + 0.3 m;  loss = max(1 - q_eff, 0);  boundary = detector(loss)
    instant.feedback(q_eff)
    on a boundary: deep.consolidate("adapter", [A; B], g_i = x[i mod dim] q_eff), hand the EWC
                   state to the instant core, reset the adapter, emit boundary + consolidation
    router.record_outcome(model, q_eff, embedding=x)          if a "router" part exists
    attention.nudge_relation(relation, 2 (q_eff - 0.5))       if an "attention" part exists
                                                               and the event names a relation

The boundary detector is the session's ``boundary`` mode: ``"cusum"`` (default,
[beyond]: :class:`~workers.cores.boundary.LossCusum`, a CUSUM of lasting loss rises
that does not fire on ordinary noise) or ``"zscore"`` (the spec's ``deep.record_loss``,
the reference's 10-loss z-score, which also fires on a few percent of ordinary
events). A ``learn_feedback`` body (or envelope) may set it with ``boundary``; the
choice persists. Both count into the deep core's ``boundaries_total``. The
``record_loss`` verb always uses the reference z-score.

An envelope ``{session_key, events: [...]}`` carries many events of one session.
All events are validated before anything changes. Then the losses go first (the
loss window depends on nothing else), and the instant updates between two
boundaries run as one GIL-free batch kernel call; the result equals applying the
events one by one exactly, because the batch kernel is the per-event kernel in a loop.
"""
from __future__ import annotations

import logging
import math
import struct
from collections.abc import Callable, Sequence

import numpy as np

from workers.cores.attention import PART as ATTENTION_PART
from workers.cores.attention import AttentionState
from workers.cores.boundary import LossCusum
from workers.cores.deep import DeepState, LossOutcome, boundary_event, consolidation_event, hand_ewc
from workers.cores.instant import (NOT_INITIALIZED, InstantState, read_embedding, read_model, read_now_ms,
                                   read_quality)
from workers.cores.router import PART as ROUTER_PART
from workers.cores.router import RouterState
from workers.errors import CorruptStateError, VerbError
from workers.verbs.registry import Each, VerbContext, coalesced, verb

__all__ = ("QUALITY_EMA_RATE", "Q_WEIGHT", "BOUNDARY_MODES", "LoopState", "ModelLevels", "learn_feedback", "learn_feedback_each",
           "ADAPTER_PARAM_ID")

logger = logging.getLogger(__name__)

# The session quality EMA moves 10% toward each raw quality: a memory of about ten
# events, the same horizon as the router's outcome EMA (0.9 old + 0.1 new).
QUALITY_EMA_RATE = 0.1
Q_WEIGHT = 0.7                    # q_eff = 0.7 q + 0.3 EMA (the spec's mix)
ADAPTER_PARAM_ID = "adapter"      # the param_id the loop consolidates θ = [A; B] under
_CONSOLIDATION_CAUSE = "boundary"
# an envelope larger than this is refused whole (the topic schema's maxItems)
_MAX_EVENTS = 10_000

_FMT = struct.Struct("<3sB?dqqqB")   # magic, version, has_ema, ema, events, boundaries, envelopes, mode
_FMT_V1 = struct.Struct("<3sB?dqqq")
_LEVELS = struct.Struct("<dqdI")     # version 3, after _FMT: ModelLevels (weighted, n, ema, models)
_MAGIC = b"LSL"
_VERSION = 4                         # 4: + each model's arrival (ModelLevels.arrived)
# Each model's usual quality (ModelLevels): a running mean for its first LEVEL_HORIZON answers, then an
# EMA over about that many.
LEVEL_HORIZON = 200
# A model other than the session's first is kept out of the detector for its first EARLY_WARM answers
# (its level is a mean of that many by then); one first served after LATE_AFTER answers of the session
# is *late* (a new model rolled out) and waits LATE_WARM answers.
EARLY_WARM = 5
LATE_AFTER = 100
LATE_WARM = 30
BOUNDARY_MODES = ("cusum", "zscore")     # index = the stored byte
_CUSUM_CAUSE = "loss_cusum"
_CUSUM_PART = "boundary"


class ModelLevels:
    """What the CUSUM detector sees: each answer's quality measured against its own model's usual
    quality. A router that serves a worse model for a stretch (or two models in turns) moves the
    session's quality level without a new task; measured against each model's own level, those
    stretches are ordinary answers, while a new task lowers every model's answers at once.

    Per event, before it counts: ``q_adj = q - (level_m - level_0)``, where ``level_m`` is the model's
    usual quality (a running mean, then an EMA over about LEVEL_HORIZON of its answers) and ``level_0``
    that of the session's first model (the anchor). Then the loop's mix with its own EMA, as for the
    instant core. With one model ``q_adj`` is ``q`` exactly, and the anchor's own answers count as they are.

    The reference is one model's level, not a mix of them: a mean weighted by how often each model was
    served (the first form) moved with the serving mix, so in a long run of a worse model, early in a
    session, the reference sank towards it, the offset shrank and the run read as a new task; a plain mean
    jumps whenever a model is first served. An independent trial's world of three models (0.85 / 0.6 /
    0.35, sd 0.1) served in runs of mean length 10 reset the adapter in 17 of 20 runs of 10,000 events;
    none in 20 now (bench/README.md "boundaries", thirty-ninth session).

    A model other than the anchor has no level when it is first served, and a worse one's first answers
    read as a new task: its first EARLY_WARM answers are kept out of the detector (their losses are NaN,
    which it skips), and then its offset counts in full. A model first served after the session's first
    LATE_AFTER answers (a new model rolled out) waits LATE_WARM answers: a worse one taking half the
    traffic reset the adapter at its arrival in each of 8 runs with a shorter wait (thirty-third session).
    ``weighted`` (the served-mix level of the first form) is still kept, for the stored format."""

    __slots__ = ("weighted", "n", "ema", "means", "counts", "arrived")

    def __init__(self) -> None:
        self.weighted = 0.0             # sum over models of n_m * level_m (the first form's reference, stored)
        self.n = 0
        self.ema: float | None = None   # EMA of q_adj (the loop's quality EMA, for the detector)
        self.means: list[float] = []    # level_m by target index
        self.counts: list[int] = []     # n_m
        self.arrived: list[int] = []    # the session's answers before the model's first (-1: none yet)

    def losses(self, targets: list[int], qualities: list[float]) -> np.ndarray:
        """The detector's losses for these events (targets are indices), counting them in."""
        means, counts, arrived = self.means, self.counts, self.arrived
        if targets and max(targets) >= len(means):
            grow = max(targets) + 1 - len(means)
            means.extend([0.0] * grow)
            counts.extend([0] * grow)
            arrived.extend([-1] * grow)
        weighted, n, ema = self.weighted, self.n, self.ema
        out = []
        anchor = self._anchor()
        for t, q in zip(targets, qualities):
            c, old = counts[t], means[t]
            if c == 0:
                arrived[t] = n
                if anchor is None:
                    anchor = t  # the session's first answer
            if t != anchor and c < (LATE_WARM if arrived[t] >= LATE_AFTER else EARLY_WARM):
                out.append(math.nan)  # kept out of the detector until its level is known
            else:
                adj = q if t == anchor else q - (old - means[anchor])
                if ema is None:
                    ema = adj
                out.append(Q_WEIGHT * adj + (1.0 - Q_WEIGHT) * ema)
                ema = ema + QUALITY_EMA_RATE * (adj - ema)
            means[t] = new = old + (q - old) / min(c + 1, LEVEL_HORIZON)
            counts[t] = c + 1
            weighted += (c + 1) * new - c * old
            n += 1
        self.weighted, self.n, self.ema = weighted, n, ema
        # through float32 as the loop's own q_eff, so that with one model the losses are the same bits
        # (NaN, a late model's first answers, stays NaN)
        return np.maximum(1.0 - np.array(out, np.float32).astype(np.float64), 0.0)

    def _anchor(self) -> int | None:
        """The session's first model (a version 3 state, which kept no arrivals, has several that arrived
        first: the one served most), or None before any answer."""
        first = [i for i, a in enumerate(self.arrived) if a == 0 and self.counts[i]]
        return max(first, key=self.counts.__getitem__) if first else None

    def to_bytes(self) -> bytes:
        k = len(self.means)
        return (_LEVELS.pack(self.weighted, self.n, self.ema if self.ema is not None else math.nan, k)
                + struct.pack(f"<{k}d{k}q{k}q", *self.means, *self.counts, *self.arrived))

    @classmethod
    def from_bytes(cls, data: bytes, version: int = _VERSION) -> ModelLevels:
        """Version 3 has no arrivals: every model it knows counts as served from the start."""
        ints = 2 if version >= 4 else 1  # counts, then arrivals
        try:
            weighted, n, ema, k = _LEVELS.unpack_from(data)
            values = struct.unpack(f"<{k}d{ints * k}q", data[_LEVELS.size:])
        except struct.error:
            raise CorruptStateError(f"loop state: model levels of {len(data)} bytes do not parse") from None
        means, counts = list(values[:k]), list(values[k:2 * k])
        arrived = list(values[2 * k:]) if ints == 2 else [0 if c else -1 for c in counts]
        # every event counts once, for its model: the counts add up to n (a corrupt state must not
        # become the detector's input); a model arrives once served, before the session's n-th answer
        if (n < 0 or min(counts, default=0) < 0 or sum(counts) != n or math.isinf(ema)
                or not all(math.isfinite(v) for v in (weighted, *means))
                or any((a < 0) != (c == 0) or a >= max(n, 1) for a, c in zip(arrived, counts))):
            raise CorruptStateError("loop state: model levels out of range")
        obj = cls()
        obj.weighted, obj.n, obj.ema = weighted, n, None if math.isnan(ema) else ema
        obj.means, obj.counts, obj.arrived = means, counts, arrived
        return obj


class LoopState:
    """The loop's own counters: the session quality EMA, events, boundaries, envelopes, boundary mode,
    and each model's usual quality (:class:`ModelLevels`, for the CUSUM)."""

    __slots__ = ("ema", "events", "boundaries", "envelopes", "boundary_mode", "levels")

    def __init__(self) -> None:
        self.ema: float | None = None
        self.events = 0
        self.boundaries = 0
        self.envelopes = 0
        self.boundary_mode = BOUNDARY_MODES[0]
        self.levels = ModelLevels()

    def to_bytes(self) -> bytes:
        return _FMT.pack(_MAGIC, _VERSION, self.ema is not None, self.ema or 0.0, self.events, self.boundaries,
                         self.envelopes, BOUNDARY_MODES.index(self.boundary_mode)) + self.levels.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> LoopState:
        levels = None
        try:
            if len(data) == _FMT_V1.size:   # version 1: before the boundary mode (the default applies)
                magic, version, has_ema, ema, events, boundaries, envelopes = _FMT_V1.unpack(data)
                mode, expect = 0, 1
            else:
                magic, version, has_ema, ema, events, boundaries, envelopes, mode = _FMT.unpack_from(data)
                # version 2 (before the model levels): they start from nothing; 3: without arrivals
                expect = 2 if len(data) == _FMT.size else (3 if version == 3 else _VERSION)
                if version == expect and version >= 3:
                    levels = ModelLevels.from_bytes(data[_FMT.size:], version)
        except struct.error:
            raise CorruptStateError(f"loop state has {len(data)} bytes, expected at least {_FMT.size}") from None
        if magic != _MAGIC or version != expect or mode >= len(BOUNDARY_MODES):
            raise CorruptStateError("not a loop state of this version")
        obj = cls()
        if levels is not None:
            obj.levels = levels
        obj.ema = ema if has_ema else None
        obj.events, obj.boundaries, obj.envelopes = events, boundaries, envelopes
        obj.boundary_mode = BOUNDARY_MODES[mode]
        return obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoopState) and other.to_bytes() == self.to_bytes()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"LoopState(ema={self.ema}, events={self.events}, boundaries={self.boundaries}, "
                f"boundary_mode={self.boundary_mode})")


def _boundary_mode(body: dict) -> str | None:
    mode = body.get("boundary")
    if mode is not None and mode not in BOUNDARY_MODES:
        raise VerbError(f"boundary must be one of {', '.join(BOUNDARY_MODES)}")
    return mode


# an event's own fields: beside an envelope's events they would be dropped without a word (the topic
# schema's envelope and event forms are one or the other)
_EVENT_FIELDS = ("model", "quality", "payload", "embedding", "embedding_b64", "relation", "estimated_tokens",
                 "now_ms")


def _events_of(ctx: VerbContext, body: dict) -> tuple[list[dict], bool]:
    events = body.get("events")
    if events is None:
        return [body], False
    beside = [f for f in _EVENT_FIELDS if body.get(f) is not None]
    if beside:
        raise VerbError(f"an envelope carries its events in events; {', '.join(beside)} beside them would "
                        f"be ignored: move them into each event")
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


def _read_event(instant: InstantState, ev: dict, p: str) -> tuple:
    """One event checked in the spec's order: (x, target, quality, now_ms, relation, tokens)."""
    q = read_quality(ev, p)                 # the spec's order: quality, embedding, model
    x = read_embedding(ev, instant.dim, p)
    t = read_model(ev, instant, p)
    now = read_now_ms(ev, p)
    rel = ev.get("relation")
    if rel is not None and not isinstance(rel, str):
        raise VerbError(f"{p}relation must be a string")
    tok = ev.get("estimated_tokens")
    if tok is not None and (isinstance(tok, bool) or not isinstance(tok, int) or tok < 0):
        raise VerbError(f"{p}estimated_tokens must be a non-negative integer")
    return x, t, q, now, rel or None, tok


class _Events:
    """Validated events as arrays, ready for the batch kernels."""

    __slots__ = ("X", "T", "Q", "NOW", "relations", "tokens")

    def __init__(self, instant: InstantState, rows: list[tuple]) -> None:
        xs, ts, qs, nows, relations, tokens = zip(*rows) if rows else ((),) * 6
        self.X = np.concatenate(xs).reshape(len(rows), instant.dim) if rows else np.empty((0, instant.dim), np.float32)
        self.T = np.array(ts, np.int64)
        self.Q = np.array(qs, np.float64)
        self.NOW = np.array(nows, np.int64)
        self.relations: list[str | None] = list(relations)
        self.tokens: list[int | None] = list(tokens)

    def __len__(self) -> int:
        return len(self.relations)


def _validate(instant: InstantState, events: list[dict], envelope: bool) -> _Events:
    """Every event checked (the spec's order), before anything changes."""
    return _Events(instant, [_read_event(instant, ev, f"events[{i}]: " if envelope else "")
                             for i, ev in enumerate(events)])


class _Applied:
    """What applying a sequence of events did, event by event."""

    __slots__ = ("fired", "ema", "trace")

    def __init__(self, n: int, trace: bool) -> None:
        self.fired: list[int] = []                 # indices of the events that fired a boundary
        self.ema: list[float] = []                 # the session quality EMA after each event
        self.trace = np.empty((n, 2)) if trace else None  # (adapter_norm, lr) after each event


Emit = Callable[[int, str, dict], None]   # (event index, role, payload)


def _boundaries(ctx: VerbContext, loop: LoopState, losses: np.ndarray) -> tuple[list, str]:
    """The firings among ``losses`` as (index, LossOutcome), by the session's boundary mode, and their cause."""
    if loop.boundary_mode == "zscore":
        return ctx.state.get("deep", DeepState).observe_losses(losses), "loss_zscore"
    det = ctx.state.get(_CUSUM_PART, LossCusum) or LossCusum()
    ctx.state.set(_CUSUM_PART, det)
    out = []
    for i, v in enumerate(losses.tolist()):
        if det.push(v):
            f = det.last
            deep = ctx.state.get("deep", DeepState)  # decoded only now (made as bytes by _apply)
            deep.counters[1] += 1
            out.append((i, LossOutcome(True, v, f.statistic, f.mean, f.stddev, f.mean, f.stddev,
                                       f.samples, deep.boundaries)))
    return out, _CUSUM_CAUSE


def _apply(ctx: VerbContext, instant: InstantState, ev: _Events, emit: Emit, source_of: Callable[[int], dict | None],
           *, indexed: bool, messages: int, trace: bool, mode: str | None = None) -> _Applied:
    """The learning loop over validated events (the module docstring); ``source_of(i)`` goes into
    event i's downstream events, ``indexed`` adds their ``event_index`` (envelopes)."""
    n = len(ev)
    # The deep core changes only when a boundary fires (or in zscore mode): it is decoded then, not
    # on every event, so a cold session's save does not re-serialise an unchanged part.
    if not ctx.state.has("deep"):
        ctx.state.set_bytes("deep", DeepState(ctx.options.ewc_lambda).to_bytes())
    loop = ctx.state.get("loop", LoopState) or LoopState()
    ctx.state.set("loop", loop)
    if mode is not None:
        loop.boundary_mode = mode
    done = _Applied(n, trace)

    # the EMA is sequential (a plain loop, in float64 as before); q_eff is then stored as float32
    mixed = []
    ema = loop.ema
    for q in ev.Q.tolist():
        if ema is None:
            ema = q
        mixed.append(Q_WEIGHT * q + (1.0 - Q_WEIGHT) * ema)
        ema = ema + QUALITY_EMA_RATE * (q - ema)
        done.ema.append(ema)
    loop.ema = ema
    q_eff = np.array(mixed, np.float32)
    # losses depend on nothing else: the detector sees them all first and reports the firings. The
    # CUSUM's are measured against each answer's model (ModelLevels, kept up to date in either mode);
    # the z-score's are the loop's own, as the reference has them.
    by_model = loop.levels.losses(ev.T.tolist(), ev.Q.tolist())
    losses = np.maximum(1.0 - q_eff.astype(np.float64), 0.0) if loop.boundary_mode == "zscore" else by_model
    outcomes, cause = _boundaries(ctx, loop, losses)

    tr = done.trace
    start = 0
    for i, o in outcomes:
        instant.learn_checked(ev.X[start:i + 1], ev.T[start:i + 1], q_eff[start:i + 1], ev.NOW[start:i + 1],
                              None if tr is None else tr[start:i + 1])
        start = i + 1
        # grads_i = x[i mod dim] * q_eff: np.resize repeats x cyclically
        grads = np.resize(ev.X[i], instant.n_params) * q_eff[i]
        deep = ctx.state.get("deep", DeepState)
        deep.consolidate(ADAPTER_PARAM_ID, instant.theta, grads)
        hand_ewc(deep, instant, ADAPTER_PARAM_ID)
        instant.reset()
        if tr is not None:
            tr[i] = instant.adapter_norm, instant.lr
        done.fired.append(i)
        logger.debug("session %s: loss boundary (z=%.3g) at event %d; adapter consolidated and reset",
                     ctx.session_key, o.z, i)
        extra = {"event_index": i} if indexed else {}
        source = source_of(i)
        emit(i, "boundaries", boundary_event(ctx.session_key, o, source, cause, **extra))
        emit(i, "consolidations", consolidation_event(ctx.session_key, deep, ADAPTER_PARAM_ID,
                                                      _CONSOLIDATION_CAUSE, source, **extra))
    if start < n:
        instant.learn_checked(ev.X[start:], ev.T[start:], q_eff[start:], ev.NOW[start:],
                              None if tr is None else tr[start:])

    router = ctx.state.get(ROUTER_PART, RouterState)  # None unless the session has a router
    if router is not None:
        # one training kernel call for all events (equal to record_outcome row by row); an
        # embedding of another width than the router's trains nothing, as in record_outcome
        router.record_outcomes([instant.targets[t] for t in ev.T], [float(q) for q in q_eff],
                               ev.X if ev.X.shape[1] == router.in_dim else None,
                               [t if t is not None else 0 for t in ev.tokens])
    attention = ctx.state.get(ATTENTION_PART, AttentionState)
    if attention is not None:
        for i in range(n):
            if ev.relations[i] is not None:
                attention.nudge_relation(ev.relations[i], 2.0 * (float(q_eff[i]) - 0.5))

    loop.events += n
    loop.boundaries += len(outcomes)
    loop.envelopes += messages
    return done


@verb("learn_feedback", table="session", writes=True, topic="feedback", envelope="events")
def learn_feedback(ctx: VerbContext, body: dict) -> dict:
    """One feedback event, or ``{session_key, events: [...]}``, through the whole learning loop.
    ``boundary`` ("cusum" | "zscore") sets the session's boundary detector.

    Returns ``{events, boundaries, adapter_norm, lr, feedback_count, quality_ema}``.
    """
    mode = _boundary_mode(body)
    events, envelope = _events_of(ctx, body)
    instant = ctx.state.get("instant", InstantState)
    if instant is None:
        raise VerbError(NOT_INITIALIZED)
    ev = _validate(instant, events, envelope)
    done = _apply(ctx, instant, ev, lambda i, role, payload: ctx.emit(role, payload), lambda i: ctx.source,
                  indexed=envelope, messages=1, trace=False, mode=mode)
    loop = ctx.state.get("loop", LoopState)
    return {"events": len(ev), "boundaries": len(done.fired), "adapter_norm": instant.adapter_norm,
            "lr": instant.lr, "feedback_count": instant.feedback_count, "quality_ema": loop.ema}


def _single_event(body: dict) -> bool:
    return body.get("events") is None and body.get("boundary") is None


def _prepare_event(ctx: VerbContext, body: dict) -> tuple:
    """One single-event body checked as ``learn_feedback`` checks it alone."""
    instant = ctx.state.get("instant", InstantState)
    if instant is None:
        raise VerbError(NOT_INITIALIZED)
    return _read_event(instant, body, "")


@coalesced("learn_feedback", joins=_single_event, prepare=_prepare_event)
def learn_feedback_each(ctx: VerbContext, rows: list[tuple], sources: Sequence[dict | None]) -> list[Each]:
    """Prepared single events of one session in one pass: each gets exactly the reply and the
    downstream events (with its own source) it would have had alone, and the state ends the same.
    Feedback changes neither the dimension nor the targets, so rows prepared before the run
    started stay valid."""
    instant = ctx.state.get("instant", InstantState)
    count0 = instant.feedback_count
    emitted: dict[int, list[tuple[str, dict]]] = {}
    done = _apply(ctx, instant, _Events(instant, rows),
                  lambda i, role, payload: emitted.setdefault(i, []).append((role, payload)),
                  sources.__getitem__, indexed=False, messages=len(rows), trace=True)
    fired = set(done.fired)
    return [Each({"events": 1, "boundaries": int(i in fired), "adapter_norm": norm, "lr": lr,
                  "feedback_count": count0 + i + 1, "quality_ema": ema}, emitted.get(i, []))
            for i, ((norm, lr), ema) in enumerate(zip(done.trace.tolist(), done.ema))]
