"""The records of the protocols and their strength (decay-based forgetting).

Each record keeps, next to its content, what its strength needs: when it was last
accessed, how often it was used, when it was last reinforced and how important it
was marked. Strength (spec: Forgetting and decay)::

    (e^(-0.693 d / half_life) + min(0.4, 0.1 ln(1 + accesses)) + min(0.3, 0.1 r7)) * (0.5 + 0.5 importance)

clipped to [0, 1], with ``d`` the days since the last access and ``r7`` the
reinforcements in the last 7 days. Records serialize as positional rows (compact
orjson arrays); counts and times are integers, so a decoded state equals the original.
"""
from __future__ import annotations

import hashlib
import math
import operator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from workers.errors import CorruptStateError

__all__ = ("Outcome", "Heuristic", "AntiPattern", "Knowledge", "Preference", "RECORD_TYPES", "HALF_LIFE_DAYS",
           "DAY_MS", "strength", "entry_id", "DEFAULT_IMPORTANCE")

DAY_MS = 86_400_000
# Half-lives in days per kind (the spec's): preferences are stable, outcomes are raw material.
HALF_LIFE_DAYS = {"heuristic": 60.0, "outcome": 30.0, "preference": 365.0, "knowledge": 90.0,
                  "anti_pattern": 45.0}
DEFAULT_IMPORTANCE = 0.5     # the reference's "middle importance": factor 0.75
_LN2 = 0.693                 # the spec writes the decay with 0.693, kept so values match it exactly
_ACCESS_CAP, _ACCESS_STEP = 0.4, 0.1
_REINFORCE_CAP, _REINFORCE_STEP = 0.3, 0.1
_REINFORCE_WINDOW_MS = 7 * DAY_MS
# Only the latest reinforcements can count: 3 x 0.1 reaches the cap, older ones add nothing.
_REINFORCE_KEEP = 3
_ID_HEX = 16                 # 64-bit content ids: collisions are negligible within one session


def strength(*, days_since_access: float, accesses: int, reinforcements_7d: int, importance: float,
             half_life_days: float) -> float:
    """The spec's strength formula, clipped to [0, 1].

    >>> round(strength(days_since_access=0, accesses=0, reinforcements_7d=0, importance=0.5,
    ...                half_life_days=60), 4)
    0.75
    """
    return _strength(days_since_access, accesses, reinforcements_7d, importance, half_life_days)


def _strength(days: float, accesses: float, r7: int, importance: float, half_life: float) -> float:
    # The one implementation, positional and branchy: quota eviction ranks a full table per outcome.
    base = math.exp(-_LN2 * days / half_life) if days > 0 else 1.0
    access = min(_ACCESS_CAP, _ACCESS_STEP * math.log1p(accesses)) if accesses > 0 else 0.0
    reinf = min(_REINFORCE_CAP, _REINFORCE_STEP * r7) if r7 > 0 else 0.0
    s = (base + access + reinf) * (0.5 + 0.5 * importance)
    return 1.0 if s > 1.0 else 0.0 if s < 0.0 else s


def entry_id(prefix: str, *parts: str) -> str:
    """A content id: the same key always gives the same id, on every worker and replay."""
    h = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=_ID_HEX // 2).hexdigest()
    return f"{prefix}-{h}"


@dataclass(slots=True)
class _Record:
    """Fields every record shares for its strength (they end every row)."""

    KIND: ClassVar[str] = ""
    FIELDS: ClassVar[tuple[str, ...]] = ()
    _TAIL: ClassVar[tuple[str, ...]] = ("last_access", "accesses", "reinforced", "importance")

    def touch(self, now_ms: int) -> None:
        self.last_access = max(self.last_access, now_ms)

    def reinforce(self, now_ms: int) -> None:
        self.touch(now_ms)
        self.reinforced = sorted([*self.reinforced, now_ms])[-_REINFORCE_KEEP:]

    def strength(self, now_ms: int) -> float:
        rf = self.reinforced
        r7 = sum(1 for t in rf if 0 <= now_ms - t < _REINFORCE_WINDOW_MS) if rf else 0
        return _strength((now_ms - self.last_access) / DAY_MS, self.accesses, r7, self.importance,
                         HALF_LIFE_DAYS[self.KIND])

    def row(self) -> tuple[Any, ...]:
        """The record's values in ``FIELDS`` + tail order (orjson writes the tuple as an array)."""
        return _ROW[type(self)](self)

    @classmethod
    def from_row(cls, row: Any) -> Any:
        n = len(cls.FIELDS) + len(cls._TAIL)
        if not isinstance(row, list) or len(row) != n:
            raise CorruptStateError(f"protocols state: a {cls.KIND} row must hold {n} values")
        return cls(*row)

    def strength_view(self, now_ms: int) -> dict[str, Any]:
        return {"strength": round(self.strength(now_ms), 6), "accesses": self.accesses,
                "importance": self.importance, "last_access": self.last_access}


@dataclass(slots=True)
class Outcome(_Record):
    """One task outcome of an agent (the raw material of heuristics and anti-patterns)."""

    KIND: ClassVar[str] = "outcome"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "project_id", "task", "task_type", "success", "strategy", "ts",
                                         "duration_ms", "error", "error_sig", "feedback")
    id: str
    project_id: str
    task: str
    task_type: str
    success: bool
    strategy: str
    ts: int
    duration_ms: int | None
    error: str
    error_sig: str
    feedback: str
    last_access: int = 0
    accesses: int = 0
    reinforced: list[int] = field(default_factory=list)
    importance: float = DEFAULT_IMPORTANCE

    def view(self, agent: str) -> dict[str, Any]:
        out = {"record_id": self.id, "kind": "outcome", "agent": agent, "project_id": self.project_id,
               "task": self.task, "task_type": self.task_type, "success": self.success, "strategy": self.strategy,
               "ts": self.ts}
        if self.duration_ms is not None:
            out["duration_ms"] = self.duration_ms
        if self.error:
            out["error"] = self.error
            out["error_signature"] = self.error_sig
        if self.feedback:
            out["feedback"] = self.feedback
        return out


@dataclass(slots=True)
class Heuristic(_Record):
    """A strategy that works for a task type: one per (agent, project, task type, normalized strategy)."""

    KIND: ClassVar[str] = "heuristic"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "project_id", "condition", "strategy", "occurrences", "successes",
                                         "created_at", "last_validated", "example_task")
    id: str
    project_id: str
    condition: str
    strategy: str
    occurrences: int
    successes: int
    created_at: int
    last_validated: int
    example_task: str
    last_access: int = 0
    accesses: int = 0
    reinforced: list[int] = field(default_factory=list)
    importance: float = DEFAULT_IMPORTANCE

    @property
    def confidence(self) -> float:
        """The success share (the spec's confidence)."""
        return self.successes / self.occurrences if self.occurrences else 0.0

    @property
    def posterior(self) -> float:
        """Mean of Beta(1 + successes, 1 + failures): three successes give 0.8, not certainty."""
        return (1 + self.successes) / (2 + self.occurrences)

    def view(self, agent: str) -> dict[str, Any]:
        return {"record_id": self.id, "kind": "heuristic", "agent": agent, "project_id": self.project_id,
                "condition": self.condition, "strategy": self.strategy, "confidence": self.confidence,
                "posterior": self.posterior, "occurrences": self.occurrences, "successes": self.successes,
                "created_at": self.created_at, "last_validated": self.last_validated}


@dataclass(slots=True)
class AntiPattern(_Record):
    """A strategy that keeps failing the same way: one per (agent, project, error signature)."""

    KIND: ClassVar[str] = "anti_pattern"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "project_id", "task_type", "pattern", "why_bad", "error",
                                         "better_alternative", "better_alternative_id", "occurrences",
                                         "created_at", "last_seen", "example_task")
    id: str
    project_id: str
    task_type: str
    pattern: str
    why_bad: str
    error: str
    better_alternative: str | None
    better_alternative_id: str | None
    occurrences: int
    created_at: int
    last_seen: int
    example_task: str
    last_access: int = 0
    accesses: int = 0
    reinforced: list[int] = field(default_factory=list)
    importance: float = DEFAULT_IMPORTANCE

    def view(self, agent: str) -> dict[str, Any]:
        return {"record_id": self.id, "kind": "anti_pattern", "agent": agent, "project_id": self.project_id,
                "task_type": self.task_type, "pattern": self.pattern, "why_bad": self.why_bad, "error": self.error,
                "better_alternative": self.better_alternative, "better_alternative_id": self.better_alternative_id,
                "occurrences": self.occurrences, "created_at": self.created_at, "last_seen": self.last_seen}


@dataclass(slots=True)
class Knowledge(_Record):
    """A domain fact an agent holds: one per (agent, project, domain, normalized fact)."""

    KIND: ClassVar[str] = "knowledge"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "project_id", "domain", "fact", "source", "confidence",
                                         "created_at", "last_verified")
    id: str
    project_id: str
    domain: str
    fact: str
    source: str
    confidence: float
    created_at: int
    last_verified: int
    last_access: int = 0
    accesses: int = 0
    reinforced: list[int] = field(default_factory=list)
    importance: float = DEFAULT_IMPORTANCE

    def view(self, agent: str) -> dict[str, Any]:
        return {"record_id": self.id, "kind": "knowledge", "agent": agent, "project_id": self.project_id,
                "domain": self.domain, "fact": self.fact, "source": self.source, "confidence": self.confidence,
                "created_at": self.created_at, "last_verified": self.last_verified}


@dataclass(slots=True)
class Preference(_Record):
    """A user's preference (session-wide, any agent): one per (user, category, normalized preference)."""

    KIND: ClassVar[str] = "preference"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "user_id", "category", "preference", "source", "confidence",
                                         "created_at", "updated_at")
    id: str
    user_id: str
    category: str
    preference: str
    source: str
    confidence: float
    created_at: int
    updated_at: int
    last_access: int = 0
    accesses: int = 0
    reinforced: list[int] = field(default_factory=list)
    importance: float = DEFAULT_IMPORTANCE

    def view(self, agent: str | None = None) -> dict[str, Any]:
        return {"record_id": self.id, "kind": "preference", "user_id": self.user_id, "category": self.category,
                "preference": self.preference, "source": self.source, "confidence": self.confidence,
                "created_at": self.created_at, "updated_at": self.updated_at}


RECORD_TYPES: dict[str, type[_Record]] = {c.KIND: c for c in (Outcome, Heuristic, AntiPattern, Knowledge,
                                                               Preference)}
# One C-level getter per type: serializing a full session reads ~20k attributes.
_ROW = {c: operator.attrgetter(*c.FIELDS, *c._TAIL) for c in RECORD_TYPES.values()}
