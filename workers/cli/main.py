"""learnstream: continual learning for LLM agents as Kafka stream workers.

Commands: demo, worker, broker, topics, produce, dispatch, mcp, token, bench. Run
"learnstream COMMAND --help" for the options of one.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import runpy
import signal
import ssl
import sys
from pathlib import Path

from workers.errors import ConfigError, LearnstreamError

__all__ = ("main",)


def _settings(args: argparse.Namespace):  # noqa: ANN202
    """The one Settings of this command: the environment, the flags over it; applied to the topic
    catalogue here, passed down from here."""
    from workers.kafka.topics import use_folder
    from workers.stream.settings import Settings

    s = Settings.from_env(broker=getattr(args, "broker", None), data_dir=getattr(args, "data_dir", None),
                          web_port=getattr(args, "web_port", None), web_host=getattr(args, "web_host", None),
                          partitions=getattr(args, "partitions", None), worker_id=getattr(args, "worker_id", None),
                          log_level=getattr(args, "log_level", None))
    use_folder(s.topics_dir)
    return s


_NO_BROKER = ("no broker: set LEARNSTREAM_BROKER=host:port or pass --broker host:port. A running "
              "'learnstream worker' prints its broker's address on its first line "
              "(\"embedded broker on 127.0.0.1:PORT\"); 'learnstream broker' starts one on its own.")


def _need_broker(args: argparse.Namespace):  # noqa: ANN202
    s = _settings(args)
    if not s.broker:
        raise LearnstreamError(_NO_BROKER)
    return s


def _role(name: str) -> str:
    """An input topic's role, or a LearnstreamError listing the valid ones."""
    from workers.kafka.topics import input_topics

    roles = sorted(t.role for t in input_topics())
    if name not in roles:
        raise LearnstreamError(f"unknown role {name!r}; valid roles: {', '.join(roles)}")
    return name


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.stream.worker import run_worker

    return run_worker(_settings(args))


def cmd_broker(args: argparse.Namespace) -> int:
    from workers.kafka.broker import run_forever

    data_dir = args.data_dir or _settings(args).data_dir / "broker"
    return run_forever(args.port, data_dir)


def cmd_topics(args: argparse.Namespace) -> int:
    from workers.stream.provision import describe_topics, ensure_topics
    from workers.kafka.topics import topics

    s = _need_broker(args)
    have = asyncio.run(ensure_topics(s) if args.action == "create" else describe_topics(s))
    for t in topics().values():
        n = have.get(t.name)
        state = f"{n} partitions" if n is not None else "missing"
        print(f"{t.name:30} {t.kind:10} {t.cleanup_policy:8} {state}")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    """Validate every stdin line and send the good ones; report each bad one, then a summary."""
    from workers.client import LearnstreamClient
    from workers.cli.produce import check_line

    _settings(args)  # the topic catalogue first: the role is checked against it
    role = _role(args.role)
    s = _need_broker(args)

    async def run() -> int:
        sent = refused = 0
        async with LearnstreamClient(s.broker, validate=False, **s.kafka_kwargs()) as c:
            for n, line in enumerate(sys.stdin, 1):
                if not line.strip():
                    continue
                checked = check_line(role, line, key=args.key, validate=not args.no_validate)
                if isinstance(checked, str):
                    refused += 1
                    print(f"line {n}: not sent: {checked}", file=sys.stderr)
                    if args.stop_on_error:
                        break
                    continue
                key, value = checked
                await c.send(role, key, value, wait=False)
                sent += 1
            await c.flush()
        stopped = " (stopped at the first bad line: --stop-on-error)" if refused and args.stop_on_error else ""
        print(f"{sent} sent to {role}, {refused} refused{stopped}", file=sys.stderr)
        return 1 if refused else 0

    return asyncio.run(run())


# HTTP statuses of a verb's own answer (applied, refused, unparsable): printed, and the exit status stays 0 as
# in process; any other (401, 403, 413, 5xx) makes it 1
_VERB_ANSWERS = frozenset({400, 422})


def cmd_dispatch(args: argparse.Namespace) -> int:
    """One JSON request per stdin line -> one response per stdout line."""
    if args.url:
        import urllib.error
        import urllib.request

        from workers.client import worker_base_url, worker_ssl_context

        url = worker_base_url(args.url, "--url")
        headers = {"Content-Type": "application/json"}
        settings = _settings(args)
        token = settings.api_token
        context = worker_ssl_context(settings.tls_cafile) if url.startswith("https:") else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if args.token_file:  # an explicit file wins over LEARNSTREAM_API_TOKEN
            try:
                headers["Authorization"] = "Bearer " + Path(args.token_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"--token-file: {exc}") from None
        failed = []  # answers that are not a verb's (401, 403, 5xx ...): the exit status says so
        for line in sys.stdin:
            if not line.strip():
                continue
            req = urllib.request.Request(url + "/dispatch", data=line.encode(), headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=60, context=context) as r:
                    out = r.read()
            except urllib.error.HTTPError as e:
                out = e.read()
                if e.code not in _VERB_ANSWERS:
                    failed.append(e.code)
            except (urllib.error.URLError, OSError) as e:  # refused, no route, a name that does not resolve
                reason = getattr(e, "reason", e)
                hint = ("; a worker certificate signed by a private CA needs LEARNSTREAM_TLS_CAFILE"
                        if isinstance(reason, ssl.SSLError) else "")
                raise LearnstreamError(f"cannot reach the worker at {args.url} ({reason}){hint}") from None
            sys.stdout.write(out.decode() + "\n")
            sys.stdout.flush()
        if failed:
            print(f"learnstream dispatch: {len(failed)} request(s) not answered by a verb (HTTP "
                  f"{', '.join(map(str, sorted(set(failed))))})", file=sys.stderr)
            return 1
        return 0
    from workers.verbs.session import LearnSession
    from workers.verbs.surface import configure

    s = _settings(args)
    configure(s.verb_options(), s.scoring_api_key_reader())
    session = LearnSession(path=args.path, options=s.verb_options())
    try:
        for line in sys.stdin:
            if line.strip():
                sys.stdout.write(session.dispatch_json(line) + "\n")
                sys.stdout.flush()
    finally:
        session.close()
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """A new random token on stderr, its entry for the tokens file (hash and scopes) on stdout."""
    import yaml

    from workers.stream.auth import hash_token, new_token, parse_tokens

    if not args.name.strip():
        raise ConfigError("--name must name who holds the token (it is shown in logs and 403 reasons)")
    token = new_token()
    entry: dict = {"name": args.name, "sha256": hash_token(token)}
    if args.peer:
        entry["peer"] = True
    if args.read:
        entry["read"] = args.read
    if args.write:
        entry["write"] = args.write
    parse_tokens(yaml.safe_dump({"tokens": [entry]}), "learnstream token")  # a worker's own rules: never an entry it refuses
    if args.add_to:
        _add_token_entry(Path(args.add_to), entry)
    print(f"token (give it to the client; it is shown once and never stored): {token}", file=sys.stderr)
    if not args.add_to:
        sys.stdout.write(yaml.safe_dump({"tokens": [entry]}, sort_keys=False))
    return 0


def _add_token_entry(path: Path, entry: dict) -> None:
    """Append ``entry`` to the tokens file at ``path`` (created, mode 0600, if missing): the whole file is
    checked as a worker would read it, names stay unique, and it is replaced in one rename, so a worker
    re-reading it never sees half a file."""
    import os
    import tempfile

    import yaml

    from workers.stream.auth import parse_tokens

    doc: dict = {"tokens": []}
    if path.exists():
        text = path.read_text()
        parse_tokens(text, str(path))  # a file a worker would refuse is not extended
        doc = yaml.safe_load(text) or {"tokens": []}
        if any(e.get("name") == entry["name"] for e in doc["tokens"]):
            raise ConfigError(f"{path}: a token named {entry['name']!r} is already there (names show in logs "
                              f"and 403 reasons: use another --name, or remove the old entry first)")
    doc["tokens"].append(entry)
    text = yaml.safe_dump(doc, sort_keys=False)
    parse_tokens(text, str(path))
    fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def bench_dir() -> Path:
    """bench/ of a checkout, or the copy inside an installed wheel (workers/bench)."""
    package = Path(__file__).resolve().parent.parent  # workers/
    return next((d for d in (package.parent / "bench", package / "bench") if d.is_dir()), package.parent / "bench")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # once: a second SIGTERM (``timeout`` and a process-group kill both send one) must not interrupt the
    # ``finally`` that the first started, or it leaves the run's brokers and temporary directories behind
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def cmd_bench(args: argparse.Namespace) -> int:
    d = bench_dir()
    names = sorted(p.stem for p in d.glob("*.py") if not p.stem.startswith("_"))
    if not args.name or args.name not in names:
        unknown = f"unknown benchmark {args.name!r}; " if args.name else ""
        print(f"{unknown}benchmarks: " + ", ".join(names), file=sys.stderr)
        return 0 if not args.name else 2
    sys.path.insert(0, str(d))
    # SIGTERM (``timeout``, a cancelled CI job) ends a benchmark as Ctrl-C does: its ``finally``
    # resumes and stops the brokers and workers it started, instead of leaving them behind
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    mod = runpy.run_path(str(d / f"{args.name}.py"), run_name="learnstream_bench")
    return int(mod["main"](args.rest) or 0)


def cmd_demo(args: argparse.Namespace) -> int:
    from workers.cli.demo import run_demo

    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # as in cmd_bench: its finally stops its broker and worker
    return run_demo(_settings(args), events=args.events, keep_data=args.keep_data, web_port=args.web_port)


def cmd_mcp(args: argparse.Namespace) -> int:
    from workers.mcp.main import run_mcp

    from workers.stream.logs import configure as configure_logs

    s = _settings(args)
    # as a worker's: secrets redacted, repeats rate-limited per source line (a bad tools/call logged the SDK's
    # ~90-line validation dump every time), JSON when LEARNSTREAM_LOG_FORMAT=json
    configure_logs(logging.getLogger(), s.log_format)
    # SIGTERM (a pod or service stop) unwinds as Ctrl-C does, so the embedded worker it started is
    # stopped: by default the signal ends the process on the spot (uvicorn re-raises the one it caught)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return run_mcp(s, worker_url=args.worker_url or s.worker_url, http=args.http,
                   session=args.session or s.mcp_session)


def _common(p: argparse.ArgumentParser, worker: bool = False) -> None:
    from workers.stream.settings import LOG_LEVELS

    if worker:
        p.add_argument("--broker", metavar="HOST:PORT",
                       help="Kafka bootstrap servers (env LEARNSTREAM_BROKER; unset: start the embedded broker)")
        p.add_argument("--data-dir", help="RocksDB tables live here (env LEARNSTREAM_DATA_DIR)")
        p.add_argument("--web-port", type=int, help="HTTP port (env LEARNSTREAM_WEB_PORT, default 6066)")
        p.add_argument("--web-host", help="HTTP bind/advertised host (env LEARNSTREAM_WEB_HOST)")
        p.add_argument("--partitions", type=int, help="partitions of every input topic (env LEARNSTREAM_PARTITIONS)")
        p.add_argument("--worker-id", help="static group member id, e.g. the pod name (env LEARNSTREAM_WORKER_ID)")
        p.add_argument("--log-level", choices=LOG_LEVELS,
                       help="log level (env LEARNSTREAM_LOG_LEVEL, default warning)")
    else:
        p.add_argument("--broker", metavar="HOST:PORT",
                       help="Kafka bootstrap servers (env LEARNSTREAM_BROKER; required: a running "
                            "'learnstream worker' prints its broker's address first)")


def parser() -> argparse.ArgumentParser:
    from workers.kafka.topics import input_topics

    roles = sorted(t.role for t in input_topics())
    ap = argparse.ArgumentParser(prog="learnstream", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("demo", help="broker + worker + a scripted agent simulation + a report")
    _common(p, worker=True)
    p.add_argument("--events", type=_positive_int, default=3000, help="feedback events in the simulation (default 3000)")
    p.add_argument("--keep-data", action="store_true", help="keep the worker's data dir afterwards")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("worker", help="run one stream worker (prints one line once it is ready)")
    _common(p, worker=True)
    p.set_defaults(fn=cmd_worker)
    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker")
    p.add_argument("--port", type=_port, help="port to listen on (default: a free one; printed at start)")
    p.add_argument("--data-dir", help="where the broker keeps its log (default: $LEARNSTREAM_DATA_DIR/broker, "
                                      "the directory a worker without LEARNSTREAM_BROKER uses)")
    p.set_defaults(fn=cmd_broker)
    p = sub.add_parser("topics", help="create or list the topics of topics/*.yaml")
    p.add_argument("action", choices=["create", "list"], help="create the missing topics, or list them")
    _common(p)
    p.add_argument("--partitions", type=int, help="partitions of every input topic (env LEARNSTREAM_PARTITIONS)")
    p.set_defaults(fn=cmd_topics)
    p = sub.add_parser("produce", help="send JSON lines from stdin to an input topic, by role",
                       description="One JSON value per stdin line, validated against the topic's schema. A bad "
                                   "line is reported with its number and reason and is not sent; the run goes on "
                                   "(or stops with --stop-on-error) and ends with a sent/refused summary. "
                                   "Exit status 1 when any line was refused.")
    p.add_argument("role", help="input topic role: " + ", ".join(roles))
    p.add_argument("--key", help="session_key of every line (default: each value's session_key, else 'default')")
    p.add_argument("--no-validate", action="store_true",
                   help="skip schema validation (to exercise the dead-letter topic)")
    p.add_argument("--stop-on-error", action="store_true", help="stop at the first bad line (default: go on)")
    _common(p)
    p.set_defaults(fn=cmd_produce)
    p = sub.add_parser("dispatch", help="JSON verb requests on stdin, responses on stdout")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--path", help="in-process session on this RocksDB path (default: in memory)")
    g.add_argument("--url", help="a worker's base URL: send to its POST /dispatch "
                                 "(with LEARNSTREAM_API_TOKEN as bearer token when set)")
    p.add_argument("--token-file", help="with --url: a file holding the API token to send "
                                        "(instead of LEARNSTREAM_API_TOKEN)")
    p.set_defaults(fn=cmd_dispatch)
    p = sub.add_parser("mcp", help="the MCP server for agents (stdio, or streamable HTTP with --http)",
                       description="Model Context Protocol server over a worker's HTTP API. Without --worker-url "
                                   "(env LEARNSTREAM_WORKER_URL) it starts a worker with the embedded broker.")
    p.add_argument("--worker-url", help="base URL of a running worker (env LEARNSTREAM_WORKER_URL)")
    p.add_argument("--http", metavar="HOST:PORT", help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio")
    p.add_argument("--session", help="default session_key of tools and resources (env LEARNSTREAM_MCP_SESSION)")
    p.add_argument("--data-dir", help="data dir of the embedded worker (env LEARNSTREAM_DATA_DIR)")
    p.set_defaults(fn=cmd_mcp)
    p = sub.add_parser("token", help="make an API token: the token on stderr, its tokens-file entry on stdout")
    p.add_argument("--name", required=True, help="who holds it (shown in logs and 403 reasons)")
    p.add_argument("--read", action="append", default=[], help="session_key or prefix* it may read (repeatable)")
    p.add_argument("--write", action="append", default=[], help="session_key or prefix* it may write (and read)")
    p.add_argument("--peer", action="store_true", help="the workers' own credential for forwarding")
    p.add_argument("--add-to", metavar="FILE", help="append the entry to this tokens file (created if missing) "
                                                     "instead of printing it")
    p.set_defaults(fn=cmd_token)
    p = sub.add_parser("bench", help="run a benchmark from bench/ (no name: list them)")
    p.add_argument("name", nargs="?", help="benchmark name (a file bench/NAME.py)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    p.set_defaults(fn=cmd_bench)
    return ap


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse reports anything else as a usage error)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _port(text: str) -> int:
    """An argparse type: a TCP port, 1..65535."""
    n = _positive_int(text)
    if n > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (1..65535), got {n}")
    return n


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args) or 0)
    except LearnstreamError as exc:
        _fatal(f"learnstream: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from aiokafka.errors import KafkaConnectionError  # here: "learnstream --help" imports no Kafka client

        if not isinstance(exc, KafkaConnectionError):
            raise
        _fatal(f"learnstream: cannot reach the Kafka broker ({exc}); check --broker or LEARNSTREAM_BROKER")
        return 2


def _fatal(line: str) -> None:
    """Why a command stops, on stderr: a JSON record when LEARNSTREAM_LOG_FORMAT=json asks for one (a log
    shipper reading a worker's JSON lines got this one as plain text), else the line as it is."""
    from workers.stream.logs import announce

    # read here, not from Settings: the error being reported may be that Settings could not be built
    log_format = "json" if os.environ.get("LEARNSTREAM_LOG_FORMAT", "").strip() == "json" else "text"
    announce(line, log_format, level="error", logger_name="workers.cli", stream=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
