"""EWC: zero penalty at the anchor, a pull back toward it, the deep core's Fisher EMA arithmetic."""
from __future__ import annotations

import numpy as np
import pytest

from workers.online.ewc import EWC
from workers.online.models import MLP


def test_penalty_is_zero_at_the_anchor_and_grows_away_from_it() -> None:
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(50).astype(np.float32)
    ewc = EWC(lam=3.0)
    ewc.consolidate(theta, rng.random(50).astype(np.float32))
    assert ewc.penalty(theta) == 0.0
    d = rng.standard_normal(50).astype(np.float32)
    p1, p2 = ewc.penalty(theta + 0.1 * d), ewc.penalty(theta + 0.2 * d)
    assert 0 < p1 < p2 and p2 == pytest.approx(4 * p1, rel=1e-4)


def test_penalty_value_is_lambda_half_f_squared_distance() -> None:
    ewc = EWC(lam=2.0, decay=0.5)
    ewc.consolidate(np.zeros(2, dtype=np.float32), np.array([1.0, 4.0], dtype=np.float32))
    # bias-corrected Fisher after one refresh is F_new itself
    assert ewc.penalty(np.ones(2, dtype=np.float32)) == pytest.approx(0.5 * 2.0 * (1.0 + 4.0), rel=1e-6)


def test_fisher_is_the_decayed_average_of_refreshes() -> None:
    ewc = EWC(decay=0.9)
    f1, f2 = np.array([1.0, 0.0], dtype=np.float32), np.array([0.0, 2.0], dtype=np.float32)
    ewc.consolidate(np.zeros(2, dtype=np.float32), f1)
    ewc.consolidate(np.zeros(2, dtype=np.float32), f2)
    # F <- 0.9 F + 0.1 F_new, exactly the deep core's fisher_ema (fed sqrt(F_new))
    np.testing.assert_allclose(ewc.fisher, 0.1 * 0.9 * f1 + 0.1 * f2, rtol=1e-6)
    assert ewc.n_refresh == 2
    # an anchor-only consolidation moves the anchor, not the Fisher
    ewc.consolidate(np.ones(2, dtype=np.float32))
    np.testing.assert_allclose(ewc.fisher, 0.1 * 0.9 * f1 + 0.1 * f2, rtol=1e-6)
    np.testing.assert_array_equal(ewc.anchor, np.ones(2))


def test_ewc_pulls_parameters_back_through_the_models_step() -> None:
    rng = np.random.default_rng(1)
    m = MLP(n_features=6, n_classes=3, hidden=5, lr=0.1, momentum=0.0, seed=0)
    anchor = m.theta.copy()
    ewc = EWC(lam=50.0)
    X = rng.random((40, 6), dtype=np.float32)
    y = rng.integers(0, 3, 40)
    ewc.consolidate(anchor, m.fisher(X, y))
    m.theta = anchor + 0.5 * rng.standard_normal(anchor.size).astype(np.float32)
    before = ewc.penalty(m.theta)
    for _ in range(20):  # only the penalty acts: label weights zero
        m.step(X, y, ce_w=np.zeros(40, dtype=np.float32), **ewc.terms())
    assert ewc.penalty(m.theta) < 0.5 * before


def test_ewc_protects_the_old_task_while_learning_a_new_one() -> None:
    rng = np.random.default_rng(2)
    X = rng.random((80, 6), dtype=np.float32)
    y_old, y_new = (X[:, 0] > 0.5).astype(np.int32), (X[:, 1] > 0.5).astype(np.int32)

    def old_task_accuracy(lam: float) -> float:
        m = MLP(n_features=6, n_classes=2, hidden=16, lr=0.2, momentum=0.0, seed=0)
        for _ in range(300):
            m.step(X, y_old)
        ewc = EWC(lam=lam)
        ewc.consolidate(m.theta, m.fisher(X, y_old))
        for _ in range(100):
            m.step(X, y_new, **ewc.terms())
        return float((m.predict_proba(X).argmax(1) == y_old).mean())

    assert old_task_accuracy(1000.0) > old_task_accuracy(0.0) + 0.15


def test_lambda_zero_switches_it_off() -> None:
    ewc = EWC(lam=0.0)
    ewc.consolidate(np.zeros(3, dtype=np.float32), np.ones(3, dtype=np.float32))
    assert not ewc.enabled and ewc.terms() == {} and ewc.penalty(np.ones(3, dtype=np.float32)) == 0.0
