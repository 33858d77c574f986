"""Replay memory: reservoir is a uniform sample, prioritized sampling follows priorities, memory stays flat."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from workers.online.replay import ReplayBuffer, SumTree

# chi-square upper 0.1% quantiles (df -> value), from tables: a correct sampler fails 1 run in 1000
_CHI2_999 = {9: 27.877, 7: 24.322}


def _chi2(observed: np.ndarray, expected: np.ndarray) -> float:
    return float(((observed - expected) ** 2 / expected).sum())


def test_sum_tree_finds_like_a_cumulative_sum() -> None:
    rng = np.random.default_rng(0)
    for cap in (1, 5, 8, 13):
        t = SumTree(cap)
        w = rng.random(cap) * (rng.random(cap) > 0.3)
        t.update(np.arange(cap), w)
        assert t.total == pytest.approx(w.sum())
        mass = rng.random(200) * w.sum()
        expect = np.searchsorted(np.cumsum(w), mass, side="right")
        np.testing.assert_array_equal(t.find(mass), np.minimum(expect, cap - 1))
        # a partial update repairs only what changed, and sums stay exact
        idx = rng.choice(cap, size=max(1, cap // 2), replace=False)
        w[idx] = rng.random(len(idx))
        t.update(idx, w[idx])
        assert t.total == pytest.approx(w.sum())


def test_reservoir_keeps_a_uniform_sample_of_the_stream() -> None:
    """Inclusion counts of 10 equal slices of a 10,000-example stream over 300 reservoirs of 100."""
    n, cap, runs, bins = 10_000, 100, 300, 10
    counts = np.zeros(bins)
    master = np.random.default_rng(2024)
    X = np.arange(n, dtype=np.float32)[:, None]
    y = np.zeros(n, dtype=np.int32)
    for _ in range(runs):
        buf = ReplayBuffer(capacity=cap, strategy="reservoir", seed=int(master.integers(2**31)))
        for i in range(0, n, 50):  # as the stream delivers: envelopes of examples
            buf.add_many(X[i:i + 50], y[i:i + 50])
        assert len(buf) == cap and buf.n_seen == n
        ids = buf.sample(cap).x[:, 0].astype(int)
        assert len(set(ids.tolist())) == cap  # no duplicates in memory
        counts += np.bincount(ids // (n // bins), minlength=bins)
    expected = np.full(bins, runs * cap / bins)
    assert _chi2(counts, expected) < _CHI2_999[bins - 1]


def test_reservoir_single_adds_equal_batched_adds() -> None:
    a, b = ReplayBuffer(capacity=7, seed=3), ReplayBuffer(capacity=7, seed=3)
    X = np.arange(100, dtype=np.float32)[:, None]
    for i in range(100):
        a.add(X[i], 0)
    b.add_many(X, np.zeros(100, dtype=np.int32))
    np.testing.assert_array_equal(a.sample(7).x, b.sample(7).x)


def test_uniform_strategy_keeps_the_most_recent() -> None:
    buf = ReplayBuffer(capacity=5, strategy="uniform", seed=0)
    buf.add_many(np.arange(12, dtype=np.float32)[:, None], np.zeros(12, dtype=np.int32))
    assert sorted(buf.sample(5).x[:, 0].tolist()) == [7, 8, 9, 10, 11]


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_prioritized_sampling_follows_priorities(alpha: float) -> None:
    cap = 8
    buf = ReplayBuffer(capacity=cap, strategy="prioritized", alpha=alpha, seed=11)
    prio = np.arange(1, cap + 1, dtype=np.float64)
    buf.add_many(np.arange(cap, dtype=np.float32)[:, None], np.zeros(cap, dtype=np.int32), priority=prio)
    p = prio ** alpha / (prio ** alpha).sum()
    np.testing.assert_allclose(buf.probabilities(), p)
    draws = np.concatenate([buf.sample(50).idx for _ in range(400)])
    counts = np.bincount(draws, minlength=cap)
    assert _chi2(counts, p * len(draws)) < _CHI2_999[cap - 1]


def test_priority_updates_move_the_sampling() -> None:
    buf = ReplayBuffer(capacity=4, strategy="prioritized", alpha=1.0, seed=0)
    buf.add_many(np.zeros((4, 2), dtype=np.float32), np.zeros(4, dtype=np.int32), priority=np.ones(4))
    buf.update_priorities(np.array([2]), np.array([97.0]))
    np.testing.assert_allclose(buf.probabilities(), [0.01, 0.01, 0.97, 0.01])
    draws = np.concatenate([buf.sample(10).idx for _ in range(100)])
    assert (draws == 2).mean() > 0.9


def test_prioritized_new_examples_get_the_max_priority() -> None:
    buf = ReplayBuffer(capacity=4, strategy="prioritized", alpha=1.0, seed=0)
    buf.add_many(np.zeros((2, 1), dtype=np.float32), np.zeros(2, dtype=np.int32), priority=np.array([1.0, 5.0]))
    buf.add(np.zeros(1, dtype=np.float32), 0)  # unknown loss: as likely as the likeliest
    np.testing.assert_allclose(buf.probabilities(), [1 / 11, 5 / 11, 5 / 11])


@pytest.mark.parametrize("strategy", ["uniform", "reservoir", "prioritized"])
def test_memory_stays_flat_over_100k_adds(strategy: str) -> None:
    buf = ReplayBuffer(capacity=200, strategy=strategy, seed=0)
    rng = np.random.default_rng(0)
    X = rng.random((20, 64), dtype=np.float32)
    y = np.zeros(20, dtype=np.int32)
    logits = rng.random((20, 10), dtype=np.float32)
    buf.add_many(X, y, logits=logits, priority=np.ones(20))
    nbytes = buf.nbytes()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for i in range(5_000):
            buf.add_many(X, y, logits=logits, priority=np.ones(20))
            if strategy == "prioritized" and i % 5 == 0:
                s = buf.sample(10)
                buf.update_priorities(s.idx, np.ones(10))
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert buf.n_seen == 100_020 and len(buf) == 200
    assert buf.nbytes() == nbytes
    assert current - base < 64 * 1024  # nothing accumulates per example


def test_capacity_zero_keeps_nothing() -> None:
    buf = ReplayBuffer(capacity=0)
    buf.add_many(np.zeros((3, 2), dtype=np.float32), np.zeros(3, dtype=np.int32))
    assert len(buf) == 0 and len(buf.sample(5)) == 0 and buf.n_seen == 3


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="strategy"):
        ReplayBuffer(strategy="lifo").add(np.zeros(2, dtype=np.float32), 0)
    buf = ReplayBuffer(capacity=3)
    buf.add(np.zeros(2, dtype=np.float32), 0)
    with pytest.raises(ValueError, match="features"):
        buf.add(np.zeros(3, dtype=np.float32), 0)
