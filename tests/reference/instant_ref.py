"""NumPy reference of the instant core (spec: cores.md, Instant core). Tests only.

Written straight from the spec's formulas, independently of the C++ layout: A and
B are separate arrays, the replay buffer is a deque. Every arithmetic step is
float32 in the spec's order, so kernels can be compared step by step.
"""
from __future__ import annotations

from collections import deque

import numpy as np

__all__ = (
    "RANK", "DECAY", "LR0", "LR_MIN", "MAX_NORM", "REPLAY_CAP", "CLAMP_SLACK",
    "InstantRef", "clamp_norm", "ewc_pull", "weighted_pick", "adapter_forward",
)

RANK = 2
DECAY = np.float32(0.995)
LR0 = np.float32(0.01)
LR_MIN = np.float32(1e-3)
MAX_NORM = 5.0
REPLAY_CAP = 64
# the kernel rescales to MAX_NORM*(1 - 2^-20) so float rounding never leaves the norm above the bound
CLAMP_SLACK = 1.0 - 2.0 ** -20
_GOLDEN = 2654435761
_U32 = 0xFFFFFFFF
_INV_SQRT2 = np.float32(0.70710678)


def clamp_norm(theta: np.ndarray, max_norm: float = MAX_NORM) -> np.ndarray:
    """One global clamp: theta * max_norm/||theta|| when the norm exceeds max_norm."""
    nrm = float(np.sqrt(np.sum(theta.astype(np.float64) ** 2)))
    if nrm > max_norm:
        return theta * np.float32(max_norm * CLAMP_SLACK / nrm)
    return theta


def ewc_pull(theta: np.ndarray, F: np.ndarray, snap: np.ndarray, coef: float) -> np.ndarray:
    return theta - np.float32(coef) * F * (theta - snap)


def weighted_pick(scales: list[float] | np.ndarray, seed: int, ex: int) -> int | None:
    """The spec's weighted_pick over |scales| (logical order), excluding index ``ex``."""
    n = len(scales)
    if n <= 1:
        return None
    seed = (seed * _GOLDEN + 1) & _U32
    r = np.float32(seed) / np.float32(2.0 ** 32)
    abs_s = [np.float32(abs(np.float32(s))) for s in scales]
    total = np.float32(0.0)
    for i in range(n):
        if i != ex:
            total = np.float32(total + abs_s[i])
    if not total > 0:
        i = seed % n
        return (i + 1) % n if i == ex else i
    thr = np.float32(r * total)
    run = np.float32(0.0)
    last = None
    for i in range(n):
        if i == ex:
            continue
        run = np.float32(run + abs_s[i])
        last = i
        if run > thr:
            return i
    return last


def adapter_forward(A: np.ndarray, B: np.ndarray, X: np.ndarray) -> np.ndarray:
    """p_r = A_r . x; logits_k = sum_r B[r,k] p_r, for a row or a batch."""
    return (X @ A.T) @ B


class InstantRef:
    """The instant core by the book."""

    def __init__(self, dim: int, nt: int, lr_min: float | None = None) -> None:
        self.dim, self.nt = dim, nt
        self.A = np.zeros((RANK, dim), np.float32)
        self.B = np.zeros((RANK, nt), np.float32)
        self.lr = LR0
        self.lr_min = np.float32(LR_MIN if lr_min is None else lr_min)
        self.feedback_count = 0
        self.resets = 0
        self.replay: deque[tuple[np.ndarray, int, np.float32]] = deque(maxlen=REPLAY_CAP)
        self.ewc: tuple[np.ndarray, np.ndarray, np.float32] | None = None

    @property
    def theta(self) -> np.ndarray:
        return np.concatenate([self.A.ravel(), self.B.ravel()])

    def _set_theta(self, theta: np.ndarray) -> None:
        k = RANK * self.dim
        self.A = theta[:k].reshape(RANK, self.dim).astype(np.float32)
        self.B = theta[k:].reshape(RANK, self.nt).astype(np.float32)

    def norm(self) -> float:
        return float(np.sqrt(np.sum(self.theta.astype(np.float64) ** 2)))

    def hebbian_update(self, x: np.ndarray, t: int, s: float) -> None:
        x = np.asarray(x, np.float32)
        eta = np.float32(self.lr * np.float32(s))
        for r in range(RANK):
            b = self.B[r, t]
            if b == 0:
                b = _INV_SQRT2
            self.A[r] += np.float32(eta * b) * x
        for r in range(RANK):
            self.B[r, t] += np.float32(eta * np.float32(np.dot(self.A[r], x)))
        theta = self.theta
        if self.ewc is not None:
            F, snap, lam = self.ewc
            theta = ewc_pull(theta, F, snap, np.float32(self.lr * lam))
        self.lr = max(np.float32(self.lr * DECAY), self.lr_min)
        self._set_theta(clamp_norm(theta))

    def feedback(self, x: np.ndarray, t: int, q: float, now_ms: int = 0) -> bool:
        self.feedback_count += 1
        c = np.float32(np.float32(q) - np.float32(0.5))
        if abs(c) < np.float32(1e-4):
            return False
        scale = np.float32(2.0) * c
        self.hebbian_update(x, t, scale)
        self.replay.append((np.array(x, np.float32), t, scale))
        if len(self.replay) >= 4:
            seed = ((now_ms & _U32) * _GOLDEN) & _U32
            pick = weighted_pick([e[2] for e in self.replay], seed, len(self.replay) - 1)
            if pick is not None:
                xp, tp, sp = self.replay[pick]
                self.hebbian_update(xp, tp, np.float32(0.5) * sp)
        return True

    def logits(self, X: np.ndarray) -> np.ndarray:
        return adapter_forward(self.A, self.B, np.asarray(X, np.float32))

    def reset(self) -> None:
        self.A[:] = 0
        self.B[:] = 0
        self.lr = LR0
        self.resets += 1

    def set_ewc(self, F: np.ndarray, snap: np.ndarray, lam: float) -> None:
        self.ewc = (np.array(F, np.float32), np.array(snap, np.float32), np.float32(lam))
