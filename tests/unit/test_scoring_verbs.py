"""Scoring verbs on the verb surface: validation before mutation, incremental scoring of stored
conversations with emitted scores, HTTP backends switched in by configure_scoring, fine-tune
candidates proposed once, reads, health, persistence, and the worker's processor path."""
from __future__ import annotations

import orjson
import pytest

from tests.unit.scoring_servers import MSGS, LMServer
from workers.verbs.session import LearnSession
from workers.scoring import endpoints
from workers.state import MemoryStore
from workers.stream.processor import Processor, StoreStateAccess
from workers.stream.records import Record
from workers.kafka.topics import topics

HOUR = 3_600_000
MEMORY_TOPIC = topics()["memory"].name


@pytest.fixture(autouse=True)
def _allow_example_endpoint():
    """The operator's allowlist for these tests: the example URL (local servers add themselves)."""
    endpoints.configure(["http://x/v1"])
    yield
    endpoints.configure([])


def call(s: LearnSession, verb: str, **body) -> dict:
    return s.dispatch({"verb": verb, "body": {"session_key": "agent", **body}})


def data(s: LearnSession, verb: str, **body) -> dict:
    out = call(s, verb, **body)
    assert out["ok"], out
    return out.get("data")


def stored(s: LearnSession) -> bytes | None:
    return s.value("memory", "agent")


def test_score_conversation_stores_scores_and_emits_each_score() -> None:
    s = LearnSession()
    out = data(s, "score_conversation", conversation_id="c1", messages=MSGS, now_ms=1000)
    assert (out["messages"], out["memories"]) == (6, 2)
    assert [r["memory_id"] for r in out["scored"]] == ["dog", "tax"]
    dog, tax = out["scored"]
    assert dog["score"] > 1.0 and tax["score"] == 0.0 and dog["weight"] == dog["score"]
    assert [(role, p["memory_id"]) for role, p in s.emitted] == [("scores", "dog"), ("scores", "tax")]
    role, p = s.emitted[0]
    assert p["session_key"] == "agent" and p["conversation_id"] == "c1" and p["scored_ms"] == 1000
    topics()["scores"].validate({"id": "x", **p})  # the downstream contract holds
    scores = data(s, "memory_scores")
    assert [m["memory_id"] for m in scores["memories"]] == ["dog", "tax"]  # highest weight first
    assert scores["conversations"] == ["c1"] and scores["config"]["backend"] == "builtin"
    assert data(s, "memory_scores", memory_id="tax")["memories"] == [tax]
    h = data(s, "health")
    assert (h["scoring_backend"], h["scoring_memories"], h["scoring_failed_calls"]) == ("builtin", 2, 0)


def test_republished_conversation_rescores_only_stale_memories_and_moves_the_ema() -> None:
    s = LearnSession()
    first = data(s, "score_conversation", conversation_id="c1", messages=MSGS, now_ms=0)["scored"][0]["score"]
    out = data(s, "score_conversation", conversation_id="c1", messages=MSGS, now_ms=HOUR)
    assert out["scored"] == [] and out["fresh"] == 2  # one hour is not older than max_age
    changed = [*MSGS[:3], {"role": "assistant", "content": "Let us rest at home"}]  # no longer uses the dog
    out = data(s, "score_conversation", conversation_id="c1", messages=changed, now_ms=HOUR + 1)
    dog = out["scored"][0]
    assert dog["memory_id"] == "dog" and dog["score"] == 0.0
    assert dog["weight"] == pytest.approx(first * 0.9)  # falling: alpha 0.1
    assert dog["previous_weight"] == first and dog["n"] == 2


def test_memory_messages_without_an_id_are_identified_by_their_text() -> None:
    s = LearnSession()
    msgs = [{"role": "memory", "content": "Our dog is called Biscuit."}, {"role": "user", "content": "Hi"},
            {"role": "system", "content": "User lives in Toronto.", "memory_id": "city"},
            {"role": "assistant", "content": "Hello Biscuit fan from Toronto."}]
    data(s, "configure_scoring", window=1)  # so the later memory has a full window
    out = data(s, "score_conversation", conversation_id="c", messages=msgs, now_ms=0)
    ids = [r["memory_id"] for r in out["scored"]]
    assert ids[0].startswith("h:") and ids[1] == "city"
    again = data(s, "score_conversation", conversation_id="other", messages=msgs, now_ms=1)
    assert again["fresh"] == 2  # the same text is the same memory across conversations


@pytest.mark.parametrize("body,error", [
    ({"messages": MSGS}, "conversation_id required"),
    ({"conversation_id": "", "messages": MSGS}, "conversation_id must be a non-empty string"),
    ({"conversation_id": "c"}, "messages required, an array"),
    ({"conversation_id": "c", "messages": [1]}, "messages[0] must be an object"),
    ({"conversation_id": "c", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role must be one of"),
    ({"conversation_id": "c", "messages": [{"role": "user"}]}, "messages[0].content required"),
    ({"conversation_id": "c", "messages": [{"role": "memory", "content": "x", "memory_id": ""}]},
     "messages[0].memory_id must be a non-empty string"),
    ({"conversation_id": "c", "messages": [{"role": "assistant", "content": "x", "memory_id": "m"}]},
     "an assistant response cannot be a memory"),
    ({"conversation_id": "c", "messages": MSGS, "now_ms": -1}, "now_ms must be an integer (epoch ms) in [0, "),
    ({"conversation_id": "c", "messages": MSGS, "now_ms": 2**63}, "in [0, 9007199254740991]"),  # names the limit
    # an outside trial: a blank id was a memory, and two texts under one id were merged into one memory
    ({"conversation_id": "c", "messages": [{"role": "memory", "content": "x", "memory_id": "  "}]},
     "messages[0].memory_id is blank"),
    ({"conversation_id": " ", "messages": MSGS}, "conversation_id is blank"),
    ({"conversation_id": "c", "messages": [{"role": "memory", "content": "a", "memory_id": "m"},
                                           {"role": "user", "content": "a", "memory_id": "m"},
                                           {"role": "memory", "content": "b", "memory_id": "m"}]},
     "messages[2].memory_id 'm' names another text than messages[0] (one id, one memory)"),
    ({"conversation_id": "c", "messages": [{"role": "user", "content": "x"}] * 2001}, "at most 2000"),
    ({"conversation_id": "c", "messages": [{"role": "user", "content": "x" * (300 << 10)}]}, "bytes of text"),
])
def test_bad_conversations_are_refused_and_change_nothing(body: dict, error: str) -> None:
    s = LearnSession()
    data(s, "score_conversation", conversation_id="c0", messages=MSGS, now_ms=0)
    before, emitted = stored(s), len(s.emitted)
    out = call(s, "score_conversation", **body)
    assert not out["ok"] and error in out["error"]
    assert stored(s) == before and len(s.emitted) == emitted
    assert data(s, "memory_scores")["conversations"] == ["c0"]


# -- configuration and HTTP backends ---------------------------------------------------------------
@pytest.mark.parametrize("body,error", [
    ({"backend": "gpt"}, "backend must be one of builtin, score_api, openai"),
    ({"backend": "score_api", "model": "m", "tokenizer": "char"}, "base_url required"),
    ({"backend": "score_api", "base_url": "ftp://x", "model": "m", "tokenizer": "char"}, "http(s) URL"),
    ({"backend": "score_api", "base_url": "http://x/v1", "tokenizer": "char"}, "model required"),
    ({"backend": "score_api", "base_url": "http://x/v1", "model": "m"}, "tokenizer required for backend score_api"),
    ({"backend": "openai", "base_url": "http://x/v1", "model": "m", "tokenizer": "remote"}, "tokenizer_url required"),
    ({"backend": "score_api", "base_url": "http://x/v1", "model": "m", "tokenizer": "char",
      "logprobs_mode": "echo"}, "logprobs_mode applies to backend openai only"),
    ({"backend": "openai", "base_url": "http://x/v1", "model": "m", "tokenizer": "char",
      "logprobs_mode": "top"}, "logprobs_mode must be one of"),
    ({"backend": "builtin", "base_url": "http://x/v1"}, "base_url does not apply to backend builtin"),
    ({"model": "m"}, "backend required when changing"),
    ({"max_age_ms": -1}, "max_age_ms must be an integer"),
    ({"window": 0}, "window must be an integer in [1, 10000]"),
    ({"threshold": "small"}, "threshold must be a number"),
    ({"timeout_s": 0}, "timeout_s must be a number in (0, 120]"),
    ({"max_per_run": 0}, "max_per_run must be an integer"),
    ({"finetune_count": -1}, "finetune_count must be an integer"),
])
def test_bad_configuration_is_refused_and_changes_nothing(body: dict, error: str) -> None:
    s = LearnSession()
    data(s, "configure_scoring", window=7)
    before = stored(s)
    out = call(s, "configure_scoring", **body)
    assert not out["ok"] and error in out["error"], out
    assert stored(s) == before


def test_tuning_keeps_the_backend_and_naming_a_backend_resets_its_fields() -> None:
    s = LearnSession()
    cfg = data(s, "configure_scoring", backend="openai", base_url="http://x/v1", model="m", tokenizer="char",
               logprobs_mode="echo")["config"]
    assert cfg["logprobs_mode"] == "echo"
    cfg = data(s, "configure_scoring", max_age_ms=5, window=3, threshold=0.5)["config"]
    assert (cfg["backend"], cfg["max_age_ms"], cfg["window"], cfg["threshold"]) == ("openai", 5, 3, 0.5)
    cfg = data(s, "configure_scoring", backend="builtin")["config"]
    assert cfg == {"backend": "builtin", "timeout_s": 10.0, "max_age_ms": 5, "window": 3, "threshold": 0.5,
                   "max_per_run": 32, "finetune_count": 0}


@pytest.mark.parametrize("backend", ["score_api", "openai"])
def test_http_backends_score_like_the_model_they_serve(backend: str) -> None:
    local = LearnSession()
    want = data(local, "score_conversation", conversation_id="c1", messages=MSGS, now_ms=0)["scored"]
    with LMServer() as server:
        s = LearnSession()
        data(s, "configure_scoring", backend=backend, base_url=server.url + "/v1", model="m", tokenizer="builtin")
        got = data(s, "score_conversation", conversation_id="c1", messages=MSGS, now_ms=0)["scored"]
        assert len(server.requests) == 4  # two memories, two calls each
    assert [(r["memory_id"], pytest.approx(r["score"], abs=1e-9)) for r in want] == \
        [(r["memory_id"], r["score"]) for r in got]


def test_a_down_server_fails_calls_without_failing_the_event() -> None:
    with LMServer() as server:
        url = server.url
    s = LearnSession()
    data(s, "configure_scoring", backend="score_api", base_url=url + "/v1", model="m", tokenizer="char",
         timeout_s=2)
    out = data(s, "score_conversation", conversation_id="c1", messages=MSGS, now_ms=0)
    assert out["scored"] == [] and [f["memory_id"] for f in out["failed"]] == ["dog", "tax"]
    assert "refused" in out["failed"][0]["error"]
    assert data(s, "memory_scores")["failed_calls"] == 2 and s.emitted == []
    assert data(s, "memory_scores")["conversations"] == ["c1"]  # stored all the same
    h = data(s, "health")
    assert (h["scoring_backend"], h["scoring_memories"], h["scoring_failed_calls"]) == ("score_api", 0, 2)
    err = call(s, "important_memories", conversation_id="c1")
    assert not err["ok"] and err["error"].startswith("scoring failed: POST")


# -- fine-tune candidates --------------------------------------------------------------------------
def test_finetune_candidates_are_emitted_highest_first_and_never_twice() -> None:
    s = LearnSession()
    data(s, "score_conversation", conversation_id="c1", messages=MSGS, now_ms=0)
    s.emitted.clear()
    got = data(s, "finetune_candidates", conversation_id="c1")["candidates"]
    assert [c["message_index"] for c in got] == [3, 5]
    assert got[0]["divergence"] > got[1]["divergence"] > 1e-7
    assert [(r, p["message_index"]) for r, p in s.emitted] == [("finetune", 3), ("finetune", 5)]
    topics()["finetune"].validate({"id": "x", **s.emitted[0][1]})
    assert data(s, "finetune_candidates", conversation_id="c1")["candidates"] == []
    data(s, "score_conversation", conversation_id="c1", messages=MSGS, now_ms=1)  # republished: same responses
    assert data(s, "finetune_candidates", conversation_id="c1", count=100)["candidates"] == []
    assert len(s.emitted) == 2


def test_finetune_candidates_follow_count_and_threshold() -> None:
    s = LearnSession()
    data(s, "score_conversation", conversation_id="c1", messages=MSGS, now_ms=0)
    assert [c["message_index"] for c in data(s, "finetune_candidates", conversation_id="c1", count=1)
            ["candidates"]] == [5]
    assert data(s, "finetune_candidates", conversation_id="c1", threshold=1e6)["candidates"] == []
    for body, error in [({"conversation_id": "nope"}, "unknown conversation_id: nope"),
                        ({"conversation_id": "c1", "count": 0}, "count must be an integer"),
                        ({"conversation_id": "c1", "threshold": -1}, "threshold must be a number")]:
        out = call(s, "finetune_candidates", **body)
        assert not out["ok"] and error in out["error"]


def test_finetune_count_proposes_with_every_conversation() -> None:
    s = LearnSession()
    data(s, "configure_scoring", finetune_count=10)
    out = data(s, "score_conversation", conversation_id="c1", messages=MSGS, now_ms=0)
    assert [c["message_index"] for c in out["candidates"]] == [3, 5]
    assert [r for r, _ in s.emitted] == ["scores", "scores", "finetune", "finetune"]


# -- reads -----------------------------------------------------------------------------------------
def test_important_memories_is_the_full_matrix_of_a_stored_conversation() -> None:
    s = LearnSession()
    data(s, "score_conversation", conversation_id="c1", messages=MSGS, now_ms=0)
    out = data(s, "important_memories", conversation_id="c1")
    assert out["memory_importance"]["dog"] > 1.0 and out["memory_importance"]["tax"] == 0.0
    assert [r["message_index"] for r in out["responses"]] == [3, 5]
    first = out["responses"][0]
    assert [m["memory_id"] for m in first["memories"]] == ["dog"] and first["dependence"] == first["memories"][0]["score"]
    one = data(s, "important_memories", conversation_id="c1", message_index=5)
    assert [r["message_index"] for r in one["responses"]] == [5]
    assert data(s, "important_memories", conversation_id="c1", message_index=5, min_score=1e9)["responses"][0][
        "memories"] == []
    for body, error in [({"conversation_id": "c1", "message_index": 2}, "not an assistant response"),
                        ({"conversation_id": "c1", "message_index": 99}, "not an assistant response"),
                        ({"conversation_id": "zz"}, "unknown conversation_id"),
                        ({"conversation_id": "c1", "min_score": "x"}, "min_score must be a number")]:
        res = call(s, "important_memories", **body)
        assert not res["ok"] and error in res["error"]


def test_reads_of_an_empty_session() -> None:
    s = LearnSession()
    assert data(s, "memory_scores") == {"memories": [], "conversations": [], "config": data(
        s, "memory_scores")["config"], "failed_calls": 0}
    assert not call(s, "important_memories", conversation_id="c")["ok"]
    assert data(s, "health")["scoring_memories"] == 0
    assert stored(s) is None


# -- state -----------------------------------------------------------------------------------------
def test_state_survives_reopening_the_database(tmp_path) -> None:
    s = LearnSession(path=tmp_path / "db")
    data(s, "configure_scoring", window=10)
    data(s, "score_conversation", conversation_id="c1", messages=MSGS, now_ms=0)
    data(s, "finetune_candidates", conversation_id="c1")
    before = data(s, "memory_scores")
    s.close()
    s2 = LearnSession(path=tmp_path / "db")
    assert data(s2, "memory_scores") == before
    assert data(s2, "finetune_candidates", conversation_id="c1")["candidates"] == []  # still never twice
    s2.close()


def test_stored_conversations_stay_bounded() -> None:
    s = LearnSession()
    big = [{"role": "user", "content": "x" * 60_000}, *MSGS]
    for i in range(10):
        data(s, "score_conversation", conversation_id=f"c{i}", messages=big, now_ms=i)
    assert len(stored(s)) < 400_000
    assert data(s, "memory_scores")["conversations"] == ["c6", "c7", "c8", "c9"]  # most recent kept


# -- the worker's path -----------------------------------------------------------------------------
def rec(offset: int, value: dict, ts: int = 5000) -> Record:
    return Record(MEMORY_TOPIC, 0, offset, b"agent", orjson.dumps(value), ts)


def test_processor_applies_memory_context_events_with_deterministic_ids_and_event_time() -> None:
    p = Processor(StoreStateAccess(MemoryStore()))
    example = dict(topics()["memory"].example, session_key="agent")
    event = {"session_key": "agent", "conversation_id": "c1", "messages": MSGS}  # no now_ms: record time
    res = p.process([rec(0, example), rec(1, event, ts=7000)])
    assert res.applied == 2 and not [x for x in res.produce if x.role == "dlq"]
    scores = [x.value for x in res.produce if x.role == "scores"]
    assert [(v["id"], v["memory_id"]) for v in scores] == [
        (f"{MEMORY_TOPIC}:0:0", "m1"), (f"{MEMORY_TOPIC}:0:1", "dog"), (f"{MEMORY_TOPIC}:0:1:1", "tax")]
    assert scores[1]["scored_ms"] == 7000 and scores[1]["source"]["offset"] == 1
    for v in scores:
        topics()["scores"].validate(v)
    # a redelivery is skipped: nothing is scored or emitted twice
    again = p.process([rec(1, event, ts=7000)])
    assert again.duplicates == 1 and not again.produce
    # the state the worker wrote is what LearnSession reads
    s = LearnSession(store=p.state.store)
    assert {m["memory_id"] for m in data(s, "memory_scores")["memories"]} == {"m1", "dog", "tax"}


def test_a_bad_memory_context_event_goes_to_the_dlq() -> None:
    p = Processor(StoreStateAccess(MemoryStore()))
    res = p.process([rec(0, {"conversation_id": "c", "messages": [{"role": "robot", "content": "x"}]})])
    (d,) = [x.value for x in res.produce if x.role == "dlq"]
    assert d["reason_code"] == "invalid" and "role must be one of" in d["reason"]  # breaks the schema


def test_an_optional_id_given_empty_is_not_called_required() -> None:
    """``memory_scores {memory_id?}``: an empty one was refused as "memory_id required"."""
    s = LearnSession()
    assert s.dispatch({"verb": "memory_scores", "body": {"memory_id": ""}})["error"] == \
        "memory_id must be a non-empty string of at most 256 characters"
    assert s.dispatch({"verb": "memory_scores", "body": {}})["ok"]
