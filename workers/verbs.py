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
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers.state.base import ModelStore
from workers.state.blob import StateBlob

__all__ = ("Verb", "VerbContext", "REGISTRY", "HEALTH", "BLOB_TABLES", "TABLES", "verb", "health_contributor")

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


@dataclass(frozen=True)
class Verb:
    name: str
    fn: Callable[[VerbContext, dict], Any]
    table: str
    writes: bool
    topic: str | None


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
