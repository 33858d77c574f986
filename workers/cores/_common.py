"""Shared by the cores: the spec's env overrides (part framing lives in ``workers.state.framing``)."""
from __future__ import annotations

import math
import os

from workers.errors import ConfigError

__all__ = ("env_float",)


def env_float(var: str, default: float, *, cap: float | None = None) -> float:
    """A finite, non-negative number from ``$var`` (``default`` when unset), capped at ``cap``."""
    raw = os.environ.get(var)
    if raw is None or raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"{var}={raw!r} must be a finite number >= 0")
    return v if cap is None else min(v, cap)
