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

from collections.abc import Callable
from dataclasses import dataclass

from workers.errors import VerbError

__all__ = ("Limits", "MAX_SESSION_BYTES", "MAX_VALUE_BYTES", "check_request", "projected_bytes")

MAX_VALUE_BYTES = 1_000_000          # one key's value; Kafka's defaults are 1,048,576 (producer) / 1,048,588 (broker)
MAX_SESSION_BYTES = 64 * 1024 * 1024  # all of one session's keys in one table


@dataclass(frozen=True)
class Limits:
    max_value_bytes: int = MAX_VALUE_BYTES
    max_session_bytes: int = MAX_SESSION_BYTES


def _int(body: dict, field: str, default: int, most: int) -> int | None:
    """The field's value when the verb itself accepts it, else None (the verb refuses it, with its
    own message: this check only adds the size limit to what the verb's bounds allow)."""
    v = body.get(field, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= most:
        return None
    return v


def _instant(body: dict) -> tuple[str, int] | None:
    from workers import _kernels as _k
    from workers.bodies import MAX_DIM
    from workers.cores.instant import DEFAULT_DIM

    dim = _int(body, "dim", DEFAULT_DIM, MAX_DIM)
    targets = body.get("targets")
    if not dim or not isinstance(targets, list) or not targets:
        return None
    c = _k.INSTANT_CONSTANTS
    nt = len(targets)
    # theta, EWC Fisher and snapshot over rank * (dim + nt) params, scalars, and a full replay ring
    floats = 3 * c["rank"] * (dim + nt) + 16 + c["replay_cap"] * (dim + 1)
    return "dim", 4 * floats + 8 * (c["meta_size"] + c["replay_cap"])


def _learner(body: dict) -> tuple[str, int] | None:
    from workers.online import verbs as v  # the verb's own bounds

    d, c = _int(body, "n_features", 0, v._MAX_FEATURES), _int(body, "n_classes", 0, v._MAX_CLASSES)
    h, cap = _int(body, "hidden", 128, v._MAX_HIDDEN), _int(body, "capacity", 200, v._MAX_CAPACITY)
    bs, rc = _int(body, "batch_size", 10, 4096), _int(body, "recent", 50, 1 << 20)
    win = _int(body, "drift_window", 200, 100_000)
    if not d or not c or None in (h, cap, bs, rc, win):
        return None
    params = d * c + c if body.get("model") == "softmax" else d * h + h + h * c + c
    # theta, velocity, EWC Fisher and anchor, distillation teacher; replay rows with logits;
    # pending and recent rings; the drift windows' class histograms
    total = 5 * 4 * params + cap * (4 * d + 4 * c + 24) + (bs + rc) * (4 * d + 4) + 2 * win * (4 * c + 8)
    field = "capacity" if cap * 4 * d > 5 * 4 * params else "n_features"
    return field, total + 65536


_PROJECTIONS: dict[str, Callable[[dict], tuple[str, int] | None]] = {
    "init_instant": _instant,
    "init_learner": _learner,
}


def projected_bytes(verb_name: str, body: dict) -> tuple[str, int] | None:
    """(the field that drives it, bytes) a configuring verb's session can grow to, or None."""
    fn = _PROJECTIONS.get(verb_name)
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
