"""Every estimator of workers.online passes the shared check suite (workers/online/checks.py)."""
from __future__ import annotations

import pytest

import workers.online  # noqa: F401  (registers every estimator)
from workers.online.base import ESTIMATORS, Stateful
from workers.online.checks import instance, yield_checks

_CLASSES = sorted((c for c in ESTIMATORS.values() if c.__module__.startswith("workers.online")
                   and issubclass(c, Stateful)), key=lambda c: c.__name__)


def _cases():
    for cls in _CLASSES:
        for check in yield_checks(instance(cls)):
            yield pytest.param(check, id=f"{cls.__name__}-{check.__name__}")


def test_every_part_is_covered() -> None:
    names = {c.__name__ for c in _CLASSES}
    assert {"ContinualLearner", "MLP", "SoftmaxRegression", "ReplayBuffer", "EWC", "Distillation", "Curriculum",
            "ConsolidationScheduler", "KLDriftDetector", "PageHinkley"} <= names


@pytest.mark.parametrize("check", list(_cases()))
def test_check(check) -> None:
    check()


def test_the_suite_catches_a_part_that_forgets_state() -> None:
    from workers.online.checks import EXERCISES, check_state_roundtrip
    from workers.online.curriculum import Curriculum

    class _Forgetful(Curriculum):
        def load_state(self, reader) -> None:  # drops the step count
            self.steps = 0

    EXERCISES[_Forgetful] = EXERCISES[Curriculum]
    try:
        with pytest.raises(AssertionError, match="restored state differs"):
            check_state_roundtrip(_Forgetful())
    finally:
        del EXERCISES[_Forgetful]


def test_the_suite_catches_a_part_that_leaves_a_default_unresolved() -> None:
    from workers.online.checks import check_in_force
    from workers.online.ewc import EWC

    class _Unresolved(EWC):
        def in_force(self) -> dict:
            return {"lam": self.lam, "decay": self._decay}  # lam: None, not the default in force

    with pytest.raises(AssertionError, match=r"leaves \['lam'\] as None"):
        check_in_force(_Unresolved())
