"""NumPy reference of the router core, straight from the spec's formulas (tests only).

Written independently of ``cpp/router.h``: a pure-Python mulberry32, Box-Muller,
the 90% mask, the FastGRNN cell, the five heads and the signed softmax
cross-entropy step, all in float32 NumPy.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ("Mulberry32", "randn", "init", "hidden", "heads", "decide", "train_step", "context_bucket",
           "ema_milli", "HIDDEN", "RANK", "BUCKETS")

HIDDEN, RANK, BUCKETS = 128, 8, 5
_M = 0xFFFFFFFF
f32 = np.float32


class Mulberry32:
    """mulberry32 with explicit u32 wrapping."""

    def __init__(self, seed: int) -> None:
        self.a = seed & _M

    def next(self) -> np.float32:
        self.a = (self.a + 0x6D2B79F5) & _M
        t = self.a
        t = ((t ^ (t >> 15)) * (t | 1)) & _M
        t ^= (t + (((t ^ (t >> 7)) * (t | 61)) & _M)) & _M
        return f32(t ^ (t >> 14)) / f32(4294967296.0)


def randn(rng: Mulberry32) -> np.float32:
    u, v = float(rng.next()), float(rng.next())
    return f32(math.sqrt(-2.0 * math.log(max(u, 1e-9))) * math.cos(2.0 * math.pi * v))


def _fill(rng: Mulberry32, shape: tuple[int, ...], n_in: int) -> np.ndarray:
    scale = f32(1.0 / math.sqrt(n_in))
    return np.array([randn(rng) * scale for _ in range(math.prod(shape))], dtype=np.float32).reshape(shape)


def init(seed: int, in_dim: int, nt: int) -> dict[str, np.ndarray]:
    rng = Mulberry32(seed)
    V = _fill(rng, (RANK, in_dim), in_dim)
    U = _fill(rng, (HIDDEN, RANK), RANK)
    mask = Mulberry32(seed ^ 0x9E37)
    for i in range(HIDDEN):
        for r in range(RANK):
            if mask.next() < f32(0.9):
                U[i, r] = 0.0
    hr = Mulberry32(seed ^ 0xA17C)
    W_model = _fill(hr, (nt, HIDDEN), HIDDEN)
    W_ctx = _fill(hr, (BUCKETS, HIDDEN), HIDDEN)
    w_temperature = _fill(hr, (HIDDEN,), HIDDEN)
    w_top_p = _fill(hr, (HIDDEN,), HIDDEN)
    w_confidence = _fill(hr, (HIDDEN,), HIDDEN)
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    return {"V": V, "U": U, "bh": z(HIDDEN), "bz": z(HIDDEN), "W_model": W_model, "b_model": z(nt),
            "W_ctx": W_ctx, "b_ctx": z(BUCKETS), "w_temperature": w_temperature, "b_temperature": z(1),
            "w_top_p": w_top_p, "b_top_p": z(1), "w_confidence": w_confidence, "b_confidence": z(1)}


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return (f32(1.0) / (f32(1.0) + np.exp(-a))).astype(np.float32)


def hidden(w: dict[str, np.ndarray], x: np.ndarray, normalize: bool = False) -> np.ndarray:
    """w = U(Vx); pre = w + bh; z = sigma(pre + bz); h = (1 - z) tanh(pre)."""
    x = np.asarray(x, np.float32)
    t = w["V"] @ x
    if normalize:
        n2 = float(np.dot(x.astype(np.float64), x))
        if n2 > 0:
            t = t * f32(math.sqrt(x.size / n2))
    pre = w["U"] @ t + w["bh"]
    z = _sigmoid(pre + w["bz"])
    return ((f32(1.0) - z) * np.tanh(pre)).astype(np.float32)


def heads(w: dict[str, np.ndarray], h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    model = w["W_model"] @ h + w["b_model"]
    ctx = w["W_ctx"] @ h + w["b_ctx"]
    tpc = np.array([
        0.1 + 1.4 * _sigmoid(w["w_temperature"] @ h + w["b_temperature"][0]),
        0.5 + 0.5 * _sigmoid(w["w_top_p"] @ h + w["b_top_p"][0]),
        _sigmoid(w["w_confidence"] @ h + w["b_confidence"][0]),
    ], dtype=np.float32)
    return model.astype(np.float32), ctx.astype(np.float32), tpc


def decide(w: dict[str, np.ndarray], x: np.ndarray, normalize: bool = False,
           adapter: np.ndarray | None = None) -> tuple[int, float, int, float, float, float]:
    model, ctx, tpc = heads(w, hidden(w, x, normalize))
    if adapter is not None:
        model = model + np.asarray(adapter, np.float32)
    best = int(np.argmax(model))  # numpy's argmax is the first maximum
    e = np.exp(model - model[best])
    p = float(1.0 / e.sum())
    return best, p, int(np.argmax(ctx)), float(tpc[0]), float(tpc[1]), float(tpc[2]) * p


def train_step(w: dict[str, np.ndarray], x: np.ndarray, target: int, bucket: int, lr: float,
               normalize: bool = False) -> None:
    """In place: W -= lr (softmax(Wh + b) - onehot) h^T for the model and the context head."""
    h = hidden(w, x, normalize)
    for W, b, k in (("W_model", "b_model", target), ("W_ctx", "b_ctx", bucket)):
        logits = w[W] @ h + w[b]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        p[k] -= 1.0
        w[W] -= (f32(lr) * np.outer(p, h)).astype(np.float32)
        w[b] -= (f32(lr) * p).astype(np.float32)


def context_bucket(tokens: int) -> int:
    for i, cap in enumerate((1000, 4000, 16000, 64000)):
        if tokens <= cap:
            return i
    return 4


def ema_milli(milli: int, q: float) -> int:
    """round(1000 (0.9 milli/1000 + 0.1 q)) in float32, half away from zero."""
    v = f32(1000) * (f32(0.9) * (f32(milli) / f32(1000)) + f32(0.1) * f32(min(max(q, 0.0), 1.0)))
    return int(math.floor(float(v) + 0.5))
