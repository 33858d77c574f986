"""Incremental curriculum: the share of new examples in a training batch ramps up.

Right after a task boundary (or a drift) a batch of only new examples would pull
the model hard toward the new task; instead the share of new examples starts at
``floor`` and grows linearly to ``steady`` over ``ramp`` training steps, the rest
of each batch being replay. Which replayed examples are picked is the replay
memory's business: with ``strategy="prioritized"`` it favours the examples the
model still gets wrong (priority = their latest loss).
"""
from __future__ import annotations

from typing import Any

from workers.online.base import Stateful

__all__ = ("Curriculum",)

_DEFAULT_FLOOR = 0.25
_DEFAULT_STEADY = 0.5
_DEFAULT_RAMP = 100


class Curriculum(Stateful):
    """Share of new examples per training batch, ramping after each boundary.

    Parameters
    ----------
    floor
        Share of new examples right after a boundary. Default 0.25.
    steady
        Share once the ramp is over (1 = no replay in steady state). Default 0.5.
    ramp
        Training steps from ``floor`` to ``steady`` (0 = jump at once). Default 100.

    Examples
    --------
    >>> c = Curriculum(floor=0.2, steady=0.6, ramp=4)
    >>> c.restart()
    >>> shares = []
    >>> for _ in range(6):
    ...     shares.append(round(c.new_share, 2)); c.tick()
    >>> shares
    [0.2, 0.3, 0.4, 0.5, 0.6, 0.6]
    >>> c.replay_count(10)
    7
    """

    def __init__(self, floor: float | None = None, steady: float | None = None, ramp: int | None = None) -> None:
        self.floor = floor
        self.steady = steady
        self.ramp = ramp
        self.steps = 0

    def in_force(self) -> dict[str, Any]:
        return {"floor": self._floor, "steady": self._steady, "ramp": self._ramp}

    @property
    def _floor(self) -> float:
        return _DEFAULT_FLOOR if self.floor is None else float(self.floor)

    @property
    def _steady(self) -> float:
        return _DEFAULT_STEADY if self.steady is None else float(self.steady)

    @property
    def _ramp(self) -> int:
        return _DEFAULT_RAMP if self.ramp is None else int(self.ramp)

    @property
    def new_share(self) -> float:
        lo, hi, r = self._floor, self._steady, self._ramp
        if not 0.0 < lo <= 1.0 or not 0.0 < hi <= 1.0:
            raise ValueError("floor and steady must be in (0, 1]")
        if r <= 0 or self.steps >= r:
            return hi
        return lo + (hi - lo) * self.steps / r

    def replay_count(self, n_new: int) -> int:
        """Replayed examples to add to ``n_new`` new ones so the new share is :attr:`new_share`."""
        s = self.new_share
        return int(round(n_new * (1.0 - s) / s))

    def restart(self) -> None:
        """A boundary: start the ramp again."""
        self.steps = 0

    def tick(self) -> None:
        self.steps += 1

    def save_state(self, writer: Any) -> None:
        writer.put_json("steps", self.steps)

    def load_state(self, reader: Any) -> None:
        self.steps = int(reader.json("steps"))
