"""Scoring backends: ``score(tokens, ranges) -> [total log-probability per range]``.

- :class:`BuiltinBackend`: the built-in n-gram model (offline, deterministic; the default).
- :class:`ScoreAPIBackend`: the ``/v1/score`` contract, ``POST {base_url}/score`` with
  ``{"model", "prompt": [ids], "score_ranges": [[start, end], ...], "logprobs": 1}`` answered by
  ``{"scores": [{"total_logprob": float}, ...]}``.
- :class:`OpenAICompletionsBackend`: an OpenAI-compatible ``POST {base_url}/completions`` that
  returns prompt log-probabilities (vLLM ``prompt_logprobs``, or ``echo`` + ``logprobs``); the
  prompt tokens inside each range are summed here.

Every backend goes through :meth:`ScoreBackend.score`, which validates ranges and answers
empty ones locally (0.0) without sending them; a call that sends nothing is never made. Any
failure of a call surfaces as :class:`ScoringError` with a message naming the endpoint; the
scoring modes log and skip it (never fatal).

Calls never block a worker's event loop: in a worker, verbs run in passes
(:mod:`workers.scoring.prefetch`); a call whose answer is not known yet is noted and answered with
placeholder scores, the worker makes the noted calls asynchronously (each bounded by
``timeout_s``) and runs the verbs again on the answers. Outside a worker (in-process sessions,
offline jobs) a call is made at once, blocking, bounded the same way.
"""
from __future__ import annotations

import abc
import functools
import math
from collections.abc import Sequence
from typing import Any

from workers.scoring import endpoints
from workers.scoring.config import ScoringConfig
from workers.scoring.ngram import CacheLM, builtin_model
from workers.scoring.prefetch import Deferred
from workers.scoring.tokenizer import CharTokenizer, RemoteTokenizer, Tokenizer
from workers.scoring.transport import ERROR_QUOTE, ScoringError, post_json
from workers.verbs.fields import to_float

__all__ = ("ScoringError", "ScoreBackend", "BuiltinBackend", "ScoreAPIBackend", "OpenAICompletionsBackend",
           "build_backend", "post_json")


# A log-probability is at most 0 (a probability is at most 1; a server's rounding may show a hair above)
# and, in any model's float arithmetic, far above -1e12. An outside trial's endpoint answering 1e300
# gave a memory a weight of 2e300 that no later score could lower, and 1.7e308 overflowed the difference
# into a null score on memory.scores; positive values gave silent zeros.
_LOGPROB_MAX = 1e-3
_LOGPROB_MIN = -1e12


def _logprob(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(to_float(x)):
        raise ScoringError(f"{what} must be a finite number, got {x!r}")
    if not _LOGPROB_MIN <= x <= _LOGPROB_MAX:
        raise ScoringError(f"{what} must be a log-probability, in [{_LOGPROB_MIN:g}, 0], got {x!r}")
    return float(x)


class ScoreBackend(abc.ABC):
    """Total log-probability of token ranges of one prompt.

    Subclasses implement :meth:`_score` for non-empty, validated ranges and expose the
    :attr:`tokenizer` whose ids they understand.
    """

    name = "backend"

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Tokenizer:
        """The tokenizer whose ids this backend scores."""

    @abc.abstractmethod
    def _score(self, tokens: list[int], ranges: list[tuple[int, int]]) -> list[float]:
        """One call: the total log-probability of each (non-empty) range."""

    def score(self, tokens: Sequence[int], ranges: Sequence[Sequence[int]]) -> list[float]:
        """Total natural-log probability of ``tokens[start:end]`` given everything before it, per range.

        Empty ranges score 0.0 locally and are never sent; when every range is empty no call is
        made. Raises :class:`ScoringError` if the call fails, ValueError for an invalid range.
        """
        n = len(tokens)
        rs: list[tuple[int, int]] = []
        for r in ranges:
            s, e = int(r[0]), int(r[1])
            if not 0 <= s <= e <= n:
                raise ValueError(f"range [{s}, {e}) outside the {n}-token prompt")
            rs.append((s, e))
        live = [i for i, (s, e) in enumerate(rs) if e > s]
        out = [0.0] * len(rs)
        if not live:
            return out
        try:
            got = self._score(list(tokens), [rs[i] for i in live])
        except Deferred:  # a pass that only notes calls (workers.scoring.prefetch): it is thrown away
            return out
        except ScoringError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a call is a failed call
            raise ScoringError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if len(got) != len(live):
            raise ScoringError(f"{self.name}: {len(got)} scores for {len(live)} ranges")
        for i, v in zip(live, got, strict=True):
            out[i] = _logprob(v, f"{self.name}: total_logprob")
        return out


class BuiltinBackend(ScoreBackend):
    """The built-in model (:func:`workers.scoring.ngram.builtin_model`): offline and deterministic.

    Parameters
    ----------
    model
        A ``(WordTokenizer, CacheLM)`` pair; None for the shipped one.

    Examples
    --------
    >>> b = BuiltinBackend()
    >>> ids = b.tokenizer.encode("about five kilometres")
    >>> b.score(ids, [(1, 3), (2, 2)])[1]
    0.0
    """

    name = "builtin"

    def __init__(self, model: tuple[Tokenizer, CacheLM] | None = None) -> None:
        self.model = model

    @functools.cached_property
    def _model(self) -> tuple[Tokenizer, CacheLM]:
        return self.model or builtin_model()

    @property
    def tokenizer(self) -> Tokenizer:
        return self._model[0]

    def _score(self, tokens: list[int], ranges: list[tuple[int, int]]) -> list[float]:
        return self._model[1].score(tokens, ranges)


class _HTTPBackend(ScoreBackend):
    def __init__(self, base_url: str, model: str | None = None, tokenizer: Tokenizer | None = None,
                 timeout_s: float | None = None, api_key: str | None = None) -> None:
        self.base_url = base_url
        self.model = model
        self.tokenizer_ = tokenizer
        self.timeout_s = timeout_s
        self.api_key = api_key

    @property
    def tokenizer(self) -> Tokenizer:
        if self.tokenizer_ is None:
            raise ScoringError(f"{self.name}: no tokenizer configured")
        return self.tokenizer_

    def _post(self, path: str, body: dict) -> Any:
        url = self.base_url.rstrip("/") + path
        # the key goes to allowlisted endpoints only (post_json refuses any other URL as well)
        key = (self.api_key or endpoints.api_key(url)) if endpoints.permits(url) else None
        headers = {"Authorization": f"Bearer {key}"} if key else None
        return post_json(url, body, timeout_s=self.timeout_s, headers=headers)


class ScoreAPIBackend(_HTTPBackend):
    """Client of the ``/v1/score`` contract (``base_url`` ends in ``/v1``).

    Parameters
    ----------
    base_url
        e.g. ``http://scorer:8000/v1``; requests go to ``{base_url}/score``.
    model
        Model name sent with each request.
    tokenizer
        The tokenizer of the served model (ids are sent, not text).
    timeout_s
        Per-call bound in seconds (default 10).
    api_key
        Optional bearer token.
    """

    name = "score_api"

    def _score(self, tokens: list[int], ranges: list[tuple[int, int]]) -> list[float]:
        out = self._post("/score", {"model": self.model, "prompt": tokens,
                                    "score_ranges": [list(r) for r in ranges], "logprobs": 1})
        scores = out.get("scores") if isinstance(out, dict) else None
        if not isinstance(scores, list):
            raise ScoringError(f"{self.name}: expected {{\"scores\": [...]}}, got {str(out)[:ERROR_QUOTE]}")
        if len(scores) != len(ranges):
            raise ScoringError(f"{self.name}: {len(scores)} scores for {len(ranges)} ranges")
        return [_logprob(s.get("total_logprob") if isinstance(s, dict) else None, f"{self.name}: scores[{i}]."
                        "total_logprob") for i, s in enumerate(scores)]


class OpenAICompletionsBackend(_HTTPBackend):
    """An OpenAI-compatible completions server that returns prompt log-probabilities.

    ``mode="prompt_logprobs"`` (vLLM, default) sends ``prompt_logprobs: 1`` and reads
    ``choices[0].prompt_logprobs`` (one ``{token_id: {logprob}}`` per prompt token);
    ``mode="echo"`` sends ``echo: true, logprobs: 1`` and reads
    ``choices[0].logprobs.token_logprobs``. Either answer format is understood. The prompt
    tokens inside each range are summed here; a token the server gives no log-probability
    (the first one) may not sit inside a range.

    Parameters
    ----------
    base_url
        e.g. ``http://vllm:8000/v1``; requests go to ``{base_url}/completions``.
    model, tokenizer, timeout_s, api_key
        As for :class:`ScoreAPIBackend`.
    mode
        ``"prompt_logprobs"`` or ``"echo"``.
    max_tokens
        Tokens to generate (vLLM requires at least 1; they are ignored).
    """

    name = "openai"

    def __init__(self, base_url: str, model: str | None = None, tokenizer: Tokenizer | None = None,
                 timeout_s: float | None = None, api_key: str | None = None, mode: str | None = None,
                 max_tokens: int | None = None) -> None:
        super().__init__(base_url, model, tokenizer, timeout_s, api_key)
        self.mode = mode
        self.max_tokens = max_tokens

    def _score(self, tokens: list[int], ranges: list[tuple[int, int]]) -> list[float]:
        body: dict[str, Any] = {"model": self.model, "prompt": tokens, "temperature": 0,
                                "max_tokens": 1 if self.max_tokens is None else self.max_tokens}
        if (self.mode or "prompt_logprobs") == "echo":
            body.update(echo=True, logprobs=1)
        else:
            body["prompt_logprobs"] = 1
        out = self._post("/completions", body)
        lps = self._token_logprobs(out, tokens)
        sums = []
        for s, e in ranges:
            missing = [i for i in range(s, e) if lps[i] is None]
            if missing:
                raise ScoringError(f"{self.name}: no log-probability for prompt token {missing[0]}")
            sums.append(math.fsum(lps[s:e]))  # type: ignore[arg-type]
        return sums

    def _token_logprobs(self, out: Any, tokens: list[int]) -> list[float | None]:
        try:
            choice = out["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise ScoringError(f"{self.name}: no choices in {str(out)[:ERROR_QUOTE]}") from None
        n = len(tokens)
        plp = choice.get("prompt_logprobs") if isinstance(choice, dict) else None
        if isinstance(plp, list):
            if len(plp) < n:
                raise ScoringError(f"{self.name}: {len(plp)} prompt_logprobs for a {n}-token prompt")
            res: list[float | None] = []
            for i, entry in enumerate(plp[:n]):
                if entry is None:
                    res.append(None)
                    continue
                got = entry.get(str(tokens[i])) if isinstance(entry, dict) else None
                if isinstance(got, dict):
                    got = got.get("logprob")
                res.append(_logprob(got, f"{self.name}: prompt_logprobs[{i}][{tokens[i]}]"))
            return res
        tlp = (choice.get("logprobs") or {}).get("token_logprobs") if isinstance(choice, dict) else None
        if isinstance(tlp, list):
            if len(tlp) < n:
                raise ScoringError(f"{self.name}: {len(tlp)} echoed token_logprobs for a {n}-token prompt; "
                                   "does the server support echo?")
            return [None if x is None else _logprob(x, f"{self.name}: token_logprobs[{i}]")
                    for i, x in enumerate(tlp[:n])]
        raise ScoringError(f"{self.name}: the answer has neither choices[0].prompt_logprobs nor "
                           "choices[0].logprobs.token_logprobs; the server must return prompt log-probabilities")


def _tokenizer(config: ScoringConfig) -> Tokenizer | None:
    kind = config.tokenizer
    if kind == "builtin":
        return builtin_model()[0]
    if kind == "char":
        return CharTokenizer()
    if kind == "remote":
        return RemoteTokenizer(config.tokenizer_url, config.model, config.timeout_s)
    return None


@functools.lru_cache(maxsize=64)
def build_backend(config: ScoringConfig) -> ScoreBackend:
    """The backend a (validated) config describes; one instance per distinct config and process."""
    if config.backend == "builtin":
        return BuiltinBackend()
    # the API key is the allowlist's (workers.scoring.endpoints.api_key), looked up on every call
    if config.backend == "score_api":
        return ScoreAPIBackend(config.base_url, config.model, _tokenizer(config), config.timeout_s)
    if config.backend == "openai":
        return OpenAICompletionsBackend(config.base_url, config.model, _tokenizer(config), config.timeout_s,
                                        mode=config.logprobs_mode)
    raise ValueError(f"unknown scoring backend {config.backend!r}")
