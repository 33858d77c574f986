"""Verbs of the agent learning protocols (table ``"agent"``, part ``"protocols"``).

Writes (each travels through its topic, so a replay rebuilds the state):

- ``learn_outcome`` (``outcomes``): one ``agent.outcomes`` event, or an envelope
  ``{session_key, outcomes: [...]}`` validated whole before anything is learned.
- ``add_preference``, ``add_knowledge``, ``forget``, ``mark_used`` (``commands``).

Reads: ``retrieve`` (what applies to a task) and ``heuristics`` (list what was learned).

Every heuristic or anti-pattern created, updated or removed is emitted with
``ctx.emit("heuristics", ...)``; the worker produces it to ``agent.heuristics`` with
the deterministic id of the outcome that caused it.

Time is event time, never the wall clock: an outcome's ``ts``, else the body's
``now_ms``, else the source record's timestamp, else the latest time the session
has seen. Reads take ``now_ms`` or the latest time seen.
"""
from __future__ import annotations

from typing import Any

from workers.verbs.fields import int_in, number_in
from workers.errors import VerbError
from workers.protocols.memory import PART, ProtocolConfig, ProtocolsState
from workers.protocols.entries import Outcome
from workers.protocols.retrieval import retrieve as _retrieve
from workers.protocols.similarity import StrategyMatcher, WordOverlap
from workers.protocols.text import error_line, error_signature, infer_task_type
from workers.state.blob import StateBlob
from workers.verbs.registry import VerbContext, health_contributor, params, verb

__all__ = ("PART", "parse_outcomes", "protocols_health", "set_matcher", "matcher", "CONFIG")


CONFIG = ProtocolConfig()
_MAX_OUTCOMES = 1000         # per envelope (the topic schema's maxItems)
_MAX_IDS = 1000              # per mark_used
_MAX_TOP_K = 50
_MAX_TOKEN_BUDGET = 1_000_000
_MAX_DAYS = 36_500           # forget horizon: a century is "everything"
# Longest accepted text per field: generous for prompts and tracebacks, bounded for the table value.
_LEN = {"id": 128, "agent": 128, "project_id": 128, "task_type": 64, "task": 1000, "strategy": 500,
        "error": 8000, "feedback": 1000, "user_id": 128, "category": 128, "preference": 1000, "source": 64,
        "domain": 128, "fact": 1000, "session_key": 256}
_MAX_QUERY = 8000            # characters of a retrieval task (a whole prompt may be the query)
_STORED_ERROR = 300          # characters of the failing line kept with an outcome (its signature is kept too)
_DEFAULT_SOURCE = "inferred"

_MATCHER: StrategyMatcher | None = None
_INCLUDE = ("outcomes", "knowledge", "preferences")  # what ``heuristics`` may list besides heuristics

# building blocks of the verbs' body schemas (``params``)
_TEXT = {"type": "string", "minLength": 1}
_UNIT = {"type": "number", "minimum": 0, "maximum": 1}
# the default as an agent meets it: through HTTP, MCP or a topic a write is a Kafka record, whose timestamp
# is when it was sent; "the latest seen" alone (an in-process call) made an outside trial's replay of
# history age every record to the wall clock without knowing why
_MS = {"type": "integer", "minimum": 0,
       "description": "event time, epoch ms (default: when the write was sent, its Kafka record's timestamp; in "
                      "process, the latest time seen). Send it when replaying history: a later time ages every record"}


def _text(name: str, **extra: object) -> dict:
    """The schema of a text field as the verbs check it: not blank, at most its ``_LEN`` characters (the MCP
    tools show it, so an agent learns a limit from the schema instead of from a refusal)."""
    return {**_TEXT, "maxLength": _LEN[name], "pattern": "\\S", **extra}


def matcher() -> StrategyMatcher:
    """The strategy matcher of this process (word overlap unless an embedder is configured)."""
    global _MATCHER
    if _MATCHER is None:
        _MATCHER = WordOverlap()
    return _MATCHER


def set_matcher(m: StrategyMatcher | None) -> None:
    """Use ``m`` for strategy similarity and retrieval (None: back to word overlap). The worker sets
    the one ``LEARNSTREAM_PROTOCOLS_EMBEDDER`` names (``workers.verbs.surface.configure``)."""
    global _MATCHER
    _MATCHER = m


# -- reading bodies ------------------------------------------------------------
def _str(body: dict, field: str, p: str = "", *, required: bool = False, empty: bool = False,
         default: str | None = None) -> str | None:
    v = body.get(field)
    if v is None:
        if required:
            raise VerbError(f"{p}{field} required")
        return default
    n = _LEN[field]
    if not isinstance(v, str) or len(v) > n or (not empty and not v.strip()):  # blank counts as empty
        kind = "a string" if empty else "a non-empty string"
        raise VerbError(f"{p}{field} must be {kind} of at most {n} characters")
    return v


_MS_MAX = 2**53  # times and durations stay exact in JSON numbers


def _ms(body: dict, field: str, p: str = "", unit: str = "epoch ms") -> int | None:
    v = body.get(field)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _MS_MAX:
        raise VerbError(f"{p}{field} must be a non-negative integer ({unit})")
    return v


def _state(ctx: VerbContext) -> ProtocolsState | None:
    return ctx.state.get(PART, ProtocolsState) if ctx.state is not None else None


def _writable(ctx: VerbContext) -> ProtocolsState:
    s = _state(ctx)
    if s is None:
        s = ProtocolsState()
        ctx.state.set(PART, s)
    return s


def _now(ctx: VerbContext, body: dict, state: ProtocolsState | None) -> int:
    """Event time: body ``now_ms``, else the source record's timestamp, else the latest time seen."""
    now = _ms(body, "now_ms")
    if now is not None:
        return now
    ts = (ctx.source or {}).get("timestamp_ms")
    if isinstance(ts, int) and not isinstance(ts, bool) and ts > 0:
        return ts
    return state.clock_ms if state is not None else 0


def _check_agents(state: ProtocolsState | None, names: list[str]) -> None:
    have = len(state.agents) if state is not None else 0
    new = state.new_agents(names) if state is not None else list(dict.fromkeys(names))
    if have + len(new) > CONFIG.max_agents:
        raise VerbError(f"agent {new[CONFIG.max_agents - have]!r} would exceed this session's "
                        f"{CONFIG.max_agents} agents; use another session_key")


def _emit(ctx: VerbContext, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for ev in events:
        out = {"session_key": ctx.session_key, **ev}
        if ctx.source is not None:
            out["source"] = dict(ctx.source)
        ctx.emit("heuristics", out)
    return [{"kind": e["kind"], "status": e["status"], "record_id": e["record_id"]} for e in events]


# -- outcomes --------------------------------------------------------------------
def _outcome(ev: dict, p: str, session_key: str, default_ms: int) -> tuple[str, Outcome]:
    """(agent, Outcome) of one validated ``agent.outcomes`` event."""
    sk = ev.get("session_key", session_key)
    if sk != session_key:
        raise VerbError(f"{p}session_key differs from the envelope's" if p
                        else "session_key differs from the message's")
    oid = _str(ev, "id", p, required=True)
    agent = _str(ev, "agent", p, required=True)
    project = _str(ev, "project_id", p, empty=True, default="")
    task = _str(ev, "task", p, required=True)
    task_type = _str(ev, "task_type", p, empty=True, default="") or infer_task_type(task)
    success = ev.get("success")
    if success is None:
        raise VerbError(f"{p}success required")
    if not isinstance(success, bool):
        raise VerbError(f"{p}success must be a boolean")
    strategy = _str(ev, "strategy", p, required=True)
    duration = _ms(ev, "duration_ms", p, unit="ms")
    error = _str(ev, "error", p, empty=True, default="")
    feedback = _str(ev, "feedback", p, empty=True, default="")
    ts = _ms(ev, "ts", p)
    sig = error_signature(error) if error else ""
    line = error_line(error).strip()
    return agent, Outcome(oid, project, task, task_type, success, strategy, default_ms if ts is None else ts,
                          duration, line[:_STORED_ERROR], sig, feedback)


def parse_outcomes(body: dict, session_key: str, default_ms: int) -> list[tuple[str, Outcome]]:
    """Every outcome of a single-outcome body or an envelope, validated (VerbError on the first bad field)."""
    if "outcomes" not in body:
        return [_outcome(body, "", session_key, default_ms)]
    items = body["outcomes"]
    if not isinstance(items, list) or not items:
        raise VerbError("outcomes must be a non-empty array")
    if len(items) > _MAX_OUTCOMES:
        raise VerbError(f"outcomes holds {len(items)} items; at most {_MAX_OUTCOMES} per envelope")
    out = []
    for i, ev in enumerate(items):
        if not isinstance(ev, dict):
            raise VerbError(f"outcomes[{i}] must be an object")
        out.append(_outcome(ev, f"outcomes[{i}].", session_key, default_ms))
    return out


@verb("learn_outcome", table="agent", writes=True, topic="outcomes", envelope="outcomes")
def learn_outcome(ctx: VerbContext, body: dict) -> dict:
    """An ``agent.outcomes`` event ``{id, agent, task, success, strategy, project_id?, task_type?,
    duration_ms?, error?, feedback?, ts?}`` or ``{session_key, outcomes: [...]}``
    -> ``{learned, duplicates, changed: [{kind, status, record_id}], counts}``, and ``conflicting``: the ids of
    duplicates that say something else than the outcome first learned under their id (kept; an outside
    trial's re-sent id with another result was dropped without a word)."""
    state = _state(ctx)
    items = parse_outcomes(body, ctx.session_key, _now(ctx, body, state))
    _check_agents(state, [a for a, _ in items])
    state = _writable(ctx)
    m = matcher()
    learned, events, conflicting = 0, [], []
    for agent, o in items:
        am = state.agents.get(agent)
        first = am.outcomes.get(o.id) if am is not None else None
        if first is not None and (first.success, first.strategy, first.task) != (o.success, o.strategy, o.task):
            conflicting.append(o.id)
        applied, evs = state.learn(agent, o, matcher=m, config=CONFIG)
        learned += applied
        events += evs
    changed = _emit(ctx, events)
    out = {"learned": learned, "duplicates": len(items) - learned, "changed": changed, "counts": state.counts()}
    if conflicting:
        out["conflicting"] = conflicting
    return out


# -- preferences, knowledge, use ---------------------------------------------------
@verb("add_preference", table="agent", writes=True, topic="commands", params=params(
    ("user_id", "category", "preference"), user_id=_text("user_id"), category=_text("category"),
    preference=_text("preference"),
    source=_text("source", description="explicit_instruction gives confidence 1.0, else 0.7"),
    importance=_UNIT, now_ms=_MS))
def add_preference(ctx: VerbContext, body: dict) -> dict:
    """``{user_id, category, preference, source?, importance?, now_ms?}`` -> the preference and
    ``created``. Confidence 1.0 for source ``explicit_instruction``, else 0.7."""
    user = _str(body, "user_id", required=True)
    category = _str(body, "category", required=True)
    text = _str(body, "preference", required=True)
    source = _str(body, "source", default=_DEFAULT_SOURCE)
    importance = number_in(body, "importance", 0.0, 1.0)
    state = _state(ctx)
    now = _now(ctx, body, state)
    state = _writable(ctx)
    p, created, events = state.add_preference(user, category, text, source, now, importance, CONFIG,
                                                 matcher())
    _emit(ctx, events)
    return {**p.view(), "created": created}


@verb("add_knowledge", table="agent", writes=True, topic="commands", params=params(
    ("agent", "domain", "fact"), agent=_text("agent"), domain=_text("domain"), fact=_text("fact"),
    project_id={"type": "string", "maxLength": _LEN["project_id"]},
    source=_text("source", description="user_stated gives confidence 1.0, else 0.8"), importance=_UNIT, now_ms=_MS))
def add_knowledge(ctx: VerbContext, body: dict) -> dict:
    """``{agent, domain, fact, project_id?, source?, importance?, now_ms?}`` -> the fact and
    ``created``. Confidence 1.0 for source ``user_stated``, else 0.8."""
    agent = _str(body, "agent", required=True)
    domain = _str(body, "domain", required=True)
    fact = _str(body, "fact", required=True)
    project = _str(body, "project_id", empty=True, default="")
    source = _str(body, "source", default=_DEFAULT_SOURCE)
    importance = number_in(body, "importance", 0.0, 1.0)
    state = _state(ctx)
    now = _now(ctx, body, state)
    _check_agents(state, [agent])
    state = _writable(ctx)
    k, created, events = state.add_knowledge(agent, project, domain, fact, source, now, importance, CONFIG,
                                                matcher())
    _emit(ctx, events)
    return {**k.view(agent), "created": created}


@verb("mark_used", table="agent", writes=True, topic="commands", params=params(
    ("ids",), ids={"type": "array", "items": _TEXT, "minItems": 1, "maxItems": _MAX_IDS,
                   "description": "record ids that retrieve returned and the agent used"},
    agent=_TEXT, importance=_UNIT, now_ms=_MS))
def mark_used(ctx: VerbContext, body: dict) -> dict:
    """``{ids: [record_id...], agent?, importance?, now_ms?}`` -> ``{marked, unknown}``: each record
    counts one access (its strength grows); ``importance`` in [0, 1] also sets how much it matters."""
    ids = body.get("ids")
    if ids is None:
        raise VerbError("ids required")
    if (not isinstance(ids, list) or not ids or len(ids) > _MAX_IDS
            or not all(isinstance(i, str) and i for i in ids)):
        raise VerbError(f"ids must be a non-empty array of at most {_MAX_IDS} non-empty strings")
    agent = _str(body, "agent")
    importance = number_in(body, "importance", 0.0, 1.0)
    state = _state(ctx)
    now = _now(ctx, body, state)
    if state is None:
        return {"marked": 0, "unknown": sorted(set(ids))}
    marked, unknown = state.mark_used(ids, now, agent=agent, importance=importance)
    return {"marked": marked, "unknown": unknown}


# -- forgetting ----------------------------------------------------------------------
@verb("forget", table="agent", writes=True, topic="commands", params=params(
    (), older_than_days={"type": "number", "minimum": 0, "maximum": _MAX_DAYS, "default": 90},
    below_confidence={**_UNIT, "default": 0.3}, min_strength=_UNIT, agent=_TEXT, project_id={"type": "string"},
    now_ms=_MS))
def forget(ctx: VerbContext, body: dict) -> dict:
    """``{older_than_days?=90, below_confidence?=0.3, min_strength?, agent?, project_id?, now_ms?}``
    -> removed count per kind. Outcomes older than the horizon, heuristics below the confidence,
    and (with ``min_strength``) any record whose strength is below it."""
    days = number_in(body, "older_than_days", 0.0, _MAX_DAYS)
    below = number_in(body, "below_confidence", 0.0, 1.0)
    min_strength = number_in(body, "min_strength", 0.0, 1.0)
    agent = _str(body, "agent")
    project = _str(body, "project_id", empty=True)
    state = _state(ctx)
    now = _now(ctx, body, state)
    if state is None:
        return {"outcomes": 0, "heuristics": 0, "anti_patterns": 0, "knowledge": 0, "preferences": 0}
    removed, events = state.forget(now, older_than_days=90.0 if days is None else days,
                                   below_confidence=0.3 if below is None else below, min_strength=min_strength,
                                   agent=agent, project_id=project, matcher=matcher())
    _emit(ctx, events)
    return removed


# -- reads ---------------------------------------------------------------------------
@verb("retrieve", table="agent", writes=False, params=params(
    ("task", "agent"), task={**_TEXT, "description": "what the agent is about to do"}, agent=_TEXT,
    user_id=_TEXT, project_id={"type": "string"}, task_type=_TEXT,
    top_k={"type": "integer", "minimum": 1, "maximum": _MAX_TOP_K, "default": 5},
    token_budget={"type": "integer", "minimum": 1, "maximum": _MAX_TOKEN_BUDGET}, now_ms=_MS))
def retrieve(ctx: VerbContext, body: dict) -> dict:
    """``{task, agent, user_id?, project_id?, task_type?, top_k?=5, token_budget?, now_ms?}``
    -> ``{task_type, heuristics, anti_patterns, knowledge, preferences, outcomes, context, tokens, dropped}``."""
    task = body.get("task")
    if task is None:
        raise VerbError("task required")
    if not isinstance(task, str) or not task.strip() or len(task) > _MAX_QUERY:
        raise VerbError(f"task must be a non-empty string of at most {_MAX_QUERY} characters")
    agent = _str(body, "agent", required=True)
    user = _str(body, "user_id")
    project = _str(body, "project_id", empty=True)
    task_type = _str(body, "task_type")
    top_k = int_in(body, "top_k", 1, _MAX_TOP_K) or 5
    budget = int_in(body, "token_budget", 1, _MAX_TOKEN_BUDGET)
    state = _state(ctx)
    now = _now(ctx, body, state)
    return _retrieve(state, task=task, agent=agent, now_ms=now, user_id=user, project_id=project,
                     task_type=task_type, top_k=top_k, token_budget=budget, matcher=matcher())


@verb("heuristics", table="agent", writes=False, params=params(
    (), agent=_TEXT, project_id={"type": "string"}, task_type=_TEXT,
    include={"type": "array", "items": {"enum": list(_INCLUDE)}, "description": "also list these records"},
    now_ms=_MS))
def heuristics(ctx: VerbContext, body: dict) -> dict:
    """``{agent?, project_id?, task_type?, include?: ["outcomes"|"knowledge"|"preferences"], now_ms?}``
    -> ``{heuristics, anti_patterns, counts, clock_ms}`` (+ the included kinds), each record with its
    strength now. Heuristics best first (posterior), anti-patterns most frequent first."""
    agent = _str(body, "agent")
    project = _str(body, "project_id", empty=True)
    task_type = _str(body, "task_type")
    include = body.get("include", [])
    if not isinstance(include, list) or not all(k in _INCLUDE for k in include):
        raise VerbError('include must be an array of "outcomes", "knowledge", "preferences"')
    state = _state(ctx)
    now = _now(ctx, body, state)
    out: dict[str, Any] = {"heuristics": [], "anti_patterns": [], **{k: [] for k in include}}
    if state is None:
        return {**out, "counts": ProtocolsState().counts(), "clock_ms": 0}

    def keep(rec: Any, rtype: str) -> bool:
        return (project is None or rec.project_id == project) and (task_type is None or rtype == task_type)

    for name, am in state.agents.items():
        if agent is not None and name != agent:
            continue
        out["heuristics"] += [{**h.view(name), **h.strength_view(now)} for h in am.heuristics.values()
                              if keep(h, h.condition)]
        out["anti_patterns"] += [{**a.view(name), **a.strength_view(now)} for a in am.anti_patterns.values()
                                 if keep(a, a.task_type)]
        if "outcomes" in include:
            out["outcomes"] += [{**o.view(name), **o.strength_view(now)} for o in am.outcomes.values()
                                if keep(o, o.task_type)]
        if "knowledge" in include:
            out["knowledge"] += [{**k.view(name), **k.strength_view(now)} for k in am.knowledge.values()
                                 if keep(k, k.domain)]
    if "preferences" in include:
        out["preferences"] = [{**p.view(), **p.strength_view(now)} for p in state.preferences.values()]
    out["heuristics"].sort(key=lambda h: (-h["posterior"], -h["occurrences"], h["agent"], h["record_id"]))
    out["anti_patterns"].sort(key=lambda a: (-a["occurrences"], a["agent"], a["record_id"]))
    return {**out, "counts": state.counts(), "clock_ms": state.clock_ms}


@health_contributor(table="agent")
def _health(ctx: VerbContext) -> dict[str, int]:
    return protocols_health(ctx.state)


def protocols_health(blob: StateBlob | None) -> dict[str, int]:
    """Health keys of a session's agent value: ``heuristics_count``, ``anti_patterns_count``, ..."""
    state = blob.get(PART, ProtocolsState) if blob is not None else None
    counts = state.counts() if state is not None else ProtocolsState().counts()
    return {f"{k}_count": v for k, v in counts.items()}
