"""Tokenizers: text -> token ids, plus the tokens that open and close a chat message.

A scoring backend scores token ids, so it comes with the tokenizer whose ids it
understands. Conversations are encoded message by message (header, content,
footer), which is what makes each response's token range exact.

- :class:`WordTokenizer`: the built-in model's deterministic word tokenizer
  (lower-cased words, numbers and punctuation; a fixed vocabulary from the
  shipped corpus, other words hashed into a fixed range of ids: no state grows).
- :class:`CharTokenizer`: one id per Unicode code point (tests, char-level models).
- :class:`RemoteTokenizer`: a server's own tokenizer through a vLLM-style
  ``POST /tokenize``, so the HTTP backends send the ids the served model knows.
"""
from __future__ import annotations

import abc
import functools
import re
import zlib
from collections.abc import Iterable

from workers.scoring import prefetch
from workers.scoring.prefetch import Deferred
from workers.scoring.transport import ScoringError, post_json

__all__ = ("Tokenizer", "WordTokenizer", "CharTokenizer", "RemoteTokenizer", "words", "BOS", "EOS")

BOS, EOS = "<s>", "</s>"
# Words outside the corpus vocabulary are hashed into this many ids. 2**20 keeps collisions
# between two words of one conversation very unlikely while the id range stays fixed.
_OOV_BUCKETS = 1 << 20
# Words (letters with inner apostrophes), numbers, or any single other visible character.
_WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*|\d+|[^\w\s]")
# Distinct texts remembered by RemoteTokenizer (one HTTP call each otherwise).
_REMOTE_CACHE = 4096


def words(text: str) -> list[str]:
    """The built-in model's word segmentation: case-folded words, numbers and punctuation."""
    return _WORD_RE.findall(text.casefold())


class Tokenizer(abc.ABC):
    """Text to token ids, and the ids that frame one chat message."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""

    def header(self, role: str) -> list[int]:
        """Ids that open a message of ``role`` (default: ``"<role>: "``)."""
        return self.encode(f"{role}: ")

    def footer(self) -> list[int]:
        """Ids that close a message (default: a newline)."""
        return self.encode("\n")


class WordTokenizer(Tokenizer):
    """Deterministic word tokenizer of the built-in model.

    Parameters
    ----------
    vocab
        Known words; ids 0 and 1 are ``<s>`` and ``</s>``, known words follow in the
        given order, and any other word gets ``len(known) + crc32(word) % 2**20``.
        Every message opens with ``<s>`` and closes with ``</s>``.

    Examples
    --------
    >>> t = WordTokenizer(["the", "dog"])
    >>> t.encode("The dog!")[:2], t.id_of("<s>"), t.vocab_size > 2**20
    ([2, 3], 0, True)
    """

    def __init__(self, vocab: Iterable[str] | None = None) -> None:
        self.vocab = tuple(vocab or ())

    @functools.cached_property
    def _ids(self) -> dict[str, int]:
        ids = {BOS: 0, EOS: 1}
        for w in self.vocab:
            ids.setdefault(w, len(ids))
        return ids

    @property
    def known(self) -> int:
        """Number of ids with a word of their own (specials included)."""
        return len(self._ids)

    @property
    def vocab_size(self) -> int:
        """Size of the id space: known words plus the hashed range."""
        return self.known + _OOV_BUCKETS

    def id_of(self, word: str) -> int:
        i = self._ids.get(word)
        return i if i is not None else self.known + zlib.crc32(word.encode()) % _OOV_BUCKETS

    def encode(self, text: str) -> list[int]:
        return [self.id_of(w) for w in words(text)]

    def header(self, role: str) -> list[int]:
        return [self._ids[BOS]]

    def footer(self) -> list[int]:
        return [self._ids[EOS]]


class CharTokenizer(Tokenizer):
    """One id per Unicode code point; a message is ``"<role>: <content>\\n"``.

    >>> CharTokenizer().encode("hi")
    [104, 105]
    """

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


class RemoteTokenizer(Tokenizer):
    """The served model's tokenizer, through ``POST {url}`` with ``{model, prompt, add_special_tokens}``
    answered by ``{"tokens": [ids]}`` (vLLM's ``/tokenize``). Texts are cached (LRU).

    Parameters
    ----------
    url
        Full URL of the tokenize endpoint, e.g. ``http://vllm:8000/tokenize``.
    model
        Model name sent with each request.
    timeout_s
        Per-request timeout in seconds (None: the HTTP client's default).
    """

    def __init__(self, url: str, model: str | None = None, timeout_s: float | None = None) -> None:
        self.url = url
        self.model = model
        self.timeout_s = timeout_s

    @functools.cached_property
    def _cached(self):  # noqa: ANN202 - an lru_cache'd bound function
        return functools.lru_cache(maxsize=_REMOTE_CACHE)(self._fetch)

    def _fetch(self, text: str) -> tuple[int, ...]:
        body = {"prompt": text, "add_special_tokens": False}
        if self.model is not None:
            body["model"] = self.model
        out = post_json(self.url, body, timeout_s=self.timeout_s, uses_tokens=False)
        tokens = out.get("tokens") if isinstance(out, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31
                                                   for t in tokens):  # token ids: never negative
            raise ScoringError(f"{self.url}: expected {{\"tokens\": [int, ...]}} of token ids in [0, 2^31), "
                               f"got {str(out)[:200]}")
        return tuple(tokens)

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        try:
            return list(self._cached(text))
        except Deferred:  # a pass that only notes calls (workers.scoring.prefetch): it is thrown away
            book = prefetch.current()
            if book is not None:
                book.taint()  # the scoring calls built on this placeholder would be bogus: not noted
            return []

