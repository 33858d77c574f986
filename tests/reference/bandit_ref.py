"""NumPy reference of the router's contextual bandit (``cpp/router.h``, namespace ``bandit``; tests only).

Written from the formulas in ``workers/cores/bandit.py``: the projection from
mulberry32 + Box-Muller, the features ``[P x_hat; squares; 1]``, the LinUCB score and the
Sherman-Morrison update with forgetting, in float64 after the float32 projection.
"""
from __future__ import annotations

import math

import numpy as np
from reference.router_ref import Mulberry32, randn

__all__ = ("projection", "features", "choose", "update")

_PROJ_SALT = 0xB4D1


def projection(seed: int, dim: int, in_dim: int) -> np.ndarray:
    rng = Mulberry32(seed ^ _PROJ_SALT)
    s = np.float32(1.0 / math.sqrt(in_dim))
    return np.array([randn(rng) * s for _ in range(dim * in_dim)], np.float32).reshape(dim, in_dim)


def features(P: np.ndarray, x: np.ndarray, squares: int = 0) -> np.ndarray:
    """[z; (z_i^2 - 1) / sqrt(2) for i < squares; 1] with z = P x_hat."""
    n2 = float(np.dot(x.astype(np.float64), x.astype(np.float64)))
    s = math.sqrt(P.shape[1] / n2) if n2 > 0 else 0.0
    z = s * (P.astype(np.float64) @ x.astype(np.float64))
    return np.concatenate([z, (z[:squares] ** 2 - 1.0) * math.sqrt(0.5), [1.0]])


def choose(Ainv: np.ndarray, theta: np.ndarray, cost: np.ndarray | None, phi: np.ndarray, alpha: float,
           lam: float) -> tuple[int, int, bool]:
    mean = theta @ phi
    width = np.sqrt(np.maximum(np.einsum("i,kij,j->k", phi, Ainv, phi), 0.0))
    g = mean - (lam * cost if cost is not None else 0.0)
    s = g + alpha * width
    tied = bool(np.all(np.abs(s - s[0]) <= 1e-12 * (1.0 + abs(s[0]))))
    return int(np.argmax(s)), int(np.argmax(g)), tied


def update(Ainv: np.ndarray, b: np.ndarray, phi: np.ndarray, r: float, gamma: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(Ainv', b', prediction before) for one outcome: the inverse of gamma A + phi phi^T, computed directly."""
    A = np.linalg.inv(Ainv)
    A2 = gamma * A + np.outer(phi, phi)
    b2 = gamma * b + r * phi
    return np.linalg.inv(A2), b2, float((Ainv @ b) @ phi)
