"""The scoring modes of spec/scoring.md over any :class:`ScoreBackend`.

A memory's importance for a response is the drop in the response's log-probability when the
memory is left out of the context: ``divergence = max(0, baseline - without)``.

- :func:`full_matrix`: memories x responses with N+1 calls.
- :func:`single_memory`: one memory over the window of responses after it, 2 calls.
- :func:`incremental`: re-score stale memories, oldest first, persisting each score at once.
- :func:`finetune_candidates`: responses that depend on memories at all, highest first.

Examples
--------
>>> from workers.scoring.backends import BuiltinBackend
>>> conv = [Message("memory", "Our dog is called Biscuit.", "m1"), Message("user", "Any name ideas?"),
...         Message("assistant", "Biscuit is a lovely name.")]
>>> m = full_matrix(conv, BuiltinBackend())
>>> [mid for mid, _ in m.important_memories_for(2)]
['m1']
>>> single_memory(conv, "m1", BuiltinBackend()) == m.memory_importance()["m1"]
True
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from workers.scoring.backends import ScoreBackend
from workers.scoring.conversation import EncodedConversation, Message
from workers.scoring.transport import ScoringError

__all__ = ("ScoreMatrix", "Candidate", "IncrementalReport", "Ledger", "divergence", "full_matrix",
           "single_memory", "incremental", "finetune_candidates", "candidate_key", "IMPORTANT_MIN",
           "WINDOW", "FINETUNE_THRESHOLD")

logger = logging.getLogger(__name__)

IMPORTANT_MIN = 0.01        # a memory matters for a response above this divergence (spec)
WINDOW = 50                 # responses after a memory's first appearance (spec)
FINETUNE_THRESHOLD = 1e-7   # a fine-tune candidate's divergence must exceed this (spec)
MAX_AGE_MS = 3_600_000      # a score older than this is stale (spec: 1 h)
# Failed calls after which one incremental run stops calling and defers the rest: a server that
# failed twice in a row is down, and every further call would hold up the batch for a timeout.
_FAILURES_BEFORE_DEFER = 2
_KEY_HEX = 16


def divergence(baseline: float, without: float) -> float:
    """``max(0, baseline - without)``: how much leaving a memory out lowers a response's log-probability."""
    return max(0.0, baseline - without)


def _score(backend: ScoreBackend, enc: EncodedConversation, targets: Sequence[int],
           drop: Container[int] = (), end: int | None = None) -> list[float]:
    tokens, spans = enc.render(drop=drop, end=end)  # type: ignore[arg-type]
    return backend.score(tokens, [spans[i] for i in targets])


def _encode(messages: Sequence[Message] | EncodedConversation, backend: ScoreBackend) -> EncodedConversation:
    if isinstance(messages, EncodedConversation):
        return messages
    return EncodedConversation(messages, backend.tokenizer)


# -- full matrix ---------------------------------------------------------------------------------
@dataclass
class ScoreMatrix:
    """Divergence of every (memory, response) pair of one conversation.

    Attributes
    ----------
    memory_ids
        Rows, in order of first appearance.
    responses
        Columns: message indices of the assistant responses.
    values
        ``(len(memory_ids), len(responses))`` float64 divergences (a failed row stays 0).
    failed
        Memories whose call failed (logged and skipped).
    """

    memory_ids: list[str]
    responses: list[int]
    values: np.ndarray
    failed: list[str] = field(default_factory=list)

    def memory_importance(self) -> dict[str, float]:
        """Row sums: how much the responses depend on each memory."""
        return {m: float(v) for m, v in zip(self.memory_ids, self.values.sum(axis=1), strict=True)}

    def response_dependence(self) -> dict[int, float]:
        """Column sums: how much each response depends on memories."""
        return {r: float(v) for r, v in zip(self.responses, self.values.sum(axis=0), strict=True)}

    def important_memories_for(self, message_index: int, min_score: float = IMPORTANT_MIN) -> list[tuple[str, float]]:
        """Memories scoring above ``min_score`` for the response at ``message_index``, highest first."""
        try:
            col = self.responses.index(message_index)
        except ValueError:
            raise KeyError(f"message {message_index} is not an assistant response") from None
        out = [(m, float(self.values[k, col])) for k, m in enumerate(self.memory_ids)
               if self.values[k, col] > min_score]
        out.sort(key=lambda t: -t[1])  # stable: ties keep the order of appearance
        return out


def full_matrix(messages: Sequence[Message] | EncodedConversation, backend: ScoreBackend) -> ScoreMatrix:
    """Score every memory against every response: one baseline call plus one call per memory.

    Raises :class:`ScoringError` when the baseline call fails (nothing can be measured); a failed
    memory call is logged, listed in ``failed`` and its row left at 0. After two failed calls the
    remaining memories are not called either (listed in ``failed``).
    """
    enc = _encode(messages, backend)
    mids, responses = enc.memory_ids, enc.responses
    values = np.zeros((len(mids), len(responses)))
    out = ScoreMatrix(mids, list(responses), values)
    if not mids or not responses:
        return out  # nothing to compare: no call
    base = np.asarray(_score(backend, enc, responses))
    for k, mid in enumerate(mids):
        if len(out.failed) >= _FAILURES_BEFORE_DEFER:
            out.failed.append(mid)  # the server is down: not called, so a read stays bounded
            continue
        try:
            without = np.asarray(_score(backend, enc, responses, drop=enc.memory_positions[mid]))
        except ScoringError as exc:
            logger.warning("scoring without memory %s failed, row skipped: %s", mid, exc)
            out.failed.append(mid)
            continue
        values[k] = np.maximum(0.0, base - without)
    return out


# -- single memory -------------------------------------------------------------------------------
def single_memory(messages: Sequence[Message] | EncodedConversation, memory_id: str, backend: ScoreBackend,
                  window: int | None = None) -> float:
    """Importance of one memory over the next ``window`` (50) responses after it first appears.

    Two calls on the context cut after the window's last response, with and without every
    occurrence of the memory. 0.0 without a call when the memory is absent or no response
    follows it. Raises :class:`ScoringError` when a call fails.
    """
    enc = _encode(messages, backend)
    got = enc.window(memory_id, WINDOW if window is None else window)
    if got is None or not got[1]:
        return 0.0
    _, targets = got
    end = targets[-1] + 1
    base = _score(backend, enc, targets, end=end)
    without = _score(backend, enc, targets, drop=enc.memory_positions[memory_id], end=end)
    return math.fsum(divergence(b, w) for b, w in zip(base, without, strict=True))


# -- incremental ---------------------------------------------------------------------------------
class Ledger(Protocol):
    """Where incremental scores are kept: each ``record`` must persist at once."""

    def last_scored_ms(self, memory_id: str) -> int | None: ...

    def record(self, memory_id: str, score: float, now_ms: int, conversation_id: str | None,
               responses: int) -> dict[str, Any]: ...


@dataclass
class IncrementalReport:
    """What one incremental run did."""

    scored: list[dict[str, Any]] = field(default_factory=list)        # the ledger's records, in order
    skipped: list[tuple[str, str]] = field(default_factory=list)      # (memory_id, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)       # (memory_id, error)
    deferred: list[str] = field(default_factory=list)                 # due, left for the next run
    fresh: int = 0                                                    # present but scored recently

    def to_dict(self) -> dict[str, Any]:
        return {"scored": self.scored, "skipped": [{"memory_id": m, "reason": r} for m, r in self.skipped],
                "failed": [{"memory_id": m, "error": e} for m, e in self.failed],
                "deferred": self.deferred, "fresh": self.fresh}


def incremental(messages: Sequence[Message] | EncodedConversation, backend: ScoreBackend, ledger: Ledger, *,
                now_ms: int, conversation_id: str | None = None, max_age_ms: int | None = None,
                window: int | None = None, max_per_run: int | None = None,
                on_score: Callable[[dict[str, Any]], None] | None = None) -> IncrementalReport:
    """Re-score the conversation's memories whose last score is older than ``max_age_ms`` (1 h).

    Stale memories go oldest first (never scored before all others, then by first appearance).
    A memory with fewer than ``window`` responses after it is skipped unless it sits in the first
    quarter of the conversation; one with no response after it is skipped (nothing to measure).
    Each score goes to ``ledger.record`` the moment it is computed, then to ``on_score`` (which
    emits it), so an interrupted run keeps every score already made. A failed call is logged and
    skipped; after two failures the remaining memories are deferred to a later run, as are those
    beyond ``max_per_run``.
    """
    max_age = MAX_AGE_MS if max_age_ms is None else max_age_ms
    size = WINDOW if window is None else window
    report = IncrementalReport()
    try:
        enc = _encode(messages, backend)
    except ScoringError as exc:  # e.g. a remote tokenizer that is down
        logger.warning("scoring skipped, tokenizing the conversation failed: %s", exc)
        report.failed.append(("*", str(exc)))
        return report
    due: list[tuple[int, int, str]] = []
    for first_pos, mid in enumerate(enc.memory_ids):
        last = ledger.last_scored_ms(mid)
        if last is None or now_ms - last > max_age:
            due.append((-1 if last is None else last, first_pos, mid))
        else:
            report.fresh += 1
    due.sort()
    n, attempts = len(enc), 0
    for _, _, mid in due:
        # what cannot be scored is skipped whatever the cap: only a memory a later run would score is deferred
        first, targets = enc.window(mid, size)  # type: ignore[misc]
        if not targets:
            report.skipped.append((mid, "no response follows"))
            continue
        if len(targets) < size and not 4 * first < n:
            report.skipped.append((mid, f"partial window ({len(targets)} of {size} responses): scored once "
                                        f"{size} assistant responses follow it (configure_scoring window); "
                                        "important_memories scores it now"))
            continue
        if attempts >= (max_per_run or len(due)) or len(report.failed) >= _FAILURES_BEFORE_DEFER:
            report.deferred.append(mid)
            continue
        attempts += 1
        try:
            score = single_memory(enc, mid, backend, size)
        except ScoringError as exc:
            logger.warning("scoring memory %s failed, skipped: %s", mid, exc)
            report.failed.append((mid, str(exc)))
            continue
        rec = ledger.record(mid, score, now_ms, conversation_id, len(targets))  # persisted now
        report.scored.append(rec)
        if on_score is not None:
            on_score(rec)
    return report


# -- fine-tune candidates ------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A response whose log-probability drops without the memories: worth fine-tuning on."""

    key: str
    message_index: int
    divergence: float
    content: str

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "message_index": self.message_index, "divergence": self.divergence,
                "content": self.content}


def candidate_key(conversation_id: str, message_index: int, content: str) -> str:
    """The identity of a response: its conversation, position and text (a fixed-size digest)."""
    raw = f"{conversation_id}\x1f{message_index}\x1f{content}".encode()
    return hashlib.sha256(raw).hexdigest()[:_KEY_HEX]


def finetune_candidates(messages: Sequence[Message] | EncodedConversation, backend: ScoreBackend, *,
                        conversation_id: str, count: int, threshold: float | None = None,
                        proposed: Container[str] = ()) -> list[Candidate]:
    """Responses among the last ``count`` messages whose divergence with all memories stripped
    exceeds ``threshold`` (1e-7) and whose key is not in ``proposed``, highest first.

    Two calls (none when the conversation holds no memory or no such response). Raises
    :class:`ScoringError` when a call fails. The caller records the keys it proposes.
    """
    enc = _encode(messages, backend)
    thr = FINETUNE_THRESHOLD if threshold is None else threshold
    start = max(0, len(enc) - count)
    targets = [r for r in enc.responses if r >= start]
    drop = enc.all_memory_positions
    if not targets or not drop:
        return []
    base = _score(backend, enc, targets)
    without = _score(backend, enc, targets, drop=drop)
    out = []
    for i, b, w in zip(targets, base, without, strict=True):
        d = divergence(b, w)
        content = enc.messages[i].content
        key = candidate_key(conversation_id, i, content)
        if d > thr and key not in proposed:
            out.append(Candidate(key, i, d, content))
    out.sort(key=lambda c: (-c.divergence, c.message_index))
    return out
