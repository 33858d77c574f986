"""Elastic weight consolidation with an online (decayed) Fisher (EWC++).

Penalty ``lam/2 * sum_i F_i (theta_i - theta*_i)^2``. After each consolidation the
anchor becomes the current parameters and, on a Fisher refresh,
``F <- decay*F + (1-decay)*F_new`` with ``F_new`` the empirical Fisher diagonal
(mean squared per-example gradient of log p(y|x)) over replay and recent examples.

The arithmetic is the deep core's: ``workers._kernels.fisher_ema`` (which squares
its input, so it is handed ``sqrt(F_new)``) and ``workers._kernels.ewc_penalty``;
the penalty's gradient ``lam * F * (theta - theta*)`` is part of the model's fused
step (:meth:`EWC.terms` hands it the arrays).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from workers import _kernels
from workers.online.base import Stateful

__all__ = ("EWC",)

_DEFAULT_LAMBDA = 100.0
# Task-level consolidations are rare, so a fast decay would forget old tasks'
# importance within a few refreshes; 0.9 keeps roughly the last ten.
_DEFAULT_DECAY = 0.9


class EWC(Stateful):
    """Online EWC state: Fisher diagonal, anchor, and how often the Fisher was refreshed.

    Parameters
    ----------
    lam
        Penalty strength (0 switches EWC off). Default 100.
    decay
        Fisher EMA decay ``gamma``. Default 0.9.

    Attributes
    ----------
    fisher, anchor
        float32 vectors (None before the first :meth:`consolidate`).
    n_refresh
        Fisher refreshes so far. The EMA starts at zero, so :meth:`terms` divides
        by ``1 - decay**n_refresh`` (as Adam does) to keep the first tasks' weight.

    Examples
    --------
    >>> ewc = EWC(lam=2.0)
    >>> theta = np.array([1.0, 2.0], dtype=np.float32)
    >>> ewc.consolidate(theta, fisher_new=np.array([1.0, 4.0], dtype=np.float32))
    >>> ewc.penalty(theta), round(ewc.penalty(theta + 1), 4)
    (0.0, 5.0)
    """

    _unit_test_params = {"lam": 10.0}

    def __init__(self, lam: float | None = None, decay: float | None = None) -> None:
        self.lam = lam
        self.decay = decay
        self.fisher: np.ndarray | None = None
        self.anchor: np.ndarray | None = None
        self.n_refresh = 0

    def in_force(self) -> dict[str, Any]:
        return {"lam": self._lam, "decay": self._decay}

    @property
    def _lam(self) -> float:
        return _DEFAULT_LAMBDA if self.lam is None else float(self.lam)

    @property
    def _decay(self) -> float:
        return _DEFAULT_DECAY if self.decay is None else float(self.decay)

    @property
    def enabled(self) -> bool:
        return self._lam > 0.0

    @property
    def _scale(self) -> float:
        """Bias correction of the zero-started EMA."""
        return 1.0 / (1.0 - self._decay ** self.n_refresh) if self.n_refresh and self._decay < 1.0 else 1.0

    def consolidate(self, theta: np.ndarray, fisher_new: np.ndarray | None = None) -> None:
        """Anchor at ``theta``; with ``fisher_new``, fold it into the Fisher EMA."""
        theta = np.asarray(theta, dtype=np.float32)
        if self.fisher is None or self.fisher.shape != theta.shape:
            self.fisher = np.zeros_like(theta)
            self.n_refresh = 0
        if fisher_new is not None:
            g = np.sqrt(np.maximum(np.asarray(fisher_new, dtype=np.float32), 0.0))
            _kernels.fisher_ema(self.fisher, g, self._decay)
            self.n_refresh += 1
        self.anchor = theta.copy()

    def penalty(self, theta: np.ndarray) -> float:
        """``lam/2 * sum F (theta - anchor)^2`` (0 before the first consolidation)."""
        if self.fisher is None or self.anchor is None or not self.enabled:
            return 0.0
        return 0.5 * self._scale * _kernels.ewc_penalty(self.fisher, self.anchor, theta, self._lam)

    def terms(self) -> dict[str, Any]:
        """Keyword arguments of the model's fused step (empty when there is nothing to pull toward)."""
        if self.fisher is None or self.anchor is None or not self.enabled or not self.n_refresh:
            return {}
        return {"fisher": self.fisher, "anchor": self.anchor, "ewc_lambda": self._lam * self._scale}

    def save_state(self, writer: Any) -> None:
        writer.put_json("meta", {"n_refresh": self.n_refresh, "set": self.fisher is not None})
        if self.fisher is not None:
            writer.put_array("fisher", self.fisher)
            writer.put_array("anchor", self.anchor)

    def load_state(self, reader: Any) -> None:
        meta = reader.json("meta")
        self.n_refresh = int(meta["n_refresh"])
        if meta["set"]:
            self.fisher = reader.array("fisher").astype(np.float32)
            self.anchor = reader.array("anchor").astype(np.float32)
        else:
            self.fisher = self.anchor = None
