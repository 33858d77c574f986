"""Reading optional numeric fields of a verb body, with the one error wording every verb uses."""
from __future__ import annotations

import math
from typing import Any

from workers.errors import VerbError

__all__ = ("int_in", "number_in")


def int_in(body: dict, field: str, lo: int, hi: int, default: Any = None) -> Any:
    """``body[field]`` as an int in [lo, hi], ``default`` when absent; else VerbError."""
    v = body.get(field)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise VerbError(f"{field} must be an integer in [{lo}, {hi}]")
    return v


def number_in(body: dict, field: str, lo: float, hi: float, *, open_lo: bool = False) -> float | None:
    """``body[field]`` as a finite float in [lo, hi] (or (lo, hi]), None when absent; else VerbError."""
    v = body.get(field)
    if v is None:
        return None
    ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
          and (v > lo if open_lo else v >= lo) and v <= hi)
    if not ok:
        raise VerbError(f"{field} must be a number in {'(' if open_lo else '['}{lo}, {hi}]")
    return float(v)
