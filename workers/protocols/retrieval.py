"""What applies to a task: heuristics, anti-patterns, knowledge, preferences and recent outcomes.

Every candidate is scored (spec: Retrieval; the reference library's weights)::

    score = 0.4 similarity + 0.3 recency + 0.2 success + 0.1 confidence

- similarity: 0.5 when the record is about the task's type (a heuristic's condition, an
  outcome's or anti-pattern's task type, a knowledge domain) + 0.5 x the relevance of its
  text to the task (word overlap, or cosine with an embedder); a user's preferences always
  apply, other records need a similarity above 0;
- recency: 0.5 ^ (days since last validated / seen / verified / updated / happened / 30);
- success: a heuristic's success share; an outcome 1.0 (success) or 0.3 (failure, still a
  lesson); an anti-pattern min(occurrences / 10, 1) (the more it happened, the more it matters);
  knowledge and preferences 1.0;
- confidence: a heuristic's Beta posterior mean (so thin evidence ranks lower), the stored
  confidence of knowledge and preferences, 1.0 for outcomes and anti-patterns.

The best ``top_k`` of each kind are kept. With a ``token_budget`` they are taken kind by kind,
distilled lessons before raw material (the reference's "must see" tier first): preferences,
anti-patterns, heuristics, then knowledge and outcomes, each kind best first, while their
rendered text fits (an item that does not fit is skipped; a smaller later one may still fit).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.protocols.memory import ProtocolsState
from workers.protocols.entries import DAY_MS, AntiPattern, Heuristic, Knowledge, Preference
from workers.protocols.similarity import StrategyMatcher, WordOverlap
from workers.protocols.text import estimate_tokens, infer_task_type

__all__ = ("retrieve", "ScoreWeights", "WEIGHTS", "RECENCY_HALF_LIFE_DAYS", "KINDS", "recency")

RECENCY_HALF_LIFE_DAYS = 30.0
_TYPE_MATCH = 0.5            # share of similarity that "same task type" gives
_FAILED_OUTCOME_SUCCESS = 0.3  # a failure is still worth recalling, less than a success
_ANTI_PATTERN_SATURATION = 10  # occurrences at which an anti-pattern's weight is full
# Kinds in budget order: what the user asked for and what was learned to avoid or to do come first.
KINDS = ("preferences", "anti_patterns", "heuristics", "knowledge", "outcomes")


@dataclass(frozen=True)
class ScoreWeights:
    similarity: float = 0.4
    recency: float = 0.3
    success: float = 0.2
    confidence: float = 0.1


WEIGHTS = ScoreWeights()


def recency(age_ms: int, half_life_days: float = RECENCY_HALF_LIFE_DAYS) -> float:
    """0.5 ^ (age in days / half-life); 1 for a record from the future (clock skew between agents)."""
    return 0.5 ** (max(0, age_ms) / DAY_MS / half_life_days)


def _render(rec: Any) -> str:
    if isinstance(rec, Heuristic):
        return (f"For {rec.condition} tasks: {rec.strategy} (worked {rec.successes}/{rec.occurrences}, "
                f"confidence {rec.posterior:.2f})")
    if isinstance(rec, AntiPattern):
        alt = f"; instead: {rec.better_alternative}" if rec.better_alternative else ""
        return f"Avoid: {rec.pattern} (failed {rec.occurrences}x: {rec.why_bad}){alt}"
    if isinstance(rec, Knowledge):
        return f"{rec.domain}: {rec.fact}"
    if isinstance(rec, Preference):
        return f"User preference ({rec.category}): {rec.preference}"
    verdict = "Succeeded" if rec.success else "Failed"
    err = f" ({rec.error_sig})" if not rec.success and rec.error_sig else ""
    return f"{verdict}: {rec.task} via {rec.strategy}{err}"


def _facets(rec: Any, task_type: str) -> tuple[bool, str, int, float, float]:
    """(type match, text to compare with the task, time of last validation, success, confidence)."""
    if isinstance(rec, Heuristic):
        return (rec.condition == task_type, f"{rec.strategy} {rec.example_task}", rec.last_validated,
                rec.confidence, rec.posterior)
    if isinstance(rec, AntiPattern):
        return (rec.task_type == task_type, f"{rec.pattern} {rec.why_bad} {rec.example_task}", rec.last_seen,
                min(rec.occurrences / _ANTI_PATTERN_SATURATION, 1.0), 1.0)
    if isinstance(rec, Knowledge):
        return rec.domain == task_type, f"{rec.domain} {rec.fact}", rec.last_verified, 1.0, rec.confidence
    if isinstance(rec, Preference):
        return False, f"{rec.category} {rec.preference}", rec.updated_at, 1.0, rec.confidence
    return (rec.task_type == task_type, f"{rec.task} {rec.strategy}", rec.ts,
            1.0 if rec.success else _FAILED_OUTCOME_SUCCESS, 1.0)


def _score(rec: Any, agent: str, task: str, task_type: str, now_ms: int,
           matcher: StrategyMatcher) -> dict[str, Any] | None:
    same_type, text, when, success, confidence = _facets(rec, task_type)
    sim = (_TYPE_MATCH if same_type else 0.0) + (1 - _TYPE_MATCH) * matcher.relevance(task, text)
    if sim <= 0 and not isinstance(rec, Preference):
        return None
    rec_ = recency(now_ms - when)
    score = (WEIGHTS.similarity * sim + WEIGHTS.recency * rec_ + WEIGHTS.success * success
             + WEIGHTS.confidence * confidence)
    rendered = _render(rec)
    return {**rec.view(agent), "score": score,
            "scores": {"similarity": sim, "recency": rec_, "success": success, "confidence": confidence},
            "text": rendered, "tokens": estimate_tokens(rendered)}


def retrieve(state: ProtocolsState | None, *, task: str, agent: str, now_ms: int, user_id: str | None = None,
             project_id: str | None = None, task_type: str | None = None, top_k: int = 5,
             token_budget: int | None = None, matcher: StrategyMatcher | None = None) -> dict[str, Any]:
    """The memories that apply to ``task`` for ``agent`` (and ``user_id``'s preferences).

    Returns ``{task_type, heuristics, anti_patterns, knowledge, preferences, outcomes, context,
    tokens, dropped}``: each list best first, each item its record plus ``score``, ``scores``,
    ``text`` (one line for a prompt) and ``tokens``; ``context`` joins the kept texts in budget order.
    """
    matcher = matcher or WordOverlap()
    qtype = task_type or infer_task_type(task)
    pools: dict[str, list[Any]] = {k: [] for k in KINDS}
    am = state.agents.get(agent) if state is not None else None
    if am is not None:
        for kind, table in (("heuristics", am.heuristics), ("anti_patterns", am.anti_patterns),
                            ("knowledge", am.knowledge), ("outcomes", am.outcomes)):
            pools[kind] = [r for r in table.values() if project_id is None or r.project_id == project_id]
    if state is not None and user_id is not None:
        pools["preferences"] = [p for p in state.preferences.values() if p.user_id == user_id]
    out: dict[str, Any] = {"task_type": qtype}
    kept: list[tuple[str, dict[str, Any]]] = []
    for kind in KINDS:
        scored = [s for r in pools[kind] if (s := _score(r, agent, task, qtype, now_ms, matcher))]
        scored.sort(key=lambda s: (-s["score"], s["record_id"]))
        kept += [(kind, s) for s in scored[:top_k]]
    used, dropped = 0, 0
    chosen: list[tuple[str, dict[str, Any]]] = []
    for kind, s in kept:
        if token_budget is not None and used + s["tokens"] > token_budget:
            dropped += 1
            continue
        used += s["tokens"]
        chosen.append((kind, s))
    for kind in KINDS:
        out[kind] = [s for k, s in chosen if k == kind]
    out["context"] = "\n".join(s["text"] for _, s in chosen)
    out["tokens"] = used
    out["dropped"] = dropped
    return out
