"""The verb registry: each core module declares its verbs here with ``@verb``.

A verb is ``fn(ctx, body) -> data``; it raises :class:`VerbError` with the spec's
exact message and must validate everything before it mutates state, so a refused
request changes nothing. ``table`` says which state a verb touches:

- ``"session"``: the session's learning-loop blob (instant, deep, router, attention parts),
- ``"learner"``: the session's online-learner blob,
- ``"agent"``:   the session's agent protocols blob (outcomes, heuristics, anti-patterns, ...),
- ``"memory"``:  the session's memory-importance scoring blob,
- ``"graph"``:   the session's edges in ``ctx.store`` (keys under ``ctx.prefix``),
- ``"none"``:    nothing.

``writes`` verbs travel through a topic on the stream (``topic`` is the role in
``topics/``); reads are answered by the partition owner.

A write verb may also have a *coalesced* form (``@coalesced``): many messages of one
session applied in one call, with exactly the outcome, downstream events and reply
each message would have had alone. The worker uses it for runs of single events,
so one event per message learns at the cost of an envelope.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from workers.state.base import ModelStore
from workers.state.blob import StateBlob

__all__ = ("Verb", "VerbContext", "Each", "REGISTRY", "HEALTH", "BLOB_TABLES", "TABLES", "verb", "coalesced",
           "health_contributor")

# Tables holding one state value (a StateBlob with its watermark) per session.
BLOB_TABLES = ("session", "learner", "agent", "memory")
TABLES = (*BLOB_TABLES, "graph", "none")


@dataclass
class VerbContext:
    session_key: str
    state: StateBlob | None             # the blob of the verb's table (None for graph/none)
    store: ModelStore | None = None     # raw store, for the graph's keys
    prefix: bytes = b""                 # this session's key prefix in ``store``
    emit: Callable[[str, dict], None] = lambda role, payload: None  # downstream event
    rng: random.Random = field(default_factory=random.Random)       # exploration, injectable
    source: dict | None = None          # {"topic","partition","offset","timestamp_ms"} on the stream
    # this session's value of another blob table (read-only use: only ctx.state is written back)
    load: Callable[[str], StateBlob] | None = None


@dataclass
class Each:
    """One message's outcome inside a coalesced call: its data or its error, and what it emitted."""

    data: Any = None
    error: str | None = None
    emitted: list[tuple[str, dict]] = field(default_factory=list)


# (ctx, bodies, sources) -> one Each per body, in order; ctx.emit and ctx.source are unused
Many = Callable[[VerbContext, list[dict], Sequence[dict | None]], list[Each]]


@dataclass(frozen=True)
class Verb:
    name: str
    fn: Callable[[VerbContext, dict], Any]
    table: str
    writes: bool
    topic: str | None
    many: Many | None = None                      # the coalesced form, if any
    joins: Callable[[dict], bool] | None = None   # may this body be applied by ``many``


REGISTRY: dict[str, Verb] = {}
HEALTH: list[tuple[str, Callable[[VerbContext], dict]]] = []  # (table, contributor)


def verb(name: str, *, table: str, writes: bool, topic: str | None = None) -> Callable:
    """Register ``fn`` as verb ``name``. Write verbs default to the ``commands`` topic."""
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}")

    def deco(fn: Callable[[VerbContext, dict], Any]) -> Callable[[VerbContext, dict], Any]:
        if name in REGISTRY:
            raise ValueError(f"verb {name!r} registered twice")
        REGISTRY[name] = Verb(name, fn, table, writes, (topic or "commands") if writes else None)
        return fn

    return deco


def coalesced(name: str, *, joins: Callable[[dict], bool]) -> Callable[[Many], Many]:
    """Register ``fn`` as the coalesced form of write verb ``name`` (for bodies where ``joins`` holds).

    ``fn(ctx, bodies, sources)`` must give each body exactly what ``name`` alone would have
    given, in order (data or error, emitted events with that body's source), and leave the
    state exactly as applying them one by one would.
    """
    def deco(fn: Many) -> Many:
        v = REGISTRY.get(name)
        if v is None or not v.writes:
            raise ValueError(f"coalesced: {name!r} is not a registered write verb")
        REGISTRY[name] = replace(v, many=fn, joins=joins)
        return fn

    return deco


def health_contributor(fn: Callable[[VerbContext], dict] | None = None, *, table: str = "session") -> Callable:
    """Add keys to the ``health`` verb's answer; ``ctx.state`` is the session's value of ``table``.

    Use as ``@health_contributor`` (the learning-loop value) or ``@health_contributor(table="agent")``.
    """
    if table not in BLOB_TABLES:
        raise ValueError(f"table must be one of {BLOB_TABLES}")

    def deco(f: Callable[[VerbContext], dict]) -> Callable[[VerbContext], dict]:
        HEALTH.append((table, f))
        return f

    return deco(fn) if fn is not None else deco
