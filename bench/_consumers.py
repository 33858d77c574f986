"""The two baseline consumers of ``learnstream bench feedback``, each run as a subprocess.

``python bench/_consumers.py raw|faust --bootstrap H:P --topic T --group G --partitions N``

- ``raw``: an aiokafka consumer in a group, ``getmany`` loop: the practical limit.
- ``faust``: a minimal faust app with one agent, ``async for value in stream``
  (``concurrency=1``, raw serializers, in-memory store, no web server).

Fetch sizes are the clients' defaults, as in the worker. The fetch wait is the
clients' default (faust hardcodes ``fetch_max_wait_ms=1500`` in its consumer, as in
the worker; aiokafka's own default is 500 ms) unless ``--fetch-max-wait-ms`` is given:
use it to compare with a worker whose fetch wait was changed the same way.

Both only decode what they consume, the same way (:func:`decode`): ``orjson`` plus
the embedding through :func:`workers.codec.embedding_field` (``embedding_b64`` or a
JSON array), one event or every event of an envelope. Nothing else.

Protocol with the parent: once the group has assigned partitions the child prints
``ready <monotonic>``. The parent writes cumulative event counts, one per line, to
stdin; each time the decoded count reaches one the child prints
``done <target> <monotonic of the first event after the previous target> <monotonic of the last>``.
``time.monotonic`` is CLOCK_MONOTONIC, comparable across processes.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import threading
import time
from typing import Any

import orjson

from _stream import SESSION_TIMEOUT_S as _SESSION_TIMEOUT_S  # the worker's, in the benchmarks
from workers.verbs.codec import embedding_field

__all__ = ("decode", "Counter", "main")

_HEARTBEAT_S = 3.0  # the worker's: min(3 s, session timeout / 3)
_FAUST_FETCH_WAIT_MS = 1500  # what faust.transport.drivers.aiokafka passes to every worker consumer


def decode(value: bytes) -> int:
    """Decode one message (an event or an envelope) the way a worker must; returns its event count."""
    v = orjson.loads(value)
    events = v.get("events")
    if events is None:
        embedding_field(v, "embedding")
        return 1
    for e in events:
        embedding_field(e, "embedding")
    return len(events)


class Counter:
    """Cumulative decoded events against the parent's targets (read from stdin in a thread).

    Either side can complete a target: the child is resumed with a target in its stdin and all the
    events in its topic, and may count them all before the reader thread has read the target (then no
    further event comes to check it: the child never said "done", once in a CI run)."""

    def __init__(self) -> None:
        self.events = 0
        self.first: float | None = None
        self.last = 0.0   # monotonic time of the last event counted
        self.targets: collections.deque[int] = collections.deque()
        self._lock = threading.Lock()
        threading.Thread(target=self._read_targets, daemon=True).start()

    def _read_targets(self) -> None:
        for line in sys.stdin:
            if line.strip():
                with self._lock:
                    self.targets.append(int(line))
                    self._reached()

    def add(self, n: int) -> None:
        with self._lock:
            self.last = time.monotonic()
            if self.first is None:
                self.first = self.last
            self.events += n
            self._reached()

    def _reached(self) -> None:
        while self.targets and self.events >= self.targets[0]:
            t = self.targets.popleft()
            print(f"done {t} {self.first} {self.last}", flush=True)
            self.first = None


def _faust_fetch_wait(ms: int) -> None:
    """Make faust's consumer use ``ms`` instead of the ``fetch_max_wait_ms=1500`` it hardcodes."""
    import aiokafka

    init = aiokafka.AIOKafkaConsumer.__init__

    def __init__(self: Any, *a: Any, **k: Any) -> None:
        if k.get("fetch_max_wait_ms") == _FAUST_FETCH_WAIT_MS:
            k["fetch_max_wait_ms"] = ms
        init(self, *a, **k)

    aiokafka.AIOKafkaConsumer.__init__ = __init__


async def run_raw(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer

    extra = {"fetch_max_wait_ms": args.fetch_max_wait_ms} if args.fetch_max_wait_ms else {}
    c = AIOKafkaConsumer(args.topic, bootstrap_servers=args.bootstrap, group_id=args.group, **extra,
                         auto_offset_reset="earliest", enable_auto_commit=True,
                         session_timeout_ms=int(_SESSION_TIMEOUT_S * 1000),
                         heartbeat_interval_ms=int(_HEARTBEAT_S * 1000))
    counter = Counter()
    await c.start()
    ready = False
    try:
        while True:
            batch = await c.getmany(timeout_ms=100)
            for msgs in batch.values():
                n = 0
                for m in msgs:
                    n += decode(m.value)
                counter.add(n)
            if not ready and c.assignment():
                ready = True
                print(f"ready {time.monotonic()}", flush=True)
    finally:
        await c.stop()


def run_faust(args: argparse.Namespace) -> None:
    import faust

    if args.fetch_max_wait_ms:
        _faust_fetch_wait(args.fetch_max_wait_ms)
    # its data directory goes with the logs: faust's default, "<app id>-data" in the working
    # directory, left one in the repository per run
    app = faust.App(args.group, broker=f"kafka://{args.bootstrap}", store="memory://", datadir=args.datadir,
                    topic_partitions=args.partitions, web_enabled=False,
                    broker_session_timeout=_SESSION_TIMEOUT_S, broker_heartbeat_interval=_HEARTBEAT_S,
                    broker_commit_interval=1.0, consumer_auto_offset_reset="earliest",
                    key_serializer="raw", value_serializer="raw",
                    loghandlers=[])
    topic = app.topic(args.topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    counter = Counter()
    ready: list[bool] = []

    @app.agent(topic, concurrency=1)
    async def decoder(stream: Any) -> None:
        async for value in stream:
            counter.add(decode(value))

    @app.on_partitions_assigned.connect
    async def _assigned(app: faust.App, assigned: Any, **_: Any) -> None:
        if not ready and any(tp.topic == args.topic for tp in assigned):
            ready.append(True)
            print(f"ready {time.monotonic()}", flush=True)

    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["raw", "faust"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--fetch-max-wait-ms", type=int, default=None)
    p.add_argument("--datadir", default=None, help="the faust consumer's data directory")
    args = p.parse_args(argv)
    if args.kind == "raw":
        asyncio.run(run_raw(args))
    else:
        run_faust(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
