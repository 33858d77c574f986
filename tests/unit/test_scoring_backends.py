"""Scoring backends: the /v1/score client against a real local server implementing the contract,
the OpenAI-compatible client against a mock server (vLLM prompt_logprobs and echo), the built-in
model, empty ranges never sent, every failure a ScoringError with a clear message."""
from __future__ import annotations

import math

import pytest

from tests.unit.scoring_servers import LMServer
from workers.scoring.backends import (
    BuiltinBackend,
    OpenAICompletionsBackend,
    ScoreAPIBackend,
    build_backend,
)
from workers.scoring.config import ScoringConfig
from workers.errors import VerbError
from workers.scoring import endpoints
from workers.scoring.ngram import builtin_model
from workers.scoring.tokenizer import CharTokenizer, RemoteTokenizer
from workers.scoring.transport import ScoringError, post_json
from workers.local import free_port

TOK, LM = builtin_model()
TEXT = "The user prefers metric units. The park is about two kilometres away."


@pytest.fixture
def server():
    with LMServer() as s:
        yield s


def prompt_and_ranges() -> tuple[list[int], list[tuple[int, int]]]:
    ids = TOK.header("memory") + TOK.encode(TEXT) + TOK.footer()
    return ids, [(1, 6), (7, len(ids) - 1), (3, 3), (2, 9)]  # overlapping, and one empty


# -- the contract client ---------------------------------------------------------------------------
def test_score_api_client_speaks_the_contract_and_equals_the_builtin_model(server) -> None:
    ids, ranges = prompt_and_ranges()
    b = ScoreAPIBackend(server.url + "/v1", "m", TOK)
    got = b.score(ids, ranges)
    assert got == pytest.approx(BuiltinBackend().score(ids, ranges), abs=1e-9)
    assert got[2] == 0.0
    (req,) = server.calls("/v1/score")
    assert req == {"model": "m", "prompt": ids, "score_ranges": [[1, 6], [7, len(ids) - 1], [2, 9]], "logprobs": 1}


def test_empty_ranges_are_answered_locally_and_never_sent(server) -> None:
    b = ScoreAPIBackend(server.url + "/v1", "m", TOK)
    ids, _ = prompt_and_ranges()
    assert b.score(ids, [(4, 4), (0, 0)]) == [0.0, 0.0]
    assert b.score([], []) == []
    assert server.requests == []  # no call at all
    b.score(ids, [(4, 4), (1, 3)])
    assert server.calls("/v1/score")[0]["score_ranges"] == [[1, 3]]


def test_ranges_outside_the_prompt_are_refused_before_any_call(server) -> None:
    b = ScoreAPIBackend(server.url + "/v1", "m", TOK)
    with pytest.raises(ValueError, match="outside"):
        b.score([1, 2, 3], [(2, 5)])
    with pytest.raises(ValueError, match="outside"):
        b.score([1, 2, 3], [(2, 1)])
    assert server.requests == []


@pytest.mark.parametrize("knob,match", [
    ("fail_status", "HTTP 500"), ("garbage", "not JSON"), ("wrong_count", "2 scores for 3 ranges"),
])
def test_a_failing_server_is_a_scoring_error(server, knob: str, match: str) -> None:
    setattr(server, knob, 500 if knob == "fail_status" else True)
    ids, ranges = prompt_and_ranges()
    with pytest.raises(ScoringError, match=match) as exc:
        ScoreAPIBackend(server.url + "/v1", "m", TOK).score(ids, ranges)
    assert server.url in str(exc.value) or "score_api" in str(exc.value)


def test_unreachable_server_is_a_scoring_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    endpoints.configure([url])
    with pytest.raises(ScoringError, match=r"POST http://127\.0\.0\.1:\d+/v1/score: .*refused"):
        ScoreAPIBackend(url, "m", TOK, timeout_s=2).score([1, 2, 3], [(1, 3)])


def test_a_slow_server_times_out(server) -> None:
    server.delay_s = 1.0
    with pytest.raises(ScoringError, match="timed out after 0.2 s"):
        ScoreAPIBackend(server.url + "/v1", "m", TOK, timeout_s=0.2).score([1, 2, 3], [(1, 3)])


def test_malformed_answers_are_scoring_errors(server) -> None:
    b = ScoreAPIBackend(server.url + "/v1", "m", TOK)
    for answer, match in [({"nope": 1}, "expected"), ({"scores": [{"total_logprob": "x"}]}, "finite"),
                          ({"scores": [{"total_logprob": None}]}, "finite")]:
        server.score = lambda body, a=answer: (200, a)  # noqa: E731
        with pytest.raises(ScoringError, match=match):
            b.score([1, 2, 3], [(1, 3)])


def test_the_api_key_travels_as_a_bearer_token(server, monkeypatch) -> None:
    from workers.stream.settings import Settings

    monkeypatch.setenv("LEARNSTREAM_SCORING_API_KEY", "sekret")
    allowed = endpoints.allowed()
    endpoints.configure(allowed, Settings.from_env().scoring_api_key_reader())
    build_backend.cache_clear()
    cfg = ScoringConfig().updated({"backend": "score_api", "base_url": server.url + "/v1", "model": "m",
                                   "tokenizer": "builtin"})
    try:
        build_backend(cfg).score([1, 2, 3], [(1, 3)])
    finally:
        build_backend.cache_clear()
        endpoints.configure(allowed)
    assert server.auth == ["Bearer sekret"]


# -- the OpenAI-compatible client --------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["prompt_logprobs", "echo"])
def test_openai_client_sums_prompt_logprobs_inside_each_range(server, mode: str) -> None:
    ids, ranges = prompt_and_ranges()
    b = OpenAICompletionsBackend(server.url + "/v1", "m", TOK, mode=mode)
    assert b.score(ids, ranges) == pytest.approx(BuiltinBackend().score(ids, ranges), abs=1e-9)
    (req,) = server.calls("/v1/completions")
    assert req["prompt"] == ids and req["max_tokens"] == 1 and req["temperature"] == 0
    if mode == "echo":
        assert req["echo"] is True and req["logprobs"] == 1 and "prompt_logprobs" not in req
    else:
        assert req["prompt_logprobs"] == 1 and "echo" not in req


def test_openai_client_refuses_a_range_over_the_first_token(server) -> None:
    with pytest.raises(ScoringError, match="no log-probability for prompt token 0"):
        OpenAICompletionsBackend(server.url + "/v1", "m", TOK).score([5, 6, 7], [(0, 2)])


def test_openai_client_explains_a_server_without_prompt_logprobs(server) -> None:
    server.completions = lambda body: (200, {"choices": [{"text": "x", "logprobs": None}]})
    with pytest.raises(ScoringError, match="must return prompt log-probabilities"):
        OpenAICompletionsBackend(server.url + "/v1", "m", TOK).score([5, 6, 7], [(1, 2)])
    server.completions = lambda body: (200, {"choices": []})
    with pytest.raises(ScoringError, match="no choices"):
        OpenAICompletionsBackend(server.url + "/v1", "m", TOK).score([5, 6, 7], [(1, 2)])


def test_openai_empty_ranges_never_sent(server) -> None:
    assert OpenAICompletionsBackend(server.url + "/v1", "m", TOK).score([5, 6, 7], [(2, 2)]) == [0.0]
    assert server.requests == []


# -- tokenizers ------------------------------------------------------------------------------------
def test_remote_tokenizer_uses_the_servers_ids_and_caches_texts(server) -> None:
    t = RemoteTokenizer(server.url + "/tokenize", "m")
    assert t.encode(TEXT) == TOK.encode(TEXT)
    assert t.encode(TEXT) == TOK.encode(TEXT)
    assert t.encode("") == []
    assert len(server.calls("/tokenize")) == 1
    assert server.calls("/tokenize")[0] == {"prompt": TEXT, "add_special_tokens": False, "model": "m"}


@pytest.mark.parametrize("tokens", [["a"], [-5, 3], [2**40], [True]])
def test_remote_tokenizer_failure_is_a_scoring_error(server, tokens: list) -> None:
    """A negative id (an outside trial's tokenizer) was sent on to the model as it came."""
    server.tokenize = lambda body: (200, {"tokens": tokens})
    with pytest.raises(ScoringError, match=r"expected .* of token ids in \[0, 2\^31\)"):
        RemoteTokenizer(server.url + "/tokenize").encode("x")


def test_char_tokenizer_frames_messages() -> None:
    t = CharTokenizer()
    assert t.header("user") + t.encode("hi") + t.footer() == [ord(c) for c in "user: hi\n"]


# -- the built-in backend --------------------------------------------------------------------------
def test_builtin_backend_sums_token_logprobs() -> None:
    ids, ranges = prompt_and_ranges()
    lp = LM.token_logprobs(ids)
    got = BuiltinBackend().score(ids, ranges)
    for (s, e), v in zip(ranges, got, strict=True):
        assert v == pytest.approx(math.fsum(lp[i] for i in range(s, e)), abs=1e-12)
        assert v <= 0.0


def test_builtin_backend_refuses_foreign_ids_as_a_failed_call() -> None:
    with pytest.raises(ScoringError, match="outside"):
        BuiltinBackend().score([1, -4, 3], [(1, 3)])


def test_post_json_refused_connection_names_the_reason() -> None:
    with pytest.raises(ScoringError, match="refused"):
        url = f"http://127.0.0.1:{free_port()}/x"
        endpoints.configure([url])
        post_json(url, {}, timeout_s=2)


def test_build_backend_per_config(server) -> None:
    assert isinstance(build_backend(ScoringConfig()), BuiltinBackend)
    cfg = ScoringConfig().updated({"backend": "openai", "base_url": server.url + "/v1", "model": "m",
                                   "tokenizer": "remote", "tokenizer_url": server.url + "/tokenize",
                                   "logprobs_mode": "echo", "timeout_s": 3})
    b = build_backend(cfg)
    assert isinstance(b, OpenAICompletionsBackend) and b.mode == "echo" and b.timeout_s == 3.0
    assert isinstance(b.tokenizer, RemoteTokenizer)
    assert build_backend(cfg) is b  # one instance per config: the tokenizer cache survives events
    ids = b.tokenizer.header("user") + b.tokenizer.encode("how far is the park")
    assert b.score(ids, [(3, len(ids))]) == pytest.approx(BuiltinBackend().score(ids, [(3, len(ids))]))


# -- no outbound surprises: the operator's allowlist (workers/scoring/endpoints.py) -------------
@pytest.mark.parametrize("url,ok", [
    ("http://vllm:8000/v1", True), ("http://vllm:8000/v1/", True), ("http://VLLM:8000/v1/score", True),
    ("http://vllm:8000/v10", False), ("http://vllm:8000/", False), ("http://vllm:8001/v1", False),
    ("https://vllm:8000/v1", False), ("http://vllm:8000.evil.com/v1", False), ("http://x@vllm:8000/v1", False),
    ("http://evil.com/v1", False), ("http://vllm:8000@evil.com/v1", False), ("ftp://vllm:8000/v1", False),
    ("http://169.254.169.254/latest/meta-data", False), ("http://vllm:99999/v1", False),
])
def test_only_allowlisted_endpoints_are_permitted(url: str, ok: bool) -> None:
    endpoints.configure(["http://vllm:8000/v1/"])
    try:
        assert endpoints.permits(url) is ok
    finally:
        endpoints.configure([])


def test_a_request_supplied_url_is_refused_and_never_called(server, monkeypatch) -> None:
    endpoints.configure([], lambda: "sekret")  # the server is not on the list
    with pytest.raises(VerbError, match="base_url is not an allowed scoring endpoint"):
        ScoringConfig().updated({"backend": "score_api", "base_url": server.url + "/v1", "model": "m",
                                 "tokenizer": "builtin"})
    with pytest.raises(VerbError, match="tokenizer_url is not an allowed"):
        endpoints.configure(["http://vllm:8000/v1"])
        ScoringConfig().updated({"backend": "openai", "base_url": "http://vllm:8000/v1", "model": "m",
                                 "tokenizer": "remote", "tokenizer_url": server.url + "/tokenize"})
    # a configuration from before the list changed (replayed from the log) is checked on every call
    with pytest.raises(ScoringError, match="not an allowed scoring endpoint"):
        ScoreAPIBackend(server.url + "/v1", "m", TOK, api_key="sekret").score([1, 2, 3], [(1, 3)])
    with pytest.raises(ScoringError, match="not an allowed scoring endpoint"):
        post_json(server.url + "/v1/score", {})
    assert server.requests == [] and server.auth == []
    endpoints.configure([])


def test_a_redirect_is_not_followed_and_the_key_stays_home() -> None:
    with LMServer() as evil, LMServer() as home:
        endpoints.configure([home.url])  # evil is not allowed
        home.redirect_to = evil.url
        with pytest.raises(ScoringError, match="307"):
            ScoreAPIBackend(home.url + "/v1", "m", TOK, api_key="sekret").score([1, 2, 3], [(1, 3)])
        assert home.auth == ["Bearer sekret"] and evil.requests == [] and evil.auth == []
    endpoints.configure([])


def test_the_api_key_file_goes_to_allowlisted_endpoints_only(server, tmp_path) -> None:
    key = tmp_path / "key"
    key.write_text("from-a-file\n")
    from workers.stream.settings import Settings

    endpoints.configure([server.url], Settings(scoring_api_key_file=key, scoring_api_key="not-this").scoring_api_key_reader())
    ScoreAPIBackend(server.url + "/v1", "m", TOK).score([1, 2, 3], [(1, 3)])
    assert server.auth == ["Bearer from-a-file"]
    assert endpoints.api_key("http://elsewhere/v1") is None
    endpoints.configure([])
