"""The command line, as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys


def run(args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


def test_dispatch_reads_requests_and_writes_one_response_per_line(tmp_path) -> None:
    lines = [
        {"verb": "init_instant", "body": {"targets": ["a", "b"], "dim": 3}},
        {"verb": "feedback", "body": {"embedding": [1, 0, 0], "model": "a", "quality": 0.9}},
        {"verb": "nope"},
    ]
    r = run(["dispatch", "--path", str(tmp_path / "db")], "\n".join(map(json.dumps, lines)) + "\n{bad\n")
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["ok"] for o in out] == [True, True, False, False]
    assert out[1]["data"]["feedback_count"] == 1
    assert out[2]["error"] == "unknown verb: nope" and out[3]["error"].startswith("parse: ")
    # --path persists: a second process sees the first one's state
    again = run(["dispatch", "--path", str(tmp_path / "db")], json.dumps({"verb": "health"}) + "\n")
    assert json.loads(again.stdout)["data"]["instant_ready"] is True


def test_bench_lists_benchmarks() -> None:
    r = run(["bench"])
    assert r.returncode == 0 and "kernels" in r.stderr and "graph" in r.stderr


def test_commands_needing_a_broker_say_so(monkeypatch) -> None:
    monkeypatch.delenv("LEARNSTREAM_BROKER", raising=False)
    r = run(["produce", "loss"], "{}\n")
    assert r.returncode == 2 and "LEARNSTREAM_BROKER" in r.stderr


def test_topics_create_then_list_against_a_real_broker(monkeypatch, tmp_path) -> None:
    from workers.broker import EmbeddedBroker
    from workers.topics import topics

    with EmbeddedBroker(log_path=tmp_path / "b.log") as b:
        monkeypatch.setenv("LEARNSTREAM_BROKER", b.bootstrap)
        before = run(["topics", "list"])
        assert before.returncode == 0 and before.stdout.count("missing") == len(topics())
        r = run(["topics", "create", "--partitions", "3"])
        assert r.returncode == 0, r.stderr
        after = run(["topics", "list"]).stdout
        assert "missing" not in after and after.count("3 partitions") == len(topics())
        # a worker configured for another partition count is refused, naming the fix
        r = run(["topics", "create", "--partitions", "5"])
        assert r.returncode == 2 and "LEARNSTREAM_PARTITIONS=3" in r.stderr
