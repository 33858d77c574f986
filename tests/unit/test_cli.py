"""The command line, as a user runs it."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import psutil
import pytest

from tests.helpers import bench_module


def run(args: list[str], stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env} if env else None)


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
    r = run(["bench", "kernel"])  # a typo
    assert r.returncode == 2 and "unknown benchmark 'kernel'; benchmarks: " in r.stderr and "kernels" in r.stderr


def test_bench_feedback_scale_refuses_more_events_than_the_embedded_retention_keeps() -> None:
    """Produced to a suspended worker, they would be dropped unread and the run would wait for ever."""
    r = run(["bench", "feedback", "--scale", "8", "--events", "200000"])
    assert r.returncode == 2 and "INPUT_RETENTION_BYTES" in r.stderr and "at most 109," in r.stderr, r.stderr


def test_bench_feedback_scale_interleaves_the_counts_rounds_on_suspended_pairs() -> None:
    """Each count's broker and worker sleep through the others' turns and wake to apply every event
    (the benchmark fails a round that does not); the turn order rotates round by round."""
    r = subprocess.run([sys.executable, "-m", "workers.cli", "bench", "feedback", "--scale", "8,40", "--events", "300",
                        "--repeats", "2"], capture_output=True, text=True, timeout=280)
    assert r.returncode in (0, 1), r.stderr[-3000:]  # 1: a ratio under the goal on a loaded machine
    turns = re.findall(r"round (\d+):\s+(\d+) sessions [\d,]+ events/s", r.stdout)
    assert turns == [("1", "8"), ("1", "40"), ("2", "40"), ("2", "8")], r.stdout
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.split()[:1] in (["8"], ["40"])}
    assert set(rows) == {"8", "40"} and rows["8"][2] == "100%", r.stdout
    assert "workers.cli worker" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def test_bench_feedback_at_other_session_counts_ends_with_the_8_against_n_comparison() -> None:
    """`bench feedback --sessions N` is issue 10's command: it reports N sessions' events/s beside the
    8-session run, judged in the same run; issues 3 and 5's targets, set at 8 sessions, are shown only."""
    r = subprocess.run([sys.executable, "-m", "workers.cli", "bench", "feedback", "--sessions", "16", "--events", "300",
                        "--envelope-events", "600", "--repeats", "1", "--encodings", "b64"],
                       capture_output=True, text=True, timeout=280)
    assert r.returncode in (0, 1), r.stderr[-3000:]  # 1: a ratio under the goal on a loaded machine
    assert "target >= 80% -> above (not judged)" in r.stdout or "target >= 80% -> below (not judged)" in r.stdout
    assert "--scale 8,16 --events 300 --repeats 1" in r.stdout, r.stdout
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.split()[:1] in (["8"], ["16"])}
    assert set(rows) == {"8", "16"} and rows["8"][2] == "100%", r.stdout
    verdict = r.stdout.split("targets: every count >= 50% of the first's events/s")[1].splitlines()[0]
    assert verdict.endswith("PASS") == (r.returncode == 0), r.stdout
    assert "workers.cli worker" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGTERM, signal.SIGTERM], [signal.SIGKILL]],
                         ids=["SIGTERM", "SIGTERM-twice", "SIGKILL"])
def test_a_stopped_or_killed_scale_benchmark_leaves_no_broker_or_worker(signals: list[int]) -> None:
    """Its pairs sleep suspended through the other counts' turns: stopped by SIGTERM (``timeout``)
    it stops them in order and removes its directories, also when a second SIGTERM comes during that
    (``timeout`` and a process-group kill), and SIGKILLed the kernel kills them (a parent-death SIGTERM
    would wait for a SIGCONT that never comes; only then are the directories left, and removed here)."""
    import shutil
    from pathlib import Path

    from tests.helpers import wait_until

    proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "bench", "feedback", "--scale", "8,16",
                             "--events", "100", "--repeats", "5"], stdout=subprocess.PIPE, text=True)
    children: list[psutil.Process] = []
    dirs: list[Path] = []
    try:
        for line in proc.stdout:  # the first turn is over: every pair is suspended or about to be
            if "logs in " in line:
                dirs.append(Path(line.rsplit("logs in ", 1)[1].strip()))
            if "round 1:" in line:
                break
        children = psutil.Process(proc.pid).children(recursive=True)
        brokers = [c.cmdline() for c in children if "noida-db" in " ".join(c.cmdline())]
        assert len(brokers) == 2, [c.cmdline() for c in children]
        dirs += [Path(cmd[cmd.index("--data-dir") + 1]) for cmd in brokers]
        assert sum("worker" in c.cmdline() for c in children) == 2, [c.cmdline() for c in children]
        assert len(dirs) == 3 and all(d.is_dir() for d in dirs), dirs
        workers = [c for c in children if "worker" in c.cmdline()]
        sig = signals[0]
        proc.send_signal(sig)
        if len(signals) > 1:  # the second once the cleanup is under way: its first worker has exited
            wait_until(lambda: any(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in workers),
                       60, what="the first worker to stop")
            proc.send_signal(signals[1])
        assert proc.wait(90) == (128 + sig if sig == signal.SIGTERM else -sig)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [c.cmdline() for c in alive]
        if sig == signal.SIGTERM:
            assert not [d for d in dirs if d.exists()]
    finally:
        proc.kill()
        for c in children:
            try:
                c.resume()
                c.kill()
            except psutil.Error:
                pass
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def test_bench_save_runs_both_ways_and_prints_the_ratio() -> None:
    """The one-event save benchmark switches the instant core's tracking of what changed off and on."""
    r = run(["bench", "save", "--sessions", "4", "--rows", "9", "--events", "40", "--repeats", "1"])
    assert r.returncode == 0, r.stderr
    row = [line.split() for line in r.stdout.splitlines() if line.split()[:1] == ["9"]]
    assert len(row) == 1 and row[0][-1].endswith("%"), r.stdout


def test_bench_router_times_the_learned_route_at_other_embedding_widths() -> None:
    r = run(["bench", "router", "--latency-only", "--latency-calls", "200", "--latency-dims", "96,1536"])
    assert r.returncode in (0, 1), r.stderr  # 1: the p99 goal missed on a loaded machine
    rows = {int(m.group(1)): float(m.group(2)) for m in
            re.finditer(r"^RouterState\.route, learned, in_dim (\d+) +([\d.]+)", r.stdout, re.M)}
    assert sorted(rows) == [96, 1536] and all(v > 0 for v in rows.values()), r.stdout
    for bad in ("x", "0", "384,-1"):
        r = run(["bench", "router", "--latency-only", "--latency-dims", bad])
        assert r.returncode == 2 and "--latency-dims" in r.stderr, (bad, r.stderr)


def test_bench_router_runs_every_policy_through_the_verbs() -> None:
    """The regret table's rows, both learnstream modes included (init_router refuses cost_weight in the
    reference mode, and the benchmark once crashed on that), and the goal lines (a tiny run misses them)."""
    r = run(["bench", "router", "--seeds", "1", "--requests", "300", "--latency-calls", "100", "--latency-dims", "96"])
    assert r.returncode in (0, 1), r.stderr
    for row in ("oracle (per query)", "rule router", "ridge on raw 384-d", "learnstream router, mode reference",
                "learnstream router (defaults: learned)"):
        assert re.search(rf"^{re.escape(row)}.* -?\d+%", r.stdout, re.M), (row, r.stdout)
    assert len(re.findall(r"^  (PASS|FAIL) ", r.stdout, re.M)) == 4, r.stdout


def test_bench_drift_learner_suite_runs_every_stream_through_the_verbs() -> None:
    """--suite learner: each stream through init_learner / predict / learn_example, River's ADWIN and DDM
    on the learner's errors beside, and a goal line per judged drift."""
    r = run(["bench", "drift", "--suite", "learner", "--seeds", "1", "--learner-examples", "1200"])
    assert r.returncode in (0, 1), r.stderr[-3000:]
    STREAMS = bench_module("_drift_learner").STREAMS
    for name in STREAMS:
        for det in ("learnstream", "river ADWIN", "river DDM"):
            assert re.search(rf"^{re.escape(name)}\s+{det}\s", r.stdout, re.M), (name, det, r.stdout)
    judged = [n for n, (_, _, after, _, j) in STREAMS.items() if after is not None and j]
    goals = re.findall(r"^  (PASS|FAIL)  learner on (.+?): detected", r.stdout, re.M)
    assert [g[1] for g in goals] == judged and any(g[0] == "FAIL" for g in goals) == (r.returncode == 1), r.stdout


def test_bench_boundaries_scores_switches_sent_through_learn_feedback() -> None:
    """The feedback rows send each quality through the verb and read where it fired: on the near
    noise-free stream every switch is found, and the reference z-score's false alarms show."""
    r = run(["bench", "boundaries", "--seeds", "1", "--events", "300", "--feedback-seeds", "1"])
    assert r.returncode in (0, 1), r.stderr  # 1: a goal missed (the noisiest short cell)
    row = next(line for line in r.stdout.splitlines() if line.startswith("feedback noise 0.008 short"))
    cusum, zscore = re.findall(r"([\d.]+) / ([\d.]+) / ([\d.]+)", row)
    assert cusum == ("1.00", "1.00", "1.00") and float(zscore[0]) < 0.9, row


def test_bench_boundaries_bernoulli_sweep_counts_resets_per_p() -> None:
    """The sweep prints one row per p (0.05 ... 0.95) of per-run resets, and the total; it exits 1 when any
    run reset the adapter. The stationary rows now include Bernoulli 0.3, and the autocorrelated ones print."""
    r = run(["bench", "boundaries", "--bernoulli-sweep", "1", "--events", "200"])
    assert r.returncode in (0, 1), r.stderr
    rows = re.findall(r"^bernoulli (0\.\d\d) +\[(\d+)\]$", r.stdout, re.M)
    assert [p for p, _ in rows] == [f"{k / 100:.2f}" for k in range(5, 100, 5)], r.stdout
    total = int(re.search(r"^total: (\d+) resets in 19 runs$", r.stdout, re.M).group(1))
    assert total == sum(int(n) for _, n in rows) and r.returncode == (1 if total else 0)
    r = run(["bench", "boundaries", "--seeds", "1", "--events", "200", "--feedback-seeds", "1"])
    assert re.search(r"^bernoulli 0\.3 +\[\d+\]", r.stdout, re.M), r.stdout
    assert re.search(r"^AR\(1\) 0\.9 +\[\d+\] +\[\d+\]$", r.stdout, re.M), r.stdout


def test_bench_boundaries_wide_reports_resets_and_lasting_drops() -> None:
    """--wide runs every stationary shape of bench/_feedback_worlds.py and every drop pair; near noise-free
    large drops are found, the totals add up."""
    r = run(["bench", "boundaries", "--wide", "1", "--events", "300", "--shift-seeds", "1"])
    assert r.returncode == 0, r.stderr
    assert re.search(r"^stationary: \d+ resets in 45 runs", r.stdout, re.M), r.stdout
    rows = dict(re.findall(r"^  (N\(0\.9,\.02\) -> N\(0\.[57],\.02\)) +(\d+)/4 ", r.stdout, re.M))
    assert rows == {"N(0.9,.02) -> N(0.5,.02)": "4", "N(0.9,.02) -> N(0.7,.02)": "4"}, r.stdout
    found = [int(a) for a in re.findall(r"^  .+? +(\d+)/4 +\d+$", r.stdout, re.M)]
    assert len(found) == 19 and re.search(rf"found within 50 events: {sum(found)} of 76;", r.stdout), r.stdout


def test_bench_boundaries_switch_worlds_prints_every_cell() -> None:
    """--switch-worlds scores every shape x task length x noise of bench/_switch_worlds.py, qualities through
    learn_feedback and losses straight into the detector, and counts resets on the non-i.i.d. streams; a
    noise-free linear ramp's switches are found."""
    r = run(["bench", "boundaries", "--switch-worlds", "1", "--events", "300"])
    assert r.returncode == 0, r.stderr
    cells = re.findall(r"^  (\w+) +(25|50|25-200)  +((?:\d\.\d\d / \d\.\d\d / \d\.\d\d +){3}\d\.\d\d / \d\.\d\d / "
                       r"\d\.\d\d)$", r.stdout, re.M)
    assert len(cells) == 2 * 6 * 3, r.stdout   # quality and loss: mixed + 5 shapes, 3 task lengths
    linear = [c for c in cells if c[:2] == ("linear", "50")]
    assert float(linear[0][2].split()[4]) >= 0.9, r.stdout   # quality, sd 0.01: recall
    assert len(re.findall(r"^  .+ total +\d+   \[\d+\]$", r.stdout, re.M)) == 6, r.stdout


def test_commands_needing_a_broker_say_so(monkeypatch) -> None:
    monkeypatch.delenv("LEARNSTREAM_BROKER", raising=False)
    r = run(["produce", "loss"], "{}\n")
    assert r.returncode == 2 and "LEARNSTREAM_BROKER" in r.stderr


def test_topics_create_then_list_against_a_real_broker(monkeypatch, tmp_path) -> None:
    from workers.kafka.broker import EmbeddedBroker
    from workers.kafka.topics import topics

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


# -- no sharp edges (issue 15) -------------------------------------------------------------
def test_produce_reports_each_bad_line_sends_the_good_ones_and_sums_up(monkeypatch, tmp_path) -> None:
    from tests.helpers import read_topic
    from workers.kafka.broker import EmbeddedBroker
    from workers.kafka.topics import topics

    lines = ['{"session_key": "s1", "loss": 0.5}',     # 1 good
             '{bad json',                               # 2 not JSON
             '',                                        # blank: skipped, not counted
             '{"session_key": "s1", "loss": "high"}',   # 4 schema: loss must be a number
             '[1, 2]',                                  # 5 not an object
             '{"session_key": "s1", "loss": 0.25}']     # 6 good
    with EmbeddedBroker(log_path=tmp_path / "b.log") as b:
        monkeypatch.setenv("LEARNSTREAM_BROKER", b.bootstrap)
        r = run(["produce", "loss"], "\n".join(lines) + "\n")
        assert r.returncode == 1, r.stderr  # something was refused
        assert "Traceback" not in r.stderr
        err = r.stderr.splitlines()
        assert err[0].startswith("line 2: not sent: not JSON")
        assert err[1].startswith("line 4: not sent: schema of learn.loss: loss:") and "number" in err[1]
        assert err[2] == "line 5: not sent: a value must be a JSON object, got an array"
        assert err[-1] == "2 sent to loss, 3 refused"
        got = read_topic(b.bootstrap, topics()["loss"].name, 2, timeout=20)
        assert [v["loss"] for v in got] == [0.5, 0.25]  # only the good lines, in order

        stop = run(["produce", "loss", "--stop-on-error"], "\n".join(lines) + "\n")
        assert stop.returncode == 1
        assert stop.stderr.splitlines()[-1] == "1 sent to loss, 1 refused (stopped at the first bad line: --stop-on-error)"


def test_produce_refuses_a_line_whose_session_key_differs_from_key(monkeypatch, tmp_path) -> None:
    from workers.cli.produce import check_line

    assert check_line("loss", '{"session_key": "a", "loss": 1}', key="b") == "session_key 'a' differs from --key 'b'"
    assert check_line("loss", '{"loss": 1}', key="b") == ("b", {"loss": 1, "session_key": "b"})
    assert check_line("commands", '{"verb": "init_instant", "body": {"targets": ["x"]}}') == (
        "default", {"verb": "init_instant", "body": {"targets": ["x"], "session_key": "default"}})
    # refused as over HTTP and on the topic (it was read as unset and sent to "default": an outside trial)
    assert check_line("loss", '{"session_key": "", "loss": 1}', validate=False) == "session_key must be a non-empty string"
    assert "blank" in check_line("loss", '{"session_key": "  ", "loss": 1}')
    assert "session_key must be" in check_line("loss", '{"session_key": "a\\u001fb", "loss": 1}')
    assert check_line("loss", '{"session_key": "a", "loss": "x"}', validate=False) == (
        "a", {"session_key": "a", "loss": "x"})  # --no-validate: to exercise the DLQ


def test_unknown_role_lists_the_valid_ones() -> None:
    from workers.kafka.topics import input_topics

    r = run(["produce", "losses"], "{}\n")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown role 'losses'; valid roles: " in r.stderr
    for t in input_topics():
        assert t.role in r.stderr


def test_topics_and_produce_without_a_broker_say_exactly_what_to_set(monkeypatch) -> None:
    monkeypatch.delenv("LEARNSTREAM_BROKER", raising=False)
    for args in (["topics", "list"], ["produce", "loss"]):
        r = run(args, "{}\n")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "set LEARNSTREAM_BROKER=host:port or pass --broker host:port" in r.stderr
    h = run(["produce", "--help"]).stdout
    assert "unset = embedded" not in h and "required" in h  # the help no longer promises an embedded default


def test_topics_and_produce_with_an_unreachable_broker_say_so_without_a_traceback() -> None:
    from workers.local import free_port

    where = f"127.0.0.1:{free_port()}"  # nothing listens there
    for args in (["topics", "list", "--broker", where], ["produce", "loss", "--broker", where]):
        r = run(args, '{"loss": 0.5}\n')
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert "cannot reach the Kafka broker" in r.stderr and "check --broker or LEARNSTREAM_BROKER" in r.stderr


def test_dispatch_to_a_worker_that_cannot_be_reached_says_so_without_a_traceback(tmp_path) -> None:
    from workers.local import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for args, words in ((["dispatch", "--url", url], f"cannot reach the worker at {url}"),
                        (["dispatch", "--url", "127.0.0.1:6066"], "--url wants a worker's base URL"),
                        (["dispatch", "--url", url, "--token-file", str(tmp_path / "none")], "--token-file:")):
        r = run(args, '{"verb": "health"}\n')
        assert r.returncode == 2 and "Traceback" not in r.stderr and words in r.stderr, r.stderr[-2000:]


def test_demo_and_broker_refuse_numbers_they_cannot_use() -> None:
    for args, words in ((["demo", "--events", "-5"], "--events: must be at least 1, got -5"),
                        (["demo", "--events", "x"], "--events: must be an integer, got 'x'"),
                        (["broker", "--port", "99999"], "--port: must be a TCP port (1..65535), got 99999")):
        r = run(args)
        assert r.returncode == 2 and "Traceback" not in r.stderr and words in r.stderr, r.stderr


def test_token_refuses_an_entry_the_workers_would_refuse() -> None:
    """The tokens file's rules (workers/stream/auth.py parse_tokens) apply to what `learnstream token` prints:
    it used to print a token and an entry ("read: ['']", "a*b") that every worker then refused to load."""
    for args, words in ((["--name", "x", "--read", ""], "read must be a list of session_key patterns"),
                        (["--name", "x", "--write", "a*b"], "may hold * only at its end"),
                        (["--name", " "], "--name must name who holds the token")):
        r = run(["token", *args])
        assert r.returncode == 2 and words in r.stderr and "lst_" not in r.stderr + r.stdout, r.stderr
    ok = run(["token", "--name", "agent", "--write", "tenant-a/*"])
    assert ok.returncode == 0 and "tenant-a/*" in ok.stdout


def test_mcp_http_refuses_an_address_it_cannot_listen_on_before_starting_anything() -> None:
    """uvicorn used to raise OverflowError for a port past 65535 (a traceback), and for a port in use it
    printed the ready line first and failed after."""
    import socket

    env = {"LEARNSTREAM_MCP_TOKEN": "t", "LEARNSTREAM_WORKER_URL": "http://127.0.0.1:1"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for spec, words in (("127.0.0.1:99999", "the port must be 1..65535"),
                            (f"127.0.0.1:{port}", "cannot listen there (Address already in use)"),
                            ("127.0.0.1:http", "--http wants HOST:PORT")):
            r = run(["mcp", "--http", spec], env=env)
            assert r.returncode == 2 and words in r.stderr and "mcp ready" not in r.stderr, r.stderr[-2000:]


def test_every_argument_has_help_and_top_level_help_has_no_rest_markup() -> None:
    from workers.cli.main import parser

    ap = parser()
    top = ap.format_help()
    assert "`" not in top and ":class:" not in top and ":func:" not in top
    subs = next(a for a in ap._actions if a.__class__.__name__ == "_SubParsersAction")
    listed = {c.dest for c in subs._choices_actions}
    assert listed == set(subs.choices), "every command has a help line"
    for name, sp in subs.choices.items():
        for a in sp._actions:
            if a.dest == "help":
                continue
            assert a.help, f"learnstream {name}: {a.option_strings or a.dest} has no help"
        assert "`" not in sp.format_help(), name


def test_a_bench_worker_takes_the_settings_exported_in_the_shell(monkeypatch, tmp_path) -> None:
    """`LEARNSTREAM_CACHE_BYTES=... learnstream bench feedback` ran its workers with the default 512 MiB:
    the bench built their settings from defaults, and a setting's default went over the environment's."""
    monkeypatch.setenv("LEARNSTREAM_CACHE_BYTES", "2147483648")
    monkeypatch.setenv("LEARNSTREAM_LR_MIN", "0.002")
    w = bench_module("_stream").WorkerProcess("127.0.0.1:9", partitions=3, app_id="bench-x", log_dir=tmp_path,
                                               env={"LEARNSTREAM_LR_MIN": "0.003"})
    assert w.env["LEARNSTREAM_CACHE_BYTES"] == "2147483648"
    assert w.env["LEARNSTREAM_LR_MIN"] == "0.003"  # --worker-env still wins
    assert w.env["LEARNSTREAM_BROKER"] == "127.0.0.1:9" and w.env["LEARNSTREAM_PARTITIONS"] == "3"


def test_a_failed_bench_run_keeps_its_logs(tmp_path, capsys) -> None:
    """A 10,000-session run whose worker stopped answering left nothing to read: the logs went with the
    run's other temporary files unless --keep-logs was given. A run that ends in an exception keeps them."""
    teardown = bench_module("_stream").teardown
    kept, gone = tmp_path / "failed", tmp_path / "finished"
    for d in (kept, gone):
        d.mkdir()
        (d / "worker-1.log").write_text("the worker's last words\n")
    with pytest.raises(ConnectionRefusedError):
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        finally:
            teardown([], None, kept, False)
    assert (kept / "worker-1.log").exists()
    assert f"logs are kept in {kept}" in capsys.readouterr().err
    try:
        pass
    finally:
        teardown([], None, gone, False)
    assert not gone.exists()
    stopped = tmp_path / "stopped"  # Ctrl-C or SIGTERM (SystemExit): stopped on purpose, nothing to read
    for stop in (KeyboardInterrupt(), SystemExit(143)):
        stopped.mkdir()
        with pytest.raises(type(stop)):
            try:
                raise stop
            finally:
                teardown([], None, stopped, False)
        assert not stopped.exists()


@pytest.mark.parametrize(("sessions", "dim"), [(8, 384), (8, 3072), (2000, 384)])
def test_bench_feedback_warm_up_fills_the_replay_buffers_in_envelopes_and_stays_bounded(sessions: int,
                                                                                         dim: int) -> None:
    """One event per message, 2,000 sessions' warm-up was 256,000 messages: the worker applied 177,895
    in the run's 180 s and `bench feedback --sessions 2000` never got past it (issue 10)."""
    from collections import Counter

    import orjson

    from workers.cores.instant import REPLAY_CAP
    from workers.verbs.codec import MAX_EVENT_BYTES

    feedback = bench_module("feedback")
    keys = [f"s{i}" for i in range(sessions)]
    msgs, events = feedback.warm_up_messages(keys, dim, 0)
    per_session: Counter = Counter()
    singles = 0
    for k, v in msgs:
        assert len(v) <= MAX_EVENT_BYTES // 2
        body = orjson.loads(v)
        assert body["session_key"] == k.decode()
        if "events" in body:
            per_session[k.decode()] += len(body["events"])
        else:
            singles += 1
    assert sum(per_session.values()) + singles == events
    assert set(per_session) == set(keys) and singles == feedback._WARM_SINGLE
    want = min(2 * REPLAY_CAP, feedback._WARM_EVENTS // sessions)  # full buffers where the budget allows
    assert len(set(per_session.values())) == 1 and want <= min(per_session.values()) < want + 8
    assert len(msgs) <= (sessions * 8 if sessions <= 8 else 2 * sessions) + feedback._WARM_SINGLE


def test_bench_feedback_scale_fills_every_replay_buffer_before_timing() -> None:
    """--scale's set-up (--fill full): 2 x REPLAY_CAP events per session in envelopes, no one-event
    messages, and parts small enough to wait unconsumed on the embedded broker."""
    from collections import Counter

    import orjson

    from workers.cores.instant import REPLAY_CAP

    feedback = bench_module("feedback")
    keys = [f"s{i}" for i in range(300)]
    msgs, events = feedback.warm_up_messages(keys, 384, 0, budget=2 * REPLAY_CAP * len(keys), single=0)
    per_session: Counter = Counter()
    for k, v in msgs:
        per_session[k.decode()] += len(orjson.loads(v)["events"])
    assert events == sum(per_session.values()) and set(per_session.values()) == {2 * REPLAY_CAP}
    assert len(per_session) == len(keys)


def test_a_child_that_exited_while_suspended_is_named_on_resume() -> None:
    """A benchmark resuming a worker that died in its sleep says so, with the exit code, instead of
    failing later on a refused connection."""
    from workers.cli.processes import ChildProcess

    child = ChildProcess()
    child.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    child.proc.wait(30)
    with pytest.raises(RuntimeError, match=r"exited \(3\) while suspended"):
        child.resume()


def test_bench_continual_speed_times_every_row() -> None:
    """The learner's speed rows: in process, through the verb one example per call and in envelopes, and a
    1536-feature learner one example per call (each save encodes the ~3 MB learner)."""
    r = run(["bench", "continual", "--speed", "60"])
    assert r.returncode == 0, r.stderr
    for row in ("ContinualLearner.learn_batch, batches of 10", "learn_example verb, one example per call ",
                "learn_example verb, envelopes of 10", "learn_example verb, envelopes of 50",
                "learn_example verb, one example per call, 1536 features"):
        assert re.search(rf"^  {re.escape(row)}.* +\d+\.\d +\d+\.\d$", r.stdout, re.M), (row, r.stdout)


def test_a_bench_consumer_says_done_when_its_target_comes_after_its_last_event() -> None:
    """`bench feedback` resumes a baseline consumer with its target in stdin and every event in its topic:
    the consumer may count them all before its reader thread reads the target, and then no later event
    checks it (a CI run failed with "raw consumer: no 'done' within 180 s")."""
    from pathlib import Path

    bench = str(Path(__file__).resolve().parents[2] / "bench")
    child = ("import sys, time; sys.path.insert(0, sys.argv[1]); from _consumers import Counter\n"
             "c = Counter(); c.add(5); print('counted', flush=True); time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", child, bench], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "counted"
        p.stdin.write("5\n")
        p.stdin.flush()
        done = p.stdout.readline().split()  # the child sleeps 30 s: no "done" line would come only at its exit
        assert done[:2] == ["done", "5"] and float(done[2]) <= float(done[3]), done
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_refused_start_is_a_json_record_when_logs_are_json(log_format: str, tmp_path,
                                                             monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """An outside trial: with LEARNSTREAM_LOG_FORMAT=json every line was JSON except the one saying why the
    worker would not start (`learnstream: LEARNSTREAM_PARTITIONS='abc' is not an integer`)."""
    from workers.cli.main import main

    monkeypatch.setenv("LEARNSTREAM_LOG_FORMAT", log_format)
    monkeypatch.setenv("LEARNSTREAM_PARTITIONS", "abc")
    assert main(["worker", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    if log_format == "json":
        rec = json.loads(err)
        assert rec["level"] == "error" and rec["event"] == "learnstream: LEARNSTREAM_PARTITIONS='abc' is not an integer"
    else:
        assert err == "learnstream: LEARNSTREAM_PARTITIONS='abc' is not an integer"


@pytest.mark.parametrize("env,words", [
    ({"LEARNSTREAM_AUTH_TOKENS_FILE": "/nonexistent/tokens"}, "/nonexistent/tokens"),
    ({"LEARNSTREAM_TLS_CERTFILE": "/nonexistent/cert.pem", "LEARNSTREAM_TLS_KEYFILE": "/nonexistent/key.pem"},
     "/nonexistent/"),
    ({"LEARNSTREAM_PROTOCOLS_EMBEDDER": "bogus"}, "LEARNSTREAM_PROTOCOLS_EMBEDDER='bogus' must be"),
    ({"LEARNSTREAM_SCORING_API_KEY_FILE": "/nonexistent/key"},
     "LEARNSTREAM_SCORING_API_KEY_FILE=/nonexistent/key: cannot be read (No such file or directory)"),
    ({"LEARNSTREAM_TOPICS_DIR": "/nonexistent/topics"}, "LEARNSTREAM_TOPICS_DIR=/nonexistent/topics: no topics"),
])
def test_a_worker_refuses_its_files_and_options_before_it_starts_the_embedded_broker(
        env: dict, words: str, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Outside trials: a worker refusing its tokens file or its protocols embedder had already started the
    embedded broker (its address printed as on a good start, its log made in the data dir) before saying
    why it would not run; a scoring key file that could not be read, and a topics folder that did not exist,
    were not refused at all (an ERROR at the first call; the package's topics)."""
    from workers.cli.main import main

    monkeypatch.delenv("LEARNSTREAM_BROKER", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    data = tmp_path / "data"
    assert main(["worker", "--data-dir", str(data)]) == 2
    out = capsys.readouterr()
    assert "embedded broker on" not in out.out + out.err
    assert words in out.err.strip().splitlines()[-1], out.err
    assert not (data / "broker").exists()


def test_produce_commands_checks_the_body_against_its_verbs_schema() -> None:
    """The commands topic takes any body, so a command with a body its verb refuses was sent and dead-lettered
    (an outside trial); ``learnstream produce commands`` now checks it against the verb's schema first."""
    from workers.cli.produce import check_line

    ok = check_line("commands", '{"verb": "init_instant", "body": {"targets": ["a"], "dim": 8}}')
    assert ok == ("default", {"verb": "init_instant", "body": {"targets": ["a"], "dim": 8, "session_key": "default"}})
    assert check_line("commands", '{"verb": "init_instant", "body": {"targets": "a"}}').startswith(
        "schema of init_instant's body: targets: ")
    assert check_line("commands", '{"verb": "init_instant", "body": {"targets": ["a"], "dim": 8.0}}').startswith(
        "schema of init_instant's body: dim: ")  # an integer is a JSON integer, as the verb reads it
    assert check_line("commands", '{"verb": "nosuch", "body": {}}') == "unknown verb: nosuch"
    assert check_line("commands", '{"verb": "health", "body": {}}').startswith("verb health is a read")
    assert check_line("commands", '{"verb": "init_instant", "body": {"targets": "a"}}', validate=False)[0] == "default"
    # a null is an absent field to the verbs; 1e400 is refused with its reason (the SDK sends no infinity)
    assert check_line("commands", '{"verb": "record_outcome", "body": {"target": "a", "quality": 0.5, '
                                  '"cost": null}}')[0] == "default"
    assert check_line("loss", '{"loss": 1e400}') == \
        "a number beyond a double's range (as 1e400): write the finite value the field should take"
