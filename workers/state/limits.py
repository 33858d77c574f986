"""Byte-size limits of session state, checked before a verb runs and before a value is written.

Every key of a session is small (``workers.state.layout`` cuts parts into pieces), so what
bounds a session is its total size: :data:`MAX_SESSION_BYTES` by default. A verb whose
configuration could grow a session past it is refused *up front*, before any state changes,
naming the field and the limit (HTTP 400, DLQ reason ``invalid``): :func:`check_request`
projects the size each configuring verb implies once its buffers are full. A value that
still could not be written (over :data:`MAX_VALUE_BYTES`, under Kafka's default 1 MiB
``message.max.bytes`` and producer ``max.request.size`` with room for the record's key and
framing, or a session grown past its limit some other way) is not written: the events that
grew it go to the DLQ with reason ``too_large`` and the worker goes on.
"""
from __future__ import annotations

from dataclasses import dataclass

from workers.errors import VerbError
from workers.verbs.registry import STATE_SIZE

__all__ = ("Limits", "MAX_SESSION_BYTES", "MAX_VALUE_BYTES", "check_request", "projected_bytes")

MAX_VALUE_BYTES = 1_000_000          # one key's value; Kafka's defaults are 1,048,576 (producer) / 1,048,588 (broker)
MAX_SESSION_BYTES = 64 * 1024 * 1024  # all of one session's keys in one table


@dataclass(frozen=True)
class Limits:
    max_value_bytes: int = MAX_VALUE_BYTES
    max_session_bytes: int = MAX_SESSION_BYTES


def projected_bytes(verb_name: str, body: dict) -> tuple[str, int] | None:
    """(the field that drives it, bytes) a configuring verb's session can grow to, or None."""
    fn = STATE_SIZE.get(verb_name)  # declared by the verb's module (@state_size)
    return fn(body) if fn is not None else None


def check_request(verb_name: str, body: dict, limits: Limits) -> None:
    """Refuse a configuration whose state could outgrow the session limit (VerbError, nothing changed)."""
    got = projected_bytes(verb_name, body)
    if got is None:
        return
    field, n = got
    if n > limits.max_session_bytes:
        raise VerbError(
            f"{field}: this {verb_name} configuration holds up to {n:,} bytes of state once its buffers are "
            f"full, over the limit of {limits.max_session_bytes:,} bytes per session (max_session_bytes, "
            f"LEARNSTREAM_MAX_SESSION_BYTES); use a smaller {field}")
