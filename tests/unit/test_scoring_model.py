"""The built-in language model: a proper distribution, deterministic across processes, and a cache
that makes a memory's words more likely in the responses after it."""
from __future__ import annotations

import doctest
import importlib
import math
import os
import subprocess
import sys

import pytest

from workers.scoring.backends import BuiltinBackend
from workers.scoring.conversation import Message
from workers.scoring.modes import full_matrix, single_memory
from workers.scoring.ngram import CacheLM, KneserNeyLM, builtin_model, load_corpus
from workers.scoring.tokenizer import BOS, EOS, WordTokenizer, words

TOK, LM = builtin_model()
DOG = "Our dog is called Biscuit and he loves the park near the river."
REPLY = "Biscuit will love a long walk along the river."


def conv(with_memory: bool) -> list[Message]:
    head = [Message("memory", DOG, "dog")] if with_memory else []
    return head + [Message("user", "What should we do this weekend?"), Message("assistant", REPLY)]


def reply_logprob(messages: list[Message]) -> float:
    from workers.scoring.conversation import EncodedConversation

    enc = EncodedConversation(messages, TOK)
    tokens, spans = enc.render()
    return BuiltinBackend().score(tokens, [spans[len(messages) - 1]])[0]


def test_tokenizer_is_deterministic_case_folded_and_open_vocabulary() -> None:
    assert words("Hello, World! It's 42.") == ["hello", ",", "world", "!", "it's", "42", "."]
    assert TOK.encode("The Park") == TOK.encode("the park") == [TOK.id_of("the"), TOK.id_of("park")]
    oov = TOK.id_of("zyzzogeton")
    assert TOK.known <= oov < TOK.vocab_size and oov == WordTokenizer(TOK.vocab).id_of("zyzzogeton")
    assert TOK.header("assistant") == [TOK.id_of(BOS)] and TOK.footer() == [TOK.id_of(EOS)]


def test_corpus_loads_without_comments() -> None:
    lines = load_corpus()
    assert len(lines) > 200 and not any(ln.startswith("#") for ln in lines)


@pytest.mark.parametrize("history", [(), ("the",), ("the", "park"), ("zzz", "qqq"), ("walk", "in")])
def test_kneser_ney_is_a_probability_distribution(history: tuple[str, ...]) -> None:
    b = LM.base
    ids = [TOK.id_of(w) for w in history]
    v = ids[-1] if ids else None
    u = ids[-2] if len(ids) > 1 else None
    seen = sum(b.prob(w, v, u) for w in range(TOK.known))
    unseen = (TOK.vocab_size - TOK.known) * b.prob(TOK.known + 7, v, u)  # every hashed id alike
    assert seen + unseen == pytest.approx(1.0, abs=1e-9)


def test_the_cache_raises_words_of_the_context() -> None:
    assert reply_logprob(conv(True)) > reply_logprob(conv(False)) + 1.0
    d = single_memory(conv(True), "dog", BuiltinBackend())
    assert d == pytest.approx(reply_logprob(conv(True)) - reply_logprob(conv(False)))


def test_a_memory_that_the_response_does_not_use_scores_zero() -> None:
    messages = [Message("memory", "Quarterly tax filing deadline moved", "tax"),
                Message("user", "What should we do this weekend?"), Message("assistant", REPLY)]
    assert single_memory(messages, "tax", BuiltinBackend()) == 0.0  # no shared word: it only dilutes the cache


def test_the_response_that_uses_the_memory_depends_on_it_most() -> None:
    messages = conv(True) + [Message("user", "And the weather?"),
                             Message("assistant", "Tomorrow will be sunny in the morning.")]
    m = full_matrix(messages, BuiltinBackend())
    dep = m.response_dependence()
    assert dep[2] > 1.0 and dep[2] > 10 * dep[4]


def test_builtin_scores_are_identical_across_fresh_builds() -> None:
    tokens = TOK.header("memory") + TOK.encode(DOG) + TOK.footer() + TOK.header("assistant") + TOK.encode(REPLY)
    again = CacheLM(KneserNeyLM(vocab_size=TOK.vocab_size).fit(LM_stream()), special=(0, 1))
    ranges = [(1, 10), (16, len(tokens))]
    assert again.score(tokens, ranges) == LM.score(tokens, ranges)
    assert LM.score(tokens, ranges) == LM.score(tokens, ranges)


def LM_stream() -> list[int]:  # noqa: N802 - reads like the model it rebuilds
    out: list[int] = []
    for line in load_corpus():
        out += [0, *TOK.encode(line), 1]
    return out


def test_builtin_scores_are_identical_in_another_process_with_another_hash_seed() -> None:
    code = ("from workers.scoring.modes import full_matrix; from workers.scoring.backends import BuiltinBackend;"
            "from tests.unit.test_scoring_model import conv;"
            "print(repr(full_matrix(conv(True), BuiltinBackend()).values.tolist()))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.stdout.strip() == repr(full_matrix(conv(True), BuiltinBackend()).values.tolist())


def test_token_logprobs_are_log_probabilities() -> None:
    tokens = TOK.encode(DOG)
    lp = LM.token_logprobs(tokens)
    assert set(lp) == set(range(len(tokens))) and all(v < 0 and math.isfinite(v) for v in lp.values())
    with pytest.raises(ValueError, match="positions"):
        LM.token_logprobs(tokens, [len(tokens)])


@pytest.mark.parametrize("name", ["tokenizer", "ngram", "backends", "conversation", "modes"])
def test_doctests(name: str) -> None:
    mod = importlib.import_module(f"workers.scoring.{name}")
    res = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert res.failed == 0 and res.attempted > 0
