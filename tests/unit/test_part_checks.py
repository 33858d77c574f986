"""Every part of a session's state passes the shared check suite (workers/verbs/checks.py)."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import workers
from workers.online.base import Stateful
from workers.verbs import checks
from workers.verbs.checks import PARTS, yield_checks


def _part_classes() -> set[type]:
    """Every class in workers that round-trips through bytes as a StateBlob part (to_bytes + from_bytes)."""
    found = set()
    for m in pkgutil.walk_packages(workers.__path__, "workers."):
        if m.name.endswith("__main__"):
            continue
        mod = importlib.import_module(m.name)
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ == mod.__name__ and not getattr(cls, "_is_protocol", False) \
                    and callable(getattr(cls, "to_bytes", None)) \
                    and isinstance(inspect.getattr_static(cls, "from_bytes", None), classmethod):
                found.add(cls)
    return found


# Not parts of a session value: the value itself, the idempotency keys (checked in test_idempotency.py),
# and the online learner's estimators inside the "learner" part (workers/online/checks.py checks each).
_NOT_PARTS = {"StateBlob", "AppliedKeys", "SessionState"}


def test_every_part_has_a_case() -> None:
    covered = {c.cls for c in PARTS.values()} | {n for c in PARTS.values() for n in c.nested}
    missing = {cls.__name__ for cls in _part_classes() - covered
               if cls.__name__ not in _NOT_PARTS and not issubclass(cls, Stateful)}
    assert not missing, f"state parts without a case in workers/verbs/checks.py PARTS: {sorted(missing)}"
    assert {"instant", "deep", "loop", "boundary", "router", "attention", "learner", "protocols", "scoring"} <= set(PARTS)


@pytest.mark.parametrize("check", [pytest.param(c, id=f"{name}-{c.__name__}") for name in sorted(PARTS)
                                   for c in yield_checks(name)])
def test_check(check) -> None:
    check()


def test_the_suite_catches_a_part_that_forgets_state(monkeypatch) -> None:
    from workers.cores.loop import LoopState

    real = LoopState.from_bytes.__func__

    def forgetful(cls, data: bytes) -> LoopState:  # drops the event count
        st = real(cls, data)
        st.events = 0
        return st

    monkeypatch.setattr(LoopState, "from_bytes", classmethod(forgetful))
    with pytest.raises(AssertionError, match="differs"):
        checks.check_roundtrip(PARTS["loop"])
    with pytest.raises(AssertionError, match="differs|answers otherwise"):
        checks.check_restored_behaviour(PARTS["loop"])


def test_the_suite_catches_a_refusal_that_changes_state(monkeypatch) -> None:
    import dataclasses

    from workers.cores.deep import DeepState
    from workers.verbs.surface import REGISTRY

    v = REGISTRY["record_loss"]

    def sloppy(ctx, body: dict) -> dict:  # counts a boundary before it validates
        deep = ctx.state.get("deep", DeepState)
        if deep is not None:
            deep.counters[1] += 1
        return v.fn(ctx, body)

    monkeypatch.setitem(REGISTRY, "record_loss", dataclasses.replace(v, fn=sloppy))
    with pytest.raises(AssertionError, match="changed the state"):
        checks.check_bad_input_changes_nothing(PARTS["deep"])
