"""Scoring calls off the event loop (workers/scoring/prefetch.py), against a real local server.

A pass never calls: it notes; the calls are made between passes on aiohttp, each once, each
bounded by its timeout; the pass that counts gives exactly the blocking client's numbers; the
event loop keeps running while a call hangs; a dead endpoint costs at most one round of calls; a
batch always finishes; the API key is sent but never shows in an error or a repr; on the processor, a
batch re-applied after a crash repeats itself and a saved one is never called for again.
"""
from __future__ import annotations

import asyncio
import re

import aiohttp
import orjson
import pytest

from tests.unit.scoring_servers import MSGS, LMServer
from workers.scoring import endpoints, prefetch
from workers.scoring.backends import OpenAICompletionsBackend, ScoreAPIBackend
from workers.scoring.conversation import Message
from workers.scoring.modes import full_matrix, incremental
from workers.scoring.ngram import builtin_model
from workers.scoring.part import ScoringState
from workers.scoring.tokenizer import RemoteTokenizer
from workers.scoring.transport import ScoringError, post_json
from workers.state import MemoryStore
from workers.stream.processor import Processor, StoreStateAccess
from workers.stream.records import Record
from workers.kafka.topics import topics
from workers.local import free_port

TOK, _ = builtin_model()
CONV = [Message(m["role"], m["content"], m.get("memory_id")) for m in MSGS]


@pytest.fixture
def server():
    with LMServer() as s:
        yield s


def settle(run, **kw):  # noqa: ANN001, ANN201 - the worker's loop, in a test
    async def go():  # noqa: ANN202
        async with aiohttp.ClientSession() as http:
            return await prefetch.settle(run, lambda: http, **kw)
    return asyncio.run(go())


def test_passes_note_calls_and_the_counting_pass_equals_the_blocking_client(server) -> None:
    backend = OpenAICompletionsBackend(server.url + "/v1", "m", TOK)
    want = full_matrix(CONV, backend)  # blocking: no book
    blocking_calls = len(server.requests)
    server.requests.clear()
    seen: list[int] = []  # requests the server had when each pass started and ended
    discarded = []

    def run():  # noqa: ANN202
        before = len(server.requests)
        out = full_matrix(CONV, backend)
        seen.append(len(server.requests) - before)
        return out

    got = settle(run, discard=lambda: discarded.append(1))
    assert seen == [0, 0], "a pass never calls"
    assert len(discarded) == 1  # the noting pass was thrown away
    assert len(server.requests) == blocking_calls == 3  # each call made once (baseline + one per memory)
    assert got.memory_importance() == pytest.approx(want.memory_importance(), abs=1e-9)
    assert got.failed == []


def test_a_remote_tokenizer_takes_one_more_pass_and_each_text_is_tokenized_once(server) -> None:
    backend = ScoreAPIBackend(server.url + "/v1", "m", RemoteTokenizer(server.url + "/tokenize", "m"))
    passes = []

    def run():  # noqa: ANN202
        passes.append(1)
        fresh = ScoringState()
        return incremental(CONV, backend, fresh, now_ms=0), fresh

    report, st = settle(run)
    assert len(passes) == 3  # tokenize, score, the pass that counts
    texts = [b["prompt"] for b in server.calls("/tokenize")]
    assert len(texts) == len(set(texts)) and {m.content for m in CONV} <= set(texts)
    # two memories, two calls each; their baselines are the same request, made once
    bodies = [orjson.dumps(b) for b in server.calls("/v1/score")]
    assert len(bodies) == len(set(bodies)) == 3
    assert [r["memory_id"] for r in report.scored] == ["dog", "tax"] and not report.failed
    assert st.memories["dog"]["score"] > 1.0


def test_the_event_loop_runs_while_a_call_hangs_and_a_timeout_is_a_clear_failure(server) -> None:
    backend = OpenAICompletionsBackend(server.url + "/v1", "m", TOK, timeout_s=0.5)
    server.hold()

    async def go():  # noqa: ANN202
        async with aiohttp.ClientSession() as http:
            task = asyncio.ensure_future(prefetch.settle(lambda: full_matrix(CONV, backend), lambda: http))
            ticks = 0
            while server.holding == 0:  # the loop keeps turning while the call is sent...
                await asyncio.sleep(0.01)
            while not task.done():     # ... and while the server holds it
                ticks += 1
                await asyncio.sleep(0.01)
            return ticks, task

    ticks, task = asyncio.run(go())
    assert ticks > 0
    with pytest.raises(ScoringError, match=r"/v1/completions: timed out after 0.5 s"):
        task.result()  # the baseline call failed: nothing can be measured (important_memories: a 422)


def test_a_dead_endpoint_costs_one_round_of_calls() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused at once
    endpoints.configure((*endpoints.allowed(), url))
    book = prefetch.CallBook()
    for i in range(20):
        book.pending[(url, b"%d" % i)] = prefetch.Call(url + "/v1/score", b"%d" % i, 5.0)

    async def go():  # noqa: ANN202
        async with aiohttp.ClientSession() as http:
            await book.fetch(http)

    asyncio.run(go())
    assert len(book.answers) == 20 and not any(ok for ok, _ in book.answers.values())
    assert book.made <= prefetch._PARALLEL + prefetch._FAILURES_PER_ENDPOINT
    msgs = [m for _, m in book.answers.values()]
    assert any("ClientConnectorError" in m for m in msgs)
    skipped = [m for m in msgs if re.search(rf"not called, \d+ calls to {url} failed in this batch", m)]
    assert len(skipped) == 20 - book.made


def test_a_batch_always_finishes(server) -> None:
    """A run that needs a new call on every pass gets a failure on the last one instead of a loop."""
    endpoints.configure((*endpoints.allowed(), server.url))
    n = [0]

    def run():  # noqa: ANN202
        n[0] += 1
        try:
            return post_json(server.url + "/tokenize", {"prompt": f"pass {n[0]}"})
        except prefetch.Deferred:
            return None
        except ScoringError as exc:
            return str(exc)

    out = settle(run)
    assert n[0] == prefetch._PASSES and "not called (the batch needed more than" in out


def test_the_api_key_is_sent_but_never_in_an_error_or_a_repr(server) -> None:
    key = "sk-test-secret-123"
    backend = OpenAICompletionsBackend(server.url + "/v1", "m", TOK, api_key=key)
    server.fail_status = 503
    with pytest.raises(ScoringError) as e:
        settle(lambda: full_matrix(CONV, backend))
    assert server.auth and set(server.auth) == {f"Bearer {key}"}
    assert key not in str(e.value)
    call = prefetch.Call("http://x/v1", b"{}", 1.0, (("Authorization", f"Bearer {key}"),))
    assert key not in repr(call)


def test_on_the_processor_a_redelivery_never_calls_again_and_a_reapplied_batch_repeats_itself(server) -> None:
    """The worker's batch logic (Processor) in passes: a batch applied again after a crash before its
    save gives the same downstream events (same ids, same scores); once saved, a redelivery is skipped
    by the watermark and the endpoint is not called again."""
    store = MemoryStore()
    commands, memory = topics()["commands"].name, topics()["memory"].name
    cfg = {"verb": "configure_scoring", "body": {"session_key": "agent", "backend": "openai",
                                                 "base_url": server.url + "/v1", "model": "m", "tokenizer": "builtin"}}
    event = Record(memory, 0, 0, b"agent", orjson.dumps({"session_key": "agent", "conversation_id": "c1",
                                                         "messages": MSGS}), 5000)

    def scores(res) -> list[tuple]:  # noqa: ANN001
        return [(x.value["id"], x.value["memory_id"], x.value["score"]) for x in res.produce if x.role == "scores"]

    first = Processor(StoreStateAccess(store))
    first.save(settle(lambda: first.apply([Record(commands, 0, 0, b"agent", orjson.dumps(cfg), 1000)]),
                      discard=first.forget))
    lost = settle(lambda: first.apply([event]), discard=first.forget)  # applied, then the worker died unsaved
    assert len(scores(lost)) == 2 and server.calls("/v1/completions")

    restarted = Processor(StoreStateAccess(store))
    res = settle(lambda: restarted.apply([event]), discard=restarted.forget)
    restarted.save(res)
    assert scores(res) == scores(lost) and res.applied == 1
    made = len(server.requests)
    again = settle(lambda: restarted.apply([event]), discard=restarted.forget)  # redelivered after the save
    assert again.duplicates == 1 and not again.produce and len(server.requests) == made


def test_a_long_answer_is_read_whole_however_it_arrives(server) -> None:
    """An outside trial: answers over ~32 kB failed as "not JSON (unexpected end of data)" depending on
    timing: the body was read with one ``read(n)``, which answers with what has arrived."""
    backend = OpenAICompletionsBackend(server.url + "/v1", "m", TOK)
    want = full_matrix(CONV, backend)  # blocking (urllib): read whole
    server.pad_bytes = 2_000_000
    got = settle(lambda: full_matrix(CONV, backend))
    assert got.failed == [] and got.memory_importance() == pytest.approx(want.memory_importance(), abs=1e-9)


@pytest.mark.parametrize("value", [1e300, 0.5, -1e13])
def test_a_log_probability_no_model_can_give_is_a_failed_call(server, value: float) -> None:
    """An outside trial's endpoint answering 1e300 gave a memory a weight of 2e300 that no later score
    lowered, 1.7e308 made a null score on memory.scores, and positive values silent zeros."""
    server.logprob = value
    for backend in (ScoreAPIBackend(server.url + "/v1", "m", TOK), OpenAICompletionsBackend(server.url + "/v1", "m", TOK)):
        with pytest.raises(ScoringError, match=r"must be a log-probability, in \[-1e\+12, 0\]"):
            settle(lambda b=backend: full_matrix(CONV, b))  # the baseline call failed: nothing measured


def test_a_slow_endpoint_holds_a_batch_for_about_its_timeout_not_a_timeout_per_round_of_calls(server) -> None:
    """An outside trial: 33 calls of 4 s each, 8 at a time, with timeout_s 5 held the worker (and an unrelated
    write on another partition) for 20 s. The calls of a pass now share the longest call's timeout."""
    import time

    url = server.url + "/v1/score"
    book = prefetch.CallBook()
    for i in range(24):
        book.pending[(url, b"%d" % i)] = prefetch.Call(url, orjson.dumps({
            "model": "m", "prompt": [1, 2, 3, i], "score_ranges": [[1, 3]], "logprobs": 1}), 1.0)
    server.delay_s = 0.6  # each call alone is within its 1 s; three rounds of 8 would take 1.8 s

    async def go() -> float:
        async with aiohttp.ClientSession() as http:
            t0 = time.monotonic()
            await book.fetch(http)
            return time.monotonic() - t0

    took = asyncio.run(go())
    assert took < 1.5, took
    answers = list(book.answers.values())
    assert len(answers) == 24 and 1 <= sum(ok for ok, _ in answers) <= prefetch._PARALLEL  # the first round
    assert all("timed out" in m or "not called" in m for ok, m in answers if not ok), answers
