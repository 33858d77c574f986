"""Attention core: 8-head graph attention with edge features (spec: cores.md, Attention core).

The arithmetic is the C++ kernel ``workers._kernels.GraphAttention`` (cpp/attention.h);
this module holds the state and turns a subgraph into the kernel's arrays.

State is small: Wq, Wk, Wv and Wo are a pure function of ``seed`` (one mulberry32
stream, bit-exact), so :class:`AttentionState` stores only ``dim``, ``heads``,
``head_dim``, ``seed`` and the learned edge projection ``We`` (head_dim x 7), and
the kernel regenerates the rest on load.
"""
from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from workers import _kernels
from workers.verbs.fields import epoch_ms, to_float
from workers.verbs.codec import embedding_field
from workers.errors import CorruptStateError, VerbError
from workers.verbs.registry import VerbContext, health_contributor, params, verb

__all__ = ("RELATIONS", "WEEK_MS", "AttentionState", "relation_index")


RELATIONS = ("hnsw-neighbor", "entity", "mention", "episode", "saga")
WEEK_MS = 604_800_000
PART = "attention"  # the part's name in the session's StateBlob
_DEFAULT_HEADS = 8
_DEFAULT_SEED = 42
# each nudge scales a relation's We column by at most 1 +/- 5 %
_NUDGE_RATE = np.float32(0.05)
# [beyond] ... and stops growing once an entry reaches this magnitude (the column is scaled back to it,
# its direction kept): the spec's rule has no bound, and an outside trial's 1,832 positive nudges (the
# learning loop nudges on every feedback event) took a column to inf and every attend after to NaN.
# Far past this the softmax is already one-hot; the init's entries are below 1.
_WE_MAX = np.float32(1e3)
# dim x (heads*head_dim) floats per projection matrix, four of them held in memory per
# session: 4096 x 4096 is already 64 MiB each, beyond any embedding model in use
_MAX_DIM = 4096
_EDGE_FEATURES = len(RELATIONS) + 2
assert _EDGE_FEATURES == _kernels.ATTENTION_EDGE_FEATURES
_NO_EDGE = float(_kernels.ATTENTION_NO_EDGE)
_UNKNOWN = float(_kernels.ATTENTION_UNKNOWN_RELATION)
# state bytes: magic, format version, dim, heads, head_dim, seed; then We (LE float32)
_HEADER = struct.Struct("<4sBIIII")
_MAGIC = b"LSAT"
_VERSION = 1


def relation_index(relation: Any) -> int | None:
    """Vocabulary index of a relation's base (the part before ``-L``), or None."""
    if not isinstance(relation, str):
        return None
    base = relation.split("-L", 1)[0]
    try:
        return RELATIONS.index(base)
    except ValueError:
        return None


class AttentionState:
    """One session's graph attention.

    Parameters
    ----------
    dim
        Embedding size of the query and the nodes.
    heads
        Number of heads (default 8).
    head_dim
        Size of each head (default ``dim // heads``).
    seed
        mulberry32 seed of every weight matrix (default 42).

    Attributes
    ----------
    we
        The learned edge projection (head_dim x 7, float32); nudged by feedback.

    Examples
    --------
    >>> a = AttentionState(64)
    >>> out = a.attend(np.ones(64, dtype=np.float32), {"nodes": [], "edges": []})
    >>> len(out["vector"]), out["weights"]
    (64, [])
    >>> a.nudge_relation("entity-L2", 1.0), a.nudge_relation("unknown", 1.0)
    (True, False)
    """

    def __init__(self, dim: int, heads: int | None = None, head_dim: int | None = None,
                 seed: int | None = None) -> None:
        self.dim = dim
        self.heads = heads
        self.head_dim = head_dim
        self.seed = seed
        self._kernel: Any = None
        self._we: np.ndarray | None = None

    # -- lazily built from the hyperparameters ---------------------------------
    @property
    def kernel(self) -> Any:
        if self._kernel is None:
            heads = _DEFAULT_HEADS if self.heads is None else self.heads
            self._kernel = _kernels.GraphAttention(
                self.dim, heads, self.head_dim or 0, _DEFAULT_SEED if self.seed is None else self.seed)
        return self._kernel

    @property
    def we(self) -> np.ndarray:
        if self._we is None:
            self._we = self.kernel.initial_we()
        return self._we

    # -- learning ----------------------------------------------------------------
    def nudge_relation(self, relation: str, signed_quality: float) -> bool:
        """Scale the relation's We column by ``1 + 0.05 * clamp(signed_quality, -1, 1)``.

        Unknown relations and non-finite qualities are a no-op. Returns whether
        We changed (the learning loop calls this with ``2 * (q_eff - 0.5)``).
        """
        idx = relation_index(relation)
        try:
            sq = to_float(signed_quality)
        except (TypeError, ValueError):
            return False
        if idx is None or not math.isfinite(sq):
            return False
        scale = np.float32(1.0) + np.float32(min(max(sq, -1.0), 1.0)) * _NUDGE_RATE
        col = self.we[:, idx]
        col *= scale
        top = float(np.abs(col).max(initial=0.0))
        if not math.isfinite(top):  # an overflowed column of a state saved before the bound: nothing left to keep
            col[:] = 0.0
        elif top > _WE_MAX:
            col *= np.float32(_WE_MAX / top)
        return True

    # -- inference ---------------------------------------------------------------
    def subgraph_arrays(self, subgraph: dict, now_ms: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(nodes n x dim, edge rows n x 3) for the kernel; nodes without an
        embedding of length ``dim`` are skipped, as the spec says."""
        nodes = subgraph.get("nodes") or []
        edges = subgraph.get("edges") or []
        if not isinstance(nodes, list) or not isinstance(edges, list):
            raise VerbError("subgraph.nodes and subgraph.edges must be arrays")
        first_edge: dict[str, dict] = {}
        for j, e in enumerate(edges):
            if not isinstance(e, dict):
                raise VerbError(f"subgraph.edges[{j}] must be a JSON object")
            dst = e.get("dst")
            if isinstance(dst, str):
                first_edge.setdefault(dst, e)
        rows, feats = [], []
        for i, node in enumerate(nodes):
            if not isinstance(node, dict):
                raise VerbError(f"subgraph.nodes[{i}] must be a JSON object")
            x = embedding_field(node, "embedding", required=False, prefix=f"subgraph.nodes[{i}].")
            if x is None or x.size != self.dim:
                continue
            rows.append(x)
            edge = first_edge.get(node.get("id")) if isinstance(node.get("id"), str) else None
            if edge is None:
                feats.append((_NO_EDGE, 0.0, 0.0))
                continue
            ts = node.get("created_at") or 0
            if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(to_float(ts)):
                raise VerbError(f"subgraph.nodes[{i}].created_at must be a number (epoch ms)")
            w = edge.get("weight")
            w = 1.0 if w is None else w
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(to_float(w)):
                raise VerbError("subgraph edge weight must be a finite number")
            rel = relation_index(edge.get("relation"))
            # ts - now in exact integer ms first; float32 only after (epoch ms exceed f32's 24 bits)
            feats.append((_UNKNOWN if rel is None else float(rel), float(min(int(ts) - int(now_ms), 0)), float(w)))
        x = np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)
        return x, np.asarray(feats, dtype=np.float32).reshape(len(feats), 3)

    def attend(self, query: np.ndarray, subgraph: dict, now_ms: int = 0) -> dict:
        """``{vector, weights (heads x n), n_nodes}`` for ``query`` over ``subgraph``."""
        query = np.asarray(query, dtype=np.float32)
        if query.shape != (self.dim,):
            raise VerbError(f"attention: query_emb must be len {self.dim}")
        x, e = self.subgraph_arrays(subgraph, now_ms)
        vector, weights = self.kernel.attend(query, x, e, self.we)
        if not (np.isfinite(vector).all() and np.isfinite(weights).all()):
            raise VerbError("attention output is not finite: this session's relation weights overflowed "
                            "(nudged past float32 before they were bounded); init_attention makes them anew")
        nodes = subgraph.get("nodes") or []
        return {"vector": vector.tolist(), "weights": weights.tolist() if len(x) else [], "n_nodes": len(nodes)}

    # -- persistence --------------------------------------------------------------
    def to_bytes(self) -> bytes:
        k = self.kernel
        we = np.ascontiguousarray(self.we, dtype="<f4")
        return _HEADER.pack(_MAGIC, _VERSION, k.dim, k.heads, k.head_dim, k.seed) + we.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> AttentionState:
        if len(data) < _HEADER.size:
            raise CorruptStateError(f"attention state too short ({len(data)} bytes)")
        magic, version, dim, heads, head_dim, seed = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise CorruptStateError("not an attention state (bad magic)")
        if version != _VERSION:
            raise CorruptStateError(f"attention state version {version} is unknown (this build reads {_VERSION})")
        n = head_dim * _EDGE_FEATURES
        if len(data) != _HEADER.size + 4 * n:
            raise CorruptStateError(f"attention state holds {len(data) - _HEADER.size} bytes of We, expected {4 * n}")
        state = cls(dim, heads, head_dim, seed)
        state._we = np.frombuffer(data, dtype="<f4", count=n, offset=_HEADER.size).astype(
            np.float32).reshape(head_dim, _EDGE_FEATURES)
        return state


# ---------------------------------------------------------------- verbs
def _positive_int(body: dict, name: str, default: int | None) -> int:
    """A positive int field; absent -> ``default`` (``None``: required)."""
    v = body.get(name)
    if v is None:
        if default is None:
            raise VerbError(f"{name} required")
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise VerbError("dim/heads/head_dim must be > 0")
    return v


def _loaded(ctx: VerbContext) -> AttentionState:
    state = ctx.state.get(PART, AttentionState) if ctx.state is not None else None
    if state is None:
        raise VerbError("attention not initialized")
    return state


@verb("init_attention", table="session", writes=True, topic="commands", params=params(
    ("dim",), dim={"type": "integer", "minimum": 1, "maximum": _MAX_DIM},
    heads={"type": "integer", "minimum": 1, "description": "default 8"},
    head_dim={"type": "integer", "minimum": 1, "description": "default dim / heads; heads * head_dim <= 4096"},
    seed={"type": "integer", "minimum": 0, "maximum": 2**32 - 1, "description": "default 42"}))
def init_attention(ctx: VerbContext, body: dict) -> dict:
    """``{dim, heads?=8, head_dim?=dim/heads, seed?=42}`` -> ``{dim, heads, head_dim}``.
    Replaces any existing attention state (We starts from the seed again)."""
    dim = _positive_int(body, "dim", None)
    heads = _positive_int(body, "heads", _DEFAULT_HEADS)
    head_dim = _positive_int(body, "head_dim", dim // heads)
    if head_dim == 0:  # the default dim // heads when dim < heads
        raise VerbError("dim/heads/head_dim must be > 0")
    seed = body.get("seed", _DEFAULT_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 32:
        raise VerbError("seed must be an integer in [0, 2^32)")
    if dim > _MAX_DIM or heads * head_dim > _MAX_DIM:
        raise VerbError(f"dim and heads*head_dim must be <= {_MAX_DIM}")
    state = AttentionState(dim, heads, head_dim, seed)
    state.kernel  # noqa: B018 - build now, so a refused init never replaces the old state
    ctx.state.set(PART, state)
    return {"dim": dim, "heads": heads, "head_dim": head_dim}


@verb("attend", table="session", writes=False)
def attend(ctx: VerbContext, body: dict) -> dict:
    """``{query, subgraph: {nodes, edges}, now_ms?=0}`` -> ``{vector, weights, n_nodes}``."""
    state = _loaded(ctx)
    if body.get("query") is None and body.get("query_b64") is None:
        raise VerbError("query required")
    subgraph = body.get("subgraph")
    if subgraph is None:
        raise VerbError("subgraph required")
    if not isinstance(subgraph, dict):
        raise VerbError("subgraph must be a JSON object")
    if body.get("query") == []:
        raise VerbError(f"attention: query_emb must be len {state.kernel.dim}")
    query = embedding_field(body, "query")
    return state.attend(query, subgraph, epoch_ms(body, "now_ms", 0))


@verb("nudge_relation", table="session", writes=True, topic="commands")
def nudge_relation(ctx: VerbContext, body: dict) -> dict:
    """``{relation, signed_quality}`` -> ``{relation, nudged}`` (false for an unknown relation)."""
    relation = body.get("relation")
    if not isinstance(relation, str):
        raise VerbError("relation required")
    sq = body.get("signed_quality")
    if isinstance(sq, bool) or not isinstance(sq, (int, float)):
        raise VerbError("signed_quality required")
    return {"relation": relation, "nudged": _loaded(ctx).nudge_relation(relation, sq)}


@health_contributor
def _attention_health(ctx: VerbContext) -> dict:
    return {"attention_ready": ctx.state is not None and ctx.state.has(PART)}
