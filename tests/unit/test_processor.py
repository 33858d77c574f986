"""The worker's per-batch logic on real RocksDB-shaped state: every DLQ rule, watermark, ids."""
from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from workers.verbs.codec import MAX_EVENT_BYTES
from workers.state import MemoryStore
from workers.stream.processor import DLQ_MAX_BYTES, Processor, StoreStateAccess
from workers.stream.records import Record
from workers.kafka.topics import topics
from tests.helpers import by_topic

T = {role: t.name for role, t in topics().items()}


class Feed:
    """Records with increasing offsets per topic-partition, as a broker would hand them out."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}

    def rec(self, role: str, value: object, key: str | None = "s1", partition: int = 0) -> Record:
        topic = T[role]
        off = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = off + 1
        raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
        return Record(topic, partition, off, key.encode() if key is not None else None, raw, 1000)


@pytest.fixture
def proc() -> Processor:
    return Processor(StoreStateAccess(MemoryStore()))


def dlq(res) -> list[dict]:
    return [p.value for p in res.produce if p.role == "dlq"]


def info(p: Processor, sk: str = "s1") -> dict:
    from workers.verbs.session import LearnSession

    return LearnSession(store=p.state.store).dispatch({"verb": "session_info", "body": {"session_key": sk}})["data"]


def test_good_event_is_applied_and_watermarked(proc: Processor) -> None:
    f = Feed()
    res = proc.process([f.rec("loss", {"loss": 0.5})])
    assert res.applied == 1 and not dlq(res)
    assert info(proc)["watermark"] == {f"{T['loss']}:0": 0}


@pytest.mark.parametrize("value,code,words", [
    (b"{not json", "bad_json", "not valid JSON"),
    (None, "bad_json", "tombstone"),
    (b"[1, 2]", "invalid", "must be a JSON object, got an array"),
    (b"null", "invalid", "must be a JSON object, got null"),  # JSON's words, not Python's (NoneType)
    (b'"high"', "invalid", "must be a JSON object, got a string"),
    (b"x" * (MAX_EVENT_BYTES + 1), "oversized", "exceeds"),
    ({"loss": "high"}, "invalid", "loss"),  # a wrong type breaks the schema: invalid, not refused
])
def test_bad_loss_events_go_to_dlq_with_reason_and_original_bytes(proc: Processor, value, code, words) -> None:
    f = Feed()
    bad = f.rec("loss", value)
    res = proc.process([bad, f.rec("loss", {"loss": 0.5})])
    (entry,) = dlq(res)
    assert entry["reason_code"] == code and words in entry["reason"]
    assert entry["source"] == bad.source and entry["id"] == f"{T['loss']}:0:0"
    raw = bad.value
    got = base64.b64decode(entry["value_b64"]) if entry["value_b64"] else None
    if code == "oversized":  # too big to travel whole: a prefix, the length and the hash of the original
        assert entry["truncated"] and entry["value_bytes"] == len(raw) and raw.startswith(got) and len(got) < len(raw)
        assert entry["value_sha256"] == hashlib.sha256(raw).hexdigest()
        assert len(orjson.dumps(entry)) <= DLQ_MAX_BYTES
    else:
        assert got == raw and "truncated" not in entry
    assert res.applied == 1  # the next good event still went through


@pytest.mark.parametrize("value,code,words", [
    ({"verb": "no_such_verb", "body": {}}, "unknown_verb", "unknown verb: no_such_verb"),
    ({"verb": "y" * 5000, "body": {}}, "unknown_verb", f"unknown verb: {'y' * 64}... (5000 characters)"),
    ({"verb": "health"}, "invalid", "is a read"),
    ({"body": {}}, "invalid", "verb"),
    ({"verb": "init_instant", "body": [1]}, "invalid", "body"),
    ({"verb": "init_instant", "body": {}}, "refused", "targets required"),
])
def test_bad_commands_go_to_dlq(proc: Processor, value, code, words) -> None:
    (entry,) = dlq(proc.process([Feed().rec("commands", value)]))
    assert entry["reason_code"] == code and words in entry["reason"]


def test_unknown_edge_op_goes_to_dlq(proc: Processor) -> None:
    (entry,) = dlq(proc.process([Feed().rec("edges", {"op": "upsert"})]))
    assert entry["reason_code"] == "invalid" and "op" in entry["reason"]


def test_session_key_must_match_the_message_key(proc: Processor) -> None:
    (entry,) = dlq(proc.process([Feed().rec("loss", {"session_key": "other", "loss": 0.5}, key="s1")]))
    assert entry["reason_code"] == "invalid" and "does not match the message key" in entry["reason"]


def test_empty_session_key_refused(proc: Processor) -> None:
    (entry,) = dlq(proc.process([Feed().rec("loss", {"session_key": "", "loss": 0.5}, key="s1")]))
    assert entry["reason_code"] == "invalid" and "session_key" in entry["reason"]


@pytest.mark.parametrize("key,words", [(None, "message key missing"), (b"\xff\xfe", "message key not UTF-8")])
def test_keyless_and_non_utf8_keyed_events_go_to_dlq_bad_key(proc: Processor, key, words) -> None:
    # Partitioning is by key: such an event may sit on any partition, so it is never applied there.
    f = Feed()
    bad = f.rec("loss", {"session_key": "s1", "loss": 0.5})._replace(key=key)
    res = proc.process([bad, f.rec("loss", {"loss": 0.7})])
    (entry,) = dlq(res)
    assert entry["reason_code"] == "bad_key" and words in entry["reason"]
    assert base64.b64decode(entry["value_b64"]) == bad.value
    assert (base64.b64decode(entry["key_b64"]) if entry["key_b64"] else None) == key
    assert res.applied == 1 and info(proc)["watermark"] == {f"{T['loss']}:0": 1}


def test_redelivered_batch_is_skipped_and_state_unchanged(proc: Processor) -> None:
    f = Feed()
    batch = [f.rec("loss", {"loss": 0.5 + i / 10}) for i in range(6)] + [f.rec("loss", {"loss": 100.0})]
    first = proc.process(batch)
    assert first.applied == 7
    before = info(proc)
    proc.forget()  # as after a restart: state comes from the store
    again = proc.process(batch)
    assert again.applied == 0 and again.duplicates == 7 and not again.produce
    assert info(proc) == before


def test_downstream_events_carry_deterministic_ids(proc: Processor) -> None:
    f = Feed()
    res = proc.process([f.rec("loss", {"loss": 0.5}) for _ in range(6)] + [f.rec("loss", {"loss": 100.0})])
    (b,) = [p for p in res.produce if p.role == "boundaries"]
    assert b.value["id"] == f"{T['loss']}:0:6" and b.value["session_key"] == "s1"
    assert b.value["source"]["offset"] == 6 and b.key == "s1"


def test_corrupt_stored_state_goes_to_dlq_not_crash(proc: Processor) -> None:
    from workers.state.access import state_key

    proc.state.store.put(state_key("session", "s1"), b"LSB\x01garbage-garbage")
    res = proc.process([Feed().rec("loss", {"loss": 0.5})])
    (entry,) = dlq(res)
    assert entry["reason_code"] == "corrupt_state" and "checksum" in entry["reason"]


def test_each_session_value_is_written_once_per_batch(proc: Processor) -> None:
    writes: list[bytes] = []
    orig = proc.state.write
    proc.state.write = lambda table, p, base, ops: (writes.append(list(ops)), orig(table, p, base, ops))  # type: ignore[method-assign]
    f = Feed()
    proc.process([f.rec("loss", {"loss": 0.5}, key=k) for k in ("a", "b", "a", "a", "b")])
    # one batch per session, each with the session's head (and its changed pieces)
    assert sorted(w[0].split(b"\x1f")[1] for w in writes) == [b"a", b"b"]
    assert all(b"session\x1fa" in w or b"session\x1fb" in w for w in writes)


def test_replies_map_source_offsets_to_envelopes(proc: Processor) -> None:
    f = Feed()
    res = proc.process([f.rec("loss", {"loss": 0.5}), f.rec("loss", b"bad")])
    assert res.replies[(T["loss"], 0, 0)]["ok"] is True
    assert res.replies[(T["loss"], 0, 1)]["ok"] is False


def test_session_cache_is_bounded_and_evicted_sessions_reload_from_the_store() -> None:
    p = Processor(StoreStateAccess(MemoryStore()), cache_bytes=1)
    f = Feed()
    p.process([f.rec("loss", {"loss": 0.5}, key=k) for k in ("a", "b", "c", "d")])
    assert len(p.sessions) == 1  # over budget: only the most recent one stays
    p.process([f.rec("loss", {"loss": 0.7}, key="a")])  # "a" was evicted: comes back from the store
    from workers.verbs.session import LearnSession

    h = LearnSession(store=p.state.store).dispatch({"verb": "health", "body": {"session_key": "a"}})["data"]
    assert h["loss_window_size"] == 2


def test_an_envelope_counts_its_events_and_one_message(proc: Processor) -> None:
    import numpy as np

    f = Feed()
    proc.process([f.rec("commands", {"verb": "init_instant", "body": {"targets": ["a", "b"], "dim": 4}})])
    ev = {"embedding": np.ones(4).tolist(), "model": "a", "quality": 0.9}
    res = proc.process([f.rec("feedback", {"session_key": "s1", "events": [ev, ev, ev]}),
                        f.rec("feedback", ev), f.rec("feedback", b"{bad")])
    topic = T["feedback"]
    assert by_topic(res.messages) == {(topic, "applied"): 2, (topic, "rejected"): 1}
    assert by_topic(res.events) == {(topic, "applied"): 4, (topic, "rejected"): 1}
    # every topic's envelope: learn.examples' ``examples`` and agent.outcomes' ``outcomes`` too (an outside
    # trial saw an envelope of 5 examples counted as one event)
    proc.process([f.rec("commands", {"verb": "init_learner", "body": {"n_features": 2, "n_classes": 2}})])
    res = proc.process([f.rec("examples", {"session_key": "s1", "examples": [{"features": [0.1, 0.2], "label": 1}] * 5}),
                        f.rec("outcomes", {"session_key": "s1", "outcomes": [
                            {"id": f"o{i}", "agent": "a", "task": "t", "success": True, "strategy": "x"}
                            for i in range(3)]})])
    assert by_topic(res.events) == {(T["examples"], "applied"): 5, (T["outcomes"], "applied"): 3}
