"""Waiting for a condition instead of sleeping a fixed time (demo, benchmarks, tests)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ("wait_until",)


def wait_until(cond: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1, what: str = "condition",
               *, retry_on: tuple[type[BaseException], ...] = (Exception,)) -> Any:
    """Poll ``cond`` until it returns something truthy and return that, or raise TimeoutError.

    Exceptions in ``retry_on`` count as "not yet" (a server still starting); the last one is
    named in the timeout message.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except retry_on as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}"
                       + (f" (last error: {last!r})" if last is not None else ""))
