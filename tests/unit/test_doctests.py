"""Every docstring example in ``workers`` runs and holds (STYLE.md §1: examples are doctests).

Modules are discovered, not listed, so a new module's examples are run without anyone
remembering to add it here; an example that needs a broker says ``# doctest: +SKIP``.
"""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import workers

_MODULES = sorted(m.name for m in pkgutil.walk_packages(workers.__path__, "workers.")
                  if not m.name.endswith("__main__"))


def test_discovery_finds_the_packages() -> None:
    # guards the discovery itself: a broken walk would silently run no example at all
    assert {"workers.cores.instant", "workers.online.learner", "workers.protocols.memory"} <= set(_MODULES)


@pytest.mark.parametrize("name", _MODULES)
def test_doctests(name: str) -> None:
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert res.failed == 0
