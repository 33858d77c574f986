"""Client idempotency keys: a write retried after a timeout is applied once.

A write may carry ``idempotency_key`` in its body (the MCP server and the SDK's
write-and-wait methods always send one). When the worker applies it, the key and the
reply (with the id ``topic:partition:offset`` of the message that was applied) are
kept in the session's value, in the same table write as the state change and the
watermark. A later message with the same key - the client's retry after a timeout,
or after the worker was killed before it could answer - is not applied again: it is
answered with the first reply. Because the key lives in the session value, it survives
a worker restart and moves with the partition to another worker; and because the retry
travels through the same partition as the original, it is always applied after it.

Keys are kept per session and table value, the most recent ``_KEEP`` of them; a retry
must come within that many writes of the session (a client retries within seconds).
"""
from __future__ import annotations

from collections import OrderedDict

import orjson

from workers.errors import VerbError
from workers.state.blob import StateBlob

__all__ = ("FIELD", "PART", "AppliedKeys", "take_key", "lookup", "remember")

FIELD = "idempotency_key"
PART = "idempotency"
_KEEP = 1024        # recent keys per session value: ~1024 retries' worth, a few hundred KB at most
_MAX_KEY = 128      # characters (a UUID is 36)
_MAX_REPLY = 4096   # bytes of a reply kept whole; a longer one is kept without its data


class AppliedKeys:
    """The recent idempotency keys of one session value, oldest first, with their replies."""

    __slots__ = ("replies",)

    def __init__(self, replies: OrderedDict[str, dict] | None = None) -> None:
        self.replies: OrderedDict[str, dict] = replies if replies is not None else OrderedDict()

    def to_bytes(self) -> bytes:
        return orjson.dumps(list(self.replies.items()), option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_bytes(cls, data: bytes) -> AppliedKeys:
        return cls(OrderedDict((k, v) for k, v in orjson.loads(data)))


def take_key(body: dict) -> tuple[str | None, dict]:
    """(the body's idempotency key or None, the body without it); VerbError on a malformed key."""
    if FIELD not in body:
        return None, body
    key = body[FIELD]
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY:
        raise VerbError(f"{FIELD} must be a non-empty string of at most {_MAX_KEY} characters")
    return key, {k: v for k, v in body.items() if k != FIELD}


def lookup(blob: StateBlob, key: str) -> dict | None:
    """The reply of the write that already applied ``key`` in this session value, or None."""
    keys = blob.get(PART, AppliedKeys)
    return None if keys is None else keys.replies.get(key)


def remember(blob: StateBlob, key: str, reply: dict) -> None:
    """Keep ``reply`` (carrying its ``id``) under ``key``; the oldest key goes beyond ``_KEEP``."""
    keys = blob.get(PART, AppliedKeys)
    if keys is None:
        keys = AppliedKeys()
        blob.set(PART, keys)
    if len(orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY)) > _MAX_REPLY:
        reply = {k: v for k, v in reply.items() if k != "data"} | {"data_omitted": True}
    keys.replies[key] = reply
    keys.replies.move_to_end(key)
    while len(keys.replies) > _KEEP:
        keys.replies.popitem(last=False)
