"""Knowledge distillation against forgetting, each term switchable.

- Dark experience replay (DER/DER++): the model's logits are stored with each
  example put in replay memory; when the example is replayed, ``alpha *
  |z_now - z_stored|^2 / n_classes`` pulls today's logits toward the stored ones,
  and ``beta`` weighs the replayed label's cross-entropy (DER++; 0 gives DER).
- Learning without forgetting (LwF): at each consolidation a frozen copy of the
  parameters becomes the teacher; ``lwf_lambda * tau^2 * KL(softmax(z_teacher/tau)
  || softmax(z/tau))`` is added on the incoming examples.

The gradients are part of the model's fused step; this class only keeps the
teacher and builds the per-example weights the kernel takes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from workers.online.base import Model, Stateful
from workers.online.models import softmax
from workers.online.replay import ReplaySample

__all__ = ("Distillation",)

# DER++ on MNIST-like data (Buzzega et al. 2020) works with alpha, beta in the
# 0.1 to 1 range; these were chosen on Split/Permuted-Digits (bench/continual.py).
_DEFAULT_ALPHA = 0.3
_DEFAULT_BETA = 1.0
_DEFAULT_TAU = 2.0


class Distillation(Stateful):
    """Dark experience replay and learning without forgetting.

    Parameters
    ----------
    der_alpha
        Weight of the stored-logit match on replayed examples (0 = off). Default 0.3.
    der_beta
        Weight of the replayed examples' label cross-entropy. Default 1.
    lwf_lambda
        Weight of the teacher's distillation on incoming examples (0 = off). Default 0.
    temperature
        Softening temperature ``tau`` of LwF. Default 2.

    Attributes
    ----------
    teacher
        The frozen parameters of the last consolidation (None before it, or with LwF off).
    """

    _unit_test_params = {"lwf_lambda": 1.0}

    def __init__(self, der_alpha: float | None = None, der_beta: float | None = None,
                 lwf_lambda: float | None = None, temperature: float | None = None) -> None:
        self.der_alpha = der_alpha
        self.der_beta = der_beta
        self.lwf_lambda = lwf_lambda
        self.temperature = temperature
        self.teacher: np.ndarray | None = None

    def in_force(self) -> dict[str, Any]:
        return {"der_alpha": self.alpha, "der_beta": self.beta, "lwf_lambda": self.lwf, "temperature": self.tau}

    @property
    def alpha(self) -> float:
        return _DEFAULT_ALPHA if self.der_alpha is None else float(self.der_alpha)

    @property
    def beta(self) -> float:
        return _DEFAULT_BETA if self.der_beta is None else float(self.der_beta)

    @property
    def lwf(self) -> float:
        return 0.0 if self.lwf_lambda is None else float(self.lwf_lambda)

    @property
    def tau(self) -> float:
        return _DEFAULT_TAU if self.temperature is None else float(self.temperature)

    @property
    def stores_logits(self) -> bool:
        """Whether replay memory should keep each example's logits."""
        return self.alpha > 0.0

    def snapshot(self, theta: np.ndarray) -> None:
        """Freeze ``theta`` as the LwF teacher (a no-op with LwF off)."""
        if self.lwf > 0.0:
            self.teacher = np.array(theta, dtype=np.float32, copy=True)

    def terms(self, model: Model, X: np.ndarray, n_new: int, sample: ReplaySample | None) -> dict[str, Any]:
        """Per-example weights for a batch of ``n_new`` incoming rows followed by ``sample``'s rows."""
        n_rep = 0 if sample is None else len(sample)
        B = n_new + n_rep
        out: dict[str, Any] = {}
        if n_rep:
            ce_w = np.ones(B, dtype=np.float32)
            ce_w[n_new:] = self.beta
            out["ce_w"] = ce_w
            if self.alpha > 0.0 and sample.logits is not None and sample.has_logits.any():
                mse_w = np.zeros(B, dtype=np.float32)
                mse_w[n_new:] = self.alpha * sample.has_logits
                target = np.zeros((B, sample.logits.shape[1]), dtype=np.float32)
                target[n_new:] = sample.logits
                out["mse_w"], out["target"] = mse_w, target
        if self.lwf > 0.0 and self.teacher is not None and n_new:
            kd_w = np.zeros(B, dtype=np.float32)
            kd_w[:n_new] = self.lwf
            teacher = np.zeros((B, model.n_classes), dtype=np.float32)
            teacher[:n_new] = softmax(model.logits(X[:n_new], self.teacher), self.tau)
            out.update(kd_w=kd_w, teacher=teacher, tau=self.tau)
        return out

    def save_state(self, writer: Any) -> None:
        writer.put_json("meta", {"teacher": self.teacher is not None})
        if self.teacher is not None:
            writer.put_array("teacher", self.teacher)

    def load_state(self, reader: Any) -> None:
        self.teacher = reader.array("teacher").astype(np.float32) if reader.json("meta")["teacher"] else None
