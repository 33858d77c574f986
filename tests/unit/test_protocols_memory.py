"""Protocols: strength formula, forgetting, quotas that evict the weakest, the byte budget, retrieval scoring."""
from __future__ import annotations

import math

import pytest

from workers.verbs.session import LearnSession
from workers.protocols.memory import ProtocolConfig, ProtocolsState
from workers.protocols.entries import HALF_LIFE_DAYS, Outcome, strength
from workers.protocols.retrieval import recency, retrieve
from workers.protocols.text import estimate_tokens

SK = "agent-7"
T0 = 1_700_000_000_000
DAY = 86_400_000


def outcome(oid: str, ts: int, success: bool = True, strategy: str = "fill fields then submit",
            task: str = "test the login form", error: str = "", project: str = "") -> Outcome:
    from workers.protocols.text import error_signature, infer_task_type

    return Outcome(oid, project, task, infer_task_type(task), success, strategy, ts, None, error,
                   error_signature(error) if error else "", "")


def dispatch(s: LearnSession, verb: str, **body) -> dict:
    out = s.dispatch({"verb": verb, "body": {"session_key": SK, **body}})
    assert out["ok"], out
    return out["data"]


# -- strength -----------------------------------------------------------------------------
@pytest.mark.parametrize("days, accesses, r7, importance, half_life, expected", [
    (0, 0, 0, 0.5, 60, 0.75),
    (60, 0, 0, 0.5, 60, math.exp(-0.693) * 0.75),                  # one half-life: ~half
    (30, 0, 0, 1.0, 30, math.exp(-0.693)),
    (0, 0, 0, 0.0, 60, 0.5),                                        # importance 0 halves
    (90, math.e - 1, 0, 0.5, 90, (math.exp(-0.693) + 0.1) * 0.75),  # 0.1 ln(1 + (e - 1)) = 0.1
    (365, 10**6, 0, 0.5, 365, (math.exp(-0.693) + 0.4) * 0.75),     # access bonus capped at 0.4
    (45, 0, 2, 0.5, 45, (math.exp(-0.693) + 0.2) * 0.75),
    (45, 0, 9, 0.5, 45, (math.exp(-0.693) + 0.3) * 0.75),           # reinforcement bonus capped at 0.3
    (0, 100, 3, 1.0, 60, 1.0),                                      # clipped to 1
    (10_000, 0, 0, 0.5, 30, 0.0),                                   # long forgotten
])
def test_strength_formula_at_known_inputs(days, accesses, r7, importance, half_life, expected) -> None:
    got = strength(days_since_access=days, accesses=accesses, reinforcements_7d=r7, importance=importance,
                   half_life_days=half_life)
    assert got == pytest.approx(expected, abs=1e-12)


def test_half_lives_are_the_specs() -> None:
    assert HALF_LIFE_DAYS == {"heuristic": 60, "outcome": 30, "preference": 365, "knowledge": 90, "anti_pattern": 45}


def test_record_strength_counts_reinforcements_of_the_last_seven_days_only() -> None:
    o = outcome("o", T0)
    o.last_access = T0
    for t in (T0 - 9 * DAY, T0 - 8 * DAY, T0 - 2 * DAY):
        o.reinforce(t)
    o.last_access = T0
    # one reinforcement within 7 days of T0; days since access 0; outcome half-life 30
    assert o.strength(T0) == pytest.approx((1 + 0.1) * 0.75)
    o.reinforce(T0 - DAY)
    o.reinforce(T0)
    assert o.reinforced == [T0 - 2 * DAY, T0 - DAY, T0]  # only the latest three are kept: they are all that count
    assert o.strength(T0 + 3 * DAY) == pytest.approx((math.exp(-0.693 * 3 / 30) + 0.3) * 0.75)


def test_strength_is_reported_with_each_record() -> None:
    s = LearnSession()
    for i in range(3):
        dispatch(s, "learn_outcome", id=f"o{i}", agent="a", task="test x", success=True, strategy="do the thing",
                 ts=T0)
    [h] = dispatch(s, "heuristics", now_ms=T0 + 60 * DAY)["heuristics"]
    assert h["strength"] == pytest.approx(round(math.exp(-0.693) * 0.75, 6))  # one half-life later
    used = dispatch(s, "mark_used", ids=[h["record_id"], "nope"], importance=0.0, now_ms=T0 + 60 * DAY)
    assert used == {"marked": 1, "unknown": ["nope"]}
    [h] = dispatch(s, "heuristics", now_ms=T0 + 60 * DAY)["heuristics"]
    assert (h["accesses"], h["importance"], h["last_access"]) == (1, 0.0, T0 + 60 * DAY)
    # accessed just now (base 1), one access (0.1 ln 2), importance 0 (factor 0.5)
    assert h["strength"] == pytest.approx(round((1 + 0.1 * math.log(2)) * 0.5, 6))


# -- forgetting -----------------------------------------------------------------------------
def test_forget_prunes_old_outcomes_and_weak_heuristics() -> None:
    s = LearnSession()
    for i in range(4):
        dispatch(s, "learn_outcome", id=f"old{i}", agent="a", task="test x", success=i != 3, strategy="plan a",
                 ts=T0 + i)  # a heuristic with confidence 0.75
    for i in range(3):
        dispatch(s, "learn_outcome", id=f"new{i}", agent="a", task="write notes", success=True,
                 strategy="outline first", ts=T0 + 100 * DAY + i)
    out = dispatch(s, "forget", now_ms=T0 + 120 * DAY)  # defaults: 90 days, confidence 0.3
    assert out == {"outcomes": 4, "heuristics": 0, "anti_patterns": 0, "knowledge": 0, "preferences": 0}
    assert len(dispatch(s, "heuristics")["heuristics"]) == 2  # heuristics outlive their outcomes
    s.emitted.clear()
    out = dispatch(s, "forget", older_than_days=1000, below_confidence=0.8, now_ms=T0 + 120 * DAY)
    assert out["heuristics"] == 1 and out["outcomes"] == 0
    [h] = dispatch(s, "heuristics")["heuristics"]
    assert h["strategy"] == "outline first"
    [ev] = [p for _, p in s.emitted]
    assert (ev["status"], ev["reason"], ev["strategy"]) == ("removed", "forget", "plan a")


def test_forget_by_strength_scope_and_time() -> None:
    s = LearnSession()
    for agent in ("a", "b"):
        for i in range(3):
            dispatch(s, "learn_outcome", id=f"o{i}", agent=agent, task="test x", success=True, strategy="plan a",
                     ts=T0)
    dispatch(s, "add_preference", user_id="u", category="c", preference="terse", now_ms=T0)
    dispatch(s, "add_knowledge", agent="a", domain="d", fact="f", now_ms=T0, importance=1.0)
    # 200 days later: outcomes (30 d) and heuristics (60 d) are weak, the preference (365 d) is not,
    # the important fact (90 d, importance 1) is at e^(-0.693*200/90) = 0.21
    out = dispatch(s, "forget", older_than_days=10_000, below_confidence=0, min_strength=0.2, agent="a",
                   now_ms=T0 + 200 * DAY)
    assert out == {"outcomes": 3, "heuristics": 1, "anti_patterns": 0, "knowledge": 0, "preferences": 0}
    counts = dispatch(s, "heuristics")["counts"]
    assert counts["outcomes"] == 3 and counts["heuristics"] == 1 and counts["knowledge"] == 1  # agent b untouched
    out = dispatch(s, "forget", older_than_days=10_000, below_confidence=0, min_strength=0.5, now_ms=T0 + 200 * DAY)
    assert out == {"outcomes": 3, "heuristics": 1, "anti_patterns": 0, "knowledge": 1, "preferences": 0}
    assert dispatch(s, "heuristics")["counts"] == {"agents": 0, "outcomes": 0, "heuristics": 0, "anti_patterns": 0,
                                                   "knowledge": 0, "preferences": 1}


def test_forget_without_now_uses_event_time_not_the_wall_clock() -> None:
    s = LearnSession()
    dispatch(s, "learn_outcome", id="o", agent="a", task="t", success=True, strategy="s", ts=T0)
    # the latest time the session saw is T0: nothing is 90 days old yet, whatever today's date is
    assert dispatch(s, "forget")["outcomes"] == 0


# -- quotas evict the weakest ----------------------------------------------------------------------
def test_outcome_quota_evicts_the_weakest_first() -> None:
    st, cfg = ProtocolsState(), ProtocolConfig(max_outcomes=5)
    for i in range(5):
        st.learn("a", outcome(f"o{i}", T0 + i * DAY, strategy=f"s{i}"), config=cfg)
    st.mark_used(["o0"], T0 + 4 * DAY)  # used: recent access and one access -> stronger than o1
    st.learn("a", outcome("o5", T0 + 5 * DAY, strategy="s5"), config=cfg)
    assert list(st.agents["a"].outcomes) == ["o0", "o2", "o3", "o4", "o5"]  # o1 was the weakest
    st.mark_used(["o2"], T0 + 5 * DAY, importance=0.0)  # unimportant now
    st.learn("a", outcome("o6", T0 + 6 * DAY, strategy="s6"), config=cfg)
    assert "o2" not in st.agents["a"].outcomes and len(st.agents["a"].outcomes) == 5


def test_outcome_quota_default_is_500_per_agent() -> None:
    st = ProtocolsState()
    for i in range(510):
        st.learn("a", outcome(f"o{i}", T0 + i, strategy=f"strategy {i % 7} x", task="write notes"))
    st.learn("b", outcome("b0", T0, task="write notes"))
    assert len(st.agents["a"].outcomes) == 500 and "o0" not in st.agents["a"].outcomes
    assert len(st.agents["b"].outcomes) == 1


def test_heuristic_and_anti_pattern_quotas_evict_the_weakest_with_an_event() -> None:
    st, cfg = ProtocolsState(), ProtocolConfig(max_heuristics=2, max_anti_patterns=1)
    evs = []
    for k, strat in enumerate(["alpha one", "beta two", "gamma three"]):
        for i in range(3):
            evs += st.learn("a", outcome(f"{k}-{i}", T0 + k * DAY + i, strategy=strat), config=cfg)[1]
    strategies = sorted(h.strategy for h in st.agents["a"].heuristics.values())
    assert strategies == ["beta two", "gamma three"]  # "alpha one", validated longest ago, went first
    removed = [e for e in evs if e["status"] == "removed"]
    assert [(e["strategy"], e["reason"]) for e in removed] == [("alpha one", "quota")]
    for i, err in enumerate(["KeyError: 'a1'", "KeyError: 'a2'", "OSError: x 1", "OSError: x 2"]):
        st.learn("a", outcome(f"f{i}", T0 + 10 * DAY + i, False, strategy="zeta", error=err), config=cfg)
    [ap] = st.agents["a"].anti_patterns.values()
    assert ap.why_bad == "OSError: x <n>"  # the newest stays; the older one was evicted


def test_byte_budget_keeps_the_value_within_a_message() -> None:
    cfg = ProtocolConfig(max_bytes=20_000)
    st = ProtocolsState()
    for i in range(200):
        st.learn("a", outcome(f"o{i}", T0 + i * 1000, strategy=["alpha route", "beta path", "gamma way"][i % 3],
                              task="t " + "x" * 300),
                 config=cfg)
    assert len(st.to_bytes()) <= 20_000
    ids = list(st.agents["a"].outcomes)
    assert ids[-1] == "o199" and "o0" not in ids  # the oldest (weakest) outcomes went first
    assert len(st.agents["a"].heuristics) == 3    # the distilled heuristics stayed


# -- retrieval --------------------------------------------------------------------------------------
def _learned() -> ProtocolsState:
    st = ProtocolsState()
    for i in range(4):   # testing heuristic, 4/4, validated at T0
        st.learn("a", outcome(f"t{i}", T0, strategy="fill fields then submit", task="test the login form"))
    for i, ok in enumerate([True, True, False]):  # testing heuristic, 2/3, validated at T0 - 30 days
        st.learn("a", outcome(f"r{i}", T0 - 30 * DAY, ok, strategy="reload and retry", task="test the cart"))
    for i in range(3):   # another task type
        st.learn("a", outcome(f"n{i}", T0, strategy="outline headings first", task="write release notes"))
    st.add_knowledge("a", "", "testing", "Login needs a CSRF token", "user_stated", T0)
    st.add_preference("u1", "style", "short steps", "explicit_instruction", T0)
    st.add_preference("u2", "style", "long essays", "inferred", T0)
    return st


def test_retrieval_score_is_the_weighted_sum_of_its_parts() -> None:
    st = _learned()
    out = retrieve(st, task="test the login form", agent="a", now_ms=T0 + 30 * DAY, top_k=10)
    h = next(x for x in out["heuristics"] if x["strategy"] == "fill fields then submit")
    sc = h["scores"]
    # same task type (0.5) + 0.5 x cosine of {test, login, form} and {fill, fields, submit, test, login, form}
    assert sc["similarity"] == pytest.approx(0.5 + 0.5 * 3 / math.sqrt(3 * 6))
    assert sc["recency"] == pytest.approx(0.5)         # 30 days, half-life 30 days
    assert sc["success"] == 1.0 and sc["confidence"] == pytest.approx(5 / 6)
    assert h["score"] == pytest.approx(0.4 * sc["similarity"] + 0.3 * 0.5 + 0.2 * 1.0 + 0.1 * 5 / 6)
    assert recency(60 * DAY) == pytest.approx(0.25) and recency(-DAY) == 1.0


def test_retrieval_orders_by_score_and_keeps_what_applies() -> None:
    st = _learned()
    out = retrieve(st, task="test the login form", agent="a", now_ms=T0, user_id="u1", top_k=10)
    assert [h["strategy"] for h in out["heuristics"]] == ["fill fields then submit", "reload and retry"]
    scores = [h["score"] for h in out["heuristics"]]
    assert scores == sorted(scores, reverse=True)
    # the notes heuristic shares no word and no type with the task: it does not apply
    assert all(h["condition"] == "testing" for h in out["heuristics"])
    assert [k["fact"] for k in out["knowledge"]] == ["Login needs a CSRF token"]
    assert [p["preference"] for p in out["preferences"]] == ["short steps"]  # u1's only
    assert retrieve(st, task="test the login form", agent="a", now_ms=T0)["preferences"] == []
    outs = out["outcomes"]
    assert outs[0]["success"] and outs[0]["scores"]["success"] == 1.0
    assert {o["record_id"] for o in outs} >= {"t0"}
    assert retrieve(st, task="anything", agent="nobody", now_ms=T0)["heuristics"] == []
    assert retrieve(None, task="x", agent="a", now_ms=T0)["context"] == ""


def test_more_recent_and_more_successful_rank_higher() -> None:
    st = ProtocolsState()
    for i in range(3):
        st.learn("a", outcome(f"x{i}", T0, strategy="alpha steps", task="test page"))
        st.learn("a", outcome(f"y{i}", T0 - 90 * DAY, strategy="beta moves", task="test page"))
    out = retrieve(st, task="test page", agent="a", now_ms=T0)
    assert [h["strategy"] for h in out["heuristics"]] == ["alpha steps", "beta moves"]
    st2 = ProtocolsState()
    for i, ok in enumerate([True, True, True, True]):
        st2.learn("a", outcome(f"x{i}", T0, ok, strategy="beta moves", task="test page"))
    for i, ok in enumerate([True, True, False, True]):
        st2.learn("a", outcome(f"y{i}", T0, ok, strategy="alpha steps", task="test page"))
    out = retrieve(st2, task="test page", agent="a", now_ms=T0)
    assert [h["strategy"] for h in out["heuristics"]] == ["beta moves", "alpha steps"]  # 4/4 above 3/4


def test_top_k_per_kind() -> None:
    st = ProtocolsState()
    for k in range(8):
        for i in range(3):
            st.learn("a", outcome(f"{k}-{i}", T0 + k, strategy=f"way{k} steps{k} plan{k}", task="test page"))
    out = retrieve(st, task="test page", agent="a", now_ms=T0, top_k=3)
    assert len(out["heuristics"]) == 3 and len(out["outcomes"]) == 3
    assert len(retrieve(st, task="test page", agent="a", now_ms=T0)["heuristics"]) == 5  # the default


def test_token_budget_is_respected_lessons_first() -> None:
    st = _learned()
    for i in range(2):
        st.learn("a", outcome(f"f{i}", T0, False, strategy="sleep and click", task="test the login form",
                              error=f"TimeoutError: {i} s"))
    full = retrieve(st, task="test the login form", agent="a", user_id="u1", now_ms=T0, top_k=10)
    assert full["dropped"] == 0 and full["tokens"] == sum(estimate_tokens(line) for line in
                                                          full["context"].split("\n"))
    budget = 60
    out = retrieve(st, task="test the login form", agent="a", user_id="u1", now_ms=T0, top_k=10,
                   token_budget=budget)
    assert 0 < out["tokens"] <= budget and out["dropped"] > 0
    kept = out["context"].split("\n")
    assert kept[0].startswith("User preference") and kept[1].startswith("Avoid:")
    assert out["outcomes"] == []  # raw outcomes are the first to go
    assert sum(x["tokens"] for k in ("preferences", "anti_patterns", "heuristics", "knowledge", "outcomes")
               for x in out[k]) == out["tokens"]


def test_retrieve_verb_reads_without_changing_state() -> None:
    s = LearnSession()
    for i in range(3):
        dispatch(s, "learn_outcome", id=f"o{i}", agent="a", task="test login", success=True, strategy="fill submit",
                 ts=T0)
    before = s.store.get(b"agent\x1f" + SK.encode())
    out = dispatch(s, "retrieve", task="test the login", agent="a", token_budget=30)
    assert out["task_type"] == "testing" and out["tokens"] <= 30
    assert out["heuristics"][0]["scores"]["recency"] == 1.0  # now = the latest event time
    assert s.store.get(b"agent\x1f" + SK.encode()) == before


def test_the_size_bound_never_underestimates_the_serialized_size() -> None:
    import random

    rng = random.Random(5)
    st = ProtocolsState()
    st.to_bytes()
    words = ["fill", "fields", "submit", "retry", "wait", "click", "reload", "\u00e9t\u00e9", "quote\"d", "tab\tbed"]
    for i in range(400):
        op = rng.random()
        now = T0 + i * 3_600_000
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
        if op < 0.6:
            err = f"E{rng.randint(0, 3)}: {text} {i}" if rng.random() < 0.5 else ""
            st.learn(f"agent{rng.randint(0, 2)}", outcome(f"o{i}", now, rng.random() < 0.6, strategy=text[:200],
                                                          task=text * 2, error=err))
        elif op < 0.7:
            st.add_preference(f"u{rng.randint(0, 3)}", "c", text, rng.choice(["explicit_instruction", "x"]), now,
                              importance=rng.random())
        elif op < 0.8:
            st.add_knowledge("agent0", "", "d", text * 3, "user_stated", now)
        elif op < 0.95:
            ids = [r.id for _, r in st.records()]
            st.mark_used(rng.sample(ids, min(len(ids), 20)), now, importance=rng.random())
        else:
            st.forget(now, older_than_days=rng.random() * 10)
        bound = st._size_bound
        assert bound is not None
        if i % 7 == 0:  # let the bound accumulate in between
            actual = len(st.to_bytes())
            assert bound >= actual, (i, bound, actual)
            st._size_bound = bound  # still a valid bound: keep accumulating on top of it


def test_the_size_bound_covers_uses_of_many_records() -> None:
    st = ProtocolsState()
    for i in range(100):
        st.learn("a", outcome(f"o{i}", T0, strategy=f"s{i}"))
    st.to_bytes()
    st.mark_used([f"o{i}" for i in range(100)], T0, importance=0.12345678901234567)  # 16 more bytes each
    bound = st._size_bound
    assert bound >= len(st.to_bytes())
