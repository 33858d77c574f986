"""The router's contextual bandit (learned mode) and the seed's trained flag: kernel parity with the
NumPy reference, reference parity of a fresh router, cost-aware routing, drift, persistence."""
from __future__ import annotations

import random

import numpy as np
import pytest
from reference import bandit_ref as bref
from reference import router_ref as ref

from workers import _kernels as K
from workers.cores.bandit import FIT_AFTER, MAX_STATE_BYTES, BanditState, bandit_dim
from workers.cores.router import RouterState
from workers.verbs.session import LearnSession
from workers.errors import CorruptStateError

TARGETS = ["small", "medium", "large"]
DIM = 16


def _xs(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


# ------------------------------------------------------------------ kernel parity
def test_projection_and_features_match_the_reference() -> None:
    P = K.bandit_projection(0xC0A5, 8, DIM)
    np.testing.assert_array_equal(P, bref.projection(0xC0A5, 8, DIM))
    for x in _xs(20):
        for squares in (0, 3, 8):
            np.testing.assert_allclose(K.bandit_features(P, x, squares), bref.features(P, x, squares), rtol=1e-5,
                                       atol=1e-6)
    assert K.bandit_features(P, np.zeros(DIM, np.float32)).tolist() == [0.0] * 8 + [1.0]
    assert K.bandit_features(P, np.zeros(DIM, np.float32), 2).tolist() == [0.0] * 8 + [-0.5 ** 0.5] * 2 + [1.0]
    with pytest.raises(RuntimeError, match="squares must be 0..dim"):
        K.bandit_features(P, _xs(1)[0], 9)


@pytest.mark.parametrize("squares", [0, 5])
def test_updates_and_choices_match_the_reference(squares: int) -> None:
    st = BanditState(3, DIM, dim=8, gamma=0.97, squares=squares)
    assert st.Ainv.shape == (3, 9 + squares, 9 + squares)
    X = _xs(60, 1)
    rng = np.random.default_rng(2)
    arms, q = rng.integers(0, 3, 60), rng.random(60)
    Ainv = st.Ainv.copy()
    b = st.b.copy()
    preds = []
    for i in range(60):
        phi = bref.features(st.P, X[i], st.squares)
        k = arms[i]
        Ainv[k], b[k], pred = bref.update(Ainv[k], b[k], phi, q[i], 0.97)
        preds.append(pred)
    got = K.bandit_update_batch(st.P, st.Ainv, st.b, st.theta, arms, X, q, 0.97)
    np.testing.assert_allclose(got, preds, rtol=1e-5, atol=1e-6)  # the projection sums in float32
    np.testing.assert_allclose(st.Ainv, Ainv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.theta, np.einsum("kij,kj->ki", Ainv, b), rtol=1e-5, atol=1e-6)
    assert np.array_equal(st.Ainv, st.Ainv.transpose(0, 2, 1))  # exactly symmetric
    cost = np.array([0.1, 0.0, 0.3])
    for x in _xs(30, 3):
        phi = bref.features(st.P, x, st.squares)
        for lam in (0.0, 2.0):
            best, greedy, tied, _m, _w = K.bandit_route(st.P, st.Ainv, st.theta, cost, x, 0.5, lam)
            assert (best, greedy, tied) == bref.choose(st.Ainv, st.theta, cost, phi, 0.5, lam)


@pytest.mark.parametrize("squares", [0, 8])
def test_the_fused_route_kernel_matches_both_references(squares: int) -> None:
    """router_route_learned = the FastGRNN decision (NumPy reference) + the bandit's choice (NumPy reference)."""
    st = BanditState(3, DIM, dim=8, gamma=0.97, squares=squares)
    X = _xs(80, 15)
    rng = np.random.default_rng(3)
    K.bandit_update_batch(st.P, st.Ainv, st.b, st.theta, rng.integers(0, 3, 50), X[:50], rng.random(50), 0.97)
    params = K.router_init(0xC0A5, DIM, 3)
    w = ref.init(0xC0A5, DIM, 3)
    cost = np.array([0.2, 0.0, 0.1])
    adapter = np.array([0.3, -0.1, 0.0], np.float32)
    for x in X[50:]:
        for ad, c, lam in ((None, None, 0.0), (adapter, cost, 1.5)):
            got = K.router_route_learned(params, x, 3, False, ad, st.P, st.Ainv, st.theta, c, 0.4, lam)
            d = ref.decide(w, x, adapter=ad)
            assert got[:2] == (d[0], d[2])
            np.testing.assert_allclose(got[2:5], d[3:6], rtol=1e-5, atol=1e-6)
            assert got[5:] == bref.choose(st.Ainv, st.theta, c, bref.features(st.P, x, st.squares), 0.4, lam)
    with pytest.raises(RuntimeError, match="n_targets rows"):
        K.router_route_learned(params, X[0], 3, False, None, st.P, st.Ainv[:2], st.theta[:2], None, 0.4, 0.0)
    with pytest.raises(RuntimeError, match="in_dim"):
        K.router_route_learned(params, X[0], 3, False, None, K.bandit_projection(1, 8, DIM + 1), st.Ainv,
                               st.theta, None, 0.4, 0.0)


def test_the_update_kernel_gives_each_querys_share_of_the_fitted_directions() -> None:
    """shares[i] = sum_j w_j phi_j^2 over the projected features (the NumPy reference's), NaN for a zero
    query; the update itself is the same with or without them."""
    st, twin = BanditState(3, DIM, dim=8, gamma=0.97), BanditState(3, DIM, dim=8, gamma=0.97)
    X = _xs(40, 21)
    X[7] = 0.0
    rng = np.random.default_rng(4)
    arms, q = rng.integers(0, 3, 40), rng.random(40)
    w = rng.random(8) + 0.1
    shares = np.full(40, -1.0)
    got = K.bandit_update_batch(st.P, st.Ainv, st.b, st.theta, arms, X, q, 0.97, share_weights=w, shares=shares)
    want = [float((bref.features(st.P, x, 0)[:8] ** 2) @ w) if x.any() else np.nan for x in X]
    np.testing.assert_allclose(shares, want, rtol=1e-5)
    assert np.isnan(shares[7]) and not np.isnan(np.delete(shares, 7)).any()
    plain = K.bandit_update_batch(twin.P, twin.Ainv, twin.b, twin.theta, arms, X, q, 0.97)
    assert np.array_equal(got, plain) and np.array_equal(st.Ainv, twin.Ainv)
    with pytest.raises(RuntimeError, match="go together"):
        K.bandit_update_batch(st.P, st.Ainv, st.b, st.theta, arms, X, q, 0.97, share_weights=w)
    with pytest.raises(RuntimeError, match="share_weights must have"):
        K.bandit_update_batch(st.P, st.Ainv, st.b, st.theta, arms, X, q, 0.97, share_weights=w[:5], shares=shares)
    with pytest.raises(RuntimeError, match="finite"):
        K.bandit_update_batch(st.P, st.Ainv, st.b, st.theta, arms, X, q, 0.97, share_weights=w * np.nan,
                              shares=shares)
    for bad in (np.zeros(39), np.zeros(40, np.float32), [0.0] * 40, np.zeros((40, 1))):
        with pytest.raises(RuntimeError, match="shares must"):
            K.bandit_update_batch(st.P, st.Ainv, st.b, st.theta, arms, X, q, 0.97, share_weights=w, shares=bad)


def test_kernels_check_their_arguments() -> None:
    st = BanditState(3, DIM, dim=8)
    x = _xs(1)[0]
    with pytest.raises(RuntimeError, match="in_dim"):
        K.bandit_route(st.P, st.Ainv, st.theta, None, x[:5], 0.3, 0.0)
    with pytest.raises(RuntimeError, match="cost"):
        K.bandit_route(st.P, st.Ainv, st.theta, np.zeros(2), x, 0.3, 0.0)
    with pytest.raises(RuntimeError, match="Ainv"):
        K.bandit_route(st.P, st.Ainv[:, :4], st.theta, None, x, 0.3, 0.0)
    with pytest.raises(RuntimeError, match="arm out of range"):
        K.bandit_update_batch(st.P, st.Ainv, st.b, st.theta, np.array([3]), x[None], np.array([0.5]), 0.99)
    with pytest.raises(RuntimeError, match="gamma"):
        K.bandit_update_batch(st.P, st.Ainv, st.b, st.theta, np.array([0]), x[None], np.array([0.5]), 0.0)
    with pytest.raises(RuntimeError, match="float64"):
        K.bandit_update_batch(st.P, st.Ainv.astype(np.float32), st.b, st.theta, np.array([0]), x[None],
                              np.array([0.5]), 0.99)


# ------------------------------------------------------------------ seed parity
def test_trained_true_routes_through_fastgrnn_from_the_first_request() -> None:
    """The reference's trained router: argmax of the seeded heads, from request one, in both modes."""
    w = ref.init(0xC0A5, DIM, len(TARGETS))
    for mode in (None, "reference"):
        s = LearnSession(rng=random.Random(1))
        body = {"targets": TARGETS, "in_dim": DIM, "trained": True, "epsilon": 0.0}
        if mode:
            body["mode"] = mode
        out = s.dispatch({"verb": "init_router", "body": body})
        assert out["ok"] and out["data"]["trained"] is True and out["data"]["threshold"] == 0
        for x in _xs(25, 4):
            r = s.dispatch({"verb": "route", "body": {"embedding": x.tolist()}})["data"]
            d = ref.decide(w, x)
            assert (r["algo"], r["model"], r["context_bucket"]) == ("fastgrnn", TARGETS[d[0]], d[2])
    s = LearnSession()
    s.dispatch({"verb": "init_router", "body": {"targets": TARGETS, "in_dim": DIM}})
    r = s.dispatch({"verb": "route", "body": {"embedding": [1.0] * DIM}})["data"]
    assert r["algo"] == "rule" and r["model"] == "small"
    bad = s.dispatch({"verb": "init_router", "body": {"targets": TARGETS, "trained": "yes"}})
    assert bad == {"ok": False, "verb": "init_router", "error": "trained must be a boolean"}


def test_a_fresh_learned_router_routes_exactly_as_the_reference_mode() -> None:
    """Every target scores the same until an outcome arrives, so exploration draws and routes agree."""
    a = RouterState(TARGETS, in_dim=DIM, threshold=0, epsilon=0.3)
    b = RouterState(TARGETS, in_dim=DIM, threshold=0, epsilon=0.3, mode="reference")
    ra, rb = random.Random(5), random.Random(5)
    for x in _xs(100, 6):
        assert a.route(x, rng=ra) == b.route(x, rng=rb)


def test_record_outcome_without_embedding_changes_no_route_but_its_cost() -> None:
    a = RouterState(TARGETS, in_dim=DIM, threshold=0, epsilon=0.0, cost_weight=0.0)
    a.record_outcome("large", 1.0)
    a.record_outcome("small", 0.0, cost=0.2)
    b = RouterState(TARGETS, in_dim=DIM, threshold=0, epsilon=0.0, mode="reference")
    for x in _xs(20, 7):
        assert a.route(x)["model"] == b.route(x)["model"]
    # with lambda 1 (the default) a reported cost alone moves routes off the target that costs
    assert "medium" in {b.route(x)["model"] for x in _xs(20, 7)}
    priced = RouterState(TARGETS, in_dim=DIM, threshold=0, epsilon=0.0)
    priced.record_outcome("medium", 0.5, cost=0.2)
    assert "medium" not in {priced.route(x)["model"] for x in _xs(20, 7)}


# ------------------------------------------------------------------ learning
def _world(X: np.ndarray) -> np.ndarray:
    """Expected quality (n, 3): 'large' wins where x0 > 0, 'small' elsewhere, 'medium' never."""
    hi = (X[:, 0] > 0).astype(float)
    return np.stack([0.2 + 0.6 * (1 - hi), np.full(len(X), 0.45), 0.2 + 0.6 * hi], axis=1)


def _play(st: RouterState, X: np.ndarray, Q: np.ndarray, seed: int, costs: np.ndarray | None = None,
          cost_weight: float | None = None) -> list[int]:
    rng, noise = random.Random(seed), np.random.default_rng(seed)
    picks = []
    for x, q in zip(X, Q):
        m = TARGETS.index(st.route(x, rng=rng, cost_weight=cost_weight)["model"])
        picks.append(m)
        st.record_outcome(TARGETS[m], float(np.clip(q[m] + noise.normal(0, 0.1), 0, 1)), x,
                          cost=None if costs is None else float(costs[m]))
    return picks


def test_the_learned_router_learns_where_each_model_wins() -> None:
    X = _xs(1500, 8)
    Q = _world(X)
    st = RouterState(TARGETS, in_dim=DIM, threshold=0, epsilon=0.0)
    picks = np.array(_play(st, X, Q, 1))
    best = Q.argmax(1)
    assert (picks[-300:] == best[-300:]).mean() > 0.9
    ref_st = RouterState(TARGETS, in_dim=DIM, threshold=0, epsilon=0.0, mode="reference")
    ref_picks = np.array(_play(ref_st, X, Q, 1))
    assert (picks[-300:] == best[-300:]).mean() > (ref_picks[-300:] == best[-300:]).mean()


def test_cost_weight_trades_quality_for_price() -> None:
    """'medium' is 0.15 worse than the winner everywhere but costs nothing; the winners cost 0.3."""
    X = _xs(1500, 9)
    Q = _world(X)
    Q[:, 1] = Q.max(1) - 0.15
    costs = np.array([0.3, 0.0, 0.3])
    free = RouterState(TARGETS, in_dim=DIM, threshold=0, epsilon=0.0, cost_weight=0.0)
    priced = RouterState(TARGETS, in_dim=DIM, threshold=0, epsilon=0.0)   # lambda 1 by default
    p_free = np.array(_play(free, X, Q, 2, costs))
    p_priced = np.array(_play(priced, X, Q, 2, costs))
    assert (p_free[-300:] == 1).mean() < 0.4
    assert (p_priced[-300:] == 1).mean() > 0.8
    # per request: lambda 0 on the priced router goes back to quality alone
    b = priced.bandit
    assert b is not None
    picks = [TARGETS.index(priced.route(x, rng=random.Random(0), cost_weight=0.0)["model"]) for x in X[-200:]]
    unpriced = [K.bandit_route(b.P, b.Ainv, b.theta, None, x, b.alpha, 0.0)[0] for x in X[-200:]]
    assert picks == unpriced
    assert np.mean(np.array(picks) == 1) < 0.7 < (p_priced[-200:] == 1).mean()
    assert priced.bandit is not None and priced.bandit.cost.tolist() == pytest.approx([0.3, 0.0, 0.3])


def test_a_drift_raises_exploration_until_relearned() -> None:
    X = _xs(3000, 10)
    Q = _world(X)
    Q2 = Q.copy()
    Q2[:, [0, 2]] = Q[:, [2, 0]]   # the two specialists swap regions
    st = RouterState(TARGETS, in_dim=DIM, threshold=0, epsilon=0.0)
    _play(st, X[:1500], Q[:1500], 3)
    b = st.bandit
    assert b is not None and b.drifts == 0 and b.epsilon(0.0) == 0.0
    picks = np.array(_play(st, X[1500:], Q2[1500:], 4))
    assert b.drifts >= 1
    assert (picks[-300:] == Q2[1500:].argmax(1)[-300:]).mean() > 0.9


def test_a_uniform_regression_is_found_fast_and_moves_the_intercept() -> None:
    """A target that got 0.3 worse everywhere: the residual-mean test fires within a few dozen of its
    outcomes and the target's predictions drop by about the shift at once (its shape is kept)."""
    X = _xs(2400, 13)
    Q = _world(X)
    st = RouterState(TARGETS, in_dim=DIM, threshold=0)
    _play(st, X[:1500], Q[:1500], 6)
    b = st.bandit
    assert b is not None and b.drifts == 0
    probe = X[1500:1600][X[1500:1600, 0] > 0]      # where 'large' wins

    def predicted() -> float:
        return float(np.mean([b.theta[2] @ K.bandit_features(b.P, x, b.squares) for x in probe]))

    before = predicted()
    Q2 = Q.copy()
    Q2[:, 2] -= 0.3
    rng, noise = random.Random(7), np.random.default_rng(7)
    n_large = 0
    for x, q in zip(X[1500:], Q2[1500:]):
        m = TARGETS.index(st.route(x, rng=rng)["model"])
        n_large += m == 2
        st.record_outcome(TARGETS[m], float(np.clip(q[m] + noise.normal(0, 0.1), 0, 1)), x)
        if b.drifts:
            break
    assert b.drifts == 1 and n_large <= 40
    drop = before - predicted()
    assert drop > 0.15


def test_no_drift_alarm_on_a_stationary_world() -> None:
    X = _xs(4000, 14)
    Q = _world(X)
    for seed in (1, 2):
        st = RouterState(TARGETS, in_dim=DIM, threshold=0)
        _play(st, X, Q, seed)
        assert st.bandit is not None and st.bandit.drifts == 0


def test_an_envelope_learns_exactly_as_outcomes_one_by_one() -> None:
    """Including a drift alarm in the middle of the batch (the memory is cut right after that row)."""
    X = _xs(1500, 11)
    Q = _world(X)
    Q[1200:, [0, 2]] = Q[1200:, [2, 0]]      # the specialists swap regions
    arms = np.tile([0, 2, 1], 500)
    q = np.clip(Q[np.arange(1500), arms] + np.random.default_rng(0).normal(0, 0.1, 1500), 0, 1)
    one = RouterState(TARGETS, in_dim=DIM, threshold=0)
    many = RouterState(TARGETS, in_dim=DIM, threshold=0)
    for i in range(1500):
        one.record_outcome(TARGETS[arms[i]], float(q[i]), X[i])
    many.record_outcomes([TARGETS[a] for a in arms], q.tolist(), X)
    assert one.bandit is not None and one.bandit.drifts >= 1
    assert one.to_bytes() == many.to_bytes()


# ------------------------------------------------------------------ verbs and validation
def test_cost_fields_are_validated() -> None:
    s = LearnSession()
    s.dispatch({"verb": "init_router", "body": {"targets": TARGETS, "in_dim": DIM, "trained": True}})
    x = [0.5] * DIM
    for body, err in [({"cost": -1}, "cost must be a finite number in [0, 1e9]"),
                      ({"cost": "cheap"}, "cost must be a finite number in [0, 1e9]"),
                      ({"cost": 1e308}, "cost must be a finite number in [0, 1e9]")]:  # a unit mistake
        out = s.dispatch({"verb": "record_outcome", "body": {"target": "small", "quality": 0.5, **body}})
        assert out == {"ok": False, "verb": "record_outcome", "error": err}
    for lam in (-0.5, 1e308):
        out = s.dispatch({"verb": "route", "body": {"embedding": x, "cost_weight": lam}})
        assert out["error"] == "cost_weight must be a finite number in [0, 1e9]"
    for init, err in [({"mode": "bandit"}, "mode must be one of learned, reference"),
                      ({"cost_weight": True}, "cost_weight must be a finite number in [0, 1e9]"),
                      ({"bandit": {"dim": 0}}, "bandit.dim must be an integer 1..256"),
                      ({"bandit": {"gamma": 0.1}}, "bandit.gamma out of range (0.5..1)"),
                      ({"bandit": {"beta": 1}},
                       "bandit must be an object with dim, alpha, gamma, projection, squares, refit"),
                      ({"bandit": {"refit": 1}}, "bandit.refit must be true or false"),
                      ({"bandit": {"refit": "no"}}, "bandit.refit must be true or false"),
                      ({"bandit": {"squares": -1}}, "bandit.squares must be an integer 0..256 (at most dim are used)"),
                      ({"bandit": {"squares": 1.5}}, "bandit.squares must be an integer 0..256 (at most dim are used)"),
                      ({"bandit": {"squares": True}}, "bandit.squares must be an integer 0..256 (at most dim are used)"),
                      ({"bandit": {"squares": 257}}, "bandit.squares must be an integer 0..256 (at most dim are used)")]:
        out = s.dispatch({"verb": "init_router", "body": {"targets": TARGETS, **init}})
        assert out == {"ok": False, "verb": "init_router", "error": err}
    out = s.dispatch({"verb": "record_outcome", "body": {"target": "small", "quality": 0.5, "cost": 0.1,
                                                         "embedding": x}})
    assert out["ok"]


# ------------------------------------------------------------------ persistence
def test_round_trip_keeps_routes_and_learning() -> None:
    X = _xs(400, 12)
    st = RouterState(TARGETS, in_dim=DIM, threshold=0, cost_weight=0.5)
    _play(st, X[:300], _world(X[:300]), 5, np.array([0.1, 0.0, 0.2]))
    back = RouterState.from_bytes(st.to_bytes())
    assert back.to_bytes() == st.to_bytes() and back.mode == "learned" and back.cost_weight == 0.5
    for x in X[300:]:
        assert back.route(x, rng=random.Random(1)) == st.route(x, rng=random.Random(1))
    with pytest.raises(CorruptStateError):
        RouterState.from_bytes(st.to_bytes()[:-8])


def test_a_reference_mode_state_has_no_bandit_bytes() -> None:
    st = RouterState(TARGETS, in_dim=DIM, mode="reference")
    data = st.to_bytes()
    assert RouterState.from_bytes(data).bandit is None
    assert len(data) < len(RouterState(TARGETS, in_dim=DIM).to_bytes())
    with pytest.raises(CorruptStateError):
        RouterState.from_bytes(data + b"\0")


def test_bandit_state_stays_bounded_for_many_targets() -> None:
    assert bandit_dim(5) == 32
    for nt in (64, 256, 1024):
        d = bandit_dim(nt)
        assert nt * ((d + 1) ** 2 + 2 * (d + 1)) * 8 <= MAX_STATE_BYTES and d >= 1
    st = RouterState([f"m{i}" for i in range(256)], in_dim=DIM)
    assert st.bandit is not None and len(st.bandit.to_bytes()) <= MAX_STATE_BYTES + 4096


# ------------------------------------------------------------------ fitted projection
@pytest.mark.parametrize("squares", [0, 3])
def test_features_as_given_and_their_updates_match_the_reference(squares: int) -> None:
    """normalize=False (the refit's replay of kept, pre-projected queries): phi = [P x; squares; 1], no
    rescaling."""
    P = K.bandit_projection(3, 8, DIM)
    st = BanditState(3, DIM, dim=8, gamma=0.97, projection="random", squares=squares)
    X = _xs(40, 21) * 3.0  # far from unit RMS: a rescaling would show
    rng = np.random.default_rng(22)
    arms, q = rng.integers(0, 3, 40), rng.random(40)
    Ainv, b, preds = st.Ainv.copy(), st.b.copy(), []
    for i in range(40):
        z = P.astype(np.float64) @ X[i].astype(np.float64)
        phi = np.concatenate([z, (z[:st.squares] ** 2 - 1.0) * np.sqrt(0.5), [1.0]])
        Ainv[arms[i]], b[arms[i]], pred = bref.update(Ainv[arms[i]], b[arms[i]], phi, q[i], 0.97)
        preds.append(pred)
    got = K.bandit_update_batch(P, st.Ainv, st.b, st.theta, arms, X, q, 0.97, normalize=False)
    np.testing.assert_allclose(got, preds, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.Ainv, Ainv, rtol=1e-5, atol=1e-6)


def _clustered(n: int, seed: int, in_dim: int = 256, regions: int = 6, spread: float = 2.0) -> tuple:
    """Loose topic clusters (noise larger than the centres' spacing per coordinate) and, per region,
    which of the three targets is best (quality 0.8 against 0.3)."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).standard_normal((regions, in_dim))
    region = rng.integers(0, regions, n)
    X = (centers[region] + spread * rng.standard_normal((n, in_dim))).astype(np.float32)
    Q = np.full((n, 3), 0.3)
    Q[np.arange(n), region % 3] = 0.8
    return X, Q


def _greedy_right(st: BanditState, X: np.ndarray, Q: np.ndarray) -> float:
    """How often the state's greedy choice (no width, no cost) is the best target of each query."""
    picks = [K.bandit_route(st.P, st.Ainv, st.theta, None, x, 0.0, 0.0)[1] for x in X]
    return float(np.mean(np.array(picks) == Q.argmax(1)))


def _loose_outcomes(n: int, learned: int = 600) -> tuple:
    """``_clustered`` queries and, for the first ``learned``, uniform random targets and noisy outcomes."""
    X, Q = _clustered(n, 30)
    rng = np.random.default_rng(31)
    arms = rng.integers(0, 3, learned)
    return X, Q, arms, np.clip(Q[np.arange(learned), arms] + rng.normal(0, 0.1, learned), 0, 1)


def test_the_fitted_projection_finds_the_topics_a_random_one_blurs() -> None:
    """The same outcomes (uniform random targets) learned with either projection; the fitted one's greedy
    choice is right far more often on fresh queries of loose clusters."""
    X, Q, arms, outcomes = _loose_outcomes(700)
    right = {}
    for projection in ("pca", "random"):
        st = BanditState(3, 256, dim=16, projection=projection)
        st.learn(arms, X[:600], outcomes)
        assert (st.W is not None) == (projection == "pca") and st.kept is None
        right[projection] = _greedy_right(st, X[600:], Q[600:])
    assert right["pca"] > 0.9 and right["pca"] > right["random"] + 0.15, right  # measured 0.96 against 0.75


@pytest.mark.parametrize("sketch", [None, 48])
def test_the_fit_whitens_and_happens_at_the_same_row_however_outcomes_arrive(sketch: int | None) -> None:
    """Queries kept as given (the default up to RAW_KEEP_MAX floats) or sketched (wider ones)."""
    X, Q = _clustered(FIT_AFTER + 60, 32, in_dim=64)
    rng = np.random.default_rng(33)
    arms = rng.integers(0, 3, len(X))
    q = Q[np.arange(len(X)), arms]
    one = BanditState(3, 64, dim=16, sketch=sketch)
    saved = []
    for i in range(len(X)):
        one.learn(arms[i:i + 1], X[i:i + 1], q[i:i + 1])
        if i in (0, FIT_AFTER - 2, FIT_AFTER - 1, FIT_AFTER + 10):
            saved.append(one.to_bytes())
            back = BanditState.from_bytes(saved[-1])
            assert back.to_bytes() == saved[-1] and np.array_equal(back.P, one.P)
    assert one.info()["kept"] == 0 and one.info()["fitted"] is True
    many = BanditState(3, 64, dim=16, sketch=sketch)
    many.learn(arms[:150], X[:150], q[:150])
    many.learn(arms[150:], X[150:], q[150:])  # the fit falls inside this call
    assert many.to_bytes() == one.to_bytes()
    # before the fit the state grows by one kept row per outcome, appended (earlier bytes unchanged)
    before, just = BanditState.from_bytes(saved[1]), saved[1]
    assert len(before.kept) == FIT_AFTER - 1
    # the fitted features of the kept queries have unit variance at most (whitened, floored)
    if sketch is None:  # as a route rescales them: unit RMS
        assert one.sketch == 0 and before.kept["z"].shape[1] == 64
        R = np.eye(64, dtype=np.float32)
        Z = X[:FIT_AFTER] * np.sqrt(64) / np.linalg.norm(X[:FIT_AFTER], axis=1, keepdims=True)
    else:
        assert one.sketch == sketch and before.kept["z"].shape[1] == sketch
        R = K.bandit_projection(one.seed ^ 0x5CE7, sketch, 64)
        Z = np.stack([K.bandit_features(R, x)[:sketch] for x in X[:FIT_AFTER]])
    var = np.linalg.eigvalsh(np.cov((Z @ one.W.astype(np.float64).T).T, bias=True))
    assert var.max() <= 1.0 + 1e-3 and var.max() > 0.5
    np.testing.assert_allclose(one.P, one.W @ R, rtol=1e-5, atol=1e-6)
    assert len(just) > len(saved[0])


def test_a_version_1_state_reads_as_a_random_projection() -> None:
    from workers.state.framing import PART_HEAD, pack_part
    st = BanditState(3, DIM, dim=8, projection="random")
    st.learn(np.array([0, 1, 2]), _xs(3, 34), np.array([0.2, 0.5, 0.9]))
    data = st.to_bytes()
    _m, _v, hlen = PART_HEAD.unpack_from(data)
    import orjson
    header = orjson.loads(data[PART_HEAD.size:PART_HEAD.size + hlen])
    for key in ("projection", "fitted"):
        header.pop(key)
    v1 = pack_part(b"LSB", 1, header, data[PART_HEAD.size + hlen:])
    back = BanditState.from_bytes(v1)
    assert back.projection == "random" and back.W is None and back.kept is None
    assert np.array_equal(back.Ainv, st.Ainv) and np.array_equal(back.P, st.P)


def test_small_queries_keep_the_random_projection_and_bad_states_are_refused() -> None:
    assert BanditState(3, 8, dim=8).projection == "random"  # nothing to fit: the query is no wider
    with pytest.raises(ValueError, match="projection"):
        BanditState(3, DIM, projection="lda")
    st = BanditState(3, DIM, dim=8)
    st.learn(np.array([0, 1]), _xs(2, 35), np.array([0.2, 0.5]))
    data = st.to_bytes()
    with pytest.raises(CorruptStateError):
        BanditState.from_bytes(data[:-3])  # a torn kept row
    bad = bytearray(data)
    row = st.kept.dtype.itemsize
    bad[-row + st.kept.dtype.fields["arm"][1]:-row + st.kept.dtype.fields["arm"][1] + 8] = (7).to_bytes(8, "little")
    with pytest.raises(CorruptStateError, match="unknown targets"):
        BanditState.from_bytes(bytes(bad))
    nan = bytearray(data)
    nan[-row:-row + 4] = np.float32("nan").tobytes()  # the last kept row's first feature
    with pytest.raises(CorruptStateError, match="not finite"):
        BanditState.from_bytes(bytes(nan))
    s = LearnSession()
    out = s.dispatch({"verb": "init_router", "body": {"targets": TARGETS, "in_dim": DIM,
                                                       "bandit": {"projection": "lda"}}})
    assert out == {"ok": False, "verb": "init_router", "error": "bandit.projection must be one of pca, random"}
    out = s.dispatch({"verb": "init_router", "body": {"targets": TARGETS, "in_dim": DIM,
                                                       "bandit": {"projection": "random"}}})
    assert out["ok"] and out["data"]["bandit"]["projection"] == "random"


def test_other_targets_forget_too_up_to_the_prior_and_match_the_reference() -> None:
    """idle_gamma: after each row every other target's Ainv grows by 1/idle and b shrinks by idle (theta
    unchanged) while trace(Ainv) stays within the cap; the pulled target updates as before."""
    st = BanditState(3, DIM, dim=8, gamma=0.97, projection="random", squares=4)
    X = _xs(30, 40)
    rng = np.random.default_rng(41)
    arms, q = rng.integers(0, 3, 30), rng.random(30)
    Ainv, b, cap = st.Ainv.copy(), st.b.copy(), float(st.d1)  # the prior's trace
    for i in range(30):
        k = arms[i]
        Ainv[k], b[k], _ = bref.update(Ainv[k], b[k], bref.features(st.P, X[i], st.squares), q[i], 0.97)
        for j in range(3):
            if j != k and np.trace(Ainv[j]) / 0.9 <= cap:
                Ainv[j], b[j] = Ainv[j] / 0.9, b[j] * 0.9
    K.bandit_update_batch(st.P, st.Ainv, st.b, st.theta, arms, X, q, 0.97, idle_gamma=0.9, idle_cap=cap)
    np.testing.assert_allclose(st.Ainv, Ainv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.b, b, rtol=1e-5, atol=1e-6)
    assert all(np.trace(a) <= cap + 1e-9 for a in st.Ainv)
    with pytest.raises(RuntimeError, match="idle_gamma"):
        K.bandit_update_batch(st.P, st.Ainv, st.b, st.theta, arms[:1], X[:1], q[:1], 0.97, idle_gamma=0.0)
    with pytest.raises(RuntimeError, match="idle_cap"):
        K.bandit_update_batch(st.P, st.Ainv, st.b, st.theta, arms[:1], X[:1], q[:1], 0.97, idle_gamma=0.9,
                              idle_cap=float("nan"))


def test_a_target_left_unchosen_regains_its_uncertainty() -> None:
    """A target learned early and then never chosen: its width grows back toward the prior's as the
    others learn, so LinUCB tries it again (a world where it became the best would be found)."""
    st = BanditState(3, DIM, dim=8, projection="random")
    X = _xs(3000, 42)
    st.learn(np.zeros(200, np.int64), X[:200], np.full(200, 0.2))
    width_before = float(bref.features(st.P, X[0], st.squares) @ st.Ainv[0] @ bref.features(st.P, X[0], st.squares))
    st.learn(np.ones(2800, np.int64), X[200:], np.full(2800, 0.5))
    width_after = float(bref.features(st.P, X[0], st.squares) @ st.Ainv[0] @ bref.features(st.P, X[0], st.squares))
    # 2,800 outcomes of the others at 0.9998 each: 0.9998^-2800 = 1.75 (still under the prior's trace)
    assert width_after / width_before == pytest.approx(0.9998 ** -2800, rel=1e-6)
    assert np.trace(st.Ainv[0]) <= st.d1 + 1e-9 and st.drifts == 0
    np.testing.assert_allclose(st.theta[0] @ bref.features(st.P, X[0], st.squares), 0.2, atol=0.05)  # its estimate stays


def test_queries_kept_as_given_fit_what_a_sketch_of_them_blurs() -> None:
    """The fit on the queries themselves (the default up to RAW_KEEP_MAX floats) against the fit on a
    32-feature random sketch of the same 256-d queries: a sketch keeps 32/256 of each topic direction
    against the same noise, and the fitted router's greedy choice suffers for it."""
    X, Q, arms, outcomes = _loose_outcomes(900)
    right = {}
    for sketch in (None, 32):
        st = BanditState(3, 256, dim=16, sketch=sketch)
        st.learn(arms, X[:600], outcomes)
        right[sketch] = _greedy_right(st, X[600:], Q[600:])
    assert right[None] > 0.95 and right[None] > right[32] + 0.15, right  # measured 1.0 against 0.71


def test_degenerate_kept_queries_are_not_fitted_and_the_fit_is_tried_again() -> None:
    """All-zero queries (an agent without embeddings yet) carry no direction: whitening them would blow
    up noise, so the projection stays and the next FIT_AFTER outcomes are kept for a new attempt."""
    st = BanditState(3, 64, dim=16)
    P0 = st.P.copy()
    zeros = np.zeros((FIT_AFTER, 64), np.float32)
    st.learn(np.zeros(FIT_AFTER, np.int64), zeros, np.full(FIT_AFTER, 0.5))
    assert st.W is None and st.kept is not None and len(st.kept) == 0 and np.array_equal(st.P, P0)
    X, Q = _clustered(FIT_AFTER, 43, in_dim=64)
    st.learn(np.ones(FIT_AFTER, np.int64), X, Q[:, 1])
    assert st.W is not None and np.isfinite(st.P).all() and np.isfinite(st.Ainv).all()
    assert BanditState.from_bytes(st.to_bytes()).to_bytes() == st.to_bytes()


@pytest.mark.parametrize("learned", [FIT_AFTER - 5, FIT_AFTER + 5])
def test_a_state_written_before_the_sketch_field_reads_as_a_128_feature_sketch(learned: int) -> None:
    """Version-2 states without ``"sketch"`` kept their queries as 128 random features (kept rows
    before the fit, ``W`` of dim x 128 after it), and without ``"squares"`` had no squared features:
    they read so, and route as they did."""
    from workers.state.framing import pack_part, unpack_part

    X, Q = _clustered(learned, 32, in_dim=384)
    arms = np.arange(learned) % 3
    old = BanditState(3, 384, dim=16, sketch=128, squares=0)
    old.learn(arms, X, Q[np.arange(learned), arms])
    data = old.to_bytes()
    header, pos = unpack_part(data, b"LSB", 2, "router bandit")
    assert header.pop("sketch") == 128 and header.pop("squares") == 0
    written_before = pack_part(b"LSB", 2, header, data[pos:])
    back = BanditState.from_bytes(written_before)
    assert back.sketch == 128 and back.squares == 0 and back.to_bytes() == data and np.array_equal(back.P, old.P)
    x = X[0]
    assert K.bandit_route(back.P, back.Ainv, back.theta, None, x, 0.15, 0.0) == \
        K.bandit_route(old.P, old.Ainv, old.theta, None, x, 0.15, 0.0)
    new = BanditState(3, 384, dim=16)
    assert new.sketch == 0 and new.kept_width == 384 and new.squares == 0 and new.Ainv.shape == (3, 17, 17)


@pytest.mark.parametrize(("field", "value"), [("sketch", -1), ("sketch", 257), ("sketch", 500), ("sketch", 1.5),
                                              ("sketch", "raw"), ("sketch", None), ("squares", -1), ("squares", 17),
                                              ("squares", 8), ("squares", 2.0), ("squares", None)])
def test_a_bad_sketch_or_squares_field_is_corrupt(field: str, value: object) -> None:
    """Out of range, not an int, or not the state's own (8 squares: Ainv's width says none)."""
    from workers.state.framing import pack_part, unpack_part

    data = BanditState(3, 384, dim=16).to_bytes()
    header, pos = unpack_part(data, b"LSB", 2, "router bandit")
    header[field] = value
    with pytest.raises(CorruptStateError, match="header is malformed|does not match its header"):
        BanditState.from_bytes(pack_part(b"LSB", 2, header, data[pos:]))


def test_squared_features_fit_a_quality_that_peaks_in_the_middle_and_round_trip() -> None:
    """A target good only at middling values along a direction (quality 0.9 - 0.6 z^2) and one flat at 0.5:
    with squared features the greedy choice follows the peak; without them the linear model cannot
    (it can only tilt). ``init_router {bandit: {squares}}`` sets them; they survive a round trip."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((1500, DIM)).astype(np.float32)
    right = {}
    for squares in (0, 4):
        st = BanditState(2, DIM, dim=4, squares=squares, projection="random")
        Z = np.stack([K.bandit_features(st.P, x)[:4] for x in X])
        Q = np.stack([0.9 - 0.6 * Z[:, 0] ** 2, np.full(len(X), 0.5)], 1)
        arms = rng.integers(0, 2, 1200)
        st.learn(arms, X[:1200], Q[np.arange(1200), arms] + rng.normal(0, 0.05, 1200))
        right[squares] = _greedy_right(st, X[1200:], Q[1200:])
        back = BanditState.from_bytes(st.to_bytes())
        assert back.squares == squares and back.to_bytes() == st.to_bytes()
    assert right[4] > 0.9 and right[4] > right[0] + 0.15, right
    s = LearnSession()
    out = s.dispatch({"verb": "init_router", "body": {"targets": TARGETS, "in_dim": DIM, "bandit": {"squares": 6}}})
    assert out["ok"] and out["data"]["bandit"]["squares"] == 6


@pytest.mark.parametrize("dim", [16, 210])
def test_the_fit_finds_the_second_moments_top_directions(dim: int) -> None:
    """W's rows are the top `dim` eigenvectors of the kept queries' second moment (up to sign), whitened
    with the floor: from Z's SVD when dim fits within the kept rows, from the full eigendecomposition when
    it does not (210 features from 200 rows)."""
    X, Q = _clustered(FIT_AFTER, 50, in_dim=300)
    arms = np.arange(FIT_AFTER) % 3
    st = BanditState(3, 300, dim=dim)
    st.learn(arms, X, Q[np.arange(FIT_AFTER), arms])
    dim = st.dim  # 210 shrinks to 207 (the state's size limit): still more than the kept rows
    assert st.W is not None and st.W.shape == (dim, 300) and (dim > FIT_AFTER) == (dim > 16)
    Z = X.astype(np.float64) * np.sqrt(300) / np.linalg.norm(X, axis=1, keepdims=True)
    lam, V = np.linalg.eigh(Z.T @ Z / len(Z))
    lam, V = lam[::-1][:dim], V[:, ::-1][:, :dim]
    lam = np.maximum(lam, 0.0) + 0.05 * lam.mean()
    want = (V / np.sqrt(lam)).T
    top = min(dim, 150)  # directions well apart from the next (the null space's order is arbitrary)
    signs = np.sign(np.sum(want[:top] * st.W[:top], axis=1))
    np.testing.assert_allclose(st.W[:top], want[:top] * signs[:, None], rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------ new topics: the projection is fitted again
def _topics(n: int, regions: list[int], seed: int, in_dim: int = 64, spread: float = 0.7) -> tuple:
    """Queries from some of 8 topic regions (centres N(0, I)) and, per region, the best of three targets."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(98).standard_normal((8, in_dim))
    region = rng.choice(regions, n)
    X = (centers[region] + spread * rng.standard_normal((n, in_dim))).astype(np.float32)
    Q = np.full((n, 3), 0.3)
    Q[np.arange(n), region % 3] = 0.8
    return X, Q


def _taught(st: BanditState, X: np.ndarray, Q: np.ndarray, seed: int, one_by_one: bool = False) -> None:
    """Outcomes of uniform random targets, with noise, in one call (or one call per outcome)."""
    rng = np.random.default_rng(seed)
    arms = rng.integers(0, 3, len(X))
    q = np.clip(Q[np.arange(len(X)), arms] + rng.normal(0, 0.1, len(X)), 0, 1)
    if one_by_one:
        for i in range(len(X)):
            st.learn(arms[i:i + 1], X[i:i + 1], q[i:i + 1])
    else:
        st.learn(arms, X, q)


def test_queries_from_new_topics_fit_the_projection_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fitted to one topic, then queries from all eight: most hold a small share of their energy in the fitted
    directions, the rate of such novel queries rises, the next FIT_AFTER outcomes are kept and the projection is
    fitted again to them; the greedy choice on fresh queries of every topic is then right far more often than
    with the first fit kept."""
    import workers.cores.bandit as bandit

    X1, Q1 = _topics(FIT_AFTER + 300, [0], 1, in_dim=128, spread=1.5)
    X2, Q2 = _topics(1500, list(range(8)), 2, in_dim=128, spread=1.5)
    Xt, Qt = _topics(400, list(range(8)), 3, in_dim=128, spread=1.5)
    right = {}
    for name, rise in (("refit", bandit.REFIT_RISE), ("kept", 1.0)):  # a rate never rises by 1 above its baseline
        monkeypatch.setattr(bandit, "REFIT_RISE", rise)
        st = BanditState(3, 128, dim=8)
        _taught(st, X1, Q1, 4)
        assert st.W is not None and st.refits == 0 and st.nov_n == 300
        assert st.nov_base > 0.3 and st.nov_ema < st.nov_rate0 + 0.1  # its own topic: few novel queries
        _taught(st, X2, Q2, 5)
        right[name] = _greedy_right(st, Xt, Qt)
        if name == "refit":
            assert st.refits == 1 and st.kept is None and st.info()["refits"] == 1
            assert st.grown == 0 and st.dim == 8  # seven new topics at once: fitted from scratch, not grown
            assert st.nov_ema < st.nov_rate0 + 0.1  # the new fit holds every topic
        else:
            assert st.refits == 0 and st.nov_ema > 0.6  # most queries novel, measured
    assert right["refit"] > right["kept"] + 0.2 and right["refit"] > 0.9, right  # measured 1.0 against 0.71


def test_queries_from_the_fitted_topics_never_fit_again() -> None:
    """Eight topics from the start: over 5,000 outcomes after the fit the rate of novel queries stays near its
    baseline."""
    X, Q = _topics(FIT_AFTER + 5000, list(range(8)), 6)
    st = BanditState(3, 64, dim=8)
    _taught(st, X, Q, 7)
    assert st.refits == 0 and st.kept is None and st.nov_n == 5000
    assert st.nov_ema < st.nov_rate0 + 0.1


def _in_turns(st: BanditState, seed: int, new: list[int], one_by_one: bool = False) -> None:
    """Outcomes from four topics (the fit), then from the topics ``new`` only."""
    X1, Q1 = _topics(FIT_AFTER + 600, [0, 1, 2, 3], 20 + seed)
    _taught(st, X1, Q1, 30 + seed, one_by_one)
    X2, Q2 = _topics(1000, new, 40 + seed)
    _taught(st, X2, Q2, 50 + seed, one_by_one)


def test_a_new_topic_grows_the_projection_and_keeps_what_was_learned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Topics in turns: fitted to four topics, then queries from a fifth only. The fit again adds a direction
    for it and keeps the fitted directions, the features' places and every target's evidence on them, so
    the old topics are still routed right as well as the new one. Fitted from scratch to the kept queries
    instead (no room to grow), the router knows only the new topic and routes the old ones by chance."""
    import workers.cores.bandit as bandit

    grow, seen = bandit.BanditState._grow, []

    def watched(self: BanditState, Z: np.ndarray) -> bool:
        before = (self.W.copy(), self.P.copy(), self.Ainv.shape, self.dim)
        grew = grow(self, Z)
        seen.append((before, grew))
        return grew

    monkeypatch.setattr(bandit.BanditState, "_grow", watched)
    Xo, Qo = _topics(400, [0, 1, 2, 3], 60)
    Xn, Qn = _topics(400, [4], 70)
    st = BanditState(3, 64, dim=12)
    _in_turns(st, 0, [4])
    assert st.refits == 1 and len(seen) == 1 and seen[0][1]
    (W, P, Ainv_shape, d), _ = seen[0]
    assert d == 12 and st.grown == st.dim - 12 == 1 and st.info()["grown"] == 1  # the new topic's centre
    assert np.array_equal(st.W[:12], W) and np.array_equal(st.P[:12], P)  # the fitted directions stay
    assert Ainv_shape == (3, 13, 13) and st.Ainv.shape == (3, 14, 14) and st.theta.shape == (3, 14)
    right_old, right_new = _greedy_right(st, Xo, Qo), _greedy_right(st, Xn, Qn)
    assert right_old > 0.95 and right_new > 0.95, (right_old, right_new)  # measured 1.0 and 1.0

    monkeypatch.setattr(bandit, "GROW_LIMIT", 1)  # no room: fitted from scratch to the new topic's queries
    scratch = BanditState(3, 64, dim=12)
    _in_turns(scratch, 0, [4])
    assert scratch.refits == 1 and scratch.grown == 0 and scratch.dim == 12
    assert _greedy_right(scratch, Xo, Qo) < 0.5 and _greedy_right(scratch, Xn, Qn) > 0.95  # measured 0.25, 1.0


def test_growing_keeps_the_evidence_on_the_old_features_exactly() -> None:
    """At the growth: the old features' block of each target's inverse design matrix, its b and theta are
    unchanged and moved to the old features' places; the new feature starts at the prior, uncorrelated; the
    route's greedy scores of any query are what they were (theta is 0 on the new feature)."""
    st = BanditState(3, 64, dim=12)
    X1, Q1 = _topics(FIT_AFTER + 600, [0, 1, 2, 3], 20)
    _taught(st, X1, Q1, 30)
    X2, _ = _topics(FIT_AFTER, [4], 40)
    Z = X2.astype(np.float64) * np.sqrt(64) / np.linalg.norm(X2, axis=1, keepdims=True)  # as _fit rescales them
    before = (st.W.copy(), st.Ainv.copy(), st.b.copy(), st.theta.copy())
    x = np.concatenate([X1[:50], X2[:50]])

    def greedy() -> tuple[list[int], np.ndarray]:  # each query's greedy pick and its predicted quality
        out = [K.bandit_route(st.P, st.Ainv, st.theta, None, q, 0.0, 0.0) for q in x]
        return [r[1] for r in out], np.array([r[3] for r in out])

    picks, means = greedy()
    assert st._grow(Z) and st.grown == 1 and st.dim == 13
    W, Ainv, b, theta = before
    at = np.r_[np.arange(12), 13]
    assert np.array_equal(st.W[:12], W)
    np.testing.assert_array_equal(st.Ainv[:, at[:, None], at], Ainv)
    np.testing.assert_array_equal(st.b[:, at], b)
    np.testing.assert_array_equal(st.theta[:, at], theta)
    np.testing.assert_array_equal(st.Ainv[:, 12, :], np.eye(14)[12] * np.ones((3, 1)))  # the prior, 1 / ridge
    assert not st.b[:, 12].any() and not st.theta[:, 12].any()
    picks_after, means_after = greedy()
    assert picks_after == picks
    np.testing.assert_allclose(means_after, means, rtol=1e-5, atol=1e-6)


def test_the_same_growth_however_outcomes_arrive_and_a_grown_state_round_trips() -> None:
    """One call per outcome and one call for all grow at the same row, to the same bytes; a grown state
    reads back to the same bytes, with ``grown`` in its header (a state that never grew has none)."""
    from workers.state.framing import unpack_part

    many, one = BanditState(3, 64, dim=12), BanditState(3, 64, dim=12)
    _in_turns(many, 1, [5])
    _in_turns(one, 1, [5], one_by_one=True)
    assert many.grown == one.grown == 1 and many.to_bytes() == one.to_bytes()
    header, _ = unpack_part(many.to_bytes(), b"LSB", 2, "router bandit")
    assert header["grown"] == 1 and header["dim"] == 13
    back = BanditState.from_bytes(many.to_bytes())
    assert back.to_bytes() == many.to_bytes() and back.grown == 1 and np.array_equal(back.P, many.P)
    never = BanditState(3, 64, dim=12)
    X, Q = _topics(FIT_AFTER + 50, [0, 1, 2, 3], 2)
    _taught(never, X, Q, 3)
    assert "grown" not in unpack_part(never.to_bytes(), b"LSB", 2, "router bandit")[0]


def test_a_projection_grown_to_its_limit_is_fitted_from_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Grown once, then no room left: the next new topic fits the projection from scratch at the width it
    began with."""
    import workers.cores.bandit as bandit

    st = BanditState(3, 64, dim=12)
    _in_turns(st, 2, [4])
    assert st.grown == 1 and st.dim == 13
    monkeypatch.setattr(bandit, "GROW_LIMIT", 1)
    X, Q = _topics(1000, [6], 80)
    _taught(st, X, Q, 81)
    assert st.refits == 2 and st.grown == 0 and st.dim == 12 and st.W.shape == (12, 64)
    assert st.Ainv.shape == (3, 13, 13) and BanditState.from_bytes(st.to_bytes()).to_bytes() == st.to_bytes()


def test_growth_stops_at_the_kernels_widest_projection(monkeypatch: pytest.MonkeyPatch) -> None:
    """One target has the state budget for ~360 features, but a kernel projects to at most BANDIT_MAX_DIM:
    grown one direction at a time (GROW_SHARE so high that only the one a growth always adds passes), the
    projection stops there (the caller then fits from scratch) and routes all along."""
    import workers.cores.bandit as bandit

    monkeypatch.setattr(bandit, "GROW_SHARE", 1e12)
    st = BanditState(1, 512, dim=K.BANDIT_MAX_DIM - 3)
    X, Q = _topics(FIT_AFTER, [0, 1], 90, in_dim=512)
    st.learn(np.zeros(len(X), np.int64), X, Q[:, 0])
    assert st.W is not None and st.dim == K.BANDIT_MAX_DIM - 3
    Z = _topics(FIT_AFTER, [5], 95, in_dim=512)[0].astype(np.float64)
    Z *= np.sqrt(512) / np.linalg.norm(Z, axis=1, keepdims=True)
    grew = [st._grow(Z) for _ in range(5)]
    assert grew == [True, True, True, False, False] and st.dim == K.BANDIT_MAX_DIM and st.grown == 3
    assert st.P.shape == (K.BANDIT_MAX_DIM, 512)
    K.bandit_route(st.P, st.Ainv, st.theta, None, X[0], 0.15, 0.0)


@pytest.mark.parametrize("grown", [-1, 13, 99, 1.0, "1", True, None])
def test_a_bad_grown_field_is_corrupt(grown: object) -> None:
    """Not an integer, negative, or as wide as the projection: corrupt; so is growth on an unfitted state."""
    from workers.state.framing import pack_part, unpack_part

    st = BanditState(3, 64, dim=12)
    _in_turns(st, 1, [5])
    header, pos = unpack_part(st.to_bytes(), b"LSB", 2, "router bandit")
    header["grown"] = grown
    with pytest.raises(CorruptStateError, match="grown"):
        BanditState.from_bytes(pack_part(b"LSB", 2, header, st.to_bytes()[pos:]))
    fresh = BanditState(3, 64, dim=12)
    header, pos = unpack_part(fresh.to_bytes(), b"LSB", 2, "router bandit")
    header["grown"] = 1
    with pytest.raises(CorruptStateError, match="grown"):
        BanditState.from_bytes(pack_part(b"LSB", 2, header, fresh.to_bytes()[pos:]))


@pytest.mark.parametrize("sketch", [None, 48])
def test_a_refit_happens_at_the_same_row_however_outcomes_arrive_and_reads_back_mid_way(sketch: int | None) -> None:
    """One call per outcome and one call for all end in the same bytes; a state saved while it keeps the
    queries for the fit again (after the projection it routes on) reads back to the same bytes and routes
    on the same projection; zero queries have no share."""
    X = np.concatenate([_topics(FIT_AFTER + 200, [0], 8)[0], _topics(FIT_AFTER + 100, list(range(8)), 9)[0]])
    Q = np.full((len(X), 3), 0.5)
    one, many = BanditState(3, 64, dim=8, sketch=sketch), BanditState(3, 64, dim=8, sketch=sketch)
    _taught(many, X, Q, 10)
    rng = np.random.default_rng(10)
    arms = rng.integers(0, 3, len(X))
    q = np.clip(Q[np.arange(len(X)), arms] + rng.normal(0, 0.1, len(X)), 0, 1)
    mid = None
    for i in range(len(X)):
        one.learn(arms[i:i + 1], X[i:i + 1], q[i:i + 1])
        if mid is None and one.W is not None and one.kept is not None and len(one.kept) == 7:
            mid = one.to_bytes()
            back = BanditState.from_bytes(mid)
            assert back.to_bytes() == mid and np.array_equal(back.P, one.P) and len(back.kept) == 7
            assert back.info()["fitted"] is True and back.info()["kept"] == 7
            n = back.nov_n
            back.learn(np.array([0]), np.zeros((1, 64), np.float32), np.array([0.5]))
            assert back.nov_n == n  # a zero query: kept for the fit, no share
    assert mid is not None and one.refits == many.refits == 1
    assert one.to_bytes() == many.to_bytes()


def test_a_fitted_state_written_before_the_novelty_field_starts_its_baseline() -> None:
    from workers.state.framing import pack_part, unpack_part

    X, Q = _topics(FIT_AFTER + 50, [0, 1], 11)
    st = BanditState(3, 64, dim=8)
    _taught(st, X, Q, 12)
    header, pos = unpack_part(st.to_bytes(), b"LSB", 2, "router bandit")
    assert header.pop("novelty")[3] == 50
    back = BanditState.from_bytes(pack_part(b"LSB", 2, header, st.to_bytes()[pos:]))
    assert (back.nov_n, back.refits, back.kept, back.nov_base) == (0, 0, None, 0.0)
    assert np.array_equal(back.P, st.P) and np.array_equal(back.Ainv, st.Ainv)


@pytest.mark.parametrize("value", [[0.5, 0.1, 0.1, -1, 0, False], [0.5, 0.1, 0.1, 3, -1, False],
                                   [float("nan"), 0.1, 0.1, 3, 0, False], [0.5, 1.5, 0.1, 3, 0, False],
                                   [0.5, 0.1, -0.1, 3, 0, False], [0.5, 0.1, 0.1, 3.0, 0, False],
                                   [0.5, 0.1, 0.1, 3, 0, 1], [0.5, 0.1, 0.1, 3, 0], "x", None])
def test_a_bad_novelty_field_is_corrupt(value: object) -> None:
    """Wrong types, negative counts, a non-finite share, a rate outside 0..1, the wrong length."""
    with pytest.raises(CorruptStateError, match="novelty"):
        BanditState.from_bytes(_with_novelty(value))


def test_a_state_keeping_queries_for_the_fit_again_must_hold_whole_rows() -> None:
    """``collecting`` true with no rows after the projection reads as keeping none so far; a torn row is corrupt."""
    back = BanditState.from_bytes(_with_novelty([0.5, 0.1, 0.1, 3, 0, True]))
    assert back.W is not None and back.kept is not None and len(back.kept) == 0
    with pytest.raises(CorruptStateError, match="does not match"):
        BanditState.from_bytes(_with_novelty([0.5, 0.1, 0.1, 3, 0, True]) + b"\0" * 5)


def _with_novelty(value: object) -> bytes:
    """A fitted state's bytes with its header's ``novelty`` field set to ``value``."""
    from workers.state.framing import pack_part, unpack_part

    X, Q = _topics(FIT_AFTER + 20, [0, 1], 13)
    st = BanditState(3, 64, dim=8)
    _taught(st, X, Q, 14)
    header, pos = unpack_part(st.to_bytes(), b"LSB", 2, "router bandit")
    header["novelty"] = value
    return pack_part(b"LSB", 2, header, st.to_bytes()[pos:])


@pytest.mark.parametrize("refit", [None, False])
def test_init_router_refit_false_keeps_the_first_fit(refit: bool | None) -> None:
    """Through the verbs: by default the router fits its projection again once queries come from new topics;
    ``bandit: {refit: false}`` keeps the first fit, says so, and keeps the setting across a round trip."""
    from workers.cores.router import PART
    from workers.verbs.surface import DEFAULT_SESSION

    s = LearnSession()
    init: dict = {"targets": TARGETS, "in_dim": 128}
    if refit is not None:
        init["bandit"] = {"refit": refit}
    out = s.dispatch({"verb": "init_router", "body": init})
    assert out["ok"] and out["data"]["bandit"]["refit"] is (refit is not False)
    X = np.concatenate([_topics(FIT_AFTER + 150, [0], 15, in_dim=128)[0], _topics(600, list(range(8)), 16, in_dim=128)[0]])
    for i, x in enumerate(X):
        assert s.dispatch({"verb": "record_outcome", "body": {"target": TARGETS[i % 3], "quality": 0.5,
                                                              "embedding": x.tolist()}})["ok"]
    st = s.blob("session", DEFAULT_SESSION).get(PART, RouterState)
    assert st.bandit.refits == (0 if refit is False else 1)
    back = RouterState.from_bytes(st.to_bytes())
    assert back.bandit.refit is (refit is not False) and back.to_bytes() == st.to_bytes()


def test_bench_router_brings_new_topics_as_asked() -> None:
    """bench router's worlds of new topics: the first half from K regions, one more region every N requests,
    or the regions in turns; without them the queries are the default world's."""
    from tests.helpers import bench_module

    R = bench_module("router")
    w = R.make_world(8, 0.7, 1.0, 0)
    base = R.Stream(w, 2000, 0)
    assert np.array_equal(R.Stream(w, 2000, 0, 0, 0, 0).X, base.X)
    a = R.Stream(w, 2000, 0, arrivals=2)
    assert set(a.region[:1000].tolist()) == {0, 1} and len(set(a.region[1000:].tolist())) == 8
    assert np.array_equal(a.X[1000:], base.X[1000:])
    e = R.Stream(w, 2000, 0, every=250)
    assert all(r <= i // 250 for i, r in enumerate(e.region.tolist())) and set(e.region[1750:].tolist()) <= set(range(8))
    b = R.Stream(w, 2000, 0, blocks=100)
    assert (b.region == (np.arange(2000) // 100) % 8).all()
    spread = lambda s: float(np.linalg.norm(s.X - w.centers[s.region], axis=1).mean())  # noqa: E731
    assert abs(spread(b) - spread(base)) < 0.05 * spread(base)  # moved queries lie around their new centres


def test_one_misreported_cost_does_not_lock_the_best_model_out() -> None:
    """An outside trial: after 1,000 requests (the best model m1 picked 994 times, every cost 0.05), one
    record_outcome {target: m1, cost: 100} (cents for dollars) and m1 was picked once in the next 2,000. One
    report now moves a cost average as at most 10 times that average, or one quality point at lambda."""
    rng = np.random.default_rng(4)
    targets = ["m0", "m1", "m2"]
    quality = {"m0": 0.5, "m1": 0.9, "m2": 0.55}
    st = RouterState(targets, in_dim=DIM, threshold=1)

    def run(n: int) -> dict[str, int]:
        picks = {t: 0 for t in targets}
        for _ in range(n):
            x = rng.normal(size=DIM).astype(np.float32)
            m = st.route(x, rng=random.Random(int(rng.integers(1 << 30))))["model"]
            picks[m] += 1
            st.record_outcome(m, float(np.clip(quality[m] + rng.normal(0, 0.1), 0, 1)), x, cost=0.05)
        return picks

    assert run(600)["m1"] > 500
    st.record_outcome("m1", 0.9, cost=100.0)
    assert st.bandit is not None and st.bandit.cost[1] < 0.2  # as if 1.0 (one quality point at lambda 1)
    assert run(600)["m1"] > 500
    # a real price rise is still followed, over a few outcomes
    for _ in range(30):
        st.record_outcome("m2", 0.55, cost=5.0)
    assert st.bandit.cost[2] > 4.0


def test_a_misreported_first_cost_does_not_lock_a_model_out() -> None:
    """An outside trial: the best model's *first* cost report was 100 (every other report 0.05). The first
    cost set its average as reported, and the model was picked once in 1,000 requests: no later report could
    lower it. A first cost past the bound (10 times the other targets' mean average, or one quality point at
    lambda) is one EMA step from that mean instead, as a later report would be."""
    rng = np.random.default_rng(5)
    quality = {"a": 0.9, "b": 0.5}

    def picks(first_a: float | None) -> int:
        st = RouterState(["a", "b"], in_dim=DIM, threshold=1)
        st.record_outcome("b", 0.5, cost=0.05)
        if first_a is not None:
            st.record_outcome("a", 0.9, cost=first_a)
        n = 0
        for _ in range(400):
            x = rng.normal(size=DIM).astype(np.float32)
            m = st.route(x, rng=random.Random(int(rng.integers(1 << 30))))["model"]
            n += m == "a"
            st.record_outcome(m, float(np.clip(quality[m] + rng.normal(0, 0.1), 0, 1)), x, cost=0.05)
        return n

    assert picks(100.0) > 300 and picks(None) > 300
    st = RouterState(["a", "b"], in_dim=DIM, threshold=1)
    st.record_outcome("a", 0.9, cost=0.3)  # no other target has a cost: within one quality point, as reported
    st.record_outcome("b", 0.5, cost=5.0)  # past max(10 x 0.3, 1): one step from 0.3 toward 3.0
    assert st.bandit is not None and st.bandit.cost[0] == pytest.approx(0.3)
    assert st.bandit.cost[1] == pytest.approx(0.3 + 0.1 * (3.0 - 0.3))
    lone = RouterState(["a", "b"], in_dim=DIM, threshold=1)
    lone.record_outcome("a", 0.9, cost=100.0)  # the first cost of all: nothing to judge it by, as reported
    assert lone.bandit is not None and lone.bandit.cost[0] == 100.0
    # at a large lambda real first costs are not squashed, whoever reports first (the next trial: 0.5 each
    # became 0.03-0.09 by report order, and every request went to the first model to report)
    big = RouterState(["a", "b", "c"], in_dim=DIM, threshold=1, cost_weight=1000.0)
    for t in ("a", "b", "c"):
        big.record_outcome(t, 0.5, cost=0.5)
    assert big.bandit is not None and list(big.bandit.cost) == [0.5, 0.5, 0.5]
    # a router at lambda 0 (costs weighed per request) bounds a report by the jump alone: it had taken it whole
    zero = RouterState(["a", "b"], in_dim=DIM, threshold=1, cost_weight=0.0)
    zero.record_outcome("a", 0.9, cost=0.05)
    zero.record_outcome("a", 0.9, cost=100.0)
    assert zero.bandit is not None and zero.bandit.cost[0] == pytest.approx(0.05 + 0.1 * (0.5 - 0.05))
