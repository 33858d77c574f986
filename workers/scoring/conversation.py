"""Conversations as token ids, with the exact token range of every message.

A message is ``header + content + footer`` in the backend tokenizer's ids; each
message is encoded once and contexts (with memories left out, or cut after a
window) are assembled from those pieces, so every variant of a context holds the
very same tokens for the messages it keeps.
"""
from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from workers.scoring.tokenizer import Tokenizer

__all__ = ("Message", "EncodedConversation", "content_memory_id", "ROLES")

ROLES = ("system", "user", "assistant", "memory")
# Hex digits of a content hash used as a memory's id when the event gives none (64 bits).
_ID_HEX = 16


def content_memory_id(content: str) -> str:
    """The id of a memory given without ``memory_id``: a hash of its text, so the same text is
    the same memory in every conversation."""
    return "h:" + hashlib.sha256(content.encode()).hexdigest()[:_ID_HEX]


@dataclass(frozen=True, slots=True)
class Message:
    """One message. A memory is a message with a ``memory_id`` (role ``memory``, or a system or
    user message that carries one)."""

    role: str
    content: str
    memory_id: str | None = None

    @property
    def is_memory(self) -> bool:
        return self.memory_id is not None

    def to_dict(self) -> dict[str, Any]:
        d = {"role": self.role, "content": self.content}
        if self.memory_id is not None:
            d["memory_id"] = self.memory_id
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        return cls(d["role"], d["content"], d.get("memory_id"))


class EncodedConversation:
    """A conversation's messages in one tokenizer's ids.

    Parameters
    ----------
    messages
        The conversation, oldest first.
    tokenizer
        The backend's tokenizer.

    Examples
    --------
    >>> from workers.scoring.tokenizer import CharTokenizer
    >>> enc = EncodedConversation([Message("memory", "m", "m1"), Message("assistant", "ok")], CharTokenizer())
    >>> tokens, spans = enc.render(drop=enc.memory_positions["m1"])
    >>> "".join(map(chr, tokens)), spans
    ('assistant: ok\\n', {1: (11, 13)})
    """

    def __init__(self, messages: Sequence[Message], tokenizer: Tokenizer) -> None:
        self.messages = list(messages)
        self.tokenizer = tokenizer
        footer = tokenizer.footer()
        headers: dict[str, list[int]] = {}
        self.pieces: list[tuple[list[int], list[int], list[int]]] = []
        for m in self.messages:
            h = headers.get(m.role)
            if h is None:
                h = headers[m.role] = tokenizer.header(m.role)
            self.pieces.append((h, tokenizer.encode(m.content), footer))
        self.responses = [i for i, m in enumerate(self.messages) if m.role == "assistant"]
        self.memory_positions: dict[str, list[int]] = {}  # memory id -> its message indices, in order
        for i, m in enumerate(self.messages):
            if m.memory_id is not None:
                self.memory_positions.setdefault(m.memory_id, []).append(i)

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def memory_ids(self) -> list[str]:
        """Memory ids in order of first appearance."""
        return list(self.memory_positions)

    @property
    def all_memory_positions(self) -> set[int]:
        return {i for ps in self.memory_positions.values() for i in ps}

    def window(self, memory_id: str, size: int) -> tuple[int, list[int]] | None:
        """(first position, up to ``size`` assistant responses after it), or None if absent."""
        pos = self.memory_positions.get(memory_id)
        if not pos:
            return None
        first = pos[0]
        return first, [r for r in self.responses if r > first][:size]

    def render(self, drop: Collection[int] = (), end: int | None = None) -> tuple[list[int], dict[int, tuple[int, int]]]:
        """Tokens of messages ``[0, end)`` except ``drop``, and each kept message's content range."""
        tokens: list[int] = []
        spans: dict[int, tuple[int, int]] = {}
        drop = set(drop)
        for i in range(len(self.messages) if end is None else end):
            if i in drop:
                continue
            h, c, f = self.pieces[i]
            tokens += h
            spans[i] = (len(tokens), len(tokens) + len(c))
            tokens += c
            tokens += f
        return tokens, spans
