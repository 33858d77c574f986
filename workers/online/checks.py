"""The shared check suite every estimator of :mod:`workers.online` passes (River's ``yield_checks``).

State goes to RocksDB and to checkpoint files, so the checks centre on it:
serialize -> restore gives identical bytes *and* identical behaviour afterwards
(the same further updates give the same bytes, RNG states included); corrupted
bytes are refused; ``clone`` gives an unfitted copy with equal hyperparameters;
defaults are immutable; learners refuse bad input without changing state.

Each class is exercised through its public API by :data:`EXERCISES`; a new
estimator without an entry there fails :func:`check_has_exercise`, so it cannot
silently skip the suite.

Examples
--------
>>> from workers.online import ReplayBuffer
>>> for check in yield_checks(instance(ReplayBuffer)):
...     check()
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from workers.errors import CorruptStateError
from workers.online.base import Estimator, Learner, Stateful
from workers.online.curriculum import Curriculum
from workers.online.distill import Distillation
from workers.online.drift import KLDriftDetector, MeanShift, PageHinkley
from workers.online.ewc import EWC
from workers.online.learner import ContinualLearner
from workers.online.models import MLP, SoftmaxRegression
from workers.online.replay import ReplayBuffer
from workers.online.scheduler import ConsolidationScheduler
from workers.online.snapshot import StateReader, StateWriter

__all__ = ("yield_checks", "EXERCISES", "instance")

_SEED = 1234


def _xy(rng: np.random.Generator, n: int, d: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.random((n, d), dtype=np.float32), rng.integers(0, c, n).astype(np.int32)


def _ex_model(m: Any, rng: np.random.Generator) -> None:
    X, y = _xy(rng, 6, m.n_features, m.n_classes)
    m.step(X, y)


def _ex_replay(b: ReplayBuffer, rng: np.random.Generator) -> None:
    X, y = _xy(rng, 7, 3, 4)
    b.add_many(X, y, logits=rng.standard_normal((7, 4)).astype(np.float32), priority=rng.random(7))
    s = b.sample(3)
    b.update_priorities(s.idx, rng.random(len(s.idx)))


def _ex_ewc(e: EWC, rng: np.random.Generator) -> None:
    e.consolidate(rng.standard_normal(5).astype(np.float32), rng.random(5).astype(np.float32))


def _ex_distill(d: Distillation, rng: np.random.Generator) -> None:
    d.snapshot(rng.standard_normal(5).astype(np.float32))


def _ex_curriculum(c: Curriculum, rng: np.random.Generator) -> None:
    c.restart()
    for _ in range(int(rng.integers(1, 5))):
        c.tick()


def _ex_scheduler(s: ConsolidationScheduler, rng: np.random.Generator) -> None:
    if s.observe(int(rng.integers(1, 400)), now_ms=int(rng.integers(0, 10**6))) is not None:
        s.fired()


def _ex_kl(k: KLDriftDetector, rng: np.random.Generator) -> None:
    n = 15
    k.update_many(rng.integers(0, k.n_classes, n), rng.integers(0, k.n_classes, n), rng.exponential(1.0, n))


def _ex_ph(p: PageHinkley, rng: np.random.Generator) -> None:
    p.update_many(rng.exponential(1.0, 40))


def _ex_ms(m: MeanShift, rng: np.random.Generator) -> None:
    m.update_many((rng.random(300) < 0.2).astype(float))


def _ex_learner(learner: ContinualLearner, rng: np.random.Generator) -> None:
    X, y = _xy(rng, 9, learner.n_features, learner.n_classes)
    task = int(rng.integers(0, 2))
    learner.learn_batch(X, y, task=task, now_ms=int(rng.integers(0, 10**6)))
    learner.drain_events()


EXERCISES: dict[type, Callable[[Any, np.random.Generator], None]] = {
    MLP: _ex_model, SoftmaxRegression: _ex_model, ReplayBuffer: _ex_replay, EWC: _ex_ewc,
    Distillation: _ex_distill, Curriculum: _ex_curriculum, ConsolidationScheduler: _ex_scheduler,
    KLDriftDetector: _ex_kl, PageHinkley: _ex_ph, MeanShift: _ex_ms, ContinualLearner: _ex_learner,
}


def instance(cls: type) -> Stateful:
    """An instance with the class's ``_unit_test_params`` (and a fixed seed, so fresh copies are comparable)."""
    params = dict(cls._unit_test_params)
    if "seed" in inspect.signature(cls.__init__).parameters:
        params.setdefault("seed", 0)
    return cls(**params)


def _exercised(est: Stateful, rounds: int = 3, seed: int = _SEED) -> Stateful:
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        EXERCISES[type(est)](est, rng)
    return est


# -- checks --------------------------------------------------------------------
def check_has_exercise(est: Stateful) -> None:
    assert type(est) in EXERCISES, f"{type(est).__name__} has no entry in workers.online.checks.EXERCISES"


def check_init_default_params_are_not_mutable(est: Stateful) -> None:
    for name, p in inspect.signature(type(est).__init__).parameters.items():
        if p.default is not inspect.Parameter.empty:
            assert p.default is None or isinstance(p.default, (bool, int, float, str)), (
                f"{type(est).__name__}({name}=...) has a mutable default; use None")


def check_clone(est: Stateful) -> None:
    fitted = _exercised(est.clone())
    c = fitted.clone()
    assert c is not fitted and type(c) is type(fitted)
    assert c.params_json() == fitted.params_json()
    assert c.to_bytes() == est.clone().to_bytes(), "clone() must give an unfitted copy"


def check_in_force(est: Stateful) -> None:
    """``in_force`` names hyperparameters only, leaves no default unresolved (None), and an estimator
    built from those values has the same ones in force. (The learner keeps the base one: its values in
    force, by ``init_learner``'s names, are ``ContinualLearner.settings``.)"""
    if type(est).in_force is Estimator.in_force:
        return
    force = est.in_force()
    assert set(force) <= set(est._get_params()), f"{type(est).__name__}.in_force names unknown parameters"
    unresolved = [k for k, v in force.items() if v is None and k not in _NONE_IN_FORCE]
    assert not unresolved, f"{type(est).__name__}.in_force leaves {unresolved} as None"
    assert est.clone(force).in_force() == force


def check_params_json_roundtrip(est: Stateful) -> None:
    again = type(est).from_params_json(est.params_json())
    assert again.params_json() == est.params_json()


def check_state_roundtrip(est: Stateful) -> None:
    """serialize -> restore: identical bytes, and identical bytes after the same further updates."""
    a = _exercised(est.clone())
    raw = a.to_bytes()
    b = type(est).from_bytes(raw)
    assert b.to_bytes() == raw, "restored state differs"
    _exercised(a, rounds=2, seed=_SEED + 1)
    _exercised(b, rounds=2, seed=_SEED + 1)
    assert a.to_bytes() == b.to_bytes(), "restored estimator behaves differently"


def check_writer_reader(est: Stateful) -> None:
    """save_state(writer) / load_state(reader) into a same-configured instance."""
    a = _exercised(est.clone())
    w = StateWriter()
    a.save_state(w)
    b = est.clone()
    b.load_state(StateReader.from_bytes(w.to_bytes()))
    assert b.to_bytes() == a.to_bytes()


def check_corrupt_bytes_refused(est: Stateful) -> None:
    raw = bytearray(_exercised(est.clone()).to_bytes())
    raw[len(raw) // 2] ^= 0xFF
    try:
        type(est).from_bytes(bytes(raw))
    except CorruptStateError as exc:
        assert "checksum" in str(exc)
    else:
        raise AssertionError("corrupted bytes were accepted")


def check_learner_predictions_roundtrip(est: Stateful) -> None:
    if not isinstance(est, Learner):
        return
    a = _exercised(est.clone())
    b = type(est).from_bytes(a.to_bytes())
    X = np.random.default_rng(0).random((5, a.n_features), dtype=np.float32)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


def check_learner_bad_input(est: Stateful) -> None:
    if not isinstance(est, Learner):
        return
    a = _exercised(est.clone())
    before = a.to_bytes()
    d, c = a.n_features, a.n_classes  # type: ignore[attr-defined]
    good = np.zeros(d, dtype=np.float32)
    nan = good.copy()
    nan[0] = np.nan
    for x, y in ((np.zeros(d + 1, dtype=np.float32), 0), (nan, 0), (good, c), (good, -1), (good, 0.5)):
        try:
            a.learn_one(x, y)
        except ValueError:
            pass
        else:
            raise AssertionError(f"learn_one accepted x of shape {np.shape(x)}, y={y!r}")
    assert a.to_bytes() == before, "a refused example changed the state"


# Parameters whose None is a value in force, not a default: no time trigger
_NONE_IN_FORCE = {"time_threshold_ms"}

_CHECKS = (check_has_exercise, check_init_default_params_are_not_mutable, check_clone, check_in_force,
           check_params_json_roundtrip, check_state_roundtrip, check_writer_reader, check_corrupt_bytes_refused,
           check_learner_predictions_roundtrip, check_learner_bad_input)


def yield_checks(est: Stateful) -> Iterator[Callable[[], None]]:
    """Every check bound to ``est`` (each takes no argument and raises AssertionError on failure)."""
    for check in _CHECKS:
        f = functools.partial(check, est)
        functools.update_wrapper(f, check)
        yield f
