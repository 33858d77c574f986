"""cpp/online.h equals its NumPy reference (tests/reference/online_ref.py) within float32 tolerance."""
from __future__ import annotations

import numpy as np
import pytest

from reference import online_ref as ref
from workers import _kernels as K

# float32 kernel vs float64 reference on O(1) values
_TOL = dict(rtol=2e-5, atol=2e-6)


def _setup(h: int, seed: int = 0, d: int = 7, c: int = 4, B: int = 6):
    rng = np.random.default_rng(seed)
    n = ref.n_params(d, h, c)
    theta = (rng.standard_normal(n) * 0.4).astype(np.float32)
    X = rng.random((B, d), dtype=np.float32)
    y = rng.integers(0, c, B).astype(np.int32)
    return rng, n, theta, X, y, d, c, B


@pytest.mark.parametrize("h", [0, 16])
def test_n_params_and_forward(h: int) -> None:
    rng, n, theta, X, y, d, c, B = _setup(h)
    assert K.online_n_params(d, h, c) == n
    np.testing.assert_allclose(K.online_forward(theta, X, h, c), ref.forward(theta, X, h, c), **_TOL)


@pytest.mark.parametrize("h", [0, 16])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("terms", ["ce", "all"])
def test_step_equals_reference(h: int, momentum: float, terms: str) -> None:
    rng, n, theta, X, y, d, c, B = _setup(h, seed=h + int(10 * momentum))
    kw: dict = {"lr": 0.1, "momentum": momentum}
    if terms == "all":
        T = rng.standard_normal((B, c))
        kw.update(ce_w=rng.random(B).astype(np.float32), mask=(rng.random((B, c)) > 0.4).astype(np.uint8),
                  mse_w=rng.random(B).astype(np.float32), target=rng.standard_normal((B, c)).astype(np.float32),
                  kd_w=rng.random(B).astype(np.float32),
                  teacher=(np.exp(T) / np.exp(T).sum(1, keepdims=True)).astype(np.float32), tau=2.0,
                  fisher=rng.random(n).astype(np.float32), anchor=rng.standard_normal(n).astype(np.float32),
                  ewc_lambda=3.0)
    v = (rng.standard_normal(n) * 0.01).astype(np.float32)
    th_k, v_k = theta.copy(), v.copy()
    obj_k, Z_k, loss_k = K.online_step(th_k, v_k if momentum else None, X, y, h, c, **kw)
    th_r, v_r, obj_r, Z_r, loss_r = ref.step(theta, v if momentum else None, X, y, h, c, **kw)
    np.testing.assert_allclose(Z_k, Z_r, **_TOL)
    np.testing.assert_allclose(loss_k, loss_r, **_TOL)
    assert obj_k == pytest.approx(obj_r, rel=1e-5)
    np.testing.assert_allclose(th_k, th_r, **_TOL)
    if momentum:
        np.testing.assert_allclose(v_k, v_r, **_TOL)
    assert not np.array_equal(th_k, theta)  # it did update in place


@pytest.mark.parametrize("h", [0, 16])
def test_fisher_equals_per_example_reference(h: int) -> None:
    rng, n, theta, X, y, d, c, B = _setup(h, seed=3)
    np.testing.assert_allclose(K.online_fisher(theta, X, y, h, c), ref.fisher_diag(theta, X, y, h, c), **_TOL)


def test_gradient_matches_finite_differences() -> None:
    """The reference itself is checked: its step direction is the objective's gradient."""
    rng, n, theta, X, y, d, c, B = _setup(5, seed=4, d=3, c=3, B=4)
    lr = 1e-3
    th_new, *_ = ref.step(theta, None, X, y, 5, c, lr=lr)
    g = (theta.astype(np.float64) - th_new) / lr
    def obj(t):
        return ref.step(t, None, X, y, 5, c, lr=0.0)[2]
    eps = 1e-6
    for j in rng.choice(n, 8, replace=False):
        e = np.zeros(n)
        e[j] = eps
        fd = (obj(theta.astype(np.float64) + e) - obj(theta.astype(np.float64) - e)) / (2 * eps)
        assert g[j] == pytest.approx(fd, rel=1e-4, abs=1e-7)


def test_ewc_step_alone_pulls_toward_anchor() -> None:
    rng, n, theta, X, y, d, c, B = _setup(8, seed=5)
    anchor = np.zeros(n, dtype=np.float32)
    th = theta.copy()
    K.online_step(th, None, X, y, 8, c, ce_w=np.zeros(B, dtype=np.float32), fisher=np.ones(n, dtype=np.float32),
                  anchor=anchor, ewc_lambda=5.0, lr=0.1)
    assert np.all(np.abs(th) < np.abs(theta) + 1e-7)
    assert np.abs(th).sum() < np.abs(theta).sum()


def test_ewc_step_is_stable_for_a_huge_lambda() -> None:
    rng, n, theta, X, y, d, c, B = _setup(8, seed=6)
    anchor = theta.copy()
    th = theta.copy()
    for _ in range(20):
        K.online_step(th, None, X, y, 8, c, fisher=np.ones(n, dtype=np.float32), anchor=anchor, ewc_lambda=1e6,
                      lr=0.5)
    assert np.isfinite(th).all() and np.abs(th - anchor).max() < 1e-3


@pytest.mark.parametrize("bad, match", [
    (dict(y=np.array([0, 9], dtype=np.int32)), "out of range"),
    (dict(X=np.zeros((2, 3), dtype=np.float32)), "theta has"),
    (dict(theta=np.zeros(5, dtype=np.float64)), "float32"),
    (dict(ce_w=np.ones(3, dtype=np.float32)), "ce_w must have 2"),
    (dict(momentum=0.5), "velocity"),
])
def test_step_refuses_bad_input(bad: dict, match: str) -> None:
    h, c = 4, 3
    n = K.online_n_params(5, h, c)
    args = dict(theta=np.zeros(n, dtype=np.float32), X=np.zeros((2, 5), dtype=np.float32),
                y=np.array([0, 1], dtype=np.int32))
    kw = {}
    for k, v in bad.items():
        (args if k in args else kw)[k] = v
    with pytest.raises(RuntimeError, match=match):
        K.online_step(args["theta"], None, args["X"], args["y"], h, c, **kw)


def test_read_only_theta_is_refused() -> None:
    n = K.online_n_params(2, 0, 2)
    theta = np.zeros(n, dtype=np.float32)
    theta.flags.writeable = False
    with pytest.raises(RuntimeError, match="writeable"):
        K.online_step(theta, None, np.zeros((1, 2), dtype=np.float32), np.zeros(1, dtype=np.int32), 0, 2)
