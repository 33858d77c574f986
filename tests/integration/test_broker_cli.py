"""`learnstream broker` run alone, and workers pointed at it the way it says: a worker SIGKILLed there
must not keep the group from the next one. The broker never expires a dead member; only a worker told
it is the embedded broker (``LEARNSTREAM_BROKER_KIND=embedded``) makes that member leave on start-up."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import WorkerProc, wait_until
from workers.local import free_port

pytestmark = pytest.mark.integration


def _start_broker(tmp_path: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "broker", "--data-dir", str(tmp_path / "broker"),
                             "--port", str(free_port())], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert "ready on" in ready and ready.rstrip().endswith("its workers need:"), ready  # else no 2nd line comes
        export = proc.stdout.readline().strip()
        assert export.startswith("export "), export
        # what it prints is a shell command as it stands: a shell that runs it has exactly the two variables
        shell = subprocess.run(["bash", "-c", f"{export} && env"], env=env, capture_output=True, text=True, check=True)
        return proc, dict(line.split("=", 1) for line in shell.stdout.splitlines() if line.startswith("LEARNSTREAM_"))
    except BaseException:
        proc.terminate()  # it stops its broker on SIGTERM
        proc.wait(60)
        raise


def test_a_worker_sigkilled_on_a_standalone_broker_does_not_block_the_next_one(tmp_path: Path) -> None:
    broker, env = _start_broker(tmp_path)
    workers: list[WorkerProc] = []
    try:
        assert set(env) == {"LEARNSTREAM_BROKER", "LEARNSTREAM_BROKER_KIND"}, env
        app_id = f"ls-test-{uuid.uuid4().hex[:8]}"

        def worker(name: str) -> WorkerProc:
            w = WorkerProc(None, tmp_path / "data", app_id=app_id, log_dir=tmp_path, name=name, env=env)
            workers.append(w)
            return w.start()

        first = worker("first").wait_ready()
        ok = first.dispatch("init_instant", {"session_key": "s", "targets": ["a", "b"], "dim": 4})
        assert ok["ok"], ok
        before = first.dispatch("session_info", {"session_key": "s"})["data"]["digest"]
        first.kill()
        second = worker("second").wait_ready(60)  # never, without the broker kind: the dead leader stays
        info = second.dispatch("session_info", {"session_key": "s"})
        assert info["ok"] and info["data"]["digest"] == before, info
    finally:
        for w in workers:
            w.stop()
        broker.terminate()
        broker.wait(60)


def _members(bootstrap: str, group: str) -> list[str]:
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def go() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (resp,) = await admin.describe_consumer_groups([group], group_coordinator_id=await admin.find_coordinator(group))
            return sorted(m[0] for g in resp.groups for m in g[5])
        finally:
            await admin.close()
    return asyncio.run(go())


@pytest.mark.parametrize("bad", [{"LEARNSTREAM_WEB_BIND": "0.0.0.0"}, {"LEARNSTREAM_AUTH_TOKENS_FILE": "/nonexistent/tokens"}],
                         ids=["no-tokens-on-a-public-address", "missing-tokens-file"])
def test_a_worker_that_refuses_its_configuration_leaves_the_running_group_alone(tmp_path: Path, bad: dict) -> None:
    """On the embedded broker a starting worker makes every listed member leave (dead ones are never
    expired); one that then refuses to start made the running members rejoin for nothing."""
    broker, env = _start_broker(tmp_path)
    first = None
    try:
        app_id = f"ls-test-{uuid.uuid4().hex[:8]}"
        first = WorkerProc(None, tmp_path / "data", app_id=app_id, log_dir=tmp_path, name="first", env=env).start()
        first.wait_ready()
        before = _members(env["LEARNSTREAM_BROKER"], app_id)
        assert len(before) == 1, before
        cmd = [sys.executable, "-m", "workers.cli", "worker", "--data-dir", str(tmp_path / "second"),
               "--web-port", str(free_port())]
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
        env2 = {**run_env, **env, "LEARNSTREAM_APP_ID": app_id, "LEARNSTREAM_PARTITIONS": "4", **bad}
        r = subprocess.run(cmd, env=env2, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert _members(env["LEARNSTREAM_BROKER"], app_id) == before  # the same member: nobody left or rejoined
        assert first.ready()
    finally:
        if first is not None:
            first.stop()
        broker.terminate()
        broker.wait(60)


def _active(w: WorkerProc) -> set[int]:
    import httpx

    try:
        return set(httpx.get(w.url + "/health", timeout=5).json().get("active_partitions", []))
    except (httpx.HTTPError, ValueError):
        return set()


def test_a_joining_worker_leaves_the_live_members_in_the_group(tmp_path: Path) -> None:
    """Only members whose worker does not answer are made to leave: a live one expelled kept processing
    its partitions until its next heartbeat while the newcomer, alone in the group, took them all."""
    import threading

    import httpx

    broker, env = _start_broker(tmp_path)
    workers: list[WorkerProc] = []
    try:
        app_id = f"ls-test-{uuid.uuid4().hex[:8]}"
        first = WorkerProc(None, tmp_path / "d1", app_id=app_id, log_dir=tmp_path, name="first", env=env)
        workers.append(first.start().wait_ready())
        (member,) = _members(env["LEARNSTREAM_BROKER"], app_id)
        overlaps: list[set[int]] = []
        done = threading.Event()

        def watch() -> None:  # both workers' active partitions while the second joins
            while not done.is_set():
                if len(workers) == 2 and (both := _active(workers[0]) & _active(workers[1])):
                    overlaps.append(both)
                done.wait(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        second = WorkerProc(None, tmp_path / "d2", app_id=app_id, log_dir=tmp_path, name="second", env=env)
        workers.append(second.start())
        second.wait_ready()
        wait_until(lambda: len(_members(env["LEARNSTREAM_BROKER"], app_id)) == 2, 60, 0.2, "both members")
        done.set()
        watcher.join()
        listed = _members(env["LEARNSTREAM_BROKER"], app_id)
        assert member in listed  # it rejoined; nobody expelled it
        # each worker knows its own member id (it expels its own earlier ones: workers/stream/peers.py)
        assert sorted(httpx.get(w.url + "/health", timeout=5).json()["member_id"] for w in workers) == listed
        assert not overlaps, overlaps[:5]  # never two workers listing one partition as active
        assert _active(first) and _active(second) and not _active(first) & _active(second)
    finally:
        for w in workers:
            w.stop()
        broker.terminate()
        broker.wait(60)
