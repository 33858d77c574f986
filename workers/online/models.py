"""Models of the online learner: softmax regression and a one-hidden-layer MLP.

Both are a flat float32 parameter vector over the fused kernel of ``cpp/online.h``
(``workers._kernels.online_step``): one call does forward, backward, the EWC,
dark-experience-replay and distillation gradients, and the SGD (momentum) update.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from workers import _kernels
from workers.online.base import Model

__all__ = ("SoftmaxRegression", "MLP", "softmax", "cross_entropy")

# SGD with heavy-ball momentum; chosen on digits streams (bench/continual.py): the
# best single-pass joint accuracy, and no divergence with EWC (its step is proximal).
_DEFAULT_LR = 0.02
_DEFAULT_MOMENTUM = 0.9
_DEFAULT_HIDDEN = 128


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``z / temperature`` (float32)."""
    z = np.asarray(z, dtype=np.float32) / np.float32(temperature)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row ``-log proba[y]`` (floored, so a confident mistake costs ~27.6, not inf)."""
    return -np.log(np.maximum(proba[np.arange(len(y)), y], 1e-12))


class _KernelModel(Model):
    """Shared plumbing: lazy parameter init, the kernel calls, state."""

    _hidden: int = 0

    def _init_theta(self, rng: np.random.Generator, d: int, c: int) -> np.ndarray:
        raise NotImplementedError

    def _shape(self) -> tuple[int, int]:
        if self.n_features is None or self.n_classes is None:
            raise ValueError(f"{type(self).__name__} needs n_features and n_classes")
        if self.n_features < 1 or self.n_classes < 2:
            raise ValueError("n_features must be >= 1 and n_classes >= 2")
        return int(self.n_features), int(self.n_classes)

    def _ensure(self) -> None:
        if self._theta is None:
            d, c = self._shape()
            self._theta = self._init_theta(np.random.default_rng(self.seed), d, c).astype(np.float32)
            self._velocity = np.zeros_like(self._theta) if self._momentum else None

    def in_force(self) -> dict[str, Any]:
        return {"lr": self._lr, "momentum": self._momentum}

    @property
    def _lr(self) -> float:
        return _DEFAULT_LR if self.lr is None else float(self.lr)

    @property
    def _momentum(self) -> float:
        return _DEFAULT_MOMENTUM if self.momentum is None else float(self.momentum)

    @property
    def theta(self) -> np.ndarray:
        self._ensure()
        return self._theta  # type: ignore[return-value]

    @theta.setter
    def theta(self, value: np.ndarray) -> None:
        self._ensure()
        self._theta[:] = value  # type: ignore[index]

    @property
    def n_params(self) -> int:
        d, c = self._shape()
        return int(_kernels.online_n_params(d, self._hidden, c))

    def logits(self, X: np.ndarray, theta: np.ndarray | None = None) -> np.ndarray:
        self._ensure()
        th = self._theta if theta is None else theta
        return _kernels.online_forward(th, np.asarray(X, dtype=np.float32), self._hidden, self.n_classes)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(self.logits(X))

    def step(self, X: np.ndarray, y: np.ndarray, **terms: Any) -> tuple[float, np.ndarray, np.ndarray]:
        """One fused SGD step (terms: ce_w, mask, mse_w, target, kd_w, teacher, tau, fisher, anchor, ewc_lambda)."""
        self._ensure()
        return _kernels.online_step(self._theta, self._velocity, X, np.asarray(y, dtype=np.int32), self._hidden,
                                    self.n_classes, lr=self._lr, momentum=self._momentum, **terms)

    def fisher(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        self._ensure()
        return _kernels.online_fisher(self._theta, np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.int32),
                                      self._hidden, self.n_classes)

    def save_state(self, writer: Any) -> None:
        self._ensure()
        writer.put_array("theta", self._theta)
        if self._velocity is not None:
            writer.put_array("velocity", self._velocity)

    def load_state(self, reader: Any) -> None:
        theta = reader.array("theta").astype(np.float32)
        if theta.shape != (self.n_params,):
            raise ValueError(f"saved theta has {theta.size} values, this model has {self.n_params}")
        self._theta = theta
        self._velocity = reader.array("velocity").astype(np.float32) if reader.has("velocity") else (
            np.zeros_like(theta) if self._momentum else None)


class SoftmaxRegression(_KernelModel):
    """Multinomial logistic regression trained by SGD (a convex single-layer model).

    Parameters
    ----------
    n_features, n_classes
        Input and output sizes (a learner fills them in).
    lr
        SGD learning rate. Default 0.02.
    momentum
        Heavy-ball momentum (0 = plain SGD). Default 0.9.
    seed
        Unused by the zero initialisation; kept so every model clones alike.

    Examples
    --------
    >>> m = SoftmaxRegression(n_features=2, n_classes=2, lr=0.5, momentum=0.0)
    >>> X = np.array([[1, 0], [0, 1]] * 50, dtype=np.float32); y = np.array([0, 1] * 50)
    >>> for _ in range(20):
    ...     _ = m.step(X, y)
    >>> m.predict_proba(X[:2]).argmax(1).tolist()
    [0, 1]
    """

    _unit_test_params = {"n_features": 4, "n_classes": 3}

    def __init__(self, n_features: int | None = None, n_classes: int | None = None, lr: float | None = None,
                 momentum: float | None = None, seed: int | None = None) -> None:
        self.n_features = n_features
        self.n_classes = n_classes
        self.lr = lr
        self.momentum = momentum
        self.seed = seed
        self._theta: np.ndarray | None = None
        self._velocity: np.ndarray | None = None

    def _init_theta(self, rng: np.random.Generator, d: int, c: int) -> np.ndarray:
        return np.zeros(c * d + c, dtype=np.float32)  # convex: zeros are as good a start as any


class MLP(_KernelModel):
    """One hidden ReLU layer and a softmax output, trained by SGD.

    Parameters
    ----------
    n_features, n_classes
        Input and output sizes (a learner fills them in).
    hidden
        Hidden units. Default 128.
    lr
        SGD learning rate. Default 0.02.
    momentum
        Heavy-ball momentum (0 = plain SGD). Default 0.9.
    seed
        Seed of the He-normal initialisation.

    Examples
    --------
    >>> m = MLP(n_features=2, n_classes=2, hidden=8, lr=0.5, momentum=0.0, seed=0)
    >>> X = np.array([[1, 0], [0, 1]] * 50, dtype=np.float32); y = np.array([0, 1] * 50)
    >>> for _ in range(20):
    ...     _ = m.step(X, y)
    >>> m.predict_proba(X[:2]).argmax(1).tolist()
    [0, 1]
    """

    _unit_test_params = {"n_features": 4, "n_classes": 3, "hidden": 5}

    def __init__(self, n_features: int | None = None, n_classes: int | None = None, hidden: int | None = None,
                 lr: float | None = None, momentum: float | None = None, seed: int | None = None) -> None:
        self.n_features = n_features
        self.n_classes = n_classes
        self.hidden = hidden
        self.lr = lr
        self.momentum = momentum
        self.seed = seed
        self._theta: np.ndarray | None = None
        self._velocity: np.ndarray | None = None

    def in_force(self) -> dict[str, Any]:
        return {**super().in_force(), "hidden": self._hidden}

    @property
    def _hidden(self) -> int:  # type: ignore[override]
        h = _DEFAULT_HIDDEN if self.hidden is None else int(self.hidden)
        if h < 1:
            raise ValueError("hidden must be >= 1")
        return h

    def _init_theta(self, rng: np.random.Generator, d: int, c: int) -> np.ndarray:
        h = self._hidden
        # He-normal for the ReLU layer, Glorot-scaled output layer; biases zero
        W1 = rng.standard_normal((h, d)) * np.sqrt(2.0 / d)
        W2 = rng.standard_normal((c, h)) * np.sqrt(1.0 / h)
        return np.concatenate([W1.ravel(), np.zeros(h), W2.ravel(), np.zeros(c)])
