"""NumPy reference of the attention core (spec: cores.md, Attention core). Tests only.

Written from the spec's formulas, independently of cpp/attention.h: pure-Python
mulberry32, the init order Wq, Wk, Wv, We, Wo, and attend over a subgraph dict.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ("RELATIONS", "WEEK_MS", "mulberry32", "init_weights", "layer_norm", "attend", "nudge")

RELATIONS = ["hnsw-neighbor", "entity", "mention", "episode", "saga"]
WEEK_MS = 604800000
_M32 = 0xFFFFFFFF


def mulberry32(seed: int, n: int) -> np.ndarray:
    """The first n draws of mulberry32(seed) as float32, all arithmetic wrapping u32."""
    a = seed & _M32
    out = np.empty(n, dtype=np.float32)
    for i in range(n):
        a = (a + 0x6D2B79F5) & _M32
        t = a
        t = ((t ^ (t >> 15)) * (t | 1)) & _M32
        t ^= (t + ((t ^ (t >> 7)) * (t | 61))) & _M32
        t &= _M32
        # f32(u32) / 2^32: the u32 rounds to float32 first, then the exact power-of-two division
        out[i] = np.float32(t ^ (t >> 14)) / np.float32(4294967296.0)
    return out


def init_weights(dim: int, heads: int = 8, head_dim: int | None = None, seed: int = 42) -> dict[str, np.ndarray]:
    head_dim = dim // heads if head_dim is None else head_dim
    proj = heads * head_dim
    shapes = [("wq", proj, dim, dim), ("wk", proj, dim, dim), ("wv", proj, dim, dim),
              ("we", head_dim, 7, 7), ("wo", dim, proj, proj)]
    u = mulberry32(seed, sum(r * c for _, r, c, _ in shapes))
    out, pos = {}, 0
    for name, r, c, fan in shapes:
        scale = np.float32(1.0) / np.sqrt(np.float32(fan))
        out[name] = ((u[pos:pos + r * c] * np.float32(2.0) - np.float32(1.0)) * scale).reshape(r, c)
        pos += r * c
    out["heads"], out["head_dim"] = heads, head_dim  # type: ignore[assignment]
    return out


def layer_norm(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    mean = x.mean(dtype=np.float32)
    var = ((x - mean) ** 2).mean(dtype=np.float32)
    return ((x - mean) / np.sqrt(var + np.float32(1e-5))).astype(np.float32)


def _rel_index(relation: str | None) -> int | None:
    if relation is None:
        return None
    base = relation.split("-L")[0]
    return RELATIONS.index(base) if base in RELATIONS else None


def attend(w: dict, query, subgraph: dict, now_ms: int = 0) -> tuple[np.ndarray, list[list[float]]]:
    """(vector, weights heads x n) by the book."""
    q = np.asarray(query, dtype=np.float32)
    dim, heads, hd = q.size, w["heads"], w["head_dim"]
    valid = [n for n in subgraph.get("nodes", [])
             if n.get("embedding") is not None and len(n["embedding"]) == dim]
    if not valid:
        return layer_norm(q), []
    Q = w["wq"] @ q
    X = np.asarray([n["embedding"] for n in valid], dtype=np.float32)
    K = X @ w["wk"].T
    V = X @ w["wv"].T
    for i, node in enumerate(valid):
        edge = next((e for e in subgraph.get("edges", []) if e["dst"] == node.get("id")), None)
        if edge is None:
            continue
        f = np.zeros(7, dtype=np.float32)
        idx = _rel_index(edge.get("relation"))
        if idx is not None:
            f[idx] = 1.0
        age = min((node.get("created_at") or 0) - now_ms, 0)
        f[5] = math.exp(age / WEEK_MS)
        f[6] = 1.0 if edge.get("weight") is None else edge["weight"]
        K[i] += np.tile(w["we"] @ f, heads)
    weights = np.zeros((heads, len(valid)), dtype=np.float32)
    concat = np.zeros(heads * hd, dtype=np.float32)
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        s = (K[:, sl] @ Q[sl]) / np.sqrt(np.float32(hd))
        e = np.exp(np.maximum(s - s.max(), np.float32(-30.0)))
        weights[h] = e / e.sum()
        concat[sl] = weights[h] @ V[:, sl]
    out = w["wo"] @ concat + q
    return layer_norm(out), weights.tolist()


def nudge(w: dict, relation: str, signed_quality: float) -> None:
    """In place, as the spec says: We[:, rel] *= 1 + 0.05 * clamp(sq, -1, 1)."""
    idx = _rel_index(relation)
    if idx is None or not math.isfinite(signed_quality):
        return
    w["we"][:, idx] *= np.float32(1.0) + np.float32(max(-1.0, min(1.0, signed_quality))) * np.float32(0.05)
