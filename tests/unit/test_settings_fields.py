"""The settings verbs (init_*) name every field they read in their schema: what the MCP tools show, and
what decides which fields a reply reports as ``ignored_fields``."""
from __future__ import annotations

import pytest

from workers.verbs.session import LearnSession
from workers.verbs.surface import REGISTRY

_VALID = {
    "init_router": {"targets": ["a", "b"], "in_dim": 8},
    "init_instant": {"targets": ["a", "b"], "dim": 8},
    "init_learner": {"n_features": 8, "n_classes": 3},
    "init_attention": {"dim": 8},
}


class _Reads(dict):
    """A body that records every field a verb asks for."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)
        self.asked: set[str] = set()

    def get(self, key, default=None):  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):  # type: ignore[override]
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:  # type: ignore[override]
        self.asked.add(key)
        return super().__contains__(key)


def test_every_settings_verb_has_a_schema() -> None:
    assert sorted(n for n in REGISTRY if n.startswith("init_")) == sorted(_VALID)


@pytest.mark.parametrize("name", sorted(_VALID))
def test_a_settings_verb_reads_only_what_its_schema_names(name: str) -> None:
    v = REGISTRY[name]
    s = LearnSession()
    body = _Reads(_VALID[name])
    v.fn(s.sessions.context(v, "default", 0), body)   # the verb itself, as run_verb calls it
    assert body.asked <= set(v.params["properties"]), sorted(body.asked - set(v.params["properties"]))
    out = s.dispatch({"verb": name, "body": {**_VALID[name], "no_such_option": 1}})
    assert out["ok"] and out["data"]["ignored_fields"] == ["no_such_option"], out
    assert "ignored_fields" not in s.dispatch({"verb": name, "body": _VALID[name]})["data"]
