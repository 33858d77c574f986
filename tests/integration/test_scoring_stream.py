"""Memory importance scoring on real parts: a conversation published to memory.context is scored
by a worker (built-in model, and the /v1/score contract against a local server), the scores are
readable with memory_scores and land on memory.scores with deterministic ids; fine-tune candidates
land on learn.finetune-candidates once."""
from __future__ import annotations


import pytest

from tests.helpers import read_topic, wait_until
from tests.unit.scoring_servers import MSGS, LMServer
from workers.verbs.session import LearnSession
from workers.kafka.topics import topics

pytestmark = pytest.mark.integration



def scores_of(w, sk: str) -> dict[str, float]:
    out = w.dispatch("memory_scores", {"session_key": sk})
    assert out["ok"], out
    return {m["memory_id"]: m["score"] for m in out["data"]["memories"]}


def test_conversation_is_scored_on_the_stream_with_deterministic_ids(broker, worker_factory, client) -> None:
    with LMServer() as server:
        w = worker_factory(env={"LEARNSTREAM_SCORING_ENDPOINTS": server.url}).start().wait_ready()
        # a second session scores through the /v1/score contract (the server runs the same model)
        cfg = w.dispatch("configure_scoring", {"session_key": "remote", "backend": "score_api",
                                               "base_url": server.url + "/v1", "model": "m", "tokenizer": "builtin"})
        assert cfg["ok"], cfg
        sent = client.memory_context("agent", "c1", MSGS)
        client.memory_context("remote", "c1", MSGS)
        got = wait_until(lambda: len(scores_of(w, "agent")) == 2 and scores_of(w, "agent"), 30,
                         what="both memories scored")
        wait_until(lambda: len(scores_of(w, "remote")) == 2, 30, what="remote session scored")
        # two calls per memory; both baselines are the same request, made once (workers/scoring/prefetch.py)
        assert len(server.calls("/v1/score")) == 3
    # the same numbers as in process
    want = LearnSession().dispatch({"verb": "score_conversation", "body": {
        "session_key": "agent", "conversation_id": "c1", "messages": MSGS, "now_ms": 0}})["data"]["scored"]
    assert got == pytest.approx({r["memory_id"]: r["score"] for r in want})
    assert got["dog"] > 1.0 and got["tax"] == 0.0
    assert scores_of(w, "remote") == pytest.approx(got, abs=1e-9)

    topic, partition, offset = sent
    events = [e for e in read_topic(broker.bootstrap, topics()["scores"].name, 4) if e["session_key"] == "agent"]
    assert [(e["id"], e["memory_id"]) for e in events] == [
        (f"{topic}:{partition}:{offset}", "dog"), (f"{topic}:{partition}:{offset}:1", "tax")]
    assert events[0]["source"]["offset"] == offset and events[0]["conversation_id"] == "c1"
    for e in events:
        topics()["scores"].validate(e)

    # fine-tune candidates: proposed once, through learn.commands
    first = w.dispatch("finetune_candidates", {"session_key": "agent", "conversation_id": "c1"})
    assert first["ok"] and [c["message_index"] for c in first["data"]["candidates"]] == [3, 5], first
    again = w.dispatch("finetune_candidates", {"session_key": "agent", "conversation_id": "c1"})
    assert again["ok"] and again["data"]["candidates"] == []
    cands = read_topic(broker.bootstrap, topics()["finetune"].name, 2)
    assert [c["message_index"] for c in cands] == [3, 5]
    assert cands[0]["id"].startswith(f"{topics()['commands'].name}:") and cands[1]["id"] == cands[0]["id"] + ":1"
