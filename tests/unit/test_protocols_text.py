"""Protocols text rules: normalized words, task types, error signatures, strategy similarity, token estimates."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from workers.errors import ConfigError
from workers.protocols.similarity import (ENV_EMBEDDER, EmbeddingMatcher, WordOverlap, matcher_from_spec)
from workers.protocols.text import (error_signature, estimate_tokens, infer_task_type, normalize_words,
                                    strategy_key)


# -- normalized words ------------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("Fill the fields, then SUBMIT!", ("fill", "fields", "submit")),
    ("fill fields; submit", ("fill", "fields", "submit")),
    ("submit submit SUBMIT", ("submit",)),
    ("click_the_button", ("click", "button")),       # "_" separates like punctuation
    ("do it", ("do", "it")),                          # only stop words: keep them rather than nothing
    ("!!!", ("!!!",)),                                # no word at all: the stripped text itself
    ("Überprüfe   Eingaben", ("überprüfe", "eingaben")),
])
def test_normalize_words(text: str, words: tuple[str, ...]) -> None:
    assert normalize_words(text) == words


def test_strategy_key_ignores_case_punctuation_and_stop_words() -> None:
    assert strategy_key("Fill the fields, then submit.") == strategy_key("fill fields submit") == "fill fields submit"
    assert strategy_key("submit then fill") != strategy_key("fill then submit")


# -- task types --------------------------------------------------------------------
@pytest.mark.parametrize("task, kind", [
    ("test the login form", "testing"),            # first rule wins over "form"
    ("Validate the checkout", "testing"),
    ("call the users API", "api_testing"),
    ("hit the /health endpoint", "api_testing"),
    ("fill the signup form", "form_testing"),
    ("type into the search input", "form_testing"),
    ("check the database rows", "database_validation"),
    ("run the slow queries", "database_validation"),
    ("write release notes", "general"),
    # whole words: the reference's substring match called these testing and form_testing
    ("summarize the latest information", "general"),
    ("choose a platform format", "general"),
])
def test_infer_task_type(task: str, kind: str) -> None:
    assert infer_task_type(task) == kind


# -- error signatures -----------------------------------------------------------------
@pytest.mark.parametrize("error, sig", [
    ("KeyError: 'user_17'", "KeyError: 'user_<n>'"),
    ("TimeoutError: waited 30000 ms for /app/tests/login.py line 88",
     "TimeoutError: waited <n> ms for <path> line <n>"),
    ("requests.exceptions.ConnectionError: max retries exceeded with url: /v1/users/1234",
     "ConnectionError: max retries exceeded with url: <path>"),
    ("java.lang.NullPointerException: field was null", "NullPointerException: field was null"),
    ("Error: ENOENT: no such file, open 'C:\\Users\\bob\\a.txt'", "Error: enoent: no such file, open '<path>'"),
    ("job 550e8400-e29b-41d4-a716-446655440000 failed at 0xdeadbeef", "job <id> failed at <id>"),
    ("commit 9fceb02d0ae598e95dc970b74767f19372d61af8 is missing", "commit <id> is missing"),
    ("GET https://api.example.com/v1/items?page=2 returned 503", "get <url> returned <n>"),
    ("could not read src/app/main.py", "could not read <path>"),
    ("Traceback (most recent call last):\n  File \"/x/y.py\", line 3, in f\nValueError: bad value 42\n",
     "ValueError: bad value <n>"),
    ("AssertionError", "AssertionError"),
    ("   ", ""),
])
def test_error_signature_masks_what_varies(error: str, sig: str) -> None:
    assert error_signature(error) == sig


def test_same_failure_same_signature_different_failures_differ() -> None:
    a = error_signature("TimeoutError: element #btn-42 not found after 30.5s in /srv/run/1234/page.html")
    b = error_signature("TimeoutError: element #btn-7 not found after 12s in /srv/run/99/page.html")
    assert a == b
    # the reference called these similar: one error text contains the other
    assert error_signature("Timeout") != error_signature("Timeout while parsing the form")
    assert error_signature("ValueError: bad value 1") != error_signature("TypeError: bad value 1")


def test_signature_is_bounded() -> None:
    assert len(error_signature("ValueError: " + "x" * 5000)) == 200


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 1 and estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    assert estimate_tokens("x" * 400) == 100


# -- strategy similarity -------------------------------------------------------------
@pytest.mark.parametrize("a, b, same", [
    ("retry", "retry", True),
    ("Retry!", "retry", True),
    ("retry", "retry with backoff", False),             # [fix] one word needs an exact match
    ("retry with backoff", "retry", False),
    ("retry", "restart", False),
    ("click submit", "click cancel", True),             # 2 words: need min(3, 1) = 1 shared
    ("fill the fields then submit", "Fill fields, submit the form", True),  # 3 vs 4 words: need 2
    ("fill fields submit", "fill form upload", True),   # 3 words each: need min(3, 1) = 1 (the spec's rule)
    ("fill fields submit", "upload form now", False),
    ("open page wait click save", "open page wait type name", True),      # 5 words: need 2, share 3
    ("open page wait click save exit", "open menu scroll click exit", True),  # 6 vs 5: need 3, share 3
    ("open page wait click save exit", "open menu scroll type exit", False),  # share 2 < 3
    ("w1 w2 w3 w4 w5 w6 w7 w8", "w1 w2 w3 x4 x5 x6 x7 x8", True),   # 8 words: need min(3, 4) = 3
    ("w1 w2 x3 x4 x5 x6 x7 x8", "w1 w2 w3 w4 w5 w6 w7 w8", False),
])
def test_word_overlap_rule(a: str, b: str, same: bool) -> None:
    m = WordOverlap()
    assert m.similar(a, b) is same
    assert m.similar(b, a) is same  # symmetric


def test_word_overlap_scores() -> None:
    m = WordOverlap()
    assert m.score("fill fields submit", "fill fields submit") == 1.0
    assert m.score("fill fields submit", "fill form submit") == pytest.approx(2 / 4)
    assert m.relevance("test login form", "login form filled") == pytest.approx(2 / 3)
    assert m.relevance("test", "") == 0.0


class _AxisEmbedder:
    """Deterministic toy embedder: known angles between known texts."""

    VECS = {"a": [1.0, 0.0], "b": [0.8, 0.6], "c": [0.7, 0.71414284], "d": [0.0, 1.0]}

    def embed(self, texts):  # noqa: ANN001 - the Embedder protocol
        return np.array([self.VECS.get(t, [0.5, 0.5]) for t in texts])


def test_embedding_matcher_uses_cosine_threshold() -> None:
    m = EmbeddingMatcher(_AxisEmbedder())
    assert m.similar("a", "b")               # cos 0.8
    assert not m.similar("a", "c")           # cos 0.7
    assert not m.similar("a", "d")
    assert m.score("a", "b") == pytest.approx(0.8)
    assert EmbeddingMatcher(_AxisEmbedder(), threshold=0.65).similar("a", "c")


def test_embedder_is_loaded_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.protocols.verbs import matcher, set_matcher
    from workers.stream.settings import Settings
    from workers.verbs.surface import configure

    mod = types.ModuleType("_ls_test_embedder")
    mod.make = _AxisEmbedder  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "_ls_test_embedder", mod)
    monkeypatch.delenv(ENV_EMBEDDER, raising=False)
    assert isinstance(matcher_from_spec(Settings.from_env().protocols_embedder), WordOverlap)
    monkeypatch.setenv(ENV_EMBEDDER, "_ls_test_embedder:make")
    spec = Settings.from_env().protocols_embedder
    m = matcher_from_spec(spec)
    assert isinstance(m, EmbeddingMatcher) and m.similar("a", "b")
    try:  # the worker's way: configure() from the settings sets the process's matcher
        configure(Settings.from_env().verb_options())
        assert isinstance(matcher(), EmbeddingMatcher)
    finally:
        set_matcher(None)
    for bad in ("nocolon", "_ls_test_embedder:missing", "no_such_module_xyz:f"):
        with pytest.raises(ConfigError, match=ENV_EMBEDDER):
            matcher_from_spec(bad)


@pytest.mark.parametrize("name", ["text", "similarity", "entries", "memory", "retrieval", "verbs"])
def test_doctests(name: str) -> None:
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module(f"workers.protocols.{name}"),
                          optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert res.failed == 0
