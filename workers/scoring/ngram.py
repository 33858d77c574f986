"""The built-in language model: interpolated Kneser-Ney trigrams plus a cache over the context.

It is a real (small) language model, so scoring runs offline and replays
identically: the same corpus and the same tokens give the same log-probabilities
in every process. The cache component (Kuhn & De Mori, 1990) mixes in the
frequency of each word in the context read so far, so a word shown in a memory
becomes more likely in the responses after it: exactly the dependence that
memory importance scoring measures.

Examples
--------
>>> tok, lm = builtin_model()
>>> ctx = tok.header("memory") + tok.encode("Our dog is called Biscuit.") + tok.footer()
>>> reply = tok.header("assistant") + tok.encode("Biscuit loves walks.")
>>> with_mem = lm.score(ctx + reply, [(len(ctx) + 1, len(ctx) + len(reply))])[0]
>>> without = lm.score(reply, [(1, len(reply))])[0]
>>> with_mem > without
True
"""
from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from importlib import resources

from workers.scoring.tokenizer import BOS, EOS, WordTokenizer, words

__all__ = ("KneserNeyLM", "CacheLM", "builtin_model", "load_corpus")

# Absolute discount when count-of-counts cannot estimate one (Kneser & Ney's usual value).
_DEFAULT_DISCOUNT = 0.75
# Estimated discounts are clamped here: tiny corpora give extreme count-of-counts ratios.
_DISCOUNT_RANGE = (0.1, 0.95)
# Weight of the context cache. Cache language models use 0.1-0.2 (Kuhn & De Mori 1990;
# Jelinek et al. 1991); 0.1 keeps the trained model in charge of ordinary words.
_CACHE_WEIGHT = 0.1


def load_corpus() -> list[str]:
    """The shipped training utterances (``workers/scoring/corpus.txt``), one per line."""
    text = resources.files("workers.scoring").joinpath("corpus.txt").read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _discount(counts: Iterable[int]) -> float:
    """Ney's estimate n1 / (n1 + 2 n2) from how many n-grams occur once and twice."""
    cc = Counter(counts)
    n1, n2 = cc.get(1, 0), cc.get(2, 0)
    if n1 == 0 or n2 == 0:
        return _DEFAULT_DISCOUNT
    lo, hi = _DISCOUNT_RANGE
    return min(hi, max(lo, n1 / (n1 + 2 * n2)))


class KneserNeyLM:
    """Interpolated Kneser-Ney trigram model over token ids.

    ``P(w | u v)`` discounts the trigram count and interpolates with the bigram
    level, which uses continuation counts (how many distinct words precede
    ``v w``), down to a continuation unigram interpolated with the uniform
    distribution over ``vocab_size`` ids, so every id has a probability and each
    conditional distribution sums to one.

    Parameters
    ----------
    vocab_size
        Size of the id space (ids ``0 .. vocab_size - 1``).
    """

    def __init__(self, vocab_size: int | None = None) -> None:
        self.vocab_size = vocab_size

    def fit(self, stream: Sequence[int]) -> KneserNeyLM:
        """Count n-grams of one token stream (utterances joined by their ``<s>``/``</s>``)."""
        s = list(stream)
        if len(s) < 3:
            raise ValueError("need at least 3 tokens to fit a trigram model")
        self.V = self.vocab_size or max(s) + 1
        self.c3 = Counter(zip(s, s[1:], s[2:]))
        self.ctx3: Counter = Counter()
        self.types3: Counter = Counter()
        for (u, v, _), c in self.c3.items():
            self.ctx3[(u, v)] += c
            self.types3[(u, v)] += 1
        self.cont2 = Counter((v, w) for (_, v, w) in self.c3)  # distinct left neighbours of "v w"
        self.ctx2: Counter = Counter()
        self.types2: Counter = Counter()
        for (v, _), c in self.cont2.items():
            self.ctx2[v] += c
            self.types2[v] += 1
        self.cont1 = Counter(w for (_, w) in set(zip(s, s[1:])))  # distinct left neighbours of w
        self.total1 = sum(self.cont1.values())
        self.d3 = _discount(self.c3.values())
        self.d2 = _discount(self.cont2.values())
        self.d1 = _discount(self.cont1.values())
        # the unigram level's mass for unseen ids, spread uniformly
        self._floor = self.d1 * len(self.cont1) / self.total1 / self.V
        return self

    def prob(self, w: int, v: int | None = None, u: int | None = None) -> float:
        """``P(w | u v)``; ``v``/``u`` None at the start of a stream (lower order only)."""
        p = max(self.cont1.get(w, 0) - self.d1, 0.0) / self.total1 + self._floor
        if v is None:
            return p
        c = self.ctx2.get(v)
        if c:
            p = (max(self.cont2.get((v, w), 0) - self.d2, 0.0) + self.d2 * self.types2[v] * p) / c
        if u is None:
            return p
        c = self.ctx3.get((u, v))
        if c:
            p = (max(self.c3.get((u, v, w), 0) - self.d3, 0.0) + self.d3 * self.types3[(u, v)] * p) / c
        return p


class CacheLM:
    """A trained model mixed with a unigram cache of the context read so far.

    ``P(w_i) = (1 - λ) P_KN(w_i | w_{i-2} w_{i-1}) + λ count(w_i in w_<i) / |w_<i|``
    (the cache part only once the context holds a word; ``special`` ids are left out of it).

    Parameters
    ----------
    base
        The fitted :class:`KneserNeyLM`.
    cache_weight
        λ, default 0.1.
    special
        Ids never counted into the cache (message delimiters).
    """

    def __init__(self, base: KneserNeyLM, cache_weight: float | None = None,
                 special: Iterable[int] | None = None) -> None:
        self.base = base
        self.cache_weight = cache_weight
        self.special = special

    @functools.cached_property
    def _special(self) -> frozenset[int]:
        return frozenset(self.special or ())

    def token_logprobs(self, tokens: Sequence[int], positions: Iterable[int] | None = None) -> dict[int, float]:
        """Natural-log probability of ``tokens[i]`` given ``tokens[:i]`` for each wanted position
        (all positions when ``positions`` is None)."""
        n = len(tokens)
        want = set(range(n)) if positions is None else set(positions)
        if want and not (0 <= min(want) and max(want) < n):
            raise ValueError(f"positions must lie in [0, {n})")
        for t in tokens:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.base.V:
                raise ValueError(f"token id {t!r} outside [0, {self.base.V})")
        lam = _CACHE_WEIGHT if self.cache_weight is None else self.cache_weight
        special, prob = self._special, self.base.prob
        cache: Counter = Counter()
        seen = 0
        out: dict[int, float] = {}
        last = max(want) if want else -1
        for i in range(last + 1):
            w = tokens[i]
            if i in want:
                p = prob(w, tokens[i - 1] if i >= 1 else None, tokens[i - 2] if i >= 2 else None)
                if seen:
                    p = (1.0 - lam) * p + lam * cache[w] / seen
                out[i] = math.log(p)
            if w not in special:
                cache[w] += 1
                seen += 1
        return out

    def score(self, tokens: Sequence[int], ranges: Sequence[tuple[int, int]]) -> list[float]:
        """Total log-probability of the tokens in each ``[start, end)`` range."""
        lp = self.token_logprobs(tokens, {i for s, e in ranges for i in range(s, e)})
        return [math.fsum(lp[i] for i in range(s, e)) for s, e in ranges]


@functools.lru_cache(maxsize=1)
def builtin_model() -> tuple[WordTokenizer, CacheLM]:
    """The built-in tokenizer and model, trained on the shipped corpus (built once per process)."""
    corpus = load_corpus()
    tok = WordTokenizer(sorted({w for line in corpus for w in words(line)}))
    bos, eos = tok.id_of(BOS), tok.id_of(EOS)
    stream: list[int] = []
    for line in corpus:
        stream += [bos, *tok.encode(line), eos]
    lm = CacheLM(KneserNeyLM(vocab_size=tok.vocab_size).fit(stream), special=(bos, eos))
    return tok, lm
