"""Per-event isolation: one event failing (Python or kernel) never costs the rest of its batch.

The processor runs on a real in-memory store; the failures are real (a kernel's OverflowError on
``now_ms`` >= 2**63) or injected at the verb function (a fault after the verb mutated its state).
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib

import numpy as np
import orjson
import pytest

from workers.verbs.codec import encode_embedding_b64
from workers.verbs.session import LearnSession
from workers.state import MemoryStore
from workers.stream.processor import DLQ_MAX_BYTES, Processor, StoreStateAccess
from workers.stream.records import Record
from workers.kafka.topics import topics
from workers.verbs.registry import REGISTRY

T = {role: t.name for role, t in topics().items()}
SK = "s1"
MODELS = ["a", "b", "c"]
INIT = [("init_instant", {"session_key": SK, "targets": MODELS, "dim": 8}),
        ("init_router", {"session_key": SK, "targets": MODELS, "in_dim": 8, "threshold": 50})]


def feedback(i: int, now_ms: int) -> dict:
    x = np.random.default_rng(i).standard_normal(8).astype(np.float32)
    return {"session_key": SK, "embedding_b64": encode_embedding_b64(x), "model": MODELS[i % 3],
            "quality": 0.3 + 0.05 * (i % 10), "relation": "entity", "now_ms": now_ms}


def records(role: str, values: list[dict], start: int = 0) -> list[Record]:
    return [Record(T[role], 0, start + i, SK.encode(), orjson.dumps(v), 1000) for i, v in enumerate(values)]


def initialized() -> Processor:
    p = Processor(StoreStateAccess(MemoryStore()))
    assert p.process(records("commands", [{"verb": v, "body": b} for v, b in INIT])).applied == len(INIT)
    return p


def in_process(values: list[dict], verb: str = "learn_feedback") -> dict:
    s = LearnSession()
    for v, b in INIT:
        assert s.dispatch({"verb": v, "body": b})["ok"]
    for v in values:
        assert s.dispatch({"verb": verb, "body": v})["ok"]
    return s.dispatch({"verb": "session_info", "body": {"session_key": SK}})["data"]["parts"]


def parts(p: Processor) -> dict:
    return LearnSession(store=p.state.store).dispatch({"verb": "session_info", "body": {"session_key": SK}})["data"]


def dlq(res) -> list[dict]:
    return [e.value for e in res.produce if e.role == "dlq"]


def test_kernel_overflow_in_a_coalesced_run_dead_letters_that_event_and_applies_the_rest() -> None:
    # now_ms >= 2**63 is a valid JSON integer; the learning loop's kernel raises OverflowError on it
    good = [feedback(i, 1000 * (i + 1)) for i in range(6)]
    batch = good[:3] + [feedback(99, 2 ** 63)] + good[3:]
    p = initialized()
    res = p.process(records("feedback", batch))
    (entry,) = dlq(res)
    # internal (the kernel's OverflowError, last traceback line) before the security bounds; refused since
    # now_ms is validated up front. Either way: dead-lettered alone, the rest applied exactly.
    assert entry["reason"].startswith("OverflowError: " if entry["reason_code"] == "internal" else "now_ms")
    assert entry["source"]["offset"] == 3 and base64.b64decode(entry["value_b64"]) == orjson.dumps(batch[3])
    assert res.applied == 6 and res.replies[(T["feedback"], 0, 3)]["ok"] is False
    got = parts(p)
    assert got["parts"] == in_process(good)  # exactly as if the bad event had never been there
    assert got["watermark"] == {f"{T['commands']}:0": 1, f"{T['feedback']}:0": 6}
    again = p.process(records("feedback", batch))  # redelivered: skipped, not dead-lettered twice
    assert not dlq(again) and again.duplicates == 7


def test_a_failure_after_the_verb_changed_state_leaves_no_trace(monkeypatch) -> None:
    # Any exception, even after the verb mutated the session: the value is rebuilt without that event.
    v = REGISTRY["record_loss"]
    real = v.fn

    def flaky(ctx, body):  # noqa: ANN001, ANN202
        out = real(ctx, body)
        if body["loss"] == 13.0:
            raise ZeroDivisionError("injected after the state changed")
        return out

    monkeypatch.setitem(REGISTRY, "record_loss", dataclasses.replace(v, fn=flaky))  # record_loss has no coalesced form
    losses = [{"session_key": SK, "loss": x} for x in (0.5, 0.6, 13.0, 0.4, 0.5)]
    p = Processor(StoreStateAccess(MemoryStore()))
    res = p.process(records("loss", losses))
    (entry,) = dlq(res)
    assert entry["reason_code"] == "internal" and entry["reason"] == "ZeroDivisionError: injected after the state changed"
    assert res.applied == 4
    s = LearnSession()
    for x in (0.5, 0.6, 0.4, 0.5):
        s.dispatch({"verb": "record_loss", "body": {"session_key": SK, "loss": x}})
    assert parts(p)["parts"] == s.dispatch({"verb": "session_info", "body": {"session_key": SK}})["data"]["parts"]


def test_every_event_of_a_batch_is_applied_or_dead_lettered_even_with_several_failures() -> None:
    good = [feedback(i, 1000 * (i + 1)) for i in range(8)]
    batch = [feedback(50, 2 ** 63)] + good[:4] + [feedback(51, 2 ** 64 - 1)] + good[4:] + [feedback(52, 2 ** 63)]
    p = initialized()
    res = p.process(records("feedback", batch))
    assert sorted(e["source"]["offset"] for e in dlq(res)) == [0, 5, 10]
    assert res.applied == 8 and len(res.replies) == len(batch)
    assert parts(p)["parts"] == in_process(good)


def test_a_dlq_entry_too_big_for_the_producer_is_truncated_with_prefix_and_hash() -> None:
    # a 1,000,000-float embedding is refused (wrong dimension); the whole value would make a
    # ~9 MB entry, far over Kafka's ~1 MiB message limit
    big = {"session_key": SK, "embedding": [0.125] * 1_000_000, "model": "a", "quality": 0.5}
    raw = orjson.dumps(big)
    p = initialized()
    res = p.process([Record(T["feedback"], 0, 0, SK.encode(), raw, 1000),
                     *records("feedback", [feedback(1, 2000)], start=1)])
    (entry,) = dlq(res)
    assert entry["source"] == {"topic": T["feedback"], "partition": 0, "offset": 0, "timestamp_ms": 1000}
    assert entry["reason_code"] in ("refused", "oversized") and entry["id"] == f"{T['feedback']}:0:0"
    assert entry["truncated"] is True and entry["value_bytes"] == len(raw)
    assert entry["value_sha256"] == hashlib.sha256(raw).hexdigest()
    assert raw.startswith(base64.b64decode(entry["value_b64"]))
    assert len(orjson.dumps(entry)) <= DLQ_MAX_BYTES
    assert res.applied == 1


def test_a_huge_reason_is_cut_too() -> None:
    from workers.stream.processor import dlq_entry

    rec = Record(T["loss"], 0, 7, SK.encode(), b"{}", 0)
    entry = dlq_entry(rec, "x" * 100_000, "refused").value
    assert len(entry["reason"]) < 3000 and entry["reason"].startswith("xxx")


@pytest.mark.parametrize("now_ms", [2 ** 63, 2 ** 63 - 1 + 2 ** 10])
def test_reads_do_not_cache_what_a_batch_then_builds_on(now_ms: int) -> None:
    # A read before the session's value arrived (a worker still recovering) answers from an empty
    # value; the next batch must start from the stored (recovered) value, not from that read.
    store = MemoryStore()
    p = Processor(StoreStateAccess(store))
    empty = p.read(REGISTRY["session_info"], {}, SK, 0)
    assert empty["ok"] and empty["data"]["parts"] == {}
    recovered = initialized()  # the value another worker wrote, now restored into this store
    for k, v in recovered.state.store.iter_prefix(b""):
        store.put(k, v)
    res = p.process(records("feedback", [feedback(1, 1000), feedback(2, now_ms)]))
    assert res.applied == 1 and dlq(res)[0]["reason_code"] in ("internal", "refused", "invalid")
    assert parts(p)["parts"] == in_process([feedback(1, 1000)])


def test_a_huge_message_key_becomes_a_bounded_dlq_record_key() -> None:
    from workers.stream.processor import dlq_entry

    huge = b"k" * 950_000
    entry = dlq_entry(Record(T["loss"], 0, 7, huge, b"{}", 0), "session_key too long", "invalid")
    assert entry.key == "sha256:" + hashlib.sha256(huge).hexdigest()
    assert huge.startswith(base64.b64decode(entry.value["key_b64"]))
    assert len(entry.key) + len(orjson.dumps(entry.value)) <= DLQ_MAX_BYTES
    assert dlq_entry(Record(T["loss"], 0, 7, b"s1", b"{}", 0), "r", "invalid").key == "s1"


def test_a_downstream_event_over_the_producer_limit_is_replaced_by_a_dlq_entry() -> None:
    # a send over the limit would fail the batch (its transaction) on every retry
    from workers.stream.processor import encoded
    from workers.stream.records import Produce

    small = Produce("finetune", SK, {"id": "memory.context:2:5", "source": {"offset": 5}, "content": "x" * 100})
    assert encoded(small, 1_000_000) == (small, orjson.dumps(small.value))
    big = Produce("finetune", SK, {"id": "memory.context:2:5:1", "source": {"offset": 5}, "content": "x" * 1_000_000})
    dead, raw = encoded(big, 1_000_000)
    assert dead.role == "dlq" and dead.key == SK and orjson.loads(raw) == dead.value
    assert dead.value["reason_code"] == "oversized" and dead.value["id"] == "memory.context:2:5:1"
    assert "finetune" in dead.value["reason"] and dead.value["source"] == {"offset": 5}
    assert hashlib.sha256(orjson.dumps(big.value)).hexdigest() in dead.value["reason"]
    assert dead.value["value_b64"] is None  # the applied input stays in its topic
    assert len(raw) < 4096
