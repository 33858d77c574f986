"""NumPy reference of the deep core (spec: cores.md, Deep core). Tests only."""
from __future__ import annotations

from collections import deque

import numpy as np

__all__ = ("FISHER_DECAY", "LAMBDA", "RING_CAP", "BOUNDARY_Z", "MIN_STD",
           "fisher_ema", "ewc_penalty", "LossWindowRef", "DeepRef")

FISHER_DECAY = 0.999
LAMBDA = 2000.0
RING_CAP = 10
BOUNDARY_Z = 2.5
MIN_STD = 1e-4


def fisher_ema(F: np.ndarray, g: np.ndarray, decay: float = FISHER_DECAY) -> np.ndarray:
    """0.999*F + 0.001*g^2 in float32 (the weights each rounded once to float32)."""
    return np.float32(decay) * F + np.float32(1.0 - decay) * g * g


def ewc_penalty(F: np.ndarray, snap: np.ndarray, theta: np.ndarray, lam: float = LAMBDA) -> float:
    n = min(len(F), len(snap), len(theta))
    d = theta[:n] - snap[:n]
    return float(lam) * float(np.sum((F[:n] * d * d).astype(np.float64)))


class LossWindowRef:
    """record_loss by the book: prior stats decide, window stats (with the new loss) are reported."""

    def __init__(self) -> None:
        self.ring: deque[float] = deque(maxlen=RING_CAP)
        self.boundaries = 0

    def record(self, loss: float) -> dict:
        if not np.isfinite(loss):
            w = np.asarray(self.ring, np.float32)
            return {"boundary_fired": False, "window_mean": float(w.mean()) if len(w) else 0.0,
                    "window_stddev": float(w.std()) if len(w) else 0.0, "samples": len(w),
                    "boundaries_total": self.boundaries}
        prior = np.asarray(self.ring, np.float32)
        self.ring.append(float(np.float32(loss)))
        fired = False
        if len(prior) >= 3:
            mu = prior.mean(dtype=np.float32)
            sd = max(prior.std(dtype=np.float32), np.float32(MIN_STD))
            fired = bool(abs(np.float32(loss) - mu) / sd > BOUNDARY_Z)
        if fired:
            self.boundaries += 1
        w = np.asarray(self.ring, np.float32)
        return {"boundary_fired": fired, "window_mean": float(w.mean(dtype=np.float32)),
                "window_stddev": float(w.std(dtype=np.float32)), "samples": len(w),
                "boundaries_total": self.boundaries}


class DeepRef:
    """consolidate / ewc_penalty by the book."""

    def __init__(self, lam: float = LAMBDA) -> None:
        self.lam = lam
        self.fisher: dict[str, np.ndarray] = {}
        self.snap: dict[str, np.ndarray] = {}

    def consolidate(self, param_id: str, params: np.ndarray, grads: np.ndarray) -> dict:
        params = np.asarray(params, np.float32)
        grads = np.asarray(grads, np.float32)
        F = self.fisher.get(param_id, np.zeros(0, np.float32))
        n = len(params)
        F = np.concatenate([F[:n], np.zeros(max(n - len(F), 0), np.float32)])
        self.fisher[param_id] = fisher_ema(F, grads)
        self.snap[param_id] = params.copy()
        return {"param_id": param_id, "fisher_len": n}

    def penalty(self, param_id: str, theta: np.ndarray) -> float:
        if param_id not in self.fisher:
            return 0.0
        return ewc_penalty(self.fisher[param_id], self.snap[param_id], np.asarray(theta, np.float32), self.lam)
