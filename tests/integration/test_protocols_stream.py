"""Agent learning protocols on real parts: outcomes on agent.outcomes -> a worker -> heuristics in its
agent table and events on agent.heuristics with deterministic ids."""
from __future__ import annotations

import pytest

from tests.helpers import wait_until
from tests.helpers import read_topic
from workers.kafka.topics import topics

pytestmark = pytest.mark.integration

SK = "agent-7"
T0 = 1_700_000_000_000


def _outcome(oid: str, ts: int) -> dict:
    return {"id": oid, "agent": "tester", "task": "test the login form", "success": True,
            "strategy": "fill fields then submit", "ts": ts}


def test_outcomes_become_one_heuristic_and_events_with_deterministic_ids(broker, worker_factory, client) -> None:
    w = worker_factory().start().wait_ready()
    sent = [client.outcome(SK, _outcome(f"o{i}", T0 + i)) for i in range(3)]
    client.outcome(SK, _outcome("o2", T0 + 2))  # the agent re-sends an outcome: it counts once
    sent.append(client.outcome(SK, _outcome("o3", T0 + 3)))

    def learned() -> dict | None:
        out = w.dispatch("heuristics", {"session_key": SK})
        return out["ok"] and out["data"]["counts"]["outcomes"] == 4 and out["data"]

    data = wait_until(learned, 30, what="four outcomes learned")
    [h] = data["heuristics"]
    assert (h["agent"], h["condition"], h["strategy"], h["occurrences"], h["successes"]) == (
        "tester", "testing", "fill fields then submit", 4, 4)
    assert h["posterior"] == pytest.approx(5 / 6)

    evs = read_topic(broker.bootstrap, topics()["heuristics"].name, 2, timeout=30)
    (t2, p2, off2), (t3, p3, off3) = sent[2], sent[3]
    assert [e["id"] for e in evs] == [f"{t2}:{p2}:{off2}", f"{t3}:{p3}:{off3}"]
    assert [(e["kind"], e["status"], e["occurrences"]) for e in evs] == [("heuristic", "created", 3),
                                                                         ("heuristic", "updated", 4)]
    assert all(e["session_key"] == SK and e["record_id"] == h["record_id"] for e in evs)
    assert evs[0]["source"]["offset"] == off2
    for e in evs:
        topics()["heuristics"].validate(e)

    # a write through HTTP travels through learn.commands and is answered once applied
    pref = w.dispatch("add_preference", {"session_key": SK, "user_id": "u1", "category": "style",
                                         "preference": "short steps", "source": "explicit_instruction"})
    assert pref["ok"] and pref["data"]["confidence"] == 1.0
    got = w.dispatch("retrieve", {"session_key": SK, "task": "test the signup form", "agent": "tester",
                                  "user_id": "u1", "token_budget": 200})
    assert got["ok"], got
    assert [x["strategy"] for x in got["data"]["heuristics"]] == ["fill fields then submit"]
    assert [x["preference"] for x in got["data"]["preferences"]] == ["short steps"]
