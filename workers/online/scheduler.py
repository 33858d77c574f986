"""When to consolidate ("sleep"): after N examples or T milliseconds, whichever
first, and on a detected task boundary.

Time is event time: the scheduler only knows the ``now_ms`` it is given, so
replaying the same events gives the same consolidations (a verb never reads the
wall clock). Without any ``now_ms`` the time trigger simply never fires.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from workers.online.base import Stateful

__all__ = ("ConsolidationScheduler", "ConsolidationReport")

_DEFAULT_EXAMPLES = 1000
_DEFAULT_FISHER_EVERY = 1


@dataclass
class ConsolidationReport:
    """What one consolidation did (the payload of a ``consolidations`` event)."""

    index: int                     # 1-based count of consolidations
    cause: str                     # "count" | "time" | "boundary" | "manual"
    examples_seen: int
    replay_size: int
    steps: int                     # training steps on the mixed replay/recent batch
    loss_before: float             # mean cross-entropy of that batch before / after
    loss_after: float
    ewc_penalty: float             # lambda/2 sum F (theta - anchor)^2 before re-anchoring
    fisher_refreshed: bool
    checkpoint: int | None = None  # version written by a CheckpointManager, if any
    now_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ConsolidationScheduler(Stateful):
    """Counts examples and event time since the last consolidation.

    Parameters
    ----------
    examples_threshold
        Consolidate after this many examples (0 = never on count). Default 1000.
    time_threshold_ms
        Consolidate when this much event time has passed (None/0 = never on time).
    fisher_every
        Refresh the EWC Fisher on every k-th consolidation. Default 1.
    on_boundary
        Consolidate on a detected task boundary. Default True.

    Examples
    --------
    >>> s = ConsolidationScheduler(examples_threshold=3, time_threshold_ms=1000)
    >>> [s.observe(1, now_ms=t) for t in (0, 10, 20)]
    [None, None, 'count']
    >>> _ = s.fired(now_ms=20)
    >>> s.observe(1, now_ms=1020)
    'time'
    """

    def __init__(self, examples_threshold: int | None = None, time_threshold_ms: int | None = None,
                 fisher_every: int | None = None, on_boundary: bool | None = None) -> None:
        self.examples_threshold = examples_threshold
        self.time_threshold_ms = time_threshold_ms
        self.fisher_every = fisher_every
        self.on_boundary = on_boundary
        self.since = 0
        self.last_ms: int | None = None
        self.now_ms: int | None = None
        self.count = 0
        self._boundary = False

    def in_force(self) -> dict[str, Any]:
        """``time_threshold_ms`` stays None when there is no time trigger."""
        return {"examples_threshold": self._n, "time_threshold_ms": self.time_threshold_ms or None,
                "fisher_every": self._every, "on_boundary": self.on_boundary is not False}

    @property
    def _n(self) -> int:
        return _DEFAULT_EXAMPLES if self.examples_threshold is None else int(self.examples_threshold)

    @property
    def _every(self) -> int:
        return max(1, _DEFAULT_FISHER_EVERY if self.fisher_every is None else int(self.fisher_every))

    def observe(self, n: int = 1, now_ms: int | None = None) -> str | None:
        """Count ``n`` examples seen at ``now_ms``; returns the cause when a consolidation is due."""
        self.since += n
        if now_ms is not None:
            self.now_ms = now_ms if self.now_ms is None else max(self.now_ms, now_ms)
            if self.last_ms is None:
                self.last_ms = now_ms  # the clock starts with the first timed event
        return self.due()

    def boundary(self) -> str | None:
        """A task boundary was detected; returns ``"boundary"`` when that triggers a consolidation."""
        if self.on_boundary is False:
            return None
        self._boundary = True
        return "boundary"

    def due(self) -> str | None:
        if self._boundary:
            return "boundary"
        if self._n > 0 and self.since >= self._n:
            return "count"
        t = self.time_threshold_ms
        if t and self.now_ms is not None and self.last_ms is not None and self.now_ms - self.last_ms >= t:
            return "time"
        return None

    def fired(self, now_ms: int | None = None) -> tuple[int, bool]:
        """Record a consolidation; returns (its 1-based index, whether it refreshes the Fisher)."""
        self.count += 1
        self.since = 0
        self._boundary = False
        if now_ms is not None:
            self.now_ms = now_ms if self.now_ms is None else max(self.now_ms, now_ms)
        self.last_ms = self.now_ms
        return self.count, self.count % self._every == 0

    def save_state(self, writer: Any) -> None:
        writer.put_json("counters", {"since": self.since, "last_ms": self.last_ms, "now_ms": self.now_ms,
                                     "count": self.count, "boundary": self._boundary})

    def load_state(self, reader: Any) -> None:
        c = reader.json("counters")
        self.since, self.last_ms, self.now_ms = c["since"], c["last_ms"], c["now_ms"]
        self.count, self._boundary = c["count"], c["boundary"]
