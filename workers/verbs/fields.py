"""Reading optional numeric fields of a verb body, with the one error wording every verb uses."""
from __future__ import annotations

import math
from typing import Any

from workers.errors import VerbError

__all__ = ("int_in", "int_accepted", "number_in", "epoch_ms", "to_float", "targets_list", "MAX_DIM", "MAX_MS")

# Largest embedding / input dimension a core accepts (the attention core's and the online learner's
# bound too): above every common embedding model, and it keeps one session's arrays small.
MAX_DIM = 4096
# Epoch milliseconds and durations: JSON numbers are exact up to 2^53 and the kernels store int64,
# so anything beyond is a mistake, not a date (2^53 ms is ~285,000 years).
MAX_MS = 2**53 - 1


def int_in(body: dict, field: str, lo: int, hi: int, default: Any = None) -> Any:
    """``body[field]`` as an int in [lo, hi], ``default`` when absent; else VerbError."""
    v = body.get(field)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise VerbError(f"{field} must be an integer in [{lo}, {hi}]")
    return v


def int_accepted(body: dict, field: str, default: int, most: int) -> int | None:
    """``body[field]`` (``default`` when absent) if :func:`int_in` accepts it in [0, most], else None: for
    size projections, which leave refusing a value to the verb and its own message."""
    try:
        return int_in(body, field, 0, most, default)
    except VerbError:
        return None


def targets_list(targets: Any) -> list[str]:
    """A core's ``targets`` (model names, in logit order), with the one wording ``init_instant`` and
    ``init_router`` share: required, an array, not empty (the spec's "targets must not be empty"),
    non-empty strings, unique. VerbError otherwise."""
    if targets is None:
        raise VerbError("targets required")
    if not isinstance(targets, list):
        raise VerbError("targets must be an array of non-empty strings")
    if not targets:
        raise VerbError("targets must not be empty")
    if not all(isinstance(t, str) and t for t in targets):
        raise VerbError("targets must be an array of non-empty strings")
    if len(set(targets)) != len(targets):
        raise VerbError("targets must be unique")
    return targets


def to_float(value: Any) -> float:
    """``float(value)`` for a number, an integer beyond the float range becoming an infinity of its sign.

    A JSON parser that keeps integers exact (the stdlib's, MCP's, an in-process caller's dict) can hand
    a verb ``10**400``: ``float`` and ``math.isfinite`` raise OverflowError on it, where a verb's checks
    expect an infinity (refused as non-finite, or clamped, as each field says)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def number_in(body: dict, field: str, lo: float, hi: float, *, open_lo: bool = False) -> float | None:
    """``body[field]`` as a finite float in [lo, hi] (or (lo, hi]), None when absent; else VerbError."""
    v = body.get(field)
    if v is None:
        return None
    f = to_float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
    if not (math.isfinite(f) and (f > lo if open_lo else f >= lo) and f <= hi):
        raise VerbError(f"{field} must be a number in {'(' if open_lo else '['}{lo}, {hi}]")
    return f


def epoch_ms(body: dict, field: str, default: Any = None, *, prefix: str = "", lo: int = -MAX_MS) -> Any:
    """``body[field]`` as integer milliseconds in [lo, MAX_MS], ``default`` when absent; else VerbError."""
    v = body.get(field)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= MAX_MS:
        raise VerbError(f"{prefix}{field} must be an integer (epoch ms) in [{lo}, {MAX_MS}]")
    return v
