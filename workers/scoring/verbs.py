"""Verbs of memory importance scoring (table ``"memory"``, part ``"scoring"``; spec/scoring.md).

- ``score_conversation`` (write, topic ``memory``): the body is a ``memory.context`` event
  ``{session_key, conversation_id, messages: [{role, content, memory_id?}], now_ms?}``. Stores
  the conversation and re-scores its stale memories incrementally; each score is emitted on
  ``memory.scores``.
- ``configure_scoring`` (write, ``commands``): backend and tuning (:class:`ScoringConfig`).
- ``finetune_candidates`` (write, ``commands``): propose responses of a stored conversation
  that depend on its memories on ``learn.finetune-candidates``, each response once. A write,
  because it records what it proposed: a replay then proposes nothing twice either.
- ``memory_scores`` / ``important_memories`` (reads); ``health`` gains ``scoring_backend``,
  ``scoring_memories`` and ``scoring_failed_calls`` of the session.

Time is event time: ``now_ms`` of the body, else the source record's timestamp on the stream,
else 0 (without either, memories are scored once and never go stale), so a replay rebuilds the
same state. With an HTTP backend each memory costs two calls, at most ``max_per_run`` memories are
scored per event and a run stops calling after two failures. In a worker the calls never block
the event loop: the verb runs in passes, its calls are made asynchronously between them, each
bounded by ``timeout_s``, and the pass that counts runs on fixed answers
(:mod:`workers.scoring.prefetch`). A failed call (a timeout too) is reported in the verb's
``failed`` list with its reason, and ``important_memories`` answers it as a refusal (HTTP 422).
The built-in backend, the default, costs milliseconds and is deterministic.
"""
from __future__ import annotations

import logging
from typing import Any

from workers.verbs.fields import MAX_MS, int_in
from workers.errors import VerbError
from workers.scoring.backends import ScoreBackend, build_backend
from workers.scoring.config import BACKENDS, LOGPROBS_MODES, TOKENIZERS, ScoringConfig
from workers.scoring.conversation import ROLES, Message, content_memory_id
from workers.scoring.modes import IMPORTANT_MIN, full_matrix, incremental
from workers.scoring.modes import finetune_candidates as find_candidates
from workers.scoring.part import PART, ScoringState
from workers.scoring.transport import ScoringError
from workers.verbs.registry import VerbContext, health_contributor, params, verb

__all__ = ("PART", "parse_conversation", "event_time")

logger = logging.getLogger(__name__)

# One conversation event: at most this many messages and this much text (UTF-8 bytes), which
# is also what a session keeps in total (state.py), so one event always fits.
_MAX_MESSAGES = 2000
_MAX_CONVERSATION_BYTES = 256 << 10
_MAX_ID = 256
# Messages looked at by finetune_candidates when the body and the config name no count.
_FINETUNE_COUNT = 20


# -- reading bodies --------------------------------------------------------------------------------
def _id(v: Any, field: str) -> str:
    """A required id (``None`` is its absence), or an optional one that was given."""
    if v is None:
        raise VerbError(f"{field} required, a non-empty string of at most {_MAX_ID} characters")
    if not isinstance(v, str) or not v or len(v) > _MAX_ID:
        raise VerbError(f"{field} must be a non-empty string of at most {_MAX_ID} characters")
    if v.isspace():
        raise VerbError(f"{field} is blank (an id needs a character other than whitespace)")
    return v


def parse_conversation(body: dict) -> tuple[str, list[Message]]:
    """(conversation_id, messages) of a ``memory.context`` event, validated (raises VerbError).

    A ``memory`` message without ``memory_id`` gets the hash of its text as id; a system or user
    message with a ``memory_id`` is a memory too; an assistant message cannot be one.
    """
    cid = _id(body.get("conversation_id"), "conversation_id")
    raw = body.get("messages")
    if not isinstance(raw, list):
        raise VerbError("messages required, an array")
    if len(raw) > _MAX_MESSAGES:
        raise VerbError(f"messages holds {len(raw)} items; at most {_MAX_MESSAGES}")
    out, size = [], 0
    seen: dict[str, tuple[int, str]] = {}  # memory id -> (its first message, its text)
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise VerbError(f"messages[{i}] must be an object")
        role, content, mid = m.get("role"), m.get("content"), m.get("memory_id")
        if role not in ROLES:
            raise VerbError(f"messages[{i}].role must be one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise VerbError(f"messages[{i}].content required, a string")
        if mid is not None:
            _id(mid, f"messages[{i}].memory_id")
            if role == "assistant":
                raise VerbError(f"messages[{i}]: an assistant response cannot be a memory")
        elif role == "memory":
            mid = content_memory_id(content)
        if mid is not None:
            first = seen.setdefault(mid, (i, content))
            if first[1] != content:  # the same memory again is fine; another text under its id was merged
                raise VerbError(f"messages[{i}].memory_id {mid!r} names another text than messages[{first[0]}] "
                                f"(one id, one memory)")
        size += len(content.encode())
        out.append(Message(role, content, mid))
    if size > _MAX_CONVERSATION_BYTES:
        raise VerbError(f"messages hold {size} bytes of text; at most {_MAX_CONVERSATION_BYTES}")
    return cid, out


def event_time(ctx: VerbContext, body: dict) -> int:
    """``now_ms`` of the body, else the source record's timestamp, else 0 (never the wall clock)."""
    now = body.get("now_ms")
    if now is not None:
        if isinstance(now, bool) or not isinstance(now, int) or not 0 <= now <= MAX_MS:
            raise VerbError(f"now_ms must be an integer (epoch ms) in [0, {MAX_MS}]")
        return now
    ts = (ctx.source or {}).get("timestamp_ms")
    return ts if isinstance(ts, int) and not isinstance(ts, bool) and ts >= 0 else 0


def _state(ctx: VerbContext) -> ScoringState | None:
    return ctx.state.get(PART, ScoringState) if ctx.state is not None else None


def _stored(ctx: VerbContext, body: dict) -> tuple[ScoringState, str, list[Message]]:
    cid = _id(body.get("conversation_id"), "conversation_id")
    st = _state(ctx)
    msgs = st.messages(cid) if st is not None else None
    if msgs is None:
        raise VerbError(f"unknown conversation_id: {cid} (send it with score_conversation, or publish it to memory.context, first)")
    return st, cid, msgs  # type: ignore[return-value]


def _emit(ctx: VerbContext, role: str, payload: dict) -> None:
    out = {"session_key": ctx.session_key, **payload}
    if ctx.source is not None:
        out["source"] = dict(ctx.source)
    ctx.emit(role, out)


def _count_failures(st: ScoringState, n: int) -> None:
    st.failed_calls += n


def _backend(st: ScoringState) -> ScoreBackend:
    return build_backend(st.config)


def _propose(ctx: VerbContext, st: ScoringState, cid: str, msgs: list[Message], count: int,
             threshold: float) -> dict[str, Any]:
    """Find and emit new fine-tune candidates, recording each key before it is emitted."""
    try:
        found = find_candidates(msgs, _backend(st), conversation_id=cid, count=count, threshold=threshold,
                                proposed=st.proposed)
    except ScoringError as exc:
        logger.warning("fine-tune candidates of %s skipped: %s", cid, exc)
        _count_failures(st, 1)
        return {"candidates": [], "failed": str(exc)}
    for c in found:
        st.propose(c.key)
        _emit(ctx, "finetune", {"conversation_id": cid, **c.to_dict()})
    return {"candidates": [c.to_dict() for c in found]}


# -- verbs -----------------------------------------------------------------------------------------
@verb("score_conversation", table="memory", writes=True, topic="memory")
def score_conversation(ctx: VerbContext, body: dict) -> dict:
    """{conversation_id, messages, now_ms?} -> {conversation_id, messages, memories, scored, skipped,
    failed, deferred, fresh[, candidates]}: stores the conversation, scores its stale memories."""
    cid, msgs = parse_conversation(body)
    now = event_time(ctx, body)
    st = _state(ctx)
    if st is None:
        st = ScoringState()
        ctx.state.set(PART, st)
    st.store_conversation(cid, msgs, now)
    cfg = st.config
    report = incremental(msgs, _backend(st), st, now_ms=now, conversation_id=cid, max_age_ms=cfg.max_age_ms,
                         window=cfg.window, max_per_run=cfg.max_per_run,
                         on_score=lambda rec: _emit(ctx, "scores", rec))
    _count_failures(st, len(report.failed))
    out = {"conversation_id": cid, "messages": len(msgs),
           "memories": len({m.memory_id for m in msgs if m.is_memory}), **report.to_dict()}
    if cfg.finetune_count > 0:
        out.update(_propose(ctx, st, cid, msgs, cfg.finetune_count, cfg.threshold))
    return out


@verb("configure_scoring", table="memory", writes=True, topic="commands", params=params(
    (), backend={"enum": list(BACKENDS), "description": "naming it replaces every backend field (default builtin)"},
    base_url={"type": "string", "description": "score_api / openai: the endpoint, an http(s) URL"},
    model={"type": "string", "minLength": 1, "description": "score_api / openai: the served model"},
    tokenizer={"enum": list(TOKENIZERS), "description": "score_api / openai (required): whose token ids"},
    tokenizer_url={"type": "string", "description": "tokenizer remote: POST /tokenize URL"},
    logprobs_mode={"enum": list(LOGPROBS_MODES), "description": "openai only (default prompt_logprobs)"},
    timeout_s={"type": "number", "exclusiveMinimum": 0, "maximum": 120,
               "description": "bound of one scoring call, seconds (default 10)"},
    max_age_ms={"type": "integer", "minimum": 0, "maximum": 10**13,
                "description": "a memory scored longer ago than this is scored again (default 1 h)"},
    window={"type": "integer", "minimum": 1, "maximum": 10_000,
            "description": "assistant responses after a memory's first appearance that it is judged on (default "
                           "50); a memory with fewer after it waits for them (skipped: partial window), unless it "
                           "is in the conversation's first quarter"},
    threshold={"type": "number", "minimum": 0, "maximum": 1e9,
               "description": "divergence a fine-tune candidate must exceed (default 1e-7)"},
    max_per_run={"type": "integer", "minimum": 1, "maximum": 10_000,
                 "description": "memories scored per event at most (default 32); the rest wait for the next one"},
    finetune_count={"type": "integer", "minimum": 0, "maximum": 100_000,
                    "description": "when > 0, each stored conversation also proposes fine-tune candidates among "
                                   "its last this-many messages (default 0)"}))
def configure_scoring(ctx: VerbContext, body: dict) -> dict:
    """{backend?, base_url?, model?, tokenizer?, tokenizer_url?, logprobs_mode?, timeout_s?, max_age_ms?,
    window?, threshold?, max_per_run?, finetune_count?} -> {config}."""
    st = _state(ctx)
    cfg = (st.config if st is not None else ScoringConfig()).updated(body)
    if st is None:
        st = ScoringState()
        ctx.state.set(PART, st)
    st.config = cfg
    return {"config": cfg.to_dict()}


@verb("finetune_candidates", table="memory", writes=True, topic="commands")
def finetune_candidates(ctx: VerbContext, body: dict) -> dict:
    """{conversation_id, count?, threshold?} -> {candidates: [{key, message_index, divergence, content}]}
    (highest first; responses proposed before are never proposed again)."""
    st, cid, msgs = _stored(ctx, body)
    count = int_in(body, "count", 1, _MAX_MESSAGES) or st.config.finetune_count or _FINETUNE_COUNT
    thr = body.get("threshold", st.config.threshold)
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0 <= thr <= 1e9:
        raise VerbError("threshold must be a number in [0, 1e+09]")
    return _propose(ctx, st, cid, msgs, count, float(thr))


@verb("memory_scores", table="memory", writes=False, params=params(
    (), memory_id={"type": "string", "minLength": 1, "description": "one memory (default: all, by weight)"}))
def memory_scores(ctx: VerbContext, body: dict) -> dict:
    """{memory_id?} -> {memories: [{memory_id, weight, score, previous_weight, scored_ms, n, conversation_id,
    responses}] by weight, highest first; conversations; config; failed_calls}."""
    mid = body.get("memory_id")
    if mid is not None:
        _id(mid, "memory_id")
    st = _state(ctx) or ScoringState()
    recs = [dict(r) for m, r in st.memories.items() if mid is None or m == mid]
    recs.sort(key=lambda r: (-r["weight"], r["memory_id"]))
    return {"memories": recs, "conversations": list(st.conversations), "config": st.config.to_dict(),
            "failed_calls": st.failed_calls}


@verb("important_memories", table="memory", writes=False, params=params(
    ("conversation_id",), conversation_id={"type": "string", "minLength": 1},
    message_index={"type": "integer", "minimum": 0, "description": "only this assistant response"},
    min_score={"type": "number", "minimum": 0, "default": IMPORTANT_MIN}))
def important_memories(ctx: VerbContext, body: dict) -> dict:
    """{conversation_id, message_index?, min_score?} -> the full matrix of a stored conversation:
    {memory_importance (row sums), responses: [{message_index, dependence (column sum), memories:
    [{memory_id, score}] above min_score (0.01), highest first}], failed}; only that response's
    entry with ``message_index``."""
    st, cid, msgs = _stored(ctx, body)
    idx = int_in(body, "message_index", 0, _MAX_MESSAGES)
    if idx is not None and (idx >= len(msgs) or msgs[idx].role != "assistant"):
        raise VerbError(f"message_index {idx} is not an assistant response of {cid}")
    lo = body.get("min_score", IMPORTANT_MIN)
    if isinstance(lo, bool) or not isinstance(lo, (int, float)) or not 0 <= lo <= 1e9:
        raise VerbError("min_score must be a number in [0, 1e+09]")
    try:
        m = full_matrix(msgs, _backend(st))
    except ScoringError as exc:
        raise VerbError(f"scoring failed: {exc}") from None
    dep = m.response_dependence()
    rows = [{"message_index": r, "dependence": dep[r],
             "memories": [{"memory_id": k, "score": v} for k, v in m.important_memories_for(r, lo)]}
            for r in m.responses if idx is None or r == idx]
    return {"conversation_id": cid, "memory_importance": m.memory_importance(), "responses": rows,
            "failed": m.failed}


@health_contributor(table="memory")
def _health(ctx: VerbContext) -> dict:
    st = _state(ctx)
    if st is None:
        return {"scoring_backend": ScoringConfig().backend, "scoring_memories": 0, "scoring_failed_calls": 0}
    return {"scoring_backend": st.config.backend, "scoring_memories": len(st.memories),
            "scoring_failed_calls": st.failed_calls}
