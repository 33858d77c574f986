"""README "Use it from an agent": every snippet, read from the README itself, runs against a real worker.

The SDK snippet is the race test too: 200 fresh sessions set up with ``apply`` and feedback
sent without awaiting each send; not one event may reach the dead-letter topic.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client

from tests.helpers import WorkerProc, http_json, read_topic, wait_until
from workers.kafka.broker import EmbeddedBroker
from workers.local import free_port
from workers.kafka.topics import topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
README_WORKER, README_BROKER, README_MCP_PORT = "http://127.0.0.1:6066", "127.0.0.1:9092", "8765"


def agent_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Use it from an agent\n")
    return text[start:text.index("\n## ", start + 1)]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", agent_section(), re.S)


def test_the_section_has_the_three_ways_in_order() -> None:
    s = agent_section()
    assert s.index("### MCP") < s.index("### Python SDK") < s.index("### Raw HTTP")
    assert len(blocks("json")) == 2 and len(blocks("python")) == 1 and len(blocks("bash")) == 2


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedBroker, WorkerProc]]:
    tmp = tmp_path_factory.mktemp("readme-agents")
    with EmbeddedBroker(log_path=tmp / "broker.log") as b:
        w = WorkerProc(b.bootstrap, tmp / "data", app_id=f"ls-readme-{uuid.uuid4().hex[:8]}", log_dir=tmp)
        w.start()
        try:
            w.wait_ready()
            yield b, w
        finally:
            w.stop(timeout=20)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra}


async def _smoke(s: ClientSession, sk: str) -> None:
    await s.initialize()
    assert "retrieve" in {t.name for t in (await s.list_tools()).tools}
    w = await s.call_tool("add_knowledge", {"session_key": sk, "agent": "coder", "domain": "repo", "fact": "uses uv"})
    assert not w.isError and re.match(r"^learn\.commands:\d+:\d+$", w.structuredContent["id"])
    r = await s.call_tool("retrieve", {"session_key": sk, "task": "install with uv", "agent": "coder"})
    assert [k["fact"] for k in r.structuredContent["knowledge"]] == ["uses uv"]


def test_mcp_desktop_config(worker) -> None:
    _, w = worker
    server = json.loads(blocks("json")[0])["mcpServers"]["learnstream"]
    env = {k: v.replace(README_WORKER, w.url) for k, v in server["env"].items()}
    assert env["LEARNSTREAM_WORKER_URL"] == w.url  # the snippet points at a worker
    params = StdioServerParameters(command=server["command"], args=server["args"], env=_env(**env), cwd=str(ROOT))

    async def go() -> None:
        async with stdio_client(params) as (r, wr), ClientSession(r, wr) as s:
            await _smoke(s, "desktop")

    asyncio.run(asyncio.wait_for(go(), 120))


def test_mcp_remote_config(worker) -> None:
    _, w = worker
    port = str(free_port())
    start = blocks("bash")[0].replace(README_WORKER, w.url).replace(README_MCP_PORT, port)
    proc = subprocess.Popen(["bash", "-ec", start], env=_env(), cwd=str(ROOT), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server = json.loads(blocks("json")[1].replace(README_MCP_PORT, port))["mcpServers"]["learnstream"]
        assert server["type"] == "http"
        wait_until(lambda: httpx.post(server["url"], json={}, timeout=3).status_code == 401, 60, 0.2,
                   "the MCP sidecar", retry_on=(httpx.HTTPError,))

        async def go() -> None:
            async with streamablehttp_client(server["url"], headers=server["headers"]) as (r, wr, _), \
                    ClientSession(r, wr) as s:
                await _smoke(s, "remote")

        asyncio.run(asyncio.wait_for(go(), 120))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the bash we started and the server it runs
        proc.wait(30)


def _metric(w: WorkerProc, outcome: str, topic: str) -> float:
    return w.metric("learnstream_events_total", outcome=outcome, topic=topic)


def test_sdk_example_200_fresh_sessions_unawaited_sends_none_dead_lettered(worker, capsys) -> None:
    b, w = worker
    code = blocks("python")[0]
    assert "range(200)" in code and "wait=False" in code and "c.apply(" in code
    code = code.replace(README_BROKER, b.bootstrap).replace(README_WORKER, w.url)
    exec(compile(code, "README.md (Python SDK)", "exec"), {"__name__": "__main__"})  # noqa: S102
    feedback = topics()["feedback"].name
    # every feedback event was handled (applied or not) ...
    wait_until(lambda: _metric(w, "applied", feedback) + _metric(w, "rejected", feedback) >= 200, 90, 0.2,
               "the worker to handle the 200 feedback events")
    # ... and all were applied: none refused, none in the dead-letter topic
    assert _metric(w, "applied", feedback) == 200 and _metric(w, "rejected", feedback) == 0
    assert read_topic(b.bootstrap, topics()["dlq"].name, 1, timeout=3) == []
    for sk in ("agent-0", "agent-123", "agent-199"):
        assert http_json(w.url + "/dispatch", {"verb": "health", "body": {"session_key": sk}})[1]["data"][
            "instant_ready"] is True
    assert "'instant_ready': True" in capsys.readouterr().out  # the example's own read


def _json_values(text: str) -> list:
    """The JSON values curl printed one after another (it adds no newline)."""
    dec, out, i = json.JSONDecoder(), [], 0
    while i < len(text.strip()):
        v, i = dec.raw_decode(text, i)
        out.append(v)
        while i < len(text) and text[i].isspace():
            i += 1
    return out


def test_raw_http_example(worker) -> None:
    _, w = worker
    script = blocks("bash")[1].replace(README_WORKER, w.url)
    out = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    first, second = _json_values(out.stdout)
    assert first["ok"] and re.match(r"^learn\.commands:\d+:\d+$", first["id"])
    assert [k["fact"] for k in second["data"]["knowledge"]] == ["tests run with pytest -q"]
    again = subprocess.run(["bash", "-ec", script.split("\ncurl")[0]], capture_output=True, text=True, timeout=60)
    (dup,) = _json_values(again.stdout)
    assert dup["duplicate"] is True and dup["id"] == first["id"]


def test_with_a_worker_url_the_produce_style_setup_cannot_be_overtaken(worker) -> None:
    """The pattern that lost 73 of 200 events: init produced, feedback right after, nothing awaited one by one.
    With a worker_url the SDK applies the set-up over HTTP and holds the session's sends until it is applied."""
    import numpy as np

    from workers.client import LearnstreamClient

    b, w = worker
    feedback = topics()["feedback"].name
    applied0, rejected0 = _metric(w, "applied", feedback), _metric(w, "rejected", feedback)
    sessions = [f"fresh-{i}" for i in range(200)]

    async def go() -> None:
        rng = np.random.default_rng(1)
        async with LearnstreamClient(b.bootstrap, worker_url=w.url) as c:
            for s in sessions:
                await c.init_instant(s, targets=["small", "large"], dim=8, wait=False)
            sends = [asyncio.ensure_future(c.feedback(s, rng.standard_normal(8).astype(np.float32), model="small",
                                                      quality=0.9, wait=False)) for s in sessions]
            await asyncio.gather(*sends)
            await c.flush()

    asyncio.run(go())
    wait_until(lambda: _metric(w, "applied", feedback) + _metric(w, "rejected", feedback) >= applied0 + rejected0 + 200,
               90, 0.2, "the worker to handle the 200 feedback events")
    assert _metric(w, "rejected", feedback) == rejected0
    assert _metric(w, "applied", feedback) == applied0 + 200


def test_sdk_examples_at_embedding_width_fit_one_message(worker) -> None:
    """An outside trial: ``examples(sk, X, y)`` with X of shape (40, 1536) was sent as JSON text (~32 kB per
    example) and failed inside aiokafka with MessageSizeTooLargeError. An array goes as ``features_b64``."""
    import numpy as np

    from workers.client import LearnstreamClient
    from workers.errors import ValidationError

    b, w = worker
    rng = np.random.default_rng(2)
    X = rng.standard_normal((40, 1536)).astype(np.float32)
    y = rng.integers(0, 3, 40).astype(np.float64)  # a label column read as floats: each one an integer

    async def go() -> dict:
        async with LearnstreamClient(b.bootstrap, worker_url=w.url) as c:
            await c.apply("wide-sdk", "init_learner", {"n_features": 1536, "n_classes": 3})
            await c.examples("wide-sdk", X, y)
            await c.example("wide-sdk", X[0], y[0])
            with pytest.raises(ValidationError, match="over the producer's limit"):  # not aiokafka's own error
                await c.examples("wide-sdk", X.tolist(), y)  # lists go as JSON text: 1.2 MB
            for _ in range(300):
                info = await c.read("wide-sdk", "learner_state")
                if info["examples_seen"] + info.get("pending", 0) >= 41:
                    return info
                await asyncio.sleep(0.2)
            return info

    info = asyncio.run(go())
    assert info["examples_seen"] + info.get("pending", 0) == 41, info


def test_mcp_arguments_with_numbers_beyond_64_bits_get_the_verbs_answer(worker) -> None:
    """JSON carries any integer; the worker reads one beyond 64 bits as a float and the verb judges it.
    The MCP server's client used to fail to encode it ("Integer exceeds 64-bit range") before sending."""
    _, w = worker
    server = json.loads(blocks("json")[0])["mcpServers"]["learnstream"]
    env = {k: v.replace(README_WORKER, w.url) for k, v in server["env"].items()}
    params = StdioServerParameters(command=server["command"], args=server["args"], env=_env(**env), cwd=str(ROOT))

    async def go() -> list[str]:
        async with stdio_client(params) as (r, wr), ClientSession(r, wr) as s:
            await s.initialize()
            out = []
            for args in ({"session_key": "huge", "agent": "coder", "domain": "repo", "fact": "f", "importance": 10**30},
                         {"session_key": "huge", "targets": ["a", "b"], "dim": 10**30}):
                res = await s.call_tool("add_knowledge" if "fact" in args else "init_instant", args)
                assert res.isError, res
                out.append(res.content[0].text)
            ok = await s.call_tool("add_knowledge", {"session_key": "huge", "agent": "coder", "domain": "repo",
                                                     "fact": "f", "importance": 10**30 // 10**30})
            assert not ok.isError, ok
            return out

    texts = asyncio.run(asyncio.wait_for(go(), 120))
    assert not any("64-bit" in t for t in texts), texts
    assert "importance" in texts[0] and "dim" in texts[1], texts


def test_topics_publishing_example_runs_as_a_script(worker) -> None:
    """README "Topics": the publishing snippet used top-level ``await`` and names it never defined (an
    outside trial could not paste it into a script); it now runs as written."""
    b, w = worker
    text = (ROOT / "README.md").read_text()
    start = text.index("Publishing from an agent")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    code = code.replace(README_BROKER, b.bootstrap).replace(README_WORKER, w.url)
    exec(compile(code, "README.md (Topics: publishing)", "exec"), {"__name__": "__main__"})  # noqa: S102
    wait_until(lambda: http_json(w.url + "/dispatch", {"verb": "health", "body": {"session_key": "agent-7"}})[1][
        "data"]["instant_ready"], 60, 0.2, "agent-7 set up")
    wait_until(lambda: http_json(w.url + "/dispatch", {"verb": "query_at", "body": {
        "session_key": "kg", "src": "alice", "t": 2000}})[1]["data"]["edges"], 60, 0.2, "the kg edge applied")
