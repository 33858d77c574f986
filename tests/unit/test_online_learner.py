"""The scheduler fires on count, time and boundary; the learner composes the parts as documented."""
from __future__ import annotations

import numpy as np
import pytest

from workers.online import (
    EWC,
    MLP,
    ConsolidationScheduler,
    ContinualLearner,
    Curriculum,
    Distillation,
    Learner,
    ReplayBuffer,
    SoftmaxRegression,
)


# -- scheduler -----------------------------------------------------------------
def test_scheduler_fires_on_count() -> None:
    s = ConsolidationScheduler(examples_threshold=10)
    assert [s.observe(3) for _ in range(3)] == [None, None, None]
    assert s.observe(1) == "count"
    index, refresh = s.fired()
    assert index == 1 and refresh and s.observe(9) is None


def test_scheduler_fires_on_event_time() -> None:
    s = ConsolidationScheduler(examples_threshold=0, time_threshold_ms=5_000)
    assert s.observe(1, now_ms=1_000) is None
    assert s.observe(1, now_ms=5_999) is None
    assert s.observe(1, now_ms=6_000) == "time"
    s.fired()
    assert s.observe(1, now_ms=10_999) is None and s.observe(0, now_ms=11_000) == "time"


def test_scheduler_never_fires_on_time_without_event_times() -> None:
    s = ConsolidationScheduler(examples_threshold=0, time_threshold_ms=1)
    assert all(s.observe(1) is None for _ in range(100))


def test_scheduler_fires_on_boundary_and_refreshes_fisher_every_k() -> None:
    s = ConsolidationScheduler(examples_threshold=0, fisher_every=2)
    assert s.boundary() == "boundary" and s.due() == "boundary"
    assert s.fired() == (1, False)
    assert s.due() is None
    s.boundary()
    assert s.fired() == (2, True)
    assert ConsolidationScheduler(on_boundary=False).boundary() is None


# -- learner -------------------------------------------------------------------
def _data(n: int, seed: int = 0, d: int = 6, c: int = 3):
    rng = np.random.default_rng(seed)
    X = rng.random((n, d), dtype=np.float32)
    return X, np.minimum((X[:, 0] * c).astype(np.int32), c - 1)


def _learner(**kw) -> ContinualLearner:
    kw.setdefault("classifier", MLP(hidden=16))
    kw.setdefault("batch_size", 5)
    return ContinualLearner(n_features=6, n_classes=3, seed=0, **kw)


def test_it_is_an_online_learner() -> None:
    learner = _learner()
    assert isinstance(learner, Learner)  # spec/online.md's OnlineLearner, as the ABC
    for name in ("learn_one", "learn_batch", "consolidate", "model", "predict", "evaluate", "save_state",
                 "load_state"):
        assert callable(getattr(learner, name)), name


@pytest.mark.parametrize("classifier", [MLP(hidden=16), SoftmaxRegression()])
def test_it_learns(classifier) -> None:
    X, y = _data(1500)
    learner = _learner(classifier=classifier)
    learner.learn_batch(X[:1200], y[:1200])
    assert learner.evaluate(X[1200:], y[1200:])["accuracy"] > 0.8


def test_learn_batch_equals_learn_one_in_order() -> None:
    X, y = _data(37)
    a, b = _learner(), _learner()
    a.learn_batch(X, y, task="t", now_ms=np.arange(37) * 10)
    for i in range(37):
        b.learn_one(X[i], int(y[i]), task="t", now_ms=i * 10)
    assert a.to_bytes() == b.to_bytes()
    assert a.pending == 2


def test_consolidation_fires_on_count_and_on_time_in_the_learner() -> None:
    X, y = _data(100)
    learner = _learner(scheduler=ConsolidationScheduler(examples_threshold=20))
    learner.learn_batch(X[:40], y[:40])
    causes = [p["cause"] for r, p in learner.drain_events() if r == "consolidations"]
    assert causes == ["count", "count"]
    timed = _learner(scheduler=ConsolidationScheduler(examples_threshold=0, time_threshold_ms=1_000))
    timed.learn_batch(X[:10], y[:10], now_ms=0)
    timed.learn_batch(X[10:20], y[10:20], now_ms=999)
    assert not timed.drain_events()
    timed.learn_batch(X[20:25], y[20:25], now_ms=1_000)
    events = timed.drain_events()
    assert [(r, p["cause"]) for r, p in events] == [("consolidations", "time")]
    assert events[0][1]["now_ms"] == 1_000


def test_a_new_task_label_is_a_boundary_consolidated_before_learning_the_new_task() -> None:
    X, y = _data(40)

    def make() -> ContinualLearner:
        return _learner(scheduler=ConsolidationScheduler(examples_threshold=0), ewc=EWC(lam=10.0),
                        consolidation_steps=0)

    learner = make()
    learner.learn_batch(X[:13], y[:13], task="a")   # 2 full batches + 3 pending
    learner.learn_batch(X[13:20], y[13:20], task="b")
    events = learner.drain_events()
    assert [r for r, _ in events] == ["boundaries", "consolidations"]
    assert events[0][1]["cause"] == "task"
    assert events[0][1]["stats"]["previous_task"] == "a" and events[0][1]["stats"]["task"] == "b"
    assert events[1][1]["cause"] == "boundary" and events[1][1]["examples_seen"] == 13  # pending "a" learned first
    assert learner.examples_seen == 18 and learner.pending == 2
    # the EWC anchor is the model right after task "a", before any "b" example was learned
    only_a = make()
    only_a.learn_batch(X[:13], y[:13], task="a")
    only_a.consolidate()
    np.testing.assert_array_equal(learner._ewc.anchor, only_a._ewc.anchor)
    assert not np.array_equal(learner._ewc.anchor, learner.model().theta)


def test_manual_consolidation_refreshes_fisher_snapshots_teacher_and_reports() -> None:
    X, y = _data(60)
    learner = _learner(distillation=Distillation(lwf_lambda=1.0), scheduler=ConsolidationScheduler(examples_threshold=0))
    learner.learn_batch(X, y)
    report = learner.consolidate(now_ms=123)
    assert report.cause == "manual" and report.fisher_refreshed and report.steps > 0
    assert report.replay_size == 60 and report.now_ms == 123
    np.testing.assert_array_equal(learner._ewc.anchor, learner.model().theta)
    np.testing.assert_array_equal(learner._distill.teacher, learner.model().theta)
    assert report.loss_after <= report.loss_before + 1e-6


def test_curriculum_ramps_the_share_of_new_examples_after_a_boundary() -> None:
    c = Curriculum(floor=0.25, steady=0.5, ramp=4)
    shares = []
    for _ in range(6):
        shares.append(c.new_share)
        c.tick()
    assert shares == [0.25, 0.3125, 0.375, 0.4375, 0.5, 0.5]
    assert [Curriculum(floor=s, steady=s).replay_count(10) for s in (0.25, 0.5, 1.0)] == [30, 10, 0]
    X, y = _data(40)
    learner = _learner(curriculum=Curriculum(floor=0.25, steady=0.5, ramp=10), replay=ReplayBuffer(capacity=50))
    learner.learn_batch(X[:20], y[:20], task=0)
    assert learner._curriculum.steps == 4
    learner.learn_batch(X[20:25], y[20:25], task=1)
    assert learner._curriculum.steps == 1  # restarted at the boundary, then one step


def test_replay_prefers_examples_the_model_gets_wrong() -> None:
    X, y = _data(50)
    learner = _learner(replay=ReplayBuffer(capacity=50, strategy="prioritized", alpha=1.0))
    learner.learn_batch(X, y)
    buf = learner.replay_memory
    p = buf.probabilities()
    loss = -np.log(learner.predict(buf._x[:len(buf)])[np.arange(len(buf)), buf.labels])
    # priorities are the latest losses seen: the high-loss half is sampled more
    hi = loss > np.median(loss)
    assert p[hi].sum() > p[~hi].sum()


def test_stored_logits_feed_dark_experience_replay() -> None:
    X, y = _data(20)
    learner = _learner(distillation=Distillation(der_alpha=0.5))
    learner.learn_batch(X, y)
    buf = learner.replay_memory
    assert buf._has_logits[:len(buf)].all() and np.abs(buf._logits[:len(buf)]).sum() > 0
    off = _learner(distillation=Distillation(der_alpha=0.0))
    off.learn_batch(X, y)
    assert off.replay_memory._logits is None


def test_drift_is_a_boundary_unless_switched_off() -> None:
    rng = np.random.default_rng(0)
    X, y = _data(3000, seed=1)
    learner = _learner(scheduler=ConsolidationScheduler(examples_threshold=0))
    learner.learn_batch(X[:1500], y[:1500])
    learner.drain_events()
    perm = rng.permutation(6)
    learner.learn_batch(X[1500:1700][:, perm], (y[1500:1700] + 1) % 3)  # abrupt concept change
    roles = [r for r, _ in learner.drain_events()]
    assert "drift" in roles and "boundaries" in roles and "consolidations" in roles
    quiet = _learner(scheduler=ConsolidationScheduler(examples_threshold=0), boundary_on_drift=False)
    quiet.learn_batch(X[:1500], y[:1500])
    quiet.learn_batch(X[1500:1700][:, perm], (y[1500:1700] + 1) % 3)
    roles = [r for r, _ in quiet.drain_events()]
    assert "drift" in roles and "boundaries" not in roles


def test_asymmetric_masks_absent_classes_for_incoming_examples() -> None:
    X, y = _data(30)
    learner = _learner(asymmetric=True, replay=ReplayBuffer(capacity=0))
    y0 = np.zeros(30, dtype=np.int32)
    before = learner.model().logits(X)[:, 1:].copy()
    learner.learn_batch(X, y0)
    # only class 0 was present, so the other logits were never pushed down by the label term
    after = learner.model().logits(X)[:, 1:]
    np.testing.assert_allclose(after, before, atol=1e-6)
