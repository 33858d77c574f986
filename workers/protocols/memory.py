"""A session's agent memory (the ``"protocols"`` part): learning from outcomes, preferences,
knowledge, forgetting, quotas, and its bytes.

Rules (spec: protocols.md), with the reference library's defects fixed:

- **Heuristics.** Among an agent's outcomes of one project and task type, those whose strategy is
  similar to the new one; with at least ``min_occurrences`` of them and a success share above 0.5
  a heuristic exists, confidence = the share, ``posterior`` = mean of Beta(1 + s, 1 + f). It is
  keyed by (agent, project, task type, normalized strategy) and *upserted*: a later outcome
  similar to an existing heuristic updates its counts (the closest one when several match), it
  never creates a second one. A heuristic whose share falls to 0.5 or less is retired.
- **Anti-patterns.** A failure with an error whose normalized signature equals that of at least
  one more failure among the agent's 10 most recent outcomes of the project (itself included,
  so 2 similar failures) creates one anti-pattern per (agent, project, signature); later
  failures with that signature update it. ``better_alternative`` is the best heuristic
  (highest posterior) of the same task type whose strategy is not the failing one.
- **Bounds.** Per-agent quotas (100 heuristics, 500 outcomes, 200 knowledge, 50 anti-patterns,
  plus 200 preferences per session and 16 agents) evict the weakest record first; a byte
  budget keeps the value within one Kafka message, evicting the weakest outcomes first.

Time is event time: every method takes ``now_ms`` and the state keeps the latest it saw
(``clock_ms``), so a replay of the same events rebuilds the same bytes.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from workers.state.framing import pack_part, unpack_part
from workers.errors import CorruptStateError
from workers.protocols.entries import (DAY_MS, AntiPattern, Heuristic, Knowledge, Outcome, Preference, _Record,
                                       entry_id)
from workers.protocols.similarity import StrategyMatcher, WordOverlap
from workers.protocols.text import strategy_key

__all__ = ("ProtocolConfig", "AgentMemory", "ProtocolsState", "PART", "preference_confidence",
           "knowledge_confidence")

logger = logging.getLogger(__name__)

PART = "protocols"
_MAGIC = b"LSP"
_VERSION = 1
# Sources that mean "the user said so": the reference's full-confidence sources.
_EXPLICIT_PREFERENCE = "explicit_instruction"
_USER_STATED = "user_stated"


@dataclass(frozen=True)
class ProtocolConfig:
    """Thresholds and bounds (the spec's defaults).

    Parameters
    ----------
    min_occurrences : int
        Similar outcomes needed before a heuristic exists (3).
    min_share : float
        The success share must exceed this (0.5).
    failure_window : int
        Recent outcomes searched for similar failures (10).
    min_similar_failures : int
        Similar failures (the new one included) that make an anti-pattern (2).
    max_outcomes, max_heuristics, max_knowledge, max_anti_patterns : int
        Per-agent quotas (500, 100, 200, 50); the weakest record is evicted first.
    max_preferences : int
        Preferences per session, all users (200).
    max_agents : int
        Agents per session (16): with the per-agent quotas, this bounds the session.
    max_bytes : int
        Byte budget of the serialized part (768 KiB: a table value must fit one Kafka message,
        1 MiB by default, with the watermark beside it).
    """

    min_occurrences: int = 3
    min_share: float = 0.5
    failure_window: int = 10
    min_similar_failures: int = 2
    max_outcomes: int = 500
    max_heuristics: int = 100
    max_knowledge: int = 200
    max_anti_patterns: int = 50
    max_preferences: int = 200
    max_agents: int = 16
    max_bytes: int = 768 * 1024


def preference_confidence(source: str) -> float:
    """1.0 for an explicit instruction, 0.7 otherwise (spec)."""
    return 1.0 if source == _EXPLICIT_PREFERENCE else 0.7


def knowledge_confidence(source: str) -> float:
    """1.0 when the user stated it, 0.8 otherwise (spec)."""
    return 1.0 if source == _USER_STATED else 0.8


# Bytes a change may add beyond the rows it rewrites: an agent's entry, separators, the clock's digits.
_ENTRY_SLACK = 64
# Bytes a use may add to a record: a longer access count, a later access time, an importance.
_USE_GROWTH = 48


def _row_bytes(rec: _Record) -> int:
    return len(orjson.dumps(rec.row()))


def _event(rec: Heuristic | AntiPattern, agent: str, status: str, **extra: Any) -> dict[str, Any]:
    """The ``agent.heuristics`` payload of a created, updated or removed record."""
    return {**rec.view(agent), "status": status, **extra}


def _alternative_rank(h: Heuristic, ap: AntiPattern) -> tuple:
    """How good ``h`` is as ``ap``'s better alternative, lower first: of its project, then posterior,
    evidence, age and id."""
    return (h.project_id != ap.project_id, -h.posterior, -h.occurrences, h.created_at, h.id)


class AgentMemory:
    """One agent's records, each a dict by record id in arrival order."""

    __slots__ = ("outcomes", "heuristics", "anti_patterns", "knowledge")

    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}
        self.heuristics: dict[str, Heuristic] = {}
        self.anti_patterns: dict[str, AntiPattern] = {}
        self.knowledge: dict[str, Knowledge] = {}

    def tables(self) -> tuple[dict[str, Any], ...]:
        return self.outcomes, self.heuristics, self.anti_patterns, self.knowledge

    def empty(self) -> bool:
        return not any(self.tables())


_TABLE_OF = {"outcome": "outcomes", "heuristic": "heuristics", "anti_pattern": "anti_patterns",
             "knowledge": "knowledge"}


class ProtocolsState:
    """Everything the protocols learned for one session: agents' records, users' preferences.

    >>> s = ProtocolsState()
    >>> for i in range(3):
    ...     _, ev = s.learn("tester", Outcome(f"o{i}", "", "test login", "testing", True, "fill then submit",
    ...                                       1000 * i, None, "", "", ""))
    >>> [(e["status"], e["occurrences"], round(e["posterior"], 2)) for e in ev]
    [('created', 3, 0.8)]
    """

    __slots__ = ("agents", "preferences", "clock_ms", "_bytes", "_size_bound")

    def __init__(self) -> None:
        self.agents: dict[str, AgentMemory] = {}
        self.preferences: dict[str, Preference] = {}
        self.clock_ms = 0
        self._bytes: bytes | None = None  # serialized form; every mutation drops it
        # An upper bound of the serialized size: the size at the last serialization plus what each
        # change since can add. The byte budget serializes only when this bound passes it.
        self._size_bound: int | None = None

    def _changed(self, growth: int) -> None:
        """Note a mutation that adds at most ``growth`` bytes to the serialized form."""
        self._bytes = None
        if self._size_bound is not None:
            self._size_bound += growth

    # -- reading ---------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = {"agents": len(self.agents), "outcomes": 0, "heuristics": 0, "anti_patterns": 0, "knowledge": 0}
        for am in self.agents.values():
            out["outcomes"] += len(am.outcomes)
            out["heuristics"] += len(am.heuristics)
            out["anti_patterns"] += len(am.anti_patterns)
            out["knowledge"] += len(am.knowledge)
        out["preferences"] = len(self.preferences)
        return out

    def records(self, agent: str | None = None) -> Iterator[tuple[str | None, _Record]]:
        """(agent, record) of every record (preferences with agent None, only when ``agent`` is None)."""
        for name, am in self.agents.items():
            if agent is not None and name != agent:
                continue
            for table in am.tables():
                for rec in table.values():
                    yield name, rec
        if agent is None:
            for p in self.preferences.values():
                yield None, p

    def new_agents(self, names: Iterable[str]) -> list[str]:
        return [a for a in dict.fromkeys(names) if a not in self.agents]

    # -- learning from outcomes --------------------------------------------------
    def learn(self, agent: str, o: Outcome, *, matcher: StrategyMatcher | None = None,
              config: ProtocolConfig | None = None) -> tuple[bool, list[dict[str, Any]]]:
        """Record outcome ``o`` of ``agent`` and upsert what it teaches.

        Returns (applied, events): ``applied`` is False for an outcome id this agent already has
        (a re-sent outcome counts once); ``events`` are the ``agent.heuristics`` payloads.
        """
        matcher = matcher or WordOverlap()
        config = config or ProtocolConfig()
        am = self.agents.get(agent)
        if am is not None and o.id in am.outcomes:
            return False, []
        if am is None:
            am = self.agents[agent] = AgentMemory()
        o.last_access = o.ts
        am.outcomes[o.id] = o
        self.clock_ms = max(self.clock_ms, o.ts)
        events: list[dict[str, Any]] = []
        h = self._upsert_heuristic(agent, am, o, matcher, config, events)
        ap = self._upsert_anti_pattern(agent, am, o, matcher, config, events) if not o.success and o.error_sig \
            else None
        # at most: the new outcome, the changed heuristic and anti-pattern whole, the agent's entry
        self._changed(sum(_row_bytes(r) for r in (o, h, ap) if r is not None) + len(agent) + _ENTRY_SLACK)
        events += self._evict(agent, am.outcomes, config.max_outcomes, keep=o.id)
        events += self._evict(agent, am.heuristics, config.max_heuristics, keep=h.id if h else None)
        events += self._evict(agent, am.anti_patterns, config.max_anti_patterns, keep=ap.id if ap else None)
        events += self.refresh_alternatives(events, matcher, outcome_id=o.id)
        events += self.enforce_budget(config, matcher)
        return True, events

    def refresh_alternatives(self, events: list[dict[str, Any]], matcher: StrategyMatcher,
                             **extra: Any) -> list[dict[str, Any]]:
        """Keep every anti-pattern's ``better_alternative`` the best heuristic there is now, after the
        heuristics named by ``events`` were created, updated or removed: an ``updated`` event (reason
        ``alternative``) for each anti-pattern whose alternative changed.

        An outside trial's anti-pattern kept offering a heuristic retired since, and one created before
        any heuristic was never offered the one learned later. Only an anti-pattern whose alternative
        is a changed heuristic, or that a changed heuristic now beats, is looked at again."""
        out: list[dict[str, Any]] = []
        for e in events:
            am = self.agents.get(e["agent"]) if e.get("kind") == "heuristic" else None
            if am is None:
                continue
            hid, h = e["record_id"], am.heuristics.get(e["record_id"])
            for ap in am.anti_patterns.values():
                if ap.task_type != e["condition"]:
                    continue
                if ap.better_alternative_id != hid:
                    current = am.heuristics.get(ap.better_alternative_id) if ap.better_alternative_id else None
                    if h is None or (current is not None and _alternative_rank(current, ap) <= _alternative_rank(h, ap)):
                        continue  # removed, or not better than what it offers now
                    if matcher.similar(h.strategy, ap.pattern):
                        continue
                alt = self.better_alternative(am, ap, matcher)
                new = (alt.strategy, alt.id) if alt else (None, None)
                if new != (ap.better_alternative, ap.better_alternative_id):
                    ap.better_alternative, ap.better_alternative_id = new
                    self._changed(sum(len(x) for x in new if x) + _ENTRY_SLACK)
                    out.append(_event(ap, e["agent"], "updated", reason="alternative", **extra))
        return out

    def _heuristic_for(self, agent: str, am: AgentMemory, o: Outcome, matcher: StrategyMatcher) -> Heuristic | None:
        """The heuristic ``o`` counts toward: its own key's, else the closest similar one of its kind."""
        exact = am.heuristics.get(entry_id("h", agent, o.project_id, o.task_type, strategy_key(o.strategy)))
        if exact is not None:
            return exact
        best: tuple | None = None
        for h in am.heuristics.values():
            if h.project_id == o.project_id and h.condition == o.task_type and matcher.similar(h.strategy, o.strategy):
                rank = (-matcher.score(h.strategy, o.strategy), h.created_at, h.id)
                if best is None or rank < best[0]:
                    best = (rank, h)
        return best[1] if best else None

    def _upsert_heuristic(self, agent: str, am: AgentMemory, o: Outcome, matcher: StrategyMatcher,
                          config: ProtocolConfig, events: list[dict[str, Any]]) -> Heuristic | None:
        h = self._heuristic_for(agent, am, o, matcher)
        if h is not None:
            h.occurrences += 1
            h.successes += int(o.success)
            h.last_validated = max(h.last_validated, o.ts)
            h.example_task = o.task
            if o.success:
                h.reinforce(o.ts)
            else:
                h.touch(o.ts)
            if h.confidence > config.min_share:
                events.append(_event(h, agent, "updated", outcome_id=o.id))
                return h
            del am.heuristics[h.id]
            events.append(_event(h, agent, "removed", reason="retired", outcome_id=o.id))
            return None
        same = [x for x in am.outcomes.values()
                if x.project_id == o.project_id and x.task_type == o.task_type and matcher.similar(x.strategy, o.strategy)]
        wins = sum(1 for x in same if x.success)
        if len(same) < config.min_occurrences or wins / len(same) <= config.min_share:
            return None
        hid = entry_id("h", agent, o.project_id, o.task_type, strategy_key(o.strategy))
        h = Heuristic(hid, o.project_id, o.task_type, o.strategy, len(same), wins, o.ts, o.ts, o.task,
                      last_access=o.ts)
        am.heuristics[hid] = h
        events.append(_event(h, agent, "created", outcome_id=o.id))
        return h

    def _upsert_anti_pattern(self, agent: str, am: AgentMemory, o: Outcome, matcher: StrategyMatcher,
                             config: ProtocolConfig, events: list[dict[str, Any]]) -> AntiPattern | None:
        aid = entry_id("a", agent, o.project_id, o.error_sig)
        ap = am.anti_patterns.get(aid)
        if ap is None:
            recent: list[Outcome] = []
            for x in reversed(am.outcomes.values()):
                if x.project_id == o.project_id:
                    recent.append(x)
                    if len(recent) == config.failure_window:
                        break
            similar = sum(1 for x in recent if not x.success and x.error_sig == o.error_sig)
            if similar < config.min_similar_failures:
                return None
            ap = AntiPattern(aid, o.project_id, o.task_type, o.strategy, o.error_sig, o.error, None, None, similar,
                             o.ts, o.ts, o.task, last_access=o.ts)
            am.anti_patterns[aid] = ap
            status = "created"
        else:
            ap.occurrences += 1
            ap.last_seen = max(ap.last_seen, o.ts)
            ap.task_type, ap.pattern, ap.error, ap.example_task = o.task_type, o.strategy, o.error, o.task
            ap.reinforce(o.ts)
            status = "updated"
        alt = self.better_alternative(am, ap, matcher)
        ap.better_alternative = alt.strategy if alt else None
        ap.better_alternative_id = alt.id if alt else None
        events.append(_event(ap, agent, status, outcome_id=o.id))
        return ap

    @staticmethod
    def better_alternative(am: AgentMemory, ap: AntiPattern, matcher: StrategyMatcher) -> Heuristic | None:
        """The best heuristic (posterior, then evidence) of the anti-pattern's task type whose strategy is
        not the failing one: of its own project if it has one, else of any project (the spec: "the best
        heuristic of the same task type when one exists"; an outside trial's heuristic without a project
        was never offered to a project's anti-pattern)."""
        cands = [h for h in am.heuristics.values()
                 if h.condition == ap.task_type and not matcher.similar(h.strategy, ap.pattern)]
        return min(cands, key=lambda h: _alternative_rank(h, ap), default=None)

    # -- preferences and knowledge -----------------------------------------------
    def add_preference(self, user_id: str, category: str, preference: str, source: str, now_ms: int,
                       importance: float | None = None, config: ProtocolConfig | None = None,
                       matcher: StrategyMatcher | None = None) -> tuple[Preference, bool, list[dict[str, Any]]]:
        """Upsert a preference; (record, created, events of records the byte budget evicted).
        A repeat reinforces it and keeps the higher confidence."""
        config = config or ProtocolConfig()
        self.clock_ms = max(self.clock_ms, now_ms)
        pid = entry_id("p", user_id, category, strategy_key(preference))
        conf = preference_confidence(source)
        p = self.preferences.get(pid)
        created = p is None
        if p is None:
            p = Preference(pid, user_id, category, preference, source, conf, now_ms, now_ms, last_access=now_ms)
            self.preferences[pid] = p
        else:
            p.preference, p.updated_at = preference, max(p.updated_at, now_ms)
            if conf >= p.confidence:
                p.source, p.confidence = source, conf
            p.reinforce(now_ms)
        if importance is not None:
            p.importance = importance
        self._changed(_row_bytes(p) + _ENTRY_SLACK)
        self._evict(None, self.preferences, config.max_preferences, keep=pid)
        return p, created, self.enforce_budget(config, matcher)

    def add_knowledge(self, agent: str, project_id: str, domain: str, fact: str, source: str, now_ms: int,
                      importance: float | None = None, config: ProtocolConfig | None = None,
                      matcher: StrategyMatcher | None = None) -> tuple[Knowledge, bool, list[dict[str, Any]]]:
        """Upsert a domain fact; (record, created, events of records the bounds evicted)."""
        config = config or ProtocolConfig()
        self.clock_ms = max(self.clock_ms, now_ms)
        am = self.agents.setdefault(agent, AgentMemory())
        kid = entry_id("k", agent, project_id, domain, strategy_key(fact))
        conf = knowledge_confidence(source)
        k = am.knowledge.get(kid)
        created = k is None
        if k is None:
            k = Knowledge(kid, project_id, domain, fact, source, conf, now_ms, now_ms, last_access=now_ms)
            am.knowledge[kid] = k
        else:
            k.fact, k.last_verified = fact, max(k.last_verified, now_ms)
            if conf >= k.confidence:
                k.source, k.confidence = source, conf
            k.reinforce(now_ms)
        if importance is not None:
            k.importance = importance
        self._changed(_row_bytes(k) + len(agent) + _ENTRY_SLACK)
        self._evict(agent, am.knowledge, config.max_knowledge, keep=kid)
        return k, created, self.enforce_budget(config, matcher)

    def mark_used(self, ids: Iterable[str], now_ms: int, *, agent: str | None = None,
                  importance: float | None = None) -> tuple[int, list[str]]:
        """Count a use of each record (an access: strength grows); (marked, unknown ids).

        Reads never change state (the log is the truth), so an agent that used what ``retrieve``
        gave it says so with this write.
        """
        wanted = set(ids)
        self.clock_ms = max(self.clock_ms, now_ms)
        seen: set[str] = set()
        marked = 0
        # the session's preferences are every agent's (retrieve gives them to each): with ``agent`` they
        # were reported unknown (an outside trial)
        shared = self.preferences.values() if agent is not None else ()
        for rec in itertools.chain((r for _, r in self.records(agent)), shared):
            if rec.id in wanted:
                rec.accesses += 1
                rec.touch(now_ms)
                if importance is not None:
                    rec.importance = importance
                seen.add(rec.id)
                marked += 1
        self._changed(marked * _USE_GROWTH + _ENTRY_SLACK)
        return marked, sorted(wanted - seen)

    # -- forgetting ----------------------------------------------------------------
    def forget(self, now_ms: int, *, older_than_days: float = 90.0, below_confidence: float = 0.3,
               min_strength: float | None = None, agent: str | None = None, project_id: str | None = None,
               matcher: StrategyMatcher | None = None) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """Prune outcomes older than ``older_than_days``, heuristics whose confidence is below
        ``below_confidence`` and, with ``min_strength``, any record weaker than it.

        Returns (removed count per kind, events for removed heuristics and anti-patterns).
        """
        self._changed(_ENTRY_SLACK)  # forgetting shrinks the state (a refreshed alternative counts its own growth)
        self.clock_ms = max(self.clock_ms, now_ms)
        cutoff = now_ms - older_than_days * DAY_MS
        removed = {"outcomes": 0, "heuristics": 0, "anti_patterns": 0, "knowledge": 0, "preferences": 0}
        events: list[dict[str, Any]] = []

        def weak(rec: _Record) -> bool:
            return min_strength is not None and rec.strength(now_ms) < min_strength

        for name, am in list(self.agents.items()):
            if agent is not None and name != agent:
                continue
            for kind, table in zip(("outcomes", "heuristics", "anti_patterns", "knowledge"), am.tables(),
                                   strict=True):
                for rid, rec in list(table.items()):
                    if project_id is not None and rec.project_id != project_id:
                        continue
                    drop = weak(rec) or (kind == "outcomes" and rec.ts < cutoff) or (
                        kind == "heuristics" and rec.confidence < below_confidence)
                    if drop:
                        del table[rid]
                        removed[kind] += 1
                        if kind in ("heuristics", "anti_patterns"):
                            events.append(_event(rec, name, "removed", reason="forget"))
            if am.empty():
                del self.agents[name]
        if agent is None and project_id is None:
            for pid, p in list(self.preferences.items()):
                if weak(p):
                    del self.preferences[pid]
                    removed["preferences"] += 1
        return removed, events + self.refresh_alternatives(events, matcher or WordOverlap())

    def _evict(self, agent: str | None, table: dict[str, Any], quota: int, keep: str | None) -> list[dict[str, Any]]:
        """Drop the weakest records (strength now, then least recently accessed) until ``quota`` holds."""
        if len(table) <= quota:
            return []
        now = self.clock_ms
        cands = (r for r in table.values() if r.id != keep)
        rank = lambda r: (r.strength(now), r.last_access, r.id)  # noqa: E731
        over = len(table) - quota
        # one over the quota is the steady state of a full table: a scan, not a sort
        victims = [min(cands, key=rank)] if over == 1 else sorted(cands, key=rank)[:over]
        events = []
        for rec in victims:
            del table[rec.id]
            if isinstance(rec, (Heuristic, AntiPattern)):
                events.append(_event(rec, agent or "", "removed", reason="quota"))
        return events

    def enforce_budget(self, config: ProtocolConfig | None = None,
                       matcher: StrategyMatcher | None = None) -> list[dict[str, Any]]:
        """Evict the weakest records until the serialized state fits ``max_bytes``:
        outcomes first (heuristics distill them), then knowledge, anti-patterns, heuristics, preferences;
        anti-patterns whose alternative was evicted are given the next best (``refresh_alternatives``),
        and the budget checked again."""
        events: list[dict[str, Any]] = []
        new = self._fit_budget(config or ProtocolConfig())
        while new:
            events += new
            refreshed = self.refresh_alternatives(new, matcher or WordOverlap())
            if not refreshed:
                break
            events += refreshed
            new = self._fit_budget(config or ProtocolConfig())
        return events

    def _fit_budget(self, config: ProtocolConfig) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._size_bound is not None and self._size_bound <= config.max_bytes:
            return events
        excess = len(self.to_bytes()) - config.max_bytes
        if excess <= 0:
            return events
        now = self.clock_ms
        for kind in ("outcome", "knowledge", "anti_pattern", "heuristic", "preference"):
            if kind == "preference":
                cands = [(p.strength(now), p.last_access, "", p.id, None, p) for p in self.preferences.values()]
            else:
                cands = [(r.strength(now), r.last_access, name, r.id, name, r)
                         for name, am in self.agents.items() for r in getattr(am, _TABLE_OF[kind]).values()]
            cands.sort(key=lambda c: c[:4])
            for *_, name, rec in cands:
                if excess <= 0:
                    break
                table = self.preferences if name is None else getattr(self.agents[name], _TABLE_OF[kind])
                del table[rec.id]
                excess -= _row_bytes(rec) + 1  # the row and its comma
                if isinstance(rec, (Heuristic, AntiPattern)):
                    events.append(_event(rec, name or "", "removed", reason="budget"))
            if excess <= 0:
                break
        for name in [n for n, am in self.agents.items() if am.empty()]:
            del self.agents[name]
        self._bytes = self._size_bound = None
        logger.info("protocols: state over its %d-byte budget; evicted the weakest records", config.max_bytes)
        return events

    # -- bytes -------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        if self._bytes is None:
            body = {"clock": self.clock_ms,
                    "agents": [[name, *([r.row() for r in t.values()] for t in am.tables())]
                               for name, am in self.agents.items()],
                    "prefs": [p.row() for p in self.preferences.values()]}
            self._bytes = pack_part(_MAGIC, _VERSION, body)
            self._size_bound = len(self._bytes)
        return self._bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> ProtocolsState:
        body, _ = unpack_part(data, _MAGIC, _VERSION, "protocols")
        s = cls()
        try:
            s.clock_ms = int(body["clock"])
            for name, outs, heur, anti, know in body["agents"]:
                am = s.agents[name] = AgentMemory()
                for table, rc, rows in zip(am.tables(), (Outcome, Heuristic, AntiPattern, Knowledge),
                                           (outs, heur, anti, know), strict=True):
                    for row in rows:
                        rec = rc.from_row(row)
                        table[rec.id] = rec
            for row in body["prefs"]:
                p = Preference.from_row(row)
                s.preferences[p.id] = p
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStateError(f"protocols state is malformed ({exc})") from None
        s._bytes = bytes(data)
        s._size_bound = len(data)
        return s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProtocolsState) and other.to_bytes() == self.to_bytes()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"ProtocolsState({self.counts()}, clock_ms={self.clock_ms})"
