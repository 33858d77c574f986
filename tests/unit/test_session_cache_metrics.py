"""The worker exports its decoded-session cache (hits, misses, evictions, size) and warns, at most every
few minutes, while the sessions in use do not fit it (each miss reads and decodes a whole session)."""
from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest

from workers.cores.instant import InstantState
from workers.state import MemoryStore
from workers.state.access import StoreStateAccess
from workers.state.sessions import Sessions
from workers.stream import metrics
from workers.stream.runtime import Runtime


def _touch(sessions: Sessions, keys: list[str]) -> None:
    for sk in keys:
        st = sessions.state("session", sk, 0)
        if st.blob.get("instant", InstantState) is None:
            st.blob.set("instant", InstantState(["a", "b"], 16))
        sessions.save("session", sk, 0)
        sessions.trim()


def _sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_cache_counters_are_exported_and_a_thrashing_cache_is_named_once(caplog: pytest.LogCaptureFixture) -> None:
    sessions = Sessions(StoreStateAccess(MemoryStore()), cache_bytes=1)   # holds one session at a time
    rt = SimpleNamespace(processor=SimpleNamespace(sessions=sessions), _cache_counted=(0, 0, 0),
                         _cache_warned=-math.inf)
    miss0 = _sample("learnstream_session_cache_lookups_total", result="miss")
    evicted0 = _sample("learnstream_session_cache_evictions_total")
    keys = [f"s{i}" for i in range(80)]
    _touch(sessions, keys)
    with caplog.at_level(logging.WARNING, logger="workers.stream.runtime"):
        Runtime._count_cache(rt)
        assert _sample("learnstream_session_cache_lookups_total", result="miss") - miss0 == 80
        assert _sample("learnstream_session_cache_evictions_total") - evicted0 == 79
        assert _sample("learnstream_session_cache_sessions") == 1
        assert "session cache too small: 80 of 80 session lookups in this batch missed" in caplog.text
        assert "LEARNSTREAM_CACHE_BYTES=1" in caplog.text
        _touch(sessions, keys)       # thrashing still, a moment later: counted, not warned again
        Runtime._count_cache(rt)
    assert _sample("learnstream_session_cache_lookups_total", result="miss") - miss0 == 160
    assert caplog.text.count("session cache too small") == 1


def test_a_cache_that_holds_its_sessions_only_counts_hits(caplog: pytest.LogCaptureFixture) -> None:
    sessions = Sessions(StoreStateAccess(MemoryStore()))
    rt = SimpleNamespace(processor=SimpleNamespace(sessions=sessions), _cache_counted=(0, 0, 0),
                         _cache_warned=-math.inf)
    keys = [f"s{i}" for i in range(80)]
    _touch(sessions, keys)
    hit0 = _sample("learnstream_session_cache_lookups_total", result="hit")
    with caplog.at_level(logging.WARNING, logger="workers.stream.runtime"):
        Runtime._count_cache(rt)      # the first touches: misses, but nothing evicted
        _touch(sessions, keys)
        Runtime._count_cache(rt)
    assert _sample("learnstream_session_cache_lookups_total", result="hit") - hit0 == 80
    assert _sample("learnstream_session_cache_sessions") == 80
    assert "session cache too small" not in caplog.text
