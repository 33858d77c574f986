"""Temporal core: the spec's rules and error strings, on MemoryStore and RocksDictStore."""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from workers.cores.temporal import GRAPH_OPS, EdgeStore, is_active, validate_edge
from workers.verbs.session import LearnSession
from workers.state.access import state_key
from workers.errors import VerbError
from workers.state import MemoryStore, ModelStore, RocksDictStore
from workers.verbs.registry import REGISTRY

_LIMIT_ERROR = "limit must be a non-negative integer, at most 9223372036854775807 (0: every edge)"

PREFIX = state_key("graph", "default")


class CountingStore(ModelStore):
    """Records every key read (get and prefix-scan results) and every scan prefix."""

    def __init__(self, inner: ModelStore) -> None:
        self.inner = inner
        self.read: list[bytes] = []
        self.scans: list[bytes] = []
        self.batches = 0

    def get(self, key: bytes) -> bytes | None:
        self.read.append(key)
        return self.inner.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.inner.put(key, value)

    def delete(self, key: bytes) -> None:
        self.inner.delete(key)

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        self.scans.append(prefix)
        for k, v in self.inner.iter_prefix(prefix):
            self.read.append(k)
            yield k, v

    def write_batch(self, ops: Mapping[bytes, bytes | None]) -> None:
        self.batches += 1
        self.inner.write_batch(ops)

    def snapshot(self) -> dict[bytes, bytes]:
        return dict(self.inner.iter_prefix(b""))


@pytest.fixture(params=["memory", "rocksdict"])
def store(request, tmp_path) -> Iterator[CountingStore]:
    inner = MemoryStore() if request.param == "memory" else RocksDictStore(tmp_path / "db")
    yield CountingStore(inner)
    inner.close()


@pytest.fixture
def session(store: CountingStore) -> LearnSession:
    return LearnSession(store=store)


def mk(eid: str, src: str, dst: str, valid_at: int, **kw) -> dict:
    return {"id": eid, "src": src, "dst": dst, "relation": "works_at", "valid_at": valid_at,
            "created_at": kw.pop("created_at", valid_at), **kw}


def call(s: LearnSession, verb: str, body: dict | None = None) -> dict:
    return s.dispatch({"verb": verb, "body": body or {}})


def ok(s: LearnSession, verb: str, body: dict | None = None):
    out = call(s, verb, body)
    assert out["ok"], out
    return out.get("data")


def err(s: LearnSession, verb: str, body: dict | None = None) -> str:
    out = call(s, verb, body)
    assert out["ok"] is False and "data" not in out, out
    return out["error"]


def ids(s: LearnSession, src: str, t: int, **kw) -> list[str]:
    data = ok(s, "query_at", {"src": src, "t": t, **kw})
    assert data["count"] == len(data["edges"])
    return [e["id"] for e in data["edges"]]


# ---------------------------------------------------------------- insert / get
def test_insert_get_round_trip(session: LearnSession) -> None:
    edge = {"id": "e1", "src": "alice", "dst": "acme", "relation": "works_at", "fact": "Alice works at Acme",
            "embedding": [0.1, -0.2, 0.3], "weight": 0.75, "group_id": "g", "created_at": 1000,
            "expired_at": 1200, "valid_at": 900, "invalid_at": 5000}
    assert ok(session, "insert_edge", {"edge": edge}) == {"edge_id": "e1"}
    assert ok(session, "get_edge", {"edge_id": "e1"}) == {"edge": edge}
    minimal = {"id": "e2", "src": "a", "dst": "b", "valid_at": 1, "created_at": 2}
    ok(session, "insert_edge", {"edge": minimal})
    assert ok(session, "get_edge", {"edge_id": "e2"}) == {"edge": minimal}  # absent fields stay absent


def test_get_unknown_edge_is_null(session: LearnSession) -> None:
    assert ok(session, "get_edge", {"edge_id": "nope"}) == {"edge": None}
    assert err(session, "get_edge", {}) == "edge_id required"


def test_flat_body_of_the_reference_crate_is_accepted(session: LearnSession) -> None:
    ok(session, "insert_edge", mk("e1", "alice", "acme", 1000))
    assert ok(session, "get_edge", {"edge_id": "e1"})["edge"]["dst"] == "acme"


@pytest.mark.parametrize("edge,error", [
    ({}, "edge.id required"),
    ({"id": ""}, "edge.id required"),
    ({"id": 5, "src": "a", "dst": "b"}, "edge.id required"),
    ({"id": "e1,evil", "src": "a", "dst": "b", "valid_at": 1, "created_at": 1},
     "edge.id must not contain a comma (used as index delimiter)"),
    ({"id": "e1", "dst": "b", "valid_at": 1, "created_at": 1}, "edge.src and edge.dst required"),
    ({"id": "e1", "src": "a", "dst": "", "valid_at": 1, "created_at": 1}, "edge.src and edge.dst required"),
    ({"id": "e1", "src": "a", "dst": "b", "created_at": 1}, "edge.valid_at required (bi-temporal)"),
    ({"id": "e1", "src": "a", "dst": "b", "valid_at": None, "created_at": 1}, "edge.valid_at required (bi-temporal)"),
    ({"id": "e1", "src": "a", "dst": "b", "valid_at": 1}, "edge.created_at required (system-time)"),
    ({"id": "e1", "src": "a", "dst": "b", "valid_at": 2000, "created_at": 1, "invalid_at": 1000},
     "edge.invalid_at must be >= edge.valid_at"),
    ({"id": "e1", "src": "a", "dst": "b", "valid_at": "1", "created_at": 1}, "edge.valid_at must be an integer (epoch ms)"),
    ({"id": "e1", "src": "a", "dst": "b", "valid_at": 1, "created_at": 1.5},
     "edge.created_at must be an integer (epoch ms)"),
    ({"id": "e1", "src": "a", "dst": "b", "valid_at": 1 << 63, "created_at": 1},
     "edge.valid_at must be an integer (epoch ms)"),
    ({"id": "e1", "src": "a", "dst": "b", "valid_at": 1, "created_at": 1, "weight": "x"},
     "edge.weight must be a finite number"),
    ({"id": "e1", "src": "a", "dst": "b", "valid_at": 1, "created_at": 1, "relation": 3},
     "edge.relation must be a string"),
    ({"id": "e1", "src": "a", "dst": "b", "valid_at": 1, "created_at": 1, "embedding": ["x"]},
     "edge.embedding: must be an array of numbers"),
])
def test_insert_validation_order_and_strings(session: LearnSession, store: CountingStore, edge: dict,
                                             error: str) -> None:
    assert err(session, "insert_edge", {"edge": edge}) == error
    assert store.snapshot() == {}  # a refused request changes nothing


def test_missing_body_reports_first_required_field(session: LearnSession) -> None:
    assert session.dispatch({"verb": "insert_edge"})["error"] == "edge.id required"
    assert session.dispatch({"verb": "query_at"})["error"] == "src required"
    assert session.dispatch({"verb": "invalidate_edge"})["error"] == "edge_id required"
    assert session.dispatch({"verb": "contradict"})["error"] == "new_edge required"
    assert session.dispatch({"verb": "get_edge"})["error"] == "edge_id required"


def test_equal_invalid_and_valid_at_is_allowed(session: LearnSession) -> None:
    ok(session, "insert_edge", {"edge": mk("e1", "a", "b", 1000, invalid_at=1000)})
    assert ids(session, "a", 1000) == []  # empty interval [1000, 1000)


def test_integral_float_stamps_are_normalised() -> None:
    assert validate_edge(mk("e", "a", "b", 1000.0))["valid_at"] == 1000
    assert isinstance(validate_edge(mk("e", "a", "b", 1000.0))["valid_at"], int)


# ---------------------------------------------------------------- the index
def test_index_finds_exactly_a_sources_edges(session: LearnSession) -> None:
    for i in range(50):
        ok(session, "insert_edge", {"edge": mk(f"e{i}", "hub", f"d{i}", 1000 + i)})
    for i in range(20):
        ok(session, "insert_edge", {"edge": mk(f"x{i}", f"hub{i}", "d", 1000)})
    ok(session, "insert_edge", {"edge": mk("p", "hu", "d", 1000)})
    ok(session, "insert_edge", {"edge": mk("z", "hub\x00", "d", 1000)})
    assert ids(session, "hub", 9999) == [f"e{i}" for i in range(50)]  # all 50, in insertion order
    assert ids(session, "hu", 9999) == ["p"]
    assert ids(session, "hub\x00", 9999) == ["z"]
    assert ids(session, "nobody", 9999) == []


def test_query_at_reads_only_the_sources_keys(session: LearnSession, store: CountingStore) -> None:
    for s in range(30):
        for i in range(10):
            ok(session, "insert_edge", {"edge": mk(f"s{s}e{i}", f"src{s}", "d", 1000 + i)})
    g = EdgeStore(store, PREFIX)
    store.read.clear()
    store.scans.clear()
    assert len(ids(session, "src7", 5000)) == 10
    assert store.scans == [g.source_prefix("src7")]
    assert len(store.read) == 10 and all(k.startswith(g.source_prefix("src7")) for k in store.read)
    store.read.clear()
    ok(session, "get_edge", {"edge_id": "s3e4"})
    assert len(store.read) == 2  # pointer + record: no scan
    assert store.scans == [g.source_prefix("src7")]


def test_upsert_moving_an_edge_leaves_no_stale_entry(session: LearnSession, store: CountingStore) -> None:
    ok(session, "insert_edge", {"edge": mk("e1", "alice", "acme", 1000)})
    ok(session, "insert_edge", {"edge": mk("e2", "alice", "initech", 1000)})
    ok(session, "insert_edge", {"edge": mk("e1", "bob", "acme", 1000)})
    assert ids(session, "alice", 2000) == ["e2"]
    assert ids(session, "bob", 2000) == ["e1"]
    g = EdgeStore(store, PREFIX)
    assert len(list(store.inner.iter_prefix(g.source_prefix("alice")))) == 1
    assert len(list(store.inner.iter_prefix(PREFIX + b"s"))) == 2  # one record per edge, nothing stale
    # moving back restores its first position under alice (the reference's append-once index)
    ok(session, "insert_edge", {"edge": mk("e1", "alice", "acme", 1000)})
    assert ids(session, "alice", 2000) == ["e1", "e2"]
    assert ids(session, "bob", 2000) == []


def test_upsert_in_place_keeps_insertion_position(session: LearnSession) -> None:
    for i in range(3):
        ok(session, "insert_edge", {"edge": mk(f"e{i}", "a", "d", 1000)})
    ok(session, "insert_edge", {"edge": mk("e0", "a", "changed", 1000)})
    data = ok(session, "query_at", {"src": "a", "t": 2000})
    assert [e["id"] for e in data["edges"]] == ["e0", "e1", "e2"] and data["edges"][0]["dst"] == "changed"


# ---------------------------------------------------------------- point-in-time
def test_point_in_time_windows(session: LearnSession) -> None:
    ok(session, "insert_edge", {"edge": mk("e1", "alice", "acme", 1000, invalid_at=2000)})
    ok(session, "insert_edge", {"edge": mk("e2", "alice", "globex", 2000)})
    assert ids(session, "alice", 500) == []
    assert ids(session, "alice", 1500) == ["e1"]
    assert ids(session, "alice", 2500) == ["e2"]
    assert ids(session, "alice", 1000) == ["e1"]  # valid_at inclusive
    assert ids(session, "alice", 2000) == ["e2"]  # invalid_at exclusive


def test_limit_returns_the_newest_k(session: LearnSession) -> None:
    for i in range(5):
        ok(session, "insert_edge", {"edge": mk(f"e{i}", "hub", f"d{i}", 1000 + i * 100)})
    assert ids(session, "hub", 9999) == ["e0", "e1", "e2", "e3", "e4"]
    assert ids(session, "hub", 9999, limit=3) == ["e4", "e3", "e2"]
    assert ids(session, "hub", 9999, limit=0) == ["e0", "e1", "e2", "e3", "e4"]
    assert ids(session, "hub", 9999, limit=10) == ["e0", "e1", "e2", "e3", "e4"]
    assert ids(session, "hub", 9999, limit=5) == ["e0", "e1", "e2", "e3", "e4"]  # not more than limit: as is


def test_limit_is_stable_for_equal_created_at(session: LearnSession) -> None:
    for i in range(4):
        ok(session, "insert_edge", {"edge": mk(f"e{i}", "hub", "d", 1000, created_at=[5, 7, 7, 1][i])})
    assert ids(session, "hub", 2000, limit=2) == ["e1", "e2"]


@pytest.mark.parametrize("body,error", [
    ({"t": 1}, "src required"),
    ({"src": "a"}, "t required"),
    ({"src": "a", "t": "x"}, "t must be an integer (epoch ms)"),
    ({"src": "a", "t": 1, "limit": -1}, _LIMIT_ERROR),
    ({"src": "a", "t": 1, "limit": 2 ** 70}, _LIMIT_ERROR),  # GET /graph's too
    ({"src": 5, "t": 1}, "src must be a string"),
    ({"src": "a", "t": 1, "known_at": "x"}, "known_at must be an integer (epoch ms)"),
])
def test_query_at_errors(session: LearnSession, body: dict, error: str) -> None:
    assert err(session, "query_at", body) == error


def test_known_at_answers_what_we_believed(session: LearnSession) -> None:
    ok(session, "insert_edge", {"edge": mk("acme", "alice", "acme", 1000)})
    ok(session, "contradict", {"edge": mk("globex", "alice", "globex", 2000, created_at=3000),
                               "contradicts": ["acme"], "now_ms": 3000})
    # today: acme closed at 2000, globex from 2000
    assert ids(session, "alice", 2500) == ["globex"]
    # believed at 2500 about 2500: the contradiction was recorded at 3000, so acme was still open
    assert ids(session, "alice", 2500, known_at=2500) == ["acme"]
    assert ids(session, "alice", 2500, known_at=3000) == ["globex"]
    assert ids(session, "alice", 500, known_at=5000) == []
    assert ids(session, "alice", 1500, known_at=999) == []  # nothing recorded yet
    # an invalid_at known from the start (no expired_at) always counts
    ok(session, "insert_edge", {"edge": mk("temp", "bob", "x", 100, invalid_at=200, created_at=50)})
    assert ids(session, "bob", 250, known_at=60) == []
    assert ids(session, "bob", 150, known_at=60) == ["temp"]


def test_is_active_rules() -> None:
    e = {"valid_at": 10, "invalid_at": 20, "created_at": 5, "expired_at": 15}
    assert [is_active(e, t) for t in (9, 10, 19, 20)] == [False, True, True, False]
    assert is_active(e, 25, known_at=14) and not is_active(e, 25, known_at=15)
    assert not is_active(e, 12, known_at=4)


# ---------------------------------------------------------------- invalidate
def test_invalidate_sets_both_stamps(session: LearnSession) -> None:
    ok(session, "insert_edge", {"edge": mk("e1", "alice", "acme", 1000)})
    assert ok(session, "invalidate_edge", {"edge_id": "e1", "invalid_at": 2000, "expired_at": 2500}) == \
        {"edge_id": "e1", "invalid_at": 2000}
    e = ok(session, "get_edge", {"edge_id": "e1"})["edge"]
    assert (e["invalid_at"], e["expired_at"]) == (2000, 2500)
    assert ids(session, "alice", 1500) == ["e1"] and ids(session, "alice", 2500) == []


def test_earlier_invalidation_wins(session: LearnSession, store: CountingStore) -> None:
    ok(session, "insert_edge", {"edge": mk("e1", "alice", "acme", 1000, invalid_at=1500)})
    before = store.snapshot()
    out = ok(session, "invalidate_edge", {"edge_id": "e1", "invalid_at": 2000, "expired_at": 2500})
    assert out == {"edge_id": "e1", "invalid_at": 1500}  # the effective stamp
    assert store.snapshot() == before
    e = ok(session, "get_edge", {"edge_id": "e1"})["edge"]
    assert e["invalid_at"] == 1500 and "expired_at" not in e


def test_later_request_with_earlier_stamp_moves_it_earlier(session: LearnSession) -> None:
    ok(session, "insert_edge", {"edge": mk("e1", "alice", "acme", 1000, invalid_at=3000)})
    ok(session, "invalidate_edge", {"edge_id": "e1", "invalid_at": 2000, "expired_at": 2500})
    assert ok(session, "get_edge", {"edge_id": "e1"})["edge"]["invalid_at"] == 2000


def test_equal_timestamp_reapplies_and_updates_expired_at(session: LearnSession) -> None:
    ok(session, "insert_edge", {"edge": mk("e1", "alice", "acme", 1000, invalid_at=2000)})
    ok(session, "invalidate_edge", {"edge_id": "e1", "invalid_at": 2000, "expired_at": 2500})
    assert ok(session, "get_edge", {"edge_id": "e1"})["edge"]["expired_at"] == 2500


def test_negative_interval_is_rejected(session: LearnSession, store: CountingStore) -> None:
    ok(session, "insert_edge", {"edge": mk("e1", "alice", "acme", 2000)})
    before = store.snapshot()
    assert err(session, "invalidate_edge", {"edge_id": "e1", "invalid_at": 1000, "expired_at": 1500}) == \
        "invalid_at < edge.valid_at; would create negative interval"
    assert store.snapshot() == before


@pytest.mark.parametrize("body,error", [
    ({"invalid_at": 1, "expired_at": 1}, "edge_id required"),
    ({"edge_id": "e1", "expired_at": 1}, "invalid_at required"),
    ({"edge_id": "e1", "invalid_at": 1}, "expired_at required"),
    ({"edge_id": "ghost", "invalid_at": 1, "expired_at": 1}, "edge ghost not found"),
])
def test_invalidate_errors(session: LearnSession, body: dict, error: str) -> None:
    ok(session, "insert_edge", {"edge": mk("e1", "alice", "acme", 0)})
    assert err(session, "invalidate_edge", body) == error


# ---------------------------------------------------------------- contradict
def test_alice_acme_globex_history(session: LearnSession) -> None:
    ok(session, "insert_edge", {"edge": mk("e_acme", "alice", "acme", 1000)})
    out = ok(session, "contradict", {"edge": mk("e_globex", "alice", "globex", 2000),
                                     "contradicts": ["e_acme"], "now_ms": 2050})
    assert out == {"kind": "invalidated", "invalidated_edge_id": "e_acme", "new_edge_id": "e_globex"}
    assert ids(session, "alice", 1500) == ["e_acme"]
    assert ids(session, "alice", 2500) == ["e_globex"]
    acme = ok(session, "get_edge", {"edge_id": "e_acme"})["edge"]
    assert (acme["valid_at"], acme["invalid_at"], acme["expired_at"]) == (1000, 2000, 2050)  # history kept
    globex = ok(session, "get_edge", {"edge_id": "e_globex"})["edge"]
    assert "invalid_at" not in globex


def test_contradict_accepts_the_spec_name_new_edge(session: LearnSession) -> None:
    ok(session, "insert_edge", {"edge": mk("a", "alice", "acme", 1000)})
    out = ok(session, "contradict", {"new_edge": mk("b", "alice", "globex", 2000), "contradicts": ["a"]})
    assert out["kind"] == "invalidated"
    assert ok(session, "get_edge", {"edge_id": "a"})["edge"]["expired_at"] == 0  # now_ms defaults to 0
    assert err(session, "contradict", {"new_edge": mk("c", "a", "b", 1), "edge": mk("c", "a", "b", 1)}) == \
        "give the new edge as edge or new_edge, not both"


def test_contradict_without_old_edges_inserts(session: LearnSession) -> None:
    assert ok(session, "contradict", {"edge": mk("e1", "alice", "acme", 1000), "contradicts": []}) == \
        {"kind": "inserted", "edge_id": "e1"}
    assert ok(session, "contradict", {"edge": mk("e2", "alice", "acme", 1000)}) == {"kind": "inserted", "edge_id": "e2"}


def test_contradict_is_atomic(session: LearnSession, store: CountingStore) -> None:
    ok(session, "insert_edge", {"edge": mk("a", "alice", "acme", 1000)})
    ok(session, "insert_edge", {"edge": mk("late", "alice", "x", 5000)})
    before = store.snapshot()
    # the second old edge would get a negative interval: nothing may change, not even the first
    assert err(session, "contradict", {"edge": mk("new", "alice", "globex", 2000), "contradicts": ["a", "late"]}) == \
        "invalid_at < edge.valid_at; would create negative interval"
    assert store.snapshot() == before
    assert err(session, "contradict", {"edge": mk("new", "alice", "globex", 2000), "contradicts": ["a", "ghost"]}) == \
        "edge ghost not found"
    assert err(session, "contradict", {"edge": mk("new,x", "alice", "globex", 2000), "contradicts": ["a"]}) == \
        "edge.id must not contain a comma (used as index delimiter)"
    assert err(session, "contradict", {"edge": mk("new", "alice", "globex", 2000), "contradicts": "a"}) == \
        "contradicts must be an array of edge ids"
    # the new edge's own id among the contradicted ones: the upsert would replace the invalidated fact
    assert err(session, "contradict", {"edge": mk("a", "alice", "globex", 2000), "contradicts": ["a"]}) == \
        "contradicts must not name the new edge ('a'): give the new fact an id of its own"
    assert store.snapshot() == before
    batches = store.batches
    ok(session, "contradict", {"edge": mk("new", "alice", "globex", 2000), "contradicts": ["a"], "now_ms": 7})
    assert store.batches == batches + 1  # one write batch


def test_contradict_several_reports_the_first(session: LearnSession) -> None:
    for eid in ("a", "b", "c"):
        ok(session, "insert_edge", {"edge": mk(eid, "alice", eid, 1000)})
    out = ok(session, "contradict", {"edge": mk("n", "alice", "n", 3000), "contradicts": ["b", "c"], "now_ms": 9})
    assert out == {"kind": "invalidated", "invalidated_edge_id": "b", "new_edge_id": "n"}
    assert ids(session, "alice", 3500) == ["a", "n"]


# ---------------------------------------------------------------- redelivery
def _events() -> list[dict]:
    return [
        {"op": "insert", "edge": mk("e1", "alice", "acme", 1000)},
        {"op": "insert", "edge": mk("e2", "alice", "initech", 1100)},
        {"op": "insert", "edge": mk("e1", "bob", "acme", 1000)},  # moves e1
        {"op": "invalidate", "edge_id": "e2", "invalid_at": 1500, "expired_at": 1600},
        {"op": "contradict", "edge": mk("e3", "bob", "globex", 2000), "contradicts": ["e1"], "now_ms": 2050},
        {"op": "insert", "edge": mk("e1", "alice", "acme", 1000, invalid_at=2000)},  # moves it back
    ]


def _apply(s: LearnSession, event: dict) -> dict:
    body = {k: v for k, v in event.items() if k != "op"}
    return s.dispatch({"verb": GRAPH_OPS[event["op"]], "body": body})


def test_graph_ops_map_to_write_verbs_on_the_edges_topic() -> None:
    for op, name in GRAPH_OPS.items():
        v = REGISTRY[name]
        assert (v.table, v.writes, v.topic) == ("graph", True, "edges"), op
    for name in ("query_at", "get_edge"):
        assert (REGISTRY[name].table, REGISTRY[name].writes) == ("graph", False)


def test_each_event_applied_twice_leaves_the_same_state(session: LearnSession, store: CountingStore) -> None:
    for event in _events():
        first = _apply(session, event)
        assert first["ok"], first
        after_once = store.snapshot()
        assert _apply(session, event) == first
        assert store.snapshot() == after_once, event


def test_replaying_a_window_converges_to_the_same_state(store: CountingStore) -> None:
    s = LearnSession(store=store)
    events = _events()
    for event in events:
        assert _apply(s, event)["ok"]
    done = store.snapshot()
    for start in range(len(events)):  # at-least-once: redeliver everything from some offset on
        for event in events[start:]:
            _apply(s, event)
        assert store.snapshot() == done, start


# ---------------------------------------------------------------- bulk + sessions
def test_insert_many_equals_one_by_one(store: CountingStore) -> None:
    edges = [mk(f"e{i}", f"s{i % 7}", "d", 1000 + i) for i in range(100)] + [mk("e3", "s0", "moved", 5)]
    bulk = EdgeStore(store, b"bulk/")
    assert bulk.insert_many(edges, chunk=16) == 101
    single = EdgeStore(MemoryStore(), b"bulk/")
    for e in edges:
        single.insert(validate_edge(e))
    assert dict(store.inner.iter_prefix(b"bulk/")) == dict(single.store.iter_prefix(b"bulk/"))


def test_insert_many_refuses_a_bad_chunk_whole(store: CountingStore) -> None:
    g = EdgeStore(store, b"bulk/")
    with pytest.raises(VerbError, match="edge.id required"):
        g.insert_many([mk("a", "s", "d", 1), {"id": ""}])
    assert store.snapshot() == {}


def test_sessions_are_separate(store: CountingStore) -> None:
    s = LearnSession(store=store)
    ok(s, "insert_edge", {"session_key": "t1", "edge": mk("e1", "alice", "acme", 1000)})
    assert ids(s, "alice", 2000, session_key="t1") == ["e1"]
    assert ids(s, "alice", 2000) == []
    assert ok(s, "get_edge", {"edge_id": "e1", "session_key": "t2"}) == {"edge": None}


def test_edges_survive_reopen(tmp_path) -> None:
    s = LearnSession(path=tmp_path)
    ok(s, "insert_edge", {"edge": mk("persist1", "x", "y", 100)})
    s.close()
    s2 = LearnSession(path=tmp_path)
    assert ok(s2, "get_edge", {"edge_id": "persist1"})["edge"]["src"] == "x"
    ok(s2, "insert_edge", {"edge": mk("persist2", "x", "z", 100)})  # the seq counter continues
    assert ids(s2, "x", 200) == ["persist1", "persist2"]
    s2.close()


def test_numbers_beyond_int64_are_stored_as_floats(session: LearnSession) -> None:
    edge = mk("big", "a", "b", 1, weight=10**30, embedding=[10**20, 1, 0.5])
    ok(session, "insert_edge", {"edge": edge})
    got = ok(session, "get_edge", {"edge_id": "big"})["edge"]
    assert got["weight"] == 1e30 and got["embedding"] == [1e20, 1, 0.5]


def test_graph_edges_topic_events_apply_and_redeliveries_change_nothing() -> None:
    import orjson

    from workers.stream.processor import Processor, StoreStateAccess
    from workers.stream.records import Record

    store = MemoryStore()
    proc = Processor(StoreStateAccess(store))
    recs = [Record("graph.edges", 0, off, b"default", orjson.dumps(ev)) for off, ev in enumerate(_events())]
    res = proc.process(recs)
    assert res.applied == len(recs) and res.rejected == 0
    done = dict(store.iter_prefix(b""))
    proc.process(recs[2:])  # at-least-once: redelivered from offset 2
    assert dict(store.iter_prefix(b"")) == done
    s = LearnSession(store=store)
    assert ids(s, "alice", 1400) == ["e1", "e2"] and ids(s, "bob", 2500) == ["e3"]


def test_an_edge_whose_names_or_size_no_record_could_hold_is_refused_before_anything_is_written() -> None:
    """An outside trial's one edge with a 900 kB src made a 1.8 MB changelog record (the src is in its key and
    its value): the worker crashed on the producer's limit, again on every restart, and a rebuild lost it."""
    s = LearnSession()

    def insert(**edge: object) -> dict:
        return s.dispatch({"verb": "insert_edge", "body": {"edge": {
            "id": "e", "src": "a", "dst": "b", "valid_at": 1, "created_at": 1, **edge}}})

    for field in ("id", "src", "dst", "relation"):
        out = insert(**{field: "x" * 1025})
        assert out["error"] == f"edge.{field} must be at most 1024 characters (got 1025)", out
    for field in ("id", "src", "dst", "relation"):
        assert insert(**{field: " \t"})["error"] == f"edge.{field} is blank (a name needs a character other than whitespace)"
    # one contradict names at most 1,000 distinct edges; repeats count once (40,000 repeats of one 512 KiB edge
    # held a worker two minutes: an outside trial)
    assert insert(src="zz")["ok"]
    out = s.dispatch({"verb": "contradict", "body": {"edge": {"id": "n0", "src": "zz", "dst": "c", "valid_at": 2,
                                                              "created_at": 2}, "contradicts": ["e"] * 40_000}})
    assert out["ok"] and out["data"]["invalidated_edge_id"] == "e", out
    out = s.dispatch({"verb": "contradict", "body": {"edge": {"id": "n1", "src": "zz", "dst": "c", "valid_at": 2,
                                                              "created_at": 2},
                                                     "contradicts": [f"x{i}" for i in range(1001)]}})
    assert out["error"] == "contradicts names 1001 edges; at most 1000 per contradict", out
    out = insert(fact="f" * 600_000)
    assert out["ok"] is False and out["error"].startswith("edge too large: ") and "at most 524288" in out["error"]
    assert s.dispatch({"verb": "query_at", "body": {"src": "a", "t": 5}})["data"]["edges"] == []  # nothing written
    assert insert(src="s" * 1024, id="i" * 1024, fact="f" * 400_000)["ok"]
    # a contradict without contradicts is a plain insert (spec), and the topic's schema says so too
    out = s.dispatch({"verb": "contradict", "body": {"edge": {"id": "n", "src": "a", "dst": "c", "valid_at": 2,
                                                              "created_at": 2}}})
    assert out["data"] == {"kind": "inserted", "edge_id": "n"}, out
    from workers.kafka.topics import topics

    topics()["edges"].validate({"op": "contradict", "edge": {"id": "n", "src": "a", "dst": "c", "valid_at": 2,
                                                             "created_at": 2}})


def test_an_edge_moved_under_more_sources_than_its_pointer_can_hold_is_refused_and_nothing_changes() -> None:
    """The pointer remembers every source an edge lived under (a move back restores its place): 600 moves
    between 1,000-character sources would make a 600 kB record, past what a changelog record may hold."""
    s = LearnSession()
    base = {"id": "e", "dst": "b", "valid_at": 1, "created_at": 1}
    out = None
    for i in range(600):
        out = s.dispatch({"verb": "insert_edge", "body": {"edge": {**base, "src": f"{i:04d}" + "s" * 1000}}})
        if not out["ok"]:
            break
    assert out is not None and not out["ok"] and "has lived under" in out["error"] and "give the fact a new id" in \
        out["error"], out
    lived = int(out["error"].split("under ")[1].split(" ")[0])  # the refused move's sources, its own included
    edge = s.dispatch({"verb": "get_edge", "body": {"edge_id": "e"}})["data"]["edge"]
    assert edge["src"] == f"{lived - 2:04d}" + "s" * 1000  # still where the last accepted insert put it
