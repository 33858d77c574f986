"""Wider feedback worlds for ``learnstream bench boundaries --wide``: i.i.d. stationary answer
qualities of many shapes, and lasting level shifts between two of them.

First written as an independent check of the loop's detector (2026-12-05), by a helper that had
not read this benchmark; kept here so its numbers come from a command in the repo. Each kind is
``f(rng, n) -> (qualities, model index per event)``.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ("STATIONARY", "SHIFTS", "Kind")

Kind = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def _one(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.clip(q, 0.0, 1.0), np.zeros(len(q), np.int64)


def beta(a: float, b: float) -> Kind:
    return lambda r, n: _one(r.beta(a, b, n))


def levels(values: list[float], probs: list[float]) -> Kind:
    v, p = np.asarray(values, float), np.asarray(probs, float)
    return lambda r, n: _one(r.choice(v, n, p=p / p.sum()))


def bern(p: float) -> Kind:
    return lambda r, n: _one((r.random(n) < p).astype(float))


def normal(mu: float, sd: float) -> Kind:
    return lambda r, n: _one(r.normal(mu, sd, n))


def student(df: float, loc: float, scale: float) -> Kind:
    return lambda r, n: _one(loc + scale * r.standard_t(df, n))


def quantised(kind: Kind, step: float = 0.1) -> Kind:
    return lambda r, n: _one(np.round(kind(r, n)[0] / step) * step)


def rare(c: float, p0: float, p1: float = 0.0) -> Kind:
    """A constant quality with rare exact 0s (and 1s)."""
    def f(r: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        u = r.random(n)
        return _one(np.where(u < p0, 0.0, np.where(u < p0 + p1, 1.0, c)))
    return f


def mixture(kinds: list[Kind], probs: list[float], per_model: bool = False) -> Kind:
    """Each event from one of ``kinds`` (drawn with ``probs``); ``per_model``: each kind is a model's."""
    p = np.asarray(probs, float)

    def f(r: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        m = r.choice(len(kinds), n, p=p / p.sum())
        q = np.empty(n)
        for k, kind in enumerate(kinds):
            idx = np.flatnonzero(m == k)
            q[idx] = kind(r, len(idx))[0]
        return np.clip(q, 0.0, 1.0), (m if per_model else np.zeros(n, np.int64))
    return f


L5 = [0.0, 0.25, 0.5, 0.75, 1.0]
STATIONARY: dict[str, Kind] = {
    **{f"beta({a},{b})": beta(a, b) for a, b in [(0.3, 0.3), (0.5, 0.5), (1, 1), (2, 2), (8, 2), (2, 8), (0.5, 2),
                                                 (2, 0.5), (20, 2), (1, 5), (50, 50), (0.7, 0.3), (0.2, 1.5)]},
    "likert5 typical": levels(L5, [0.05, 0.1, 0.2, 0.35, 0.3]),
    "likert5 skewed-top": levels(L5, [0.02, 0.03, 0.05, 0.3, 0.6]),
    "likert5 polarized": levels(L5, [0.3, 0.05, 0.05, 0.1, 0.5]),
    "likert5 uniform": levels(L5, [1] * 5),
    "likert3 0/.5/1": levels([0, 0.5, 1], [0.1, 0.3, 0.6]),
    "likert10": levels(list(np.arange(1, 11) / 10), [1, 1, 2, 3, 5, 8, 12, 20, 25, 23]),
    "thumbs .2/.8": levels([0.2, 0.8], [0.4, 0.6]),
    "80% N(.8,.05) + 20% U": mixture([normal(0.8, 0.05), beta(1, 1)], [0.8, 0.2]),
    "90% N(.9,.03) + 10% zero": mixture([normal(0.9, 0.03), rare(0.0, 0.0)], [0.9, 0.1]),
    "70% B(9,1) + 30% B(1,3)": mixture([beta(9, 1), beta(1, 3)], [0.7, 0.3]),
    "60% ~1 / 25% mid / 15% ~0": mixture([normal(1.0, 0.02), lambda r, n: _one(r.uniform(0.4, 0.7, n)),
                                          normal(0.0, 0.02)], [0.6, 0.25, 0.15]),
    "2 models B(8,2) | B(2,5), .7/.3": mixture([beta(8, 2), beta(2, 5)], [0.7, 0.3], per_model=True),
    "3 models bern .9/.5/.2": mixture([bern(0.9), bern(0.5), bern(0.2)], [0.5, 0.3, 0.2], per_model=True),
    "5 models mixed": mixture([beta(8, 2), levels(L5, [0.3, 0.05, 0.05, 0.1, 0.5]), bern(0.3), rare(0.95, 0.02),
                               beta(0.5, 0.5)], [0.4, 0.2, 0.2, 0.1, 0.1], per_model=True),
    "2 models bern .95 | .05, .9/.1": mixture([bern(0.95), bern(0.05)], [0.9, 0.1], per_model=True),
    **{f"bernoulli {p}": bern(p) for p in (0.02, 0.15, 0.45, 0.65, 0.97, 0.99)},
    "t(2) .7 + .1t": student(2, 0.7, 0.1),
    "t(1) .7 + .05t": student(1, 0.7, 0.05),
    "t(2) .9 + .1t": student(2, 0.9, 0.1),
    "beta(5,2) to 0.1": quantised(beta(5, 2)),
    "N(.6,.2) to 0.1": quantised(normal(0.6, 0.2)),
    "U(0,1) to 0.1": quantised(beta(1, 1)),
    ".8, 0.5% zeros": rare(0.8, 0.005),
    "1.0, 1% zeros": rare(1.0, 0.01),
    ".9, 0.1% zeros": rare(0.9, 0.001),
    ".7, 0.2% zeros, 2% ones": rare(0.7, 0.002, 0.02),
    "0.0, 1% ones": rare(0.0, 0.0, 0.01),
}

# (before, after): the quality of an agent's answers drops lastingly, then recovers, four times a stream
SHIFTS: dict[str, tuple[Kind, Kind]] = {
    "Beta(8,2) -> Beta(2,8)": (beta(8, 2), beta(2, 8)),
    "Beta(8,2) -> Beta(4,6) (.8 -> .4)": (beta(8, 2), beta(4, 6)),
    "Beta(8,2) -> Beta(6,4) (.8 -> .6)": (beta(8, 2), beta(6, 4)),
    "Beta(50,50) -> Beta(30,70) (.5 -> .3)": (beta(50, 50), beta(30, 70)),
    "bernoulli .9 -> .1": (bern(0.9), bern(0.1)),
    "bernoulli .9 -> .4": (bern(0.9), bern(0.4)),
    "bernoulli .95 -> .5": (bern(0.95), bern(0.5)),
    "bernoulli .6 -> .2": (bern(0.6), bern(0.2)),
    "likert5 skewed-top -> typical (.86 -> .69)": (STATIONARY["likert5 skewed-top"], STATIONARY["likert5 typical"]),
    **{f"N({a},.02) -> N({b},.02)": (normal(a, 0.02), normal(b, 0.02))
       for a, b in [(0.9, 0.8), (0.9, 0.7), (0.9, 0.5), (0.7, 0.5), (0.6, 0.4), (0.5, 0.3), (0.5, 0.2), (0.5, 0.0),
                    (0.4, 0.1), (0.3, 0.1)]},
}
