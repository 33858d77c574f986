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

``params`` is the JSON Schema of a verb's body for clients (MCP tool schemas, docs)
when the body is not already a topic's value: a verb applied from its own topic is
described by that topic's schema in ``topics/`` (see ``workers.kafka.topics.body_schema``). The verb
itself stays the judge of its input, with its own messages.

A write verb may also have a *coalesced* form (``@coalesced``): many messages of one
session checked one by one as they arrive, then applied in one call, with exactly the
outcome, downstream events and reply each message would have had alone. The worker uses it for runs of single events,
so one event per message learns at the cost of an envelope.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from workers.state.base import ModelStore
from workers.state.blob import StateBlob

__all__ = ("Verb", "VerbContext", "VerbOptions", "Each", "REGISTRY", "HEALTH", "STATE_SIZE", "state_size", "BLOB_TABLES", "TABLES", "keys_table", "verb", "coalesced",
           "health_contributor", "params", "EMBEDDING", "EMBEDDING_B64")

# Tables holding one state value (a StateBlob with its watermark) per session.
BLOB_TABLES = ("session", "learner", "agent", "memory")
TABLES = (*BLOB_TABLES, "graph", "none")


def keys_table(table: str) -> str | None:
    """The table whose session value keeps the idempotency keys of a write to ``table``
    (``workers.state.idempotency``): its own; for the graph, kept key by key with no session value, the
    session's value in ``session`` (in the worker both go out in the batch's one transaction); None for
    a verb without state."""
    if table in BLOB_TABLES:
        return table
    return "session" if table == "graph" else None


@dataclass(frozen=True)
class VerbOptions:
    """What the operator configures for the verbs (``Settings.verb_options()``; LearnSession takes it too).

    None is the spec's value. The process-wide parts (scoring allowlist, protocols embedder) are
    applied once by :func:`workers.verbs.surface.configure`; the rest reaches verbs as ``ctx.options``.
    """

    lr_min: float | None = None          # instant core's lr floor for new adapters (capped at LR0)
    ewc_lambda: float | None = None      # deep core's EWC strength for new deep states
    protocols_embedder: str = ""         # "package.module:factory" for strategy similarity; "" = word overlap
    scoring_endpoints: tuple[str, ...] = ()  # the only URLs scoring backends may call


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
    options: VerbOptions = field(default_factory=VerbOptions)  # the operator's settings for verbs


@dataclass
class Each:
    """One message's outcome inside a coalesced call: its data and what it emitted."""

    data: Any = None
    emitted: list[tuple[str, dict]] = field(default_factory=list)


# (ctx, body) -> the body checked and compacted, or VerbError/ValidationError with the verb's own message
Prepare = Callable[[VerbContext, dict], Any]
# (ctx, prepared items, sources) -> one Each per item, in order; ctx.emit and ctx.source are unused
Many = Callable[[VerbContext, list[Any], Sequence[dict | None]], list[Each]]


@dataclass(frozen=True)
class Verb:
    name: str
    fn: Callable[[VerbContext, dict], Any]
    table: str
    writes: bool
    topic: str | None
    many: Many | None = None                      # the coalesced form, if any
    joins: Callable[[dict], bool] | None = None   # may this body be applied by ``many``
    prepare: Prepare | None = None                # checks one body for ``many``, as it arrives
    params: dict | None = None                    # JSON Schema of the body (None: the topic's, or any object)
    envelope: str | None = None                   # the field of a body that carries several events, if any


REGISTRY: dict[str, Verb] = {}
HEALTH: list[tuple[str, Callable[[VerbContext], dict]]] = []  # (table, contributor)
# verb -> fn(body) -> (the field that drives it, bytes) of state a configuring verb can make a session hold
STATE_SIZE: dict[str, Callable[[dict], tuple[str, int] | None]] = {}


def verb(name: str, *, table: str, writes: bool, topic: str | None = None, params: dict | None = None,
         envelope: str | None = None) -> Callable:
    """Register ``fn`` as verb ``name``. Write verbs default to the ``commands`` topic.

    ``params``: the body's JSON Schema (build it with :func:`params`), for verbs whose body
    is no topic's value (reads, and writes on ``commands``). ``envelope``: the field whose array
    carries several events in one body (the worker's metrics count those events, not the message).
    """
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}")

    def deco(fn: Callable[[VerbContext, dict], Any]) -> Callable[[VerbContext, dict], Any]:
        if name in REGISTRY:
            raise ValueError(f"verb {name!r} registered twice")
        REGISTRY[name] = Verb(name, fn, table, writes, (topic or "commands") if writes else None, params=params,
                              envelope=envelope)
        return fn

    return deco


def coalesced(name: str, *, joins: Callable[[dict], bool], prepare: Prepare) -> Callable[[Many], Many]:
    """Register ``fn`` as the coalesced form of write verb ``name`` (for bodies where ``joins`` holds).

    ``prepare(ctx, body)`` runs as each message arrives: it refuses the body exactly as ``name``
    alone would (same error), or returns a compact item; a refusal changes nothing. Items must stay
    valid whatever the other items of the run do. ``fn(ctx, items, sources)`` then applies them
    in one call, giving each exactly the data and downstream events (with its own source) that
    ``name`` alone would have given, and leaving the state as applying them one by one would.
    Preparing on arrival keeps a run small in memory (a decoded body is dropped at once).
    """
    def deco(fn: Many) -> Many:
        v = REGISTRY.get(name)
        if v is None or not v.writes:
            raise ValueError(f"coalesced: {name!r} is not a registered write verb")
        REGISTRY[name] = replace(v, many=fn, joins=joins, prepare=prepare)
        return fn

    return deco


def state_size(name: str) -> Callable:
    """Declare how much state configuring verb ``name``'s body can make a session hold once its buffers
    are full: ``fn(body) -> (field, bytes)``, or None when the verb itself refuses the body. The worker
    and LearnSession refuse a body over the session limit before it reaches the log
    (``workers.state.limits.check_request``)."""
    def deco(fn: Callable[[dict], tuple[str, int] | None]) -> Callable[[dict], tuple[str, int] | None]:
        STATE_SIZE[name] = fn
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


# an embedding in a verb body: a JSON array, or (faster) ``embedding_b64``
EMBEDDING = {"type": "array", "items": {"type": "number"}, "minItems": 1}
EMBEDDING_B64 = {"type": "string", "description": "the embedding as little-endian float32, base64 (instead of embedding)"}


def params(required: Sequence[str] = (), **props: Any) -> dict:
    """A verb body's JSON Schema: an object of ``props`` (each a JSON Schema) with ``required`` names.

    Extra fields stay allowed (verbs ignore what they do not read; ``session_key`` is common to all).
    """
    return {"type": "object", "properties": props, "required": list(required)}
