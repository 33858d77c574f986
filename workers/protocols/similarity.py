"""When two strategies are the same, and how relevant a memory is to a task.

The default is word overlap on normalized words (no model, fully deterministic).
An embedder can be plugged in: anything with ``embed(texts) -> (n, d) array``;
strategies are then similar when their cosine is at least 0.75. Workers load one
from ``LEARNSTREAM_PROTOCOLS_EMBEDDER=package.module:factory`` (a zero-argument
callable returning the embedder). It must be deterministic and the same on every
replica, or replays and failovers would learn different heuristics.

>>> m = WordOverlap()
>>> m.similar("fill the fields then submit", "Fill fields, submit the form")
True
>>> m.similar("retry", "retry with backoff")      # one-word strategies need an exact match
False
"""
from __future__ import annotations

import importlib
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from workers.errors import ConfigError
from workers.protocols.text import normalize_words, tokens

__all__ = ("Embedder", "StrategyMatcher", "WordOverlap", "EmbeddingMatcher", "COSINE_THRESHOLD",
           "matcher_from_spec", "ENV_EMBEDDER")

logger = logging.getLogger(__name__)

COSINE_THRESHOLD = 0.75   # the reference library's default for "same strategy" with embeddings
_OVERLAP_CAP = 3          # word overlap >= min(3, floor(|words|/2)): three shared words always suffice
_EMBED_CACHE = 4096       # vectors kept per matcher (strategies repeat; vectors are not state)
ENV_EMBEDDER = "LEARNSTREAM_PROTOCOLS_EMBEDDER"  # read by Settings (protocols_embedder), named in errors


@runtime_checkable
class Embedder(Protocol):
    """Texts to vectors: ``embed(["a", "b"])`` returns a float array of shape (2, d)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class StrategyMatcher(Protocol):
    """Decides strategy sameness (heuristics, anti-patterns) and scores relevance (retrieval)."""

    def similar(self, a: str, b: str) -> bool:
        """True when strategies ``a`` and ``b`` count as the same strategy."""

    def score(self, a: str, b: str) -> float:
        """How alike two strategies are, in [0, 1]: picks the closest of several similar heuristics."""

    def relevance(self, query: str, text: str) -> float:
        """How much ``text`` bears on ``query``, in [0, 1] (retrieval's similarity term)."""


class WordOverlap:
    """Strategy sameness by shared normalized words (the default; no model).

    Two strategies are similar when they share at least ``min(3, floor(n / 2))`` words, ``n`` the
    larger word count (symmetric: the reference used the first argument's count only, so the
    relation depended on argument order). **[fix]** When either side has one word the two must
    be the same word: the reference's threshold was then 0 and every strategy matched.
    """

    def similar(self, a: str, b: str) -> bool:
        wa, wb = set(normalize_words(a)), set(normalize_words(b))
        if not wa or not wb:
            return wa == wb
        if len(wa) == 1 or len(wb) == 1:
            return wa == wb
        need = min(_OVERLAP_CAP, max(len(wa), len(wb)) // 2)
        return len(wa & wb) >= need

    def score(self, a: str, b: str) -> float:
        wa, wb = set(normalize_words(a)), set(normalize_words(b))
        union = wa | wb
        return len(wa & wb) / len(union) if union else 1.0

    def relevance(self, query: str, text: str) -> float:
        # cosine of the two binary word vectors: 1 for the same words, 0 for none shared
        q, t = set(normalize_words(query)), set(normalize_words(text))
        if not q or not t:
            return 0.0
        return len(q & t) / math.sqrt(len(q) * len(t))

    def __repr__(self) -> str:
        return "WordOverlap()"


class EmbeddingMatcher:
    """Strategy sameness by cosine of embeddings (>= ``threshold``, default 0.75).

    Parameters
    ----------
    embedder : Embedder
        Deterministic text embedder, the same on every replica.
    threshold : float, optional
        Cosine at or above which two strategies are the same (default 0.75).
    """

    def __init__(self, embedder: Embedder, threshold: float | None = None) -> None:
        self.embedder = embedder
        self.threshold = threshold

    def _vec(self, text: str) -> np.ndarray:
        cache: OrderedDict[str, np.ndarray] = self.__dict__.setdefault("_cache", OrderedDict())
        v = cache.get(text)
        if v is None:
            arr = np.asarray(self.embedder.embed([text]), dtype=np.float64)
            if arr.ndim != 2 or arr.shape[0] != 1 or not np.all(np.isfinite(arr)):
                raise ValueError(f"embedder returned shape {arr.shape} (or non-finite values); expected (1, d)")
            n = float(np.linalg.norm(arr[0]))
            v = arr[0] / n if n > 0 else arr[0]
            cache[text] = v
            if len(cache) > _EMBED_CACHE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(text)
        return v

    def _cos(self, a: str, b: str) -> float:
        return float(np.dot(self._vec(a), self._vec(b)))

    def similar(self, a: str, b: str) -> bool:
        t = COSINE_THRESHOLD if self.threshold is None else self.threshold
        return self._cos(a, b) >= t

    def score(self, a: str, b: str) -> float:
        return min(1.0, max(0.0, self._cos(a, b)))

    def relevance(self, query: str, text: str) -> float:
        if not tokens(query) or not tokens(text):
            return 0.0
        return min(1.0, max(0.0, self._cos(query, text)))

    def __repr__(self) -> str:
        return f"EmbeddingMatcher({self.embedder!r}, threshold={self.threshold})"


def matcher_from_spec(spec: str) -> StrategyMatcher:
    """The matcher workers use: an :class:`EmbeddingMatcher` over ``spec`` (``module:factory``, from
    ``LEARNSTREAM_PROTOCOLS_EMBEDDER``), else (``""``) :class:`WordOverlap`."""
    spec = spec.strip()
    if not spec:
        return WordOverlap()
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ConfigError(f"{ENV_EMBEDDER}={spec!r} must be 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{ENV_EMBEDDER}={spec!r} cannot be loaded: {exc}") from None
    embedder = factory()
    if not isinstance(embedder, Embedder):
        raise ConfigError(f"{ENV_EMBEDDER}={spec!r}: the factory must return an object with embed(texts)")
    logger.info("protocols: strategy similarity by embeddings from %s", spec)
    return EmbeddingMatcher(embedder)
