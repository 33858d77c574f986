"""Task-switch and non-i.i.d. feedback worlds for ``learnstream bench boundaries --switch-worlds``.

Written first as an independent trial of the loop's detector (2026-12-05, twentieth session) by a
helper that had not read this benchmark or its tuning; kept here so its numbers come from a command in
the repo. Reported, not judged: several of these worlds are past what any detector with the stationary
goal's false-alarm budget can see (a new task whose answers recover within two events, tasks that
never converge before the next switch, thumbs-up/down feedback), and some "stationary" ones have a
level that really moves (traffic that sticks to a worse model, a daily cycle, an outage).

- **Quality worlds**: each task's answer quality climbs from U(.15, .45) to U(.75, .95) along a curve
  (``exp``: 1 - exp(-t/tau), tau U(3, 20); ``power``: 1 - (1 + t/t0)^-a; ``linear``: a ramp over
  .5-1 L; ``step``: 2-4 plateaus; ``unconv``: tau = 1-3 L, never converged; ``mixed``: one drawn per
  task), plus N(0, sd) noise, clipped; tasks of 25 or 50 events, or U(25, 200).
- **Loss worlds**: a training loss falling from U(1.8, 2.6) to U(.3, 1) along the same curves, plus
  N(0, sd), at least 0.
- **Non-i.i.d. stationary**: two models of different quality (Beta(9, 1.5) and Beta(2, 4)) served in
  runs of mean length 5 or 20; .75 + A sin(2 pi t / P) + N(0, .1); Beta(8, 2) with outages of 3 zero
  qualities every 1,000 events.
"""
from __future__ import annotations

import zlib

import numpy as np

__all__ = ("SHAPES", "LENGTHS", "quality_stream", "loss_stream", "NON_IID")

SHAPES = ("exp", "power", "linear", "step", "unconv")
LENGTHS = {"25": 40, "50": 30, "25-200": 20}   # task length -> tasks per stream


def _rng(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(name.encode()), seed])


def _curve(shape: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Progress 0 -> 1 over a task of ``n`` events."""
    t = np.arange(n, dtype=float)
    if shape == "exp":
        return 1 - np.exp(-t / rng.uniform(3, 20))
    if shape == "power":
        a, t0 = rng.uniform(0.5, 1.5), rng.uniform(1, 5)
        return 1 - (1 + t / t0) ** (-a)
    if shape == "linear":
        return np.minimum(t / (rng.uniform(0.5, 1.0) * n), 1.0)
    if shape == "step":
        k = int(rng.integers(2, 5))
        cuts = np.sort(rng.choice(np.arange(2, max(n - 1, 3)), size=k - 1, replace=False))
        p = np.zeros(n)
        for c, lv in zip(cuts, np.sort(rng.uniform(0.15, 1.0, size=k - 1))):
            p[c:] = lv
        p[cuts[-1]:] = 1.0
        return p
    if shape == "unconv":
        return 1 - np.exp(-t / (rng.uniform(1, 3) * n))
    raise ValueError(shape)


def _tasks(name: str, shape: str, length: str, seed: int):
    rng = _rng(name, seed)
    n_tasks = LENGTHS[length]
    lens = [int(length)] * n_tasks if length.isdigit() else rng.integers(25, 201, n_tasks).tolist()
    for j, n in enumerate(lens):
        yield j, n, _curve(shape if shape != "mixed" else SHAPES[int(rng.integers(len(SHAPES)))], n, rng), rng


def quality_stream(shape: str, length: str, sd: float, seed: int) -> tuple[np.ndarray, list[int]]:
    """(qualities, switch positions)."""
    out, switches, pos = [], [], 0
    for j, n, p, rng in _tasks(f"Q/{shape}/{length}/{sd}", shape, length, seed):
        q0, q1 = rng.uniform(0.15, 0.45), rng.uniform(0.75, 0.95)
        out.append(np.clip(q0 + (q1 - q0) * p + rng.normal(0, sd, n), 0, 1))
        switches += [pos] if j else []
        pos += n
    return np.concatenate(out), switches


def loss_stream(shape: str, length: str, sd: float, seed: int) -> tuple[np.ndarray, list[int]]:
    """(training losses, switch positions)."""
    out, switches, pos = [], [], 0
    for j, n, p, rng in _tasks(f"L/{shape}/{length}/{sd}", shape, length, seed):
        l0, l1 = rng.uniform(1.8, 2.6), rng.uniform(0.3, 1.0)
        out.append(np.maximum(l1 + (l0 - l1) * (1 - p) + rng.normal(0, sd, n), 0.0))
        switches += [pos] if j else []
        pos += n
    return np.concatenate(out), switches


def _model_runs(mean: float):
    def make(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        flips = rng.random(n) < 1 / mean
        isb = (np.cumsum(flips) % 2).astype(np.int64)
        return np.where(isb == 1, rng.beta(2, 4, n), rng.beta(9, 1.5, n)), isb
    return make


def _daily(amp: float, period: float):
    def make(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        t = np.arange(n)
        q = 0.75 + amp * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)) + rng.normal(0, 0.1, n)
        return np.clip(q, 0, 1), np.zeros(n, np.int64)
    return make


def _outages(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    q = rng.beta(8, 2, n)
    for start in range(500, n, 1000):
        q[start:start + 3] = 0.0
    return q, np.zeros(n, np.int64)


NON_IID = {
    "two models in runs of mean 5": _model_runs(5),
    "two models in runs of mean 20": _model_runs(20),
    "daily cycle A .1, P 1000": _daily(0.1, 1000),
    "daily cycle A .1, P 200": _daily(0.1, 200),
    "daily cycle A .05, P 1440": _daily(0.05, 1440),
    "Beta(8,2), 3 zeros every 1,000": _outages,
}
