"""A session's scoring settings (``configure_scoring``), validated with the verbs' exact errors."""
from __future__ import annotations

import urllib.parse
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from workers.verbs.fields import int_in, number_in
from workers.errors import VerbError
from workers.scoring.endpoints import check_url

__all__ = ("ScoringConfig", "BACKENDS", "TOKENIZERS", "LOGPROBS_MODES")

BACKENDS = ("builtin", "score_api", "openai")
TOKENIZERS = ("builtin", "char", "remote")
LOGPROBS_MODES = ("prompt_logprobs", "echo")
# Which memories are stale: the spec's default, one hour.
_MAX_AGE_MS = 3_600_000
# Assistant responses after a memory's first appearance that make up its window (spec).
_WINDOW = 50
# Fine-tune candidates need a divergence above this (spec): anything measurably positive.
_THRESHOLD = 1e-7
# Memories scored per event at most. With the built-in model a score costs milliseconds; with an
# HTTP backend each costs two calls (made off the event loop), so the cap bounds how long one event
# holds up its batch. Memories left over are the oldest next time, so nothing starves.
_MAX_PER_RUN = 32
_TIMEOUT_S = 10.0
# Fields that describe the backend: given together, or kept together.
_BACKEND_FIELDS = ("backend", "base_url", "model", "tokenizer", "tokenizer_url", "logprobs_mode")


@dataclass(frozen=True)
class ScoringConfig:
    """How one session scores its memories.

    Attributes
    ----------
    backend
        ``"builtin"`` (default), ``"score_api"`` (the ``/v1/score`` contract) or ``"openai"``.
    base_url, model
        The HTTP backends' endpoint (e.g. ``http://scorer:8000/v1``) and model name.
    tokenizer
        Token ids the HTTP backends send: ``"builtin"``, ``"char"`` (code points) or
        ``"remote"`` (``POST tokenizer_url``, vLLM ``/tokenize``). Required for them.
    logprobs_mode
        ``"prompt_logprobs"`` (vLLM, default) or ``"echo"`` for ``openai``.
    timeout_s
        Bound of one HTTP call (default 10 s).
    max_age_ms
        A memory whose last score is older than this is re-scored (default 1 h).
    window
        Assistant responses after a memory's first appearance that it is judged on (default 50).
    threshold
        Divergence a fine-tune candidate must exceed (default 1e-7).
    max_per_run
        Memories scored per event at most (default 32); the rest wait for the next event.
    finetune_count
        When > 0, each stored conversation also proposes fine-tune candidates among its last
        ``finetune_count`` messages (default 0: only on ``finetune_candidates``).
    """

    backend: str = "builtin"
    base_url: str | None = None
    model: str | None = None
    tokenizer: str | None = None
    tokenizer_url: str | None = None
    logprobs_mode: str | None = None
    timeout_s: float = _TIMEOUT_S
    max_age_ms: int = _MAX_AGE_MS
    window: int = _WINDOW
    threshold: float = _THRESHOLD
    max_per_run: int = _MAX_PER_RUN
    finetune_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoringConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def updated(self, body: dict[str, Any]) -> ScoringConfig:
        """This config with the fields of a ``configure_scoring`` body (validated; raises VerbError).

        Naming ``backend`` replaces every backend field (unnamed ones reset); tuning fields
        (``timeout_s``, ``max_age_ms``, ``window``, ``threshold``, ``max_per_run``,
        ``finetune_count``) change only when given.
        """
        base = self
        if "backend" in body:
            base = replace(ScoringConfig(), **{k: v for k, v in asdict(self).items() if k not in _BACKEND_FIELDS})
        elif any(k in body for k in _BACKEND_FIELDS):
            raise VerbError("backend required when changing base_url, model, tokenizer, tokenizer_url or "
                            "logprobs_mode")
        kw: dict[str, Any] = {}
        if "backend" in body:
            kind = body["backend"]
            if kind not in BACKENDS:
                raise VerbError(f"backend must be one of {', '.join(BACKENDS)}")
            kw["backend"] = kind
            if kind == "builtin":
                extra = [k for k in _BACKEND_FIELDS[1:] if body.get(k) is not None]
                if extra:
                    raise VerbError(f"{extra[0]} does not apply to backend builtin")
            else:
                kw["base_url"] = _url(body, "base_url")
                model = body.get("model")
                if not isinstance(model, str) or not model:
                    raise VerbError("model required, a non-empty string")
                kw["model"] = model
                tok = body.get("tokenizer")
                if tok not in TOKENIZERS:
                    raise VerbError(f"tokenizer required for backend {kind}: one of {', '.join(TOKENIZERS)} "
                                    "(the ids must be the served model's)")
                kw["tokenizer"] = tok
                if tok == "remote":
                    kw["tokenizer_url"] = _url(body, "tokenizer_url")
                elif body.get("tokenizer_url") is not None:
                    raise VerbError("tokenizer_url applies to tokenizer remote only")
                mode = body.get("logprobs_mode")
                if mode is not None:
                    if kind != "openai":
                        raise VerbError("logprobs_mode applies to backend openai only")
                    if mode not in LOGPROBS_MODES:
                        raise VerbError(f"logprobs_mode must be one of {', '.join(LOGPROBS_MODES)}")
                    kw["logprobs_mode"] = mode
                for field in ("base_url", "tokenizer_url"):  # last: the other errors come first
                    if field in kw:
                        check_url(kw[field], field)
        kw.update(_nums(body))
        return replace(base, **kw)


def _url(body: dict, field: str) -> str:
    v = body.get(field)
    if not isinstance(v, str) or not v:
        raise VerbError(f"{field} required, an http(s) URL")
    u = urllib.parse.urlparse(v)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise VerbError(f"{field} must be an http(s) URL, got {v!r}")
    return v


def _nums(body: dict) -> dict[str, Any]:
    got = {
        "timeout_s": number_in(body, "timeout_s", 0, 120, open_lo=True),
        "max_age_ms": int_in(body, "max_age_ms", 0, 10**13),
        "window": int_in(body, "window", 1, 10_000),
        "threshold": number_in(body, "threshold", 0, 1e9),
        "max_per_run": int_in(body, "max_per_run", 1, 10_000),
        "finetune_count": int_in(body, "finetune_count", 0, 100_000),
    }
    return {k: v for k, v in got.items() if v is not None}
