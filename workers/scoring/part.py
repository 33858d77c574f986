"""Part ``"scoring"`` of a session's memory-table value: config, conversations, scores, proposals.

Bounded so one session's value stays well inside a Kafka message (1 MiB by default): the most
recently updated conversations up to 256 KiB of text, 2048 memories (least recently scored
dropped first), the 4096 most recent fine-tune proposals (as 64-bit digests).
"""
from __future__ import annotations

from typing import Any

import orjson

from workers.errors import CorruptStateError
from workers.scoring.config import ScoringConfig
from workers.scoring.conversation import Message

__all__ = ("ScoringState", "PART", "EMA_RISING", "EMA_FALLING")

PART = "scoring"
_FORMAT = 1
# Asymmetric EMA of a memory's weight (spec): a memory that starts to matter is believed fast,
# one that seems to stop mattering is forgotten slowly (one quiet window is weak evidence).
EMA_RISING = 0.5
EMA_FALLING = 0.1
# Stored conversation text (UTF-8 bytes) and counts kept per session; see the module docstring.
_MAX_CONVERSATION_BYTES = 256 << 10
_MAX_CONVERSATIONS = 64
_MAX_MEMORIES = 2048
_MAX_PROPOSED = 4096


class ScoringState:
    """A session's scoring state (one part of its StateBlob, JSON inside).

    Attributes
    ----------
    config
        The session's :class:`ScoringConfig`.
    conversations
        ``conversation_id -> {"messages": [...], "updated_ms": int, "bytes": int}``, least
        recently updated first.
    memories
        ``memory_id -> {"weight", "score", "scored_ms", "n", "conversation_id", "responses"}``.
    proposed
        Keys of fine-tune candidates already proposed, oldest first.
    failed_calls
        Scoring calls that failed, ever (logged and skipped).
    """

    def __init__(self) -> None:
        self.config = ScoringConfig()
        self.conversations: dict[str, dict[str, Any]] = {}
        self.memories: dict[str, dict[str, Any]] = {}
        self.proposed: dict[str, None] = {}
        self.failed_calls = 0

    # -- conversations -------------------------------------------------------------------------
    def store_conversation(self, conversation_id: str, messages: list[Message], now_ms: int) -> None:
        """Keep (or replace) a conversation; the oldest others go when over the bounds."""
        size = sum(len(m.content.encode()) for m in messages)
        self.conversations.pop(conversation_id, None)
        self.conversations[conversation_id] = {"messages": [m.to_dict() for m in messages],
                                               "updated_ms": now_ms, "bytes": size}
        total = sum(c["bytes"] for c in self.conversations.values())
        while len(self.conversations) > 1 and (total > _MAX_CONVERSATION_BYTES
                                               or len(self.conversations) > _MAX_CONVERSATIONS):
            total -= self.conversations.pop(next(iter(self.conversations)))["bytes"]

    def messages(self, conversation_id: str) -> list[Message] | None:
        c = self.conversations.get(conversation_id)
        return None if c is None else [Message.from_dict(d) for d in c["messages"]]

    # -- the incremental ledger ----------------------------------------------------------------
    def last_scored_ms(self, memory_id: str) -> int | None:
        r = self.memories.get(memory_id)
        return None if r is None else r["scored_ms"]

    def record(self, memory_id: str, score: float, now_ms: int, conversation_id: str | None,
               responses: int) -> dict[str, Any]:
        """Store one score now: the weight moves by the asymmetric EMA (the first score sets it)."""
        old = self.memories.pop(memory_id, None)
        prev = None if old is None else old["weight"]
        if prev is None:
            weight = score
        else:
            alpha = EMA_RISING if score > prev else EMA_FALLING
            weight = prev + alpha * (score - prev)
        rec = {"memory_id": memory_id, "weight": weight, "score": score, "previous_weight": prev,
               "scored_ms": now_ms, "n": (0 if old is None else old["n"]) + 1,
               "conversation_id": conversation_id, "responses": responses}
        self.memories[memory_id] = rec  # most recently scored last
        while len(self.memories) > _MAX_MEMORIES:
            self.memories.pop(next(iter(self.memories)))
        return dict(rec)

    # -- fine-tune proposals -------------------------------------------------------------------
    def propose(self, key: str) -> None:
        self.proposed[key] = None
        while len(self.proposed) > _MAX_PROPOSED:
            self.proposed.pop(next(iter(self.proposed)))

    # -- bytes ---------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "format": _FORMAT, "config": self.config.to_dict(), "conversations": self.conversations,
            "memories": self.memories, "proposed": list(self.proposed), "failed_calls": self.failed_calls})

    @classmethod
    def from_bytes(cls, data: bytes) -> ScoringState:
        try:
            d = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CorruptStateError(f"scoring state is not JSON ({exc})") from None
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise CorruptStateError(f"scoring state format {d.get('format') if isinstance(d, dict) else '?'} "
                                    f"is unknown (this build reads {_FORMAT})")
        s = cls()
        s.config = ScoringConfig.from_dict(d["config"])
        s.conversations = d["conversations"]
        s.memories = d["memories"]
        s.proposed = dict.fromkeys(d["proposed"])
        s.failed_calls = d["failed_calls"]
        return s
