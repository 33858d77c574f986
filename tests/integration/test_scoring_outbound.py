"""Outbound scoring calls on real parts: a worker process, the embedded broker, and a local server
speaking the OpenAI-compatible completions API and vLLM's /tokenize (the LLM endpoint is an edge
we do not own).

While the scoring endpoint holds a call, the worker still answers /health and reads of other
sessions (checked while the server is *still holding* the request, not by timing); once released,
the scores are exactly the in-process ones and each call was made once. A scoring endpoint that
times out is a clear error: the write's reply lists the failed memories with the reason, and
important_memories answers 422 naming the timeout, never a 500.
"""
from __future__ import annotations

import orjson
import pytest

from tests.helpers import http_json, wait_until
from tests.unit.scoring_servers import MSGS, LMServer
from workers.verbs.session import LearnSession

pytestmark = pytest.mark.integration

EMB = [0.1, -0.2, 0.05, 0.3]


def scores_of(w, sk: str) -> dict[str, float]:  # noqa: ANN001
    out = w.dispatch("memory_scores", {"session_key": sk})
    assert out["ok"], out
    return {m["memory_id"]: m["score"] for m in out["data"]["memories"]}


def test_a_hanging_or_timing_out_scoring_endpoint_never_freezes_the_worker(worker_factory, client) -> None:
    with LMServer() as server:
        w = worker_factory(env={"LEARNSTREAM_SCORING_ENDPOINTS": server.url}).start().wait_ready()
        assert "authentication is off" in w.log_tail(100_000) and "loopback" in w.log_tail(100_000)
        openai = {"backend": "openai", "base_url": server.url + "/v1", "model": "m", "tokenizer": "remote",
                  "tokenizer_url": server.url + "/tokenize"}
        assert w.dispatch("configure_scoring", {"session_key": "slow", **openai, "timeout_s": 60})["ok"]
        assert w.dispatch("init_instant", {"session_key": "other", "targets": ["a", "b"], "dim": 4})["ok"]

        # the endpoint hangs: the worker's loop is free while the call waits
        server.hold()
        client.memory_context("slow", "c1", MSGS)
        wait_until(lambda: server.holding > 0, 60, 0.05, "the worker's first scoring call to arrive")
        status, health = http_json(w.url + "/health", timeout=10)
        assert status == 200 and health["status"] == "ok"
        status, out = http_json(w.url + "/dispatch", {"verb": "apply_adapter",
                                                      "body": {"session_key": "other", "embedding": EMB}}, timeout=10)
        assert status == 200 and out["ok"], out
        status, out = http_json(w.url + "/dispatch", {"verb": "memory_scores", "body": {"session_key": "slow"}},
                                timeout=10)
        assert status == 200 and out["data"]["memories"] == []  # nothing half-applied is visible
        assert http_json(w.url + "/metrics", timeout=10)[0] == 200
        assert server.holding > 0, "all of the above was answered while the scoring call was still held"
        server.release()

        got = wait_until(lambda: len(scores_of(w, "slow")) == 2 and scores_of(w, "slow"), 60,
                         what="both memories scored after the release")
        # two per memory, each distinct request made once over all passes (both baselines are one request)
        bodies = [orjson.dumps(b) for b in server.calls("/v1/completions")]
        assert len(bodies) == len(set(bodies)) == 3
        texts = [b["prompt"] for b in server.calls("/tokenize")]
        assert len(texts) == len(set(texts))  # each text tokenized once
        # exactly the numbers of the blocking client, in process, against the same server
        local = LearnSession()
        assert local.dispatch({"verb": "configure_scoring", "body": openai})["ok"]
        want = local.dispatch({"verb": "score_conversation", "body": {
            "conversation_id": "c1", "messages": MSGS, "now_ms": 0}})["data"]["scored"]
        assert got == pytest.approx({r["memory_id"]: r["score"] for r in want}, abs=1e-9)
        assert got["dog"] > 1.0 and got["tax"] == 0.0

        # the endpoint times out: a clear reason in the reply, a 422 on the read, the worker goes on
        assert w.dispatch("configure_scoring", {"session_key": "late", **openai, "tokenizer": "builtin",
                                                "tokenizer_url": None, "timeout_s": 1})["ok"]
        server.hold()
        status, out = http_json(w.url + "/dispatch", {"verb": "score_conversation", "body": {
            "session_key": "late", "conversation_id": "c1", "messages": MSGS}}, timeout=60)
        assert status == 200 and out["ok"], out
        failed = out["data"]["failed"]
        assert [f["memory_id"] for f in failed] == ["dog", "tax"] and out["data"]["scored"] == []
        assert all("/v1/completions: timed out after 1 s" in f["error"] for f in failed), failed
        status, out = http_json(w.url + "/dispatch", {"verb": "important_memories", "body": {
            "session_key": "late", "conversation_id": "c1"}}, timeout=60)
        assert status == 422 and "scoring failed" in out["error"] and "timed out after 1 s" in out["error"], out
        assert w.dispatch("health", {"session_key": "late"})["data"]["scoring_failed_calls"] == 2
        server.release()
        # and recovers once the endpoint answers again (the memories were never scored: they are due)
        status, out = http_json(w.url + "/dispatch", {"verb": "score_conversation", "body": {
            "session_key": "late", "conversation_id": "c1", "messages": MSGS}}, timeout=60)
        assert status == 200 and [r["memory_id"] for r in out["data"]["scored"]] == ["dog", "tax"], out
        metrics = http_json(w.url + "/metrics", timeout=10)[1]
        assert 'learnstream_scoring_calls_total{outcome="failed"}' in metrics
