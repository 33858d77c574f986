"""NumPy reference of cpp/online.h (used only by tests): the same formulas, written plainly.

Computed in float64 so the kernel's float32 result is compared against the exact value.
"""
from __future__ import annotations

import numpy as np

__all__ = ("n_params", "unpack", "forward", "step", "fisher_diag")


def n_params(d: int, h: int, c: int) -> int:
    return h * d + h + c * h + c if h else c * d + c


def unpack(theta: np.ndarray, d: int, h: int, c: int) -> dict[str, np.ndarray]:
    t = np.asarray(theta, dtype=np.float64)
    if h:
        W1, t = t[:h * d].reshape(h, d), t[h * d:]
        b1, t = t[:h], t[h:]
        W2, t = t[:c * h].reshape(c, h), t[c * h:]
        return {"W1": W1, "b1": b1, "W2": W2, "b2": t[:c]}
    return {"W": t[:c * d].reshape(c, d), "b": t[c * d:c * d + c]}


def _hidden(p: dict, X: np.ndarray) -> np.ndarray:
    return np.maximum(X @ p["W1"].T + p["b1"], 0.0)


def forward(theta: np.ndarray, X: np.ndarray, h: int, c: int) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    p = unpack(theta, X.shape[1], h, c)
    if h:
        return _hidden(p, X) @ p["W2"].T + p["b2"]
    return X @ p["W"].T + p["b"]


def _softmax(z: np.ndarray, allow: np.ndarray | None = None) -> np.ndarray:
    z = np.where(allow, z, -np.inf) if allow is not None else z
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _grad_theta(theta: np.ndarray, X: np.ndarray, dZ: np.ndarray, h: int, c: int) -> np.ndarray:
    """dL/dtheta given dL/dZ (already divided by B), by plain backprop."""
    p = unpack(theta, X.shape[1], h, c)
    if h:
        H = _hidden(p, X)
        dH = (dZ @ p["W2"]) * (H > 0)
        return np.concatenate([(dH.T @ X).ravel(), dH.sum(0), (dZ.T @ H).ravel(), dZ.sum(0)])
    return np.concatenate([(dZ.T @ X).ravel(), dZ.sum(0)])


def step(theta: np.ndarray, velocity: np.ndarray | None, X: np.ndarray, y: np.ndarray, h: int, c: int, *,
         ce_w=None, mask=None, mse_w=None, target=None, kd_w=None, teacher=None, tau=1.0,
         fisher=None, anchor=None, ewc_lambda=0.0, lr=0.01, momentum=0.0):
    """Returns (new_theta, new_velocity, objective, logits, loss) without mutating the inputs."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    B = len(X)
    Z = forward(theta, X, h, c)
    onehot = np.eye(c)[y]
    P = _softmax(Z)
    loss = -np.log(P[np.arange(B), y])
    cw = np.ones(B) if ce_w is None else np.asarray(ce_w, dtype=np.float64)
    allow = None
    if mask is not None:
        allow = np.asarray(mask).astype(bool) | onehot.astype(bool)
    Pm = _softmax(Z, allow)
    ce = -np.log(Pm[np.arange(B), y])
    objective = (cw * ce).sum()
    dZ = cw[:, None] * (Pm - onehot)
    if mse_w is not None and target is not None:
        e = Z - np.asarray(target, dtype=np.float64)
        mw = np.asarray(mse_w, dtype=np.float64)
        objective += (mw * (e ** 2).mean(1)).sum()
        dZ += mw[:, None] * 2.0 * e / c
    if kd_w is not None and teacher is not None:
        T = np.asarray(teacher, dtype=np.float64)
        Q = _softmax(Z / tau)
        kw = np.asarray(kd_w, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(T > 0, T * (np.log(T) - np.log(Q)), 0.0).sum(1)
        objective += (kw * tau * tau * kl).sum()
        dZ += kw[:, None] * tau * (Q - T)
    g = _grad_theta(theta, X, dZ / B, h, c)
    th = np.asarray(theta, dtype=np.float64)
    v = velocity
    if velocity is not None and momentum:
        v = momentum * np.asarray(velocity, dtype=np.float64) + g
        th = th - lr * v
    else:
        th = th - lr * g
    if fisher is not None and anchor is not None and ewc_lambda:
        # proximal step: argmin_t lambda/2 F (t - anchor)^2 + (t - th)^2 / (2 lr)
        k = lr * ewc_lambda * np.asarray(fisher, dtype=np.float64)
        th = (th + k * np.asarray(anchor, dtype=np.float64)) / (1.0 + k)
    return th, v, objective / B, Z, loss


def fisher_diag(theta: np.ndarray, X: np.ndarray, y: np.ndarray, h: int, c: int) -> np.ndarray:
    """Mean over examples of the squared per-example gradient of log p(y|x), one example at a time."""
    X = np.asarray(X, dtype=np.float64)
    out = np.zeros(n_params(X.shape[1], h, c))
    for i in range(len(X)):
        z = forward(theta, X[i:i + 1], h, c)
        dz = _softmax(z) - np.eye(c)[[y[i]]]
        out += _grad_theta(theta, X[i:i + 1], dz, h, c) ** 2
    return out / len(X)
