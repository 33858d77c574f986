"""``learnstream``: demo, worker, broker, topics, produce, dispatch, bench."""
from __future__ import annotations

import argparse
import asyncio
import logging
import runpy
import sys
from pathlib import Path

import orjson

from workers.errors import LearnstreamError

__all__ = ("main",)


def _settings(args: argparse.Namespace):  # noqa: ANN202
    from workers.stream.settings import Settings

    return Settings.from_env(broker=getattr(args, "broker", None), data_dir=getattr(args, "data_dir", None),
                             web_port=getattr(args, "web_port", None), web_host=getattr(args, "web_host", None),
                             partitions=getattr(args, "partitions", None), worker_id=getattr(args, "worker_id", None),
                             log_level=getattr(args, "log_level", None))


def _need_broker(args: argparse.Namespace):  # noqa: ANN202
    s = _settings(args)
    if not s.broker:
        raise LearnstreamError("no broker: set LEARNSTREAM_BROKER or pass --broker host:port "
                               "(`learnstream broker` starts the embedded one)")
    return s


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.stream.worker import run_worker

    return run_worker(_settings(args))


def cmd_broker(args: argparse.Namespace) -> int:
    from workers.broker import run_forever

    from workers.stream.settings import Settings

    data_dir = args.data_dir or Settings.from_env().data_dir / "broker"
    return run_forever(args.port, data_dir)


def cmd_topics(args: argparse.Namespace) -> int:
    from workers.stream.provision import describe_topics, ensure_topics
    from workers.topics import topics

    s = _need_broker(args)
    have = asyncio.run(ensure_topics(s) if args.action == "create" else describe_topics(s))
    for t in topics().values():
        n = have.get(t.name)
        state = f"{n} partitions" if n is not None else "missing"
        print(f"{t.name:30} {t.kind:10} {t.cleanup_policy:8} {state}")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from workers.client import LearnstreamClient

    s = _need_broker(args)

    async def run() -> int:
        n = 0
        async with LearnstreamClient(s.broker, validate=not args.no_validate, **s.kafka_kwargs()) as c:
            for line in sys.stdin:
                if not line.strip():
                    continue
                value = orjson.loads(line)
                key = args.key or value.get("session_key") or (value.get("body") or {}).get("session_key") or "default"
                if args.role == "commands":
                    value.setdefault("body", {}).setdefault("session_key", key)
                await c.send(args.role, key, value, wait=False)
                n += 1
            await c.flush()
        print(f"produced {n} events to {args.role}", file=sys.stderr)
        return 0

    return asyncio.run(run())


def cmd_dispatch(args: argparse.Namespace) -> int:
    """One JSON request per stdin line -> one response per stdout line."""
    if args.url:
        import urllib.error
        import urllib.request

        for line in sys.stdin:
            if not line.strip():
                continue
            req = urllib.request.Request(args.url.rstrip("/") + "/dispatch", data=line.encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    out = r.read()
            except urllib.error.HTTPError as e:
                out = e.read()
            sys.stdout.write(out.decode() + "\n")
            sys.stdout.flush()
        return 0
    from workers.dispatch import LearnSession

    session = LearnSession(path=args.path)
    try:
        for line in sys.stdin:
            if line.strip():
                sys.stdout.write(session.dispatch_json(line) + "\n")
                sys.stdout.flush()
    finally:
        session.close()
    return 0


def bench_dir() -> Path:
    """bench/ of a checkout, or the copy inside an installed wheel (workers/bench)."""
    here = Path(__file__).resolve().parent
    return next((d for d in (here.parent / "bench", here / "bench") if d.is_dir()), here.parent / "bench")


def cmd_bench(args: argparse.Namespace) -> int:
    d = bench_dir()
    names = sorted(p.stem for p in d.glob("*.py") if not p.stem.startswith("_"))
    if not args.name or args.name not in names:
        print("benchmarks: " + ", ".join(names), file=sys.stderr)
        return 0 if not args.name else 2
    sys.path.insert(0, str(d))
    mod = runpy.run_path(str(d / f"{args.name}.py"), run_name="learnstream_bench")
    return int(mod["main"](args.rest) or 0)


def cmd_demo(args: argparse.Namespace) -> int:
    from workers.demo import run_demo

    return run_demo(_settings(args), events=args.events, keep_data=args.keep_data)


def _common(p: argparse.ArgumentParser, worker: bool = False) -> None:
    p.add_argument("--broker", help="Kafka bootstrap host:port (env LEARNSTREAM_BROKER; unset = embedded)")
    if worker:
        p.add_argument("--data-dir", help="RocksDB tables live here (env LEARNSTREAM_DATA_DIR)")
        p.add_argument("--web-port", type=int, help="HTTP port (env LEARNSTREAM_WEB_PORT, default 6066)")
        p.add_argument("--web-host", help="HTTP bind/advertised host (env LEARNSTREAM_WEB_HOST)")
        p.add_argument("--partitions", type=int, help="partitions of every input topic (env LEARNSTREAM_PARTITIONS)")
        p.add_argument("--worker-id", help="static group member id, e.g. the pod name (env LEARNSTREAM_WORKER_ID)")
        p.add_argument("--log-level", help="debug|info|warning|error (env LEARNSTREAM_LOG_LEVEL)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="learnstream", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="broker + worker + a scripted agent simulation + a report")
    _common(p, worker=True)
    p.add_argument("--events", type=int, default=3000, help="feedback events in the simulation")
    p.add_argument("--keep-data", action="store_true", help="keep the worker's data dir afterwards")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("worker", help="run one stream worker")
    _common(p, worker=True)
    p.set_defaults(fn=cmd_worker)
    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker")
    p.add_argument("--port", type=int)
    p.add_argument("--data-dir", help="where the broker keeps its log (default: $LEARNSTREAM_DATA_DIR/broker, "
                                      "the directory a worker without LEARNSTREAM_BROKER uses)")
    p.set_defaults(fn=cmd_broker)
    p = sub.add_parser("topics", help="create or list the topics of topics/*.yaml")
    p.add_argument("action", choices=["create", "list"])
    _common(p)
    p.add_argument("--partitions", type=int)
    p.set_defaults(fn=cmd_topics)
    p = sub.add_parser("produce", help="send JSON lines from stdin to a topic (by role: feedback, loss, ...)")
    p.add_argument("role")
    p.add_argument("--key", help="session_key (default: each value's session_key)")
    p.add_argument("--no-validate", action="store_true", help="skip schema validation (to test the DLQ)")
    _common(p)
    p.set_defaults(fn=cmd_produce)
    p = sub.add_parser("dispatch", help="JSON verb requests on stdin, responses on stdout")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--path", help="in-process session on this RocksDB path (default: in memory)")
    g.add_argument("--url", help="a worker's base URL: send to its POST /dispatch")
    p.set_defaults(fn=cmd_dispatch)
    p = sub.add_parser("bench", help="run a benchmark from bench/ (no name: list them)")
    p.add_argument("name", nargs="?")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args) or 0)
    except LearnstreamError as exc:
        print(f"learnstream: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
