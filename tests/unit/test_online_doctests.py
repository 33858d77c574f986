"""The docstring examples of workers/online run and hold (STYLE.md §1: examples are doctests)."""
from __future__ import annotations

import doctest
import importlib

import pytest

_MODULES = ("base", "state", "replay", "models", "ewc", "distill", "curriculum", "scheduler", "drift",
            "checkpoint", "learner", "checks", "verbs")


@pytest.mark.parametrize("name", _MODULES)
def test_doctests(name: str) -> None:
    mod = importlib.import_module(f"workers.online.{name}")
    res = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert res.failed == 0
