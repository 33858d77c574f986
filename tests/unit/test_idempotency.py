"""Client idempotency keys: a retried write is answered, never applied twice, across restarts."""
from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from workers.errors import VerbError
from workers.verbs.session import LearnSession
from workers.state import MemoryStore
from workers.state import idempotency
from workers.stream.processor import Processor, StoreStateAccess
from workers.stream.records import Record
from workers.kafka.topics import topics

COMMANDS = topics()["commands"].name
OUTCOMES = topics()["outcomes"].name


def cmd(offset: int, verb: str, body: dict, sk: str = "s1") -> Record:
    return Record(COMMANDS, 0, offset, sk.encode(), orjson.dumps({"verb": verb, "body": body}), 1000)


def accesses(store: MemoryStore, sk: str = "s1") -> int:
    out = LearnSession(store=store).dispatch({"verb": "heuristics", "body": {"session_key": sk,
                                                                              "include": ["knowledge"]}})
    return out["data"]["knowledge"][0]["accesses"]


@pytest.fixture
def setup() -> tuple[MemoryStore, str]:
    store = MemoryStore()
    res = Processor(StoreStateAccess(store)).process(
        [cmd(0, "add_knowledge", {"agent": "a", "domain": "d", "fact": "the sky is blue"})])
    rid = res.replies[(COMMANDS, 0, 0)]["data"]["record_id"]
    return store, rid


def test_a_retried_key_is_answered_with_the_first_reply_and_applied_once(setup) -> None:
    store, rid = setup
    p = Processor(StoreStateAccess(store))
    body = {"ids": [rid], "idempotency_key": "k1"}
    res = p.process([cmd(1, "mark_used", body), cmd(2, "mark_used", body)])
    first, again = res.replies[(COMMANDS, 0, 1)], res.replies[(COMMANDS, 0, 2)]
    assert first["ok"] and first["data"] == {"marked": 1, "unknown": []}
    assert again == {**first, "id": f"{COMMANDS}:0:1", "duplicate": True}
    assert (res.applied, res.duplicates) == (1, 1)
    assert accesses(store) == 1
    # another key is another write
    p.process([cmd(3, "mark_used", {**body, "idempotency_key": "k2"})])
    assert accesses(store) == 2


def test_the_key_survives_a_restart_and_a_redelivery(setup) -> None:
    store, rid = setup
    body = {"ids": [rid], "idempotency_key": "k1"}
    Processor(StoreStateAccess(store)).process([cmd(1, "mark_used", body)])
    # a new worker process over the same state: the original redelivered, then the client's retry
    p = Processor(StoreStateAccess(store))
    res = p.process([cmd(1, "mark_used", body), cmd(5, "mark_used", body)])
    assert res.replies[(COMMANDS, 0, 5)]["id"] == f"{COMMANDS}:0:1"
    assert res.replies[(COMMANDS, 0, 5)]["duplicate"] is True
    assert accesses(store) == 1


def test_a_refused_write_keeps_no_key_so_the_corrected_write_is_applied(setup) -> None:
    """A refusal changed nothing and is not kept under its key: the same request again is refused again
    (and dead-lettered again), and the client's corrected request under the same key is applied (a kept
    refusal locked it out as "a different write"). The verbs never see the key."""
    store, rid = setup
    p = Processor(StoreStateAccess(store))
    bad = {"ids": [], "idempotency_key": "k9"}
    before = LearnSession(store=store).dispatch({"verb": "agent_info", "body": {"session_key": "s1"}})["data"]
    res = p.process([cmd(1, "mark_used", bad), cmd(2, "mark_used", bad)])
    assert [res.replies[(COMMANDS, 0, o)]["error"][:12] for o in (1, 2)] == ["ids must be "] * 2
    assert "duplicate" not in res.replies[(COMMANDS, 0, 2)]
    assert len([x for x in res.produce if x.role == "dlq"]) == 2
    after = LearnSession(store=store).dispatch({"verb": "agent_info", "body": {"session_key": "s1"}})["data"]
    assert after["digest"] == before["digest"]  # no key kept: nothing of the session changed
    res = p.process([cmd(3, "mark_used", {"ids": [rid], "idempotency_key": "k9"})])
    assert res.replies[(COMMANDS, 0, 3)]["ok"] and accesses(store) == 1


def test_in_process_a_refused_write_keeps_no_key_so_the_corrected_write_is_applied() -> None:
    s = LearnSession()
    body = {"session_key": "s", "agent": "q", "domain": "x", "idempotency_key": "k3"}
    before = s.dispatch({"verb": "agent_info", "body": {"session_key": "s"}})["data"]
    assert s.dispatch({"verb": "add_knowledge", "body": body})["error"] == "fact required"
    again = s.dispatch({"verb": "add_knowledge", "body": body})
    assert again["error"] == "fact required" and "duplicate" not in again
    assert s.dispatch({"verb": "agent_info", "body": {"session_key": "s"}})["data"] == before
    fixed = s.dispatch({"verb": "add_knowledge", "body": {**body, "fact": "ok"}})
    assert fixed["ok"], fixed
    assert s.dispatch({"verb": "add_knowledge", "body": {**body, "fact": "ok"}}) == {**fixed, "duplicate": True}


@pytest.mark.parametrize("key", ["", 7, "x" * 129])
def test_a_malformed_key_is_refused_with_the_rule(setup, key) -> None:
    store, rid = setup
    res = Processor(StoreStateAccess(store)).process([cmd(1, "mark_used", {"ids": [rid], "idempotency_key": key})])
    assert res.replies[(COMMANDS, 0, 1)]["error"] == \
        "idempotency_key must be a non-empty string of at most 128 characters"
    assert [x.value["reason_code"] for x in res.produce if x.role == "dlq"] == ["refused"]
    assert accesses(store) == 0


def test_keys_on_a_topic_verb_and_the_coalesced_path() -> None:
    store = MemoryStore()
    p = Processor(StoreStateAccess(store))
    o = {"session_key": "s1", "id": "o1", "agent": "a", "task": "t", "success": True, "strategy": "s",
         "idempotency_key": "k"}
    # the write, its retry (the same bytes again), then the same key for another outcome
    recs = [Record(OUTCOMES, 0, i, b"s1", orjson.dumps({**o, "id": oid}), 1000) for i, oid in enumerate(["o0", "o0", "o1"])]
    res = p.process(recs)
    assert res.replies[(OUTCOMES, 0, 1)]["duplicate"] is True
    assert res.replies[(OUTCOMES, 0, 2)] == {
        "ok": False, "verb": "learn_outcome",
        "error": "idempotency_key 'k' was already used in this session for a different write (another verb or body); "
                 "use a new key for a new write"}
    assert res.rejected == 1   # to the DLQ with its reason, as any refused write
    assert LearnSession(store=store).dispatch({"verb": "heuristics", "body": {
        "session_key": "s1", "include": ["outcomes"]}})["data"]["counts"]["outcomes"] == 1


def test_only_the_most_recent_keys_are_kept() -> None:
    from workers.state.blob import StateBlob

    blob = StateBlob()
    for i in range(idempotency._KEEP + 5):
        idempotency.remember(blob, f"k{i}", {"ok": True, "id": f"t:0:{i}"})
    again = StateBlob.from_bytes(blob.to_bytes())
    assert idempotency.lookup(again, "k0") is None and idempotency.lookup(again, "k4") is None
    assert idempotency.lookup(again, f"k{idempotency._KEEP + 4}")["id"] == f"t:0:{idempotency._KEEP + 4}"
    big = {"ok": True, "id": "t:0:1", "data": {"x": "y" * 10_000}}
    idempotency.remember(blob, "big", big)
    assert idempotency.lookup(blob, "big") == {"ok": True, "id": "t:0:1", "data_omitted": True}


def test_remembering_a_key_writes_one_entry_not_the_whole_list() -> None:
    from workers.state.layout import SessionState

    s = SessionState()
    written = []
    for i in range(idempotency._KEEP + 50):
        idempotency.remember(s.blob, f"key-{i}", {"ok": True, "verb": "add_knowledge", "data": {"n": i},
                                                  "id": f"learn.commands:0:{i}"})
        ops, after = s.changes(b"s1")
        s.written(after)
        written.append(sum(len(k) + len(v or b"") for k, v in ops.items()))
    stored = len(after[idempotency.PART].data)
    assert stored > 100_000  # the whole list: over 100 kB
    assert max(written[100:]) < 1_500  # each save: the new entry, the ring's header and the head
    # the ring reads back: the oldest 50 are gone, the rest answer
    again = idempotency.AppliedKeys.from_bytes(after[idempotency.PART].data)
    assert set(again.replies) == {f"key-{i}" for i in range(50, idempotency._KEEP + 50)}
    assert "key-49" not in again.replies and again.replies["key-50"]["data"] == {"n": 50}


def test_keys_stored_in_the_first_format_are_still_read() -> None:
    old = orjson.dumps([[f"k{i}", {"ok": True, "id": f"t:0:{i}"}] for i in range(3)])
    keys = idempotency.AppliedKeys.from_bytes(old)
    assert keys.replies["k2"] == {"ok": True, "id": "t:0:2"}
    assert idempotency.AppliedKeys.from_bytes(keys.to_bytes()).replies == keys.replies


def test_graph_writes_are_idempotent_by_edge_id_so_a_retry_changes_nothing() -> None:
    """A retried insert or contradict is answered with its first reply and changes nothing."""
    edges = topics()["edges"].name
    store = MemoryStore()
    p = Processor(StoreStateAccess(store))
    e1 = {"id": "e1", "src": "a", "dst": "x", "valid_at": 1000, "created_at": 1000}
    e2 = {"id": "e2", "src": "a", "dst": "y", "valid_at": 2000, "created_at": 2000}
    writes = [{"op": "insert", "edge": e1, "idempotency_key": "i1"},
              {"op": "contradict", "edge": e2, "contradicts": ["e1"], "now_ms": 2000, "idempotency_key": "c1"}]
    p.process([Record(edges, 0, i, b"s1", orjson.dumps(v), 1000) for i, v in enumerate(writes)])
    once = list(store.iter_prefix(b""))
    res = p.process([Record(edges, 0, 2 + i, b"s1", orjson.dumps(v), 1000) for i, v in enumerate(writes)])
    assert all(r["ok"] and r["duplicate"] for r in res.replies.values())
    assert [r["id"] for r in res.replies.values()] == [f"{edges}:0:0", f"{edges}:0:1"]
    assert list(store.iter_prefix(b"")) == once


def _graph_retry_after_a_later_write(apply) -> list[dict]:
    """insert e1 (key ins-1), invalidate e1, then the insert's retry, then the key on another edge: the
    replies, and e1 as it is afterwards (``apply(verb, body)`` -> reply)."""
    e1 = {"id": "e1", "src": "alice", "dst": "acme", "valid_at": 1000, "created_at": 1000}
    insert = {"session_key": "s1", "edge": e1, "idempotency_key": "ins-1"}
    out = [apply("insert_edge", insert),
           apply("invalidate_edge", {"session_key": "s1", "edge_id": "e1", "invalid_at": 2000, "expired_at": 2000}),
           apply("insert_edge", insert),
           apply("insert_edge", {**insert, "edge": {**e1, "dst": "globex"}})]
    return out + [apply("get_edge", {"session_key": "s1", "edge_id": "e1"})]


def _check_graph_retry(out: list[dict]) -> None:
    first, _, retry, other, edge = out
    # (the worker's retry also names the id of the message that was applied)
    assert first["ok"] and retry["duplicate"] is True and {k: v for k, v in retry.items() if k not in (
        "id", "duplicate")} == first
    assert other["ok"] is False and "was already used in this session for a different write" in other["error"]
    # the retry did not undo the invalidation, and the reused key changed nothing
    assert edge["data"]["edge"]["invalid_at"] == 2000 and edge["data"]["edge"]["dst"] == "acme"


def test_a_graph_write_retried_after_a_later_write_is_not_applied_again() -> None:
    """Graph writes keep no session value of their own: their keys are kept in the session's value in
    the session table. Without them a retried insert, upserting by id, undid an invalidation made since."""
    edges = topics()["edges"].name
    store = MemoryStore()
    p = Processor(StoreStateAccess(store))
    ops = {"insert_edge": "insert", "invalidate_edge": "invalidate"}
    offset = iter(range(100))

    def apply(verb: str, body: dict) -> dict:
        if verb not in ops:
            return LearnSession(store=store).dispatch({"verb": verb, "body": body})
        o = next(offset)
        value = {"op": ops[verb], **{k: v for k, v in body.items() if k != "session_key"}}
        return p.process([Record(edges, 0, o, b"s1", orjson.dumps(value), 1000)]).replies[(edges, 0, o)]

    _check_graph_retry(_graph_retry_after_a_later_write(apply))
    # a new worker over the same store (the keys are stored, not only cached)
    p = Processor(StoreStateAccess(store))
    e1 = {"id": "e1", "src": "alice", "dst": "acme", "valid_at": 1000, "created_at": 1000}
    again = apply("insert_edge", {"session_key": "s1", "edge": e1, "idempotency_key": "ins-1"})
    assert again["duplicate"] is True and again["id"] == f"{edges}:0:0"


def test_in_process_a_graph_write_retried_after_a_later_write_is_not_applied_again() -> None:
    s = LearnSession()
    _check_graph_retry(_graph_retry_after_a_later_write(lambda verb, body: s.dispatch({"verb": verb, "body": body})))


# -- in process: LearnSession answers keys as the worker does -------------------------------------------
def test_in_process_a_retried_key_is_answered_with_the_first_reply_and_applied_once(tmp_path) -> None:
    """``LearnSession.dispatch`` (and ``learnstream dispatch``) once passed the key through to the verb,
    which ignored it: a retry applied the write again and a malformed key was accepted."""
    s = LearnSession(path=tmp_path)
    rid = s.dispatch({"verb": "add_knowledge", "body": {"session_key": "s1", "agent": "a", "domain": "d",
                                                        "fact": "the sky is blue"}})["data"]["record_id"]
    body = {"session_key": "s1", "ids": [rid], "idempotency_key": "k1"}
    first = s.dispatch({"verb": "mark_used", "body": body})
    assert first == {"ok": True, "verb": "mark_used", "data": {"marked": 1, "unknown": []}}
    assert s.dispatch({"verb": "mark_used", "body": body}) == {**first, "duplicate": True}
    s.close()
    s = LearnSession(path=tmp_path)  # the key is kept with the session's state
    assert s.dispatch({"verb": "mark_used", "body": body}) == {**first, "duplicate": True}
    assert accesses(s.store) == 1
    assert s.dispatch({"verb": "mark_used", "body": {**body, "idempotency_key": "k2"}})["ok"]
    assert accesses(s.store) == 2
    # a refused write keeps no key, as in the worker: refused again; the verb never sees the key
    bad = {"session_key": "s1", "ids": [], "idempotency_key": "k9"}
    refused = s.dispatch({"verb": "mark_used", "body": bad})
    assert refused["error"].startswith("ids must be")
    assert s.dispatch({"verb": "mark_used", "body": bad}) == refused
    s.close()


@pytest.mark.parametrize("key", ["", 7, "x" * 129])
def test_in_process_a_malformed_key_is_refused_with_the_rule(key) -> None:
    s = LearnSession()
    out = s.dispatch({"verb": "add_knowledge", "body": {"session_key": "s1", "agent": "a", "domain": "d",
                                                        "fact": "f", "idempotency_key": key}})
    assert out == {"ok": False, "verb": "add_knowledge",
                   "error": "idempotency_key must be a non-empty string of at most 128 characters"}
    assert s.dispatch({"verb": "memory_info", "body": {"session_key": "s1"}})["data"]["keys"] == 0  # nothing stored


def test_the_keys_weigh_what_their_entries_hold_as_they_change() -> None:
    """The session cache asks ``memory_bytes`` on every save: kept as entries are added, replaced and
    dropped from the ring (not summed over up to 1,024 entries each time), and the same read back."""
    keys = idempotency.AppliedKeys()
    for i in range(idempotency._KEEP + 30):
        keys.add(f"k{i}", {"ok": True, "id": f"t:0:{i}", "data": {"pad": "x" * (i % 17)}})
        if i % 100 == 0:
            keys.add(f"k{i}", {"ok": True, "id": f"t:0:{i}"})  # the same key again: its entry replaced
        assert keys.memory_bytes() == 3 * sum(len(e) for e in keys._slots)
    assert idempotency.AppliedKeys.from_bytes(keys.to_bytes()).memory_bytes() == keys.memory_bytes()


def test_a_key_reused_for_another_write_is_refused_not_answered_with_the_first_reply() -> None:
    """A retry repeats the write (same verb and body; key order and session_key do not matter) and gets the
    first reply; the same key on another body or verb would have told the client its new write was
    applied: it is refused, and nothing changes. A key remembered before fingerprints were kept (no print)
    is answered as before."""
    from workers.state.blob import StateBlob

    from workers.verbs.surface import REGISTRY

    s = LearnSession()
    body = {"session_key": "s", "agent": "a", "domain": "d", "fact": "the sky is blue", "idempotency_key": "k1"}
    first = s.dispatch({"verb": "add_knowledge", "body": body})
    assert first["ok"], first
    again = s.dispatch({"verb": "add_knowledge", "body": dict(reversed(list(body.items())))})
    assert again == {**first, "duplicate": True}
    table = REGISTRY["add_knowledge"].table
    before = s.blob(table, "s").to_bytes()
    other = s.dispatch({"verb": "add_knowledge", "body": {**body, "fact": "the sea is green"}})
    assert other == {"ok": False, "verb": "add_knowledge",
                     "error": "idempotency_key 'k1' was already used in this session for a different write "
                              "(another verb or body); use a new key for a new write"}
    assert s.dispatch({"verb": "add_preference", "body": {"session_key": "s", "user_id": "u", "category": "c",
                                                          "preference": "short", "idempotency_key": "k1"}})["ok"] is False
    assert s.blob(table, "s").to_bytes() == before
    assert s.dispatch({"verb": "add_knowledge", "body": body}) == {**first, "duplicate": True}
    blob = StateBlob()
    idempotency.remember(blob, "old", {"ok": True, "id": "t:0:1"})   # no print: as kept before
    assert idempotency.retried(blob, "old", "x", {"a": 1})[1]["duplicate"] is True


def test_a_retry_whose_numbers_are_written_another_way_is_the_same_write() -> None:
    """``1`` and ``1.0`` (and ``-0.0`` and ``0``) are the same JSON number: a retry whose client wrote them
    another way is answered with the first reply; a different number is another write, refused."""
    s = LearnSession()
    s.dispatch({"verb": "init_instant", "body": {"session_key": "s", "targets": ["a"], "dim": 2}})
    body = {"session_key": "s", "model": "a", "quality": 1, "embedding": [1, 0], "now_ms": 5, "idempotency_key": "k"}
    first = s.dispatch({"verb": "learn_feedback", "body": body})
    assert first["ok"], first
    for same in ({**body, "quality": 1.0, "embedding": [1.0, -0.0]}, {**body, "embedding": [1.0, 0]},
                 {**body, "now_ms": 5.0}):
        assert s.dispatch({"verb": "learn_feedback", "body": same}) == {**first, "duplicate": True}, same
    for other in ({**body, "embedding": [1.0, 0.5]}, {**body, "quality": 0.99}, {**body, "now_ms": 6}):
        assert "was already used in this session for a different write" in \
            s.dispatch({"verb": "learn_feedback", "body": other})["error"], other
    assert s.dispatch({"verb": "health", "body": {"session_key": "s"}})["data"]["feedback_count"] == 1


def test_a_reply_kept_with_the_first_print_is_compared_as_it_was() -> None:
    """A key kept before numbers were compared by value (its print under ``body_sha256``): the same body is
    answered, another body refused, as then."""
    from workers.state.blob import StateBlob

    blob = StateBlob()
    idempotency.remember(blob, "old", {"ok": True, "id": "t:0:1"})
    keys = blob.get(idempotency.PART, idempotency.AppliedKeys)
    keys.replies["old"] = {"ok": True, "id": "t:0:1", "body_sha256": idempotency._print_v1("v", {"a": 1})}
    assert idempotency.retried(blob, "old", "v", {"a": 1})[1] == {"ok": True, "id": "t:0:1", "duplicate": True}
    with pytest.raises(VerbError):
        idempotency.retried(blob, "old", "v", {"a": 2})


@given(st.lists(st.one_of(st.floats(), st.integers(), st.sampled_from([2 ** 53, -(2 ** 53), 2 ** 53 + 1, 2 ** 64])),
                max_size=20))
@example([2 ** 53, -(2 ** 53), 1.5, -0.0])
@example([2 ** 53 + 1])
def test_float64_from_numbers_is_numpys_doubles_for_exact_ints(v: list) -> None:
    from workers import _kernels

    got = _kernels.float64_from_numbers(v)
    if any(type(x) is int and abs(x) > 2 ** 53 for x in v):
        assert got is None
    else:
        want = np.array([float(x) for x in v], np.float64)
        assert got.dtype == np.float64 and got.tobytes() == want.tobytes()
    for bad in ([True], [1.0, "x"], [None], [np.float64(1)], (1.0,), [[1.0]]):
        assert _kernels.float64_from_numbers(bad) is None
