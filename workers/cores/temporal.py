"""Temporal core: bi-temporal edges on the session's store (spec: cores.md, Temporal core).

An edge is active at ``t`` when ``valid_at <= t`` and (``invalid_at`` is absent or
``t < invalid_at``). Contradictions invalidate, never delete, so history stays
queryable. All state lives in ``ctx.store`` under the session prefix ``P``:

======================================================  ================================
key                                                     value
======================================================  ================================
``P + b"e" + id``                                       pointer: orjson ``[src, seq]`` or
                                                        ``[src, seq, {earlier_src: seq}]``
``P + b"s" + u32be(len(src)) + src + u64be(seq)``       the edge record (orjson)
``P + b"n"``                                            u64be: last sequence number issued
======================================================  ================================

- **By id**: ``get`` reads the pointer, then the record (two point reads).
- **By source**: ``query_at`` is one prefix scan over ``P + b"s" + u32be(len) + src``,
  which holds exactly that source's edges and nothing else (the length prefix
  keeps ``"a"`` from matching ``"ab"`` or ``"a\\x00b"``). Within a source, keys sort
  by ``seq``, i.e. by insertion order, which is the order the spec returns.
- **Upsert** rewrites the record in place; when an edge moves to another source its
  old index entry is deleted in the same write batch, so no stale entry survives.
  An edge keeps the seq it first got under each source (the pointer remembers
  earlier sources), so moving it back restores its original position, as the
  reference crate's append-once index does.

**Idempotent under redelivery.** Graph writes are not covered by the blob
watermark, so every write verb is idempotent: applying the same event twice
leaves byte-identical state. insert_edge re-puts the same record under the same
key (a seq is only issued for an (id, src) pair never seen before, and the pointer
remembers every pair); invalidate_edge with equal stamps re-applies the same
values; contradict is both in one batch. Replaying a whole window of events
likewise converges to the state the first pass left.
"""
from __future__ import annotations

import logging
import math
import struct
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from workers.verbs.codec import embedding_field
from workers.verbs.fields import to_float
from workers.errors import VerbError
from workers.state.base import ModelStore
from workers.verbs.registry import VerbContext, params, verb

__all__ = (
    "EDGE_FIELDS",
    "GRAPH_OPS",
    "EdgeStore",
    "validate_edge",
    "is_active",
)

logger = logging.getLogger(__name__)

EDGE_FIELDS = ("id", "src", "dst", "relation", "fact", "embedding", "weight", "group_id",
               "created_at", "expired_at", "valid_at", "invalid_at")
# op field of a graph.edges event -> the verb that applies it (the rest of the event is the body)
GRAPH_OPS = {"insert": "insert_edge", "invalidate": "invalidate_edge", "contradict": "contradict"}

# [beyond] sizes the reference does not bound: an id, source, destination or relation is a name of at most
# NAME_MAX characters, and an edge as stored at most EDGE_MAX_BYTES (far under Kafka's 1 MB record limit)
NAME_MAX = 1024
EDGE_MAX_BYTES = 512 * 1024
CONTRADICTS_MAX = 1000  # distinct edges one contradict invalidates

_TAG_PTR = b"e"
_TAG_SRC = b"s"
_TAG_SEQ = b"n"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")  # big-endian, so byte order = numeric order in the index
# timestamps are int64 epoch ms in the spec (and in the reference crate)
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
# edges per write batch in insert_many: big enough to amortise the batch, small
# enough that the pending overlay stays a few MB
_BULK_CHUNK = 20_000


# ---------------------------------------------------------------- validation
def _epoch_ms(value: Any, name: str) -> int:
    """An int64 epoch-ms stamp; integral floats (1000.0) are accepted as ints."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not _I64_MIN <= value <= _I64_MAX:
        raise VerbError(f"{name} must be an integer (epoch ms)")
    return value


def _json_number(v: int | float) -> int | float:
    """The number as given, except ints beyond int64 (which JSON encoders refuse) become floats."""
    return v if isinstance(v, float) or _I64_MIN <= v <= _I64_MAX else float(v)


def _optional_str(edge: dict, name: str) -> str | None:
    v = edge.get(name)
    if v is not None and not isinstance(v, str):
        raise VerbError(f"edge.{name} must be a string")
    return v


def validate_edge(raw: Any) -> dict:
    """Check an edge in the spec's order and return it normalised (absent fields dropped).

    Raises :class:`VerbError` with the spec's exact message for the spec's rules,
    then checks the optional fields' types. Unknown fields are ignored.
    """
    if not isinstance(raw, dict):
        raise VerbError("edge must be a JSON object")
    eid = raw.get("id")
    if not isinstance(eid, str) or not eid:
        raise VerbError("edge.id required")
    if "," in eid:
        raise VerbError("edge.id must not contain a comma (used as index delimiter)")
    src, dst = raw.get("src"), raw.get("dst")
    if not (isinstance(src, str) and src and isinstance(dst, str) and dst):
        raise VerbError("edge.src and edge.dst required")
    for name, v in (("id", eid), ("src", src), ("dst", dst)):
        _name(v, f"edge.{name}")
    if raw.get("valid_at") is None:
        raise VerbError("edge.valid_at required (bi-temporal)")
    valid_at = _epoch_ms(raw["valid_at"], "edge.valid_at")
    if raw.get("created_at") is None:
        raise VerbError("edge.created_at required (system-time)")
    created_at = _epoch_ms(raw["created_at"], "edge.created_at")
    invalid_at = raw.get("invalid_at")
    if invalid_at is not None:
        invalid_at = _epoch_ms(invalid_at, "edge.invalid_at")
        if invalid_at < valid_at:
            raise VerbError("edge.invalid_at must be >= edge.valid_at")
    expired_at = raw.get("expired_at")
    if expired_at is not None:
        expired_at = _epoch_ms(expired_at, "edge.expired_at")
    edge: dict[str, Any] = {"id": eid, "src": src, "dst": dst}
    for name in ("relation", "fact"):
        if (v := _optional_str(raw, name)) is not None:
            if name == "relation":
                _name(v, "edge.relation")
            edge[name] = v
    if (emb := raw.get("embedding")) is not None:
        embedding_field({"embedding": emb}, "embedding", prefix="edge.")  # raises on bad input
        edge["embedding"] = [_json_number(v) for v in emb]  # as given: get_edge returns what was inserted
    if (w := raw.get("weight")) is not None:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(to_float(w)):
            raise VerbError("edge.weight must be a finite number")
        edge["weight"] = _json_number(w)
    if (g := _optional_str(raw, "group_id")) is not None:
        edge["group_id"] = g
    edge["created_at"] = created_at
    if expired_at is not None:
        edge["expired_at"] = expired_at
    edge["valid_at"] = valid_at
    if invalid_at is not None:
        edge["invalid_at"] = invalid_at
    # its record, keyed by its source, and its pointer: each a changelog record the producer must take
    # (an outside trial's one edge with a 900 kB src made a 1.8 MB record: the worker crashed, and again
    # on every restart)
    size = len(orjson.dumps(edge)) + 2 * len(src.encode()) + len(eid.encode())
    if size > EDGE_MAX_BYTES:
        raise VerbError(f"edge too large: {size} bytes as stored, at most {EDGE_MAX_BYTES} (its fact and "
                        "embedding are kept whole)")
    return edge


def _name(v: str, field: str) -> None:
    """An id, source or destination: at most NAME_MAX characters, not blank."""
    if len(v) > NAME_MAX:  # every key of its source's edges holds it
        raise VerbError(f"{field} must be at most {NAME_MAX} characters (got {len(v)})")
    if v.isspace():
        raise VerbError(f"{field} is blank (a name needs a character other than whitespace)")


def is_active(edge: dict, t: int, known_at: int | None = None) -> bool:
    """Active at ``t``; with ``known_at`` = T', as believed at T' (spec **[beyond]**).

    At T' only edges created by T' exist, and an invalidation counts only if it
    was recorded by T' (``expired_at`` absent or ``<= T'``).
    """
    if edge["valid_at"] > t:
        return False
    invalid_at = edge.get("invalid_at")
    if known_at is not None:
        if edge["created_at"] > known_at:
            return False
        expired_at = edge.get("expired_at")
        if expired_at is not None and expired_at > known_at:
            invalid_at = None  # not yet recorded at T': the edge was still open
    return invalid_at is None or t < invalid_at


# ---------------------------------------------------------------- storage
class _Batch:
    """Read-your-writes overlay over a store, committed as one ``write_batch``.

    Every write verb stages into one of these and commits once, so a verb that
    fails validation half-way has written nothing (contradict's atomicity).
    """

    __slots__ = ("store", "ops")

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.ops: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.ops:
            return self.ops[key]
        return self.store.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.ops[key] = value

    def delete(self, key: bytes) -> None:
        self.ops[key] = None

    def commit(self) -> None:
        if self.ops:
            self.store.write_batch(self.ops)
            self.ops = {}


class EdgeStore:
    """The bi-temporal edges of one session (see the module docstring for the keys).

    Parameters
    ----------
    store
        Any :class:`ModelStore` (MemoryStore, RocksDictStore, the worker's table adapter).
    prefix
        The session's key prefix (``ctx.prefix``).

    Examples
    --------
    >>> from workers.state import MemoryStore
    >>> g = EdgeStore(MemoryStore(), b"g/")
    >>> g.insert(validate_edge({"id": "e1", "src": "alice", "dst": "acme",
    ...                         "valid_at": 1000, "created_at": 1000}))
    'e1'
    >>> [e["dst"] for e in g.query_at("alice", 1500)]
    ['acme']
    """

    def __init__(self, store: ModelStore, prefix: bytes = b"") -> None:
        self.store = store
        self.prefix = prefix

    # -- keys -----------------------------------------------------------------
    def _ptr_key(self, edge_id: str) -> bytes:
        return self.prefix + _TAG_PTR + edge_id.encode()

    def source_prefix(self, src: str) -> bytes:
        """The key prefix that holds exactly ``src``'s edges."""
        b = src.encode()
        return self.prefix + _TAG_SRC + _U32.pack(len(b)) + b

    def _rec_key(self, src: str, seq: int) -> bytes:
        return self.source_prefix(src) + _U64.pack(seq)

    # -- reads ----------------------------------------------------------------
    def _locate(self, reader: ModelStore | _Batch, edge_id: str) -> tuple[str, int, dict] | None:
        """(current src, seq, {src: seq} of every source the edge has lived in)."""
        raw = reader.get(self._ptr_key(edge_id))
        if raw is None:
            return None
        ptr = orjson.loads(raw)
        homes = ptr[2] if len(ptr) > 2 else {}
        homes[ptr[0]] = ptr[1]
        return ptr[0], ptr[1], homes

    def _read(self, reader: ModelStore | _Batch, edge_id: str) -> tuple[bytes, dict] | None:
        loc = self._locate(reader, edge_id)
        if loc is None:
            return None
        key = self._rec_key(loc[0], loc[1])
        raw = reader.get(key)
        if raw is None:  # a pointer without its record: never written by this module
            logger.error("edge %r: pointer without record at %r", edge_id, key)
            return None
        return key, orjson.loads(raw)

    def get(self, edge_id: str) -> dict | None:
        """The edge with this id, or None."""
        found = self._read(self.store, edge_id)
        return found[1] if found else None

    def edges_of(self, src: str) -> Iterator[dict]:
        """Every edge of ``src`` in insertion order (one prefix scan, no other source read)."""
        for _, raw in self.store.iter_prefix(self.source_prefix(src)):
            yield orjson.loads(raw)

    def query_at(self, src: str, t: int, *, limit: int = 0, known_at: int | None = None) -> list[dict]:
        """Active edges of ``src`` at ``t`` in insertion order; with ``limit > 0`` and
        more active edges than that, the ``limit`` newest by created_at (stable)."""
        edges = [e for e in self.edges_of(src) if is_active(e, t, known_at)]
        if 0 < limit < len(edges):
            edges.sort(key=lambda e: e["created_at"], reverse=True)  # stable: ties keep insertion order
            del edges[limit:]
        return edges

    def scan_query_at(self, src: str, t: int, *, known_at: int | None = None) -> list[dict]:
        """query_at by a full scan of every edge of the session (benchmark baseline only)."""
        out = []
        for _, raw in self.store.iter_prefix(self.prefix + _TAG_SRC):
            e = orjson.loads(raw)
            if e["src"] == src and is_active(e, t, known_at):
                out.append(e)
        return out

    # -- writes ---------------------------------------------------------------
    def _upsert(self, batch: _Batch, edge: dict, seq_state: list[int | None]) -> None:
        """Stage ``edge`` (already validated) into ``batch``; ``seq_state`` = [last seq issued]."""
        eid, src = edge["id"], edge["src"]
        loc = self._locate(batch, eid)
        homes: dict[str, int] = loc[2] if loc else {}
        seq = homes.get(src)
        if seq is None:
            if seq_state[0] is None:
                raw = batch.get(self.prefix + _TAG_SEQ)
                seq_state[0] = _U64.unpack(raw)[0] if raw else 0
            seq_state[0] += 1
            seq = homes[src] = seq_state[0]
        if loc is not None and loc[0] != src:
            batch.delete(self._rec_key(loc[0], loc[1]))  # moved: drop the old index entry
        others = {s: q for s, q in homes.items() if s != src}
        pointer = orjson.dumps([src, seq, others] if others else [src, seq])
        if len(pointer) > EDGE_MAX_BYTES:  # every source it lived under is remembered (nothing written yet)
            raise VerbError(f"edge {eid!r} has lived under {len(homes)} sources, {len(pointer)} bytes of them: at "
                            f"most {EDGE_MAX_BYTES}; give the fact a new id")
        batch.put(self._ptr_key(eid), pointer)
        batch.put(self._rec_key(src, seq), orjson.dumps(edge))

    def _finish(self, batch: _Batch, seq_state: list[int | None]) -> None:
        """Stage the seq counter if one was issued, then commit the batch."""
        if seq_state[0] is not None:
            batch.put(self.prefix + _TAG_SEQ, _U64.pack(seq_state[0]))
        batch.commit()

    def insert(self, edge: dict) -> str:
        """Upsert one validated edge (see :func:`validate_edge`); returns its id."""
        batch, seq_state = _Batch(self.store), [None]
        self._upsert(batch, edge, seq_state)
        self._finish(batch, seq_state)
        return edge["id"]

    def insert_many(self, edges: Iterable[dict], *, chunk: int | None = None) -> int:
        """Validate and upsert many edges, one write batch per ``chunk`` (bulk loads).

        Same result as inserting them one by one in order. A chunk that fails
        validation writes nothing; earlier chunks stay written. Returns the count.
        """
        chunk = chunk or _BULK_CHUNK
        n = 0
        batch, seq_state = _Batch(self.store), [None]
        for raw in edges:
            self._upsert(batch, validate_edge(raw), seq_state)
            n += 1
            if n % chunk == 0:
                self._finish(batch, seq_state)
        self._finish(batch, seq_state)
        return n

    def _invalidate(self, batch: _Batch, edge_id: str, invalid_at: int, expired_at: int) -> int:
        found = self._read(batch, edge_id)
        if found is None:
            raise VerbError(f"edge {edge_id} not found")
        key, edge = found
        current = edge.get("invalid_at")
        if current is not None and current < invalid_at:
            return current  # the earliest invalidation wins; unchanged
        if invalid_at < edge["valid_at"]:
            raise VerbError("invalid_at < edge.valid_at; would create negative interval")
        edge["invalid_at"] = invalid_at
        edge["expired_at"] = expired_at
        batch.put(key, orjson.dumps(validate_edge(edge)))  # re-normalised: field order stays canonical
        return invalid_at

    def invalidate(self, edge_id: str, invalid_at: int, expired_at: int) -> int:
        """Close an edge's validity; returns the edge's invalid_at afterwards
        (an earlier existing one wins and is returned unchanged)."""
        batch = _Batch(self.store)
        out = self._invalidate(batch, edge_id, invalid_at, expired_at)
        batch.commit()
        return out

    def contradict(self, new_edge: dict, contradicts: list[str], now_ms: int = 0) -> dict:
        """Invalidate each old edge at ``new_edge.valid_at`` (expired_at = now_ms),
        then insert ``new_edge``: validated completely, written in one batch."""
        batch, seq_state = _Batch(self.store), [None]
        for old_id in contradicts:
            self._invalidate(batch, old_id, new_edge["valid_at"], now_ms)
        self._upsert(batch, new_edge, seq_state)
        self._finish(batch, seq_state)
        if contradicts:
            return {"kind": "invalidated", "invalidated_edge_id": contradicts[0], "new_edge_id": new_edge["id"]}
        return {"kind": "inserted", "edge_id": new_edge["id"]}


# ---------------------------------------------------------------- verbs
def _edges(ctx: VerbContext) -> EdgeStore:
    assert ctx.store is not None, "graph verbs need ctx.store"
    return EdgeStore(ctx.store, ctx.prefix)


def _required_ms(body: dict, name: str) -> int:
    if body.get(name) is None:
        raise VerbError(f"{name} required")
    return _epoch_ms(body[name], name)


def _required_id(body: dict, name: str) -> str:
    v = body.get(name)
    if not isinstance(v, str) or not v:
        raise VerbError(f"{name} required")
    return v


@verb("insert_edge", table="graph", writes=True, topic="edges")
def insert_edge(ctx: VerbContext, body: dict) -> dict:
    """``{edge: {...}}`` -> ``{edge_id}``. Upsert by id.

    The reference crate's flat form (the edge's fields directly in the body) is
    accepted too when ``edge`` is absent.
    """
    raw = body.get("edge")
    edge = validate_edge(body if raw is None else raw)
    return {"edge_id": _edges(ctx).insert(edge)}


@verb("query_at", table="graph", writes=False, params=params(
    ("src", "t"), src={"type": "string", "minLength": 1, "description": "source node"},
    t={"type": "integer", "minimum": _I64_MIN, "maximum": _I64_MAX,
       "description": "valid time (epoch ms, int64 as in the spec) the edges must hold at"},
    known_at={"type": "integer", "minimum": _I64_MIN, "maximum": _I64_MAX,
              "description": "what was believed at this time (epoch ms; default: now)"},
    limit={"type": "integer", "minimum": 0, "maximum": _I64_MAX,
           "description": "0 = all, in insertion order; with more active edges than the limit, the limit newest "
                          "by created_at (spec)"}))
def query_at(ctx: VerbContext, body: dict) -> dict:
    """``{src, t, limit?, known_at?}`` -> ``{edges, count}``."""
    src = body.get("src")
    if src is not None and not isinstance(src, str):
        raise VerbError("src must be a string")
    if not src:
        raise VerbError("src required")
    t = _required_ms(body, "t")
    limit = body.get("limit", 0)
    if limit is None:
        limit = 0
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= _I64_MAX:
        raise VerbError(f"limit must be a non-negative integer, at most {_I64_MAX} (0: every edge)")
    known_at = body.get("known_at")
    if known_at is not None:
        known_at = _epoch_ms(known_at, "known_at")
    edges = _edges(ctx).query_at(src, t, limit=limit, known_at=known_at)
    return {"edges": edges, "count": len(edges)}


@verb("get_edge", table="graph", writes=False)
def get_edge(ctx: VerbContext, body: dict) -> dict:
    """``{edge_id}`` -> ``{edge}`` (``null`` when no such edge)."""
    return {"edge": _edges(ctx).get(_required_id(body, "edge_id"))}


@verb("invalidate_edge", table="graph", writes=True, topic="edges")
def invalidate_edge(ctx: VerbContext, body: dict) -> dict:
    """``{edge_id, invalid_at, expired_at}`` -> ``{edge_id, invalid_at}`` (the edge's
    invalid_at afterwards: an earlier one already set wins)."""
    edge_id = _required_id(body, "edge_id")
    invalid_at = _required_ms(body, "invalid_at")
    expired_at = _required_ms(body, "expired_at")
    return {"edge_id": edge_id, "invalid_at": _edges(ctx).invalidate(edge_id, invalid_at, expired_at)}


@verb("contradict", table="graph", writes=True, topic="edges")
def contradict(ctx: VerbContext, body: dict) -> dict:
    """``{edge, contradicts: [ids], now_ms?}`` -> ``{kind: "inserted", edge_id}`` or
    ``{kind: "invalidated", invalidated_edge_id, new_edge_id}``. Atomic.

    The new edge is ``edge`` (as on the graph.edges topic) or ``new_edge`` (the
    spec's and the reference crate's name); giving both is refused.
    """
    if body.get("edge") is not None and body.get("new_edge") is not None:
        raise VerbError("give the new edge as edge or new_edge, not both")
    raw = body.get("edge")
    if raw is None:
        raw = body.get("new_edge")
    if raw is None:
        raise VerbError("new_edge required")
    new_edge = validate_edge(raw)
    ids = body.get("contradicts", [])
    if ids is None:
        ids = []
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise VerbError("contradicts must be an array of edge ids")
    # [beyond] each id is read and rewritten whole: 40,000 repeats of one 512 KiB edge held a worker (and the
    # one it was redelivered to) for two minutes. A repeat invalidates nothing more (same stamps): one each.
    ids = list(dict.fromkeys(ids))
    if len(ids) > CONTRADICTS_MAX:
        raise VerbError(f"contradicts names {len(ids)} edges; at most {CONTRADICTS_MAX} per contradict")
    if new_edge["id"] in ids:
        # the upsert after the invalidation would replace the very fact it invalidates: its history gone
        raise VerbError(f"contradicts must not name the new edge ({new_edge['id']!r}): give the new fact an id "
                        "of its own")
    now_ms = body.get("now_ms")
    now_ms = 0 if now_ms is None else _epoch_ms(now_ms, "now_ms")
    return _edges(ctx).contradict(new_edge, ids, now_ms)
