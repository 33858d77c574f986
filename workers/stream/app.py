"""The faust App ``learnstream``: one agent over all input topics, tables, web views.

Agents stay thin: a batch of events (``take_batches``) passes the
:class:`~workers.stream.gaps.GapGuard` (records in offset order, nothing skipped), the
:class:`~workers.stream.processor.Processor` applies it, and per input partition one Kafka
transaction carries its downstream events, DLQ entries, re-routed copies, changelog records and
next input offsets (:mod:`workers.stream.transactions`); the session values go to RocksDB once it
committed. With ``LEARNSTREAM_TRANSACTIONS=false``: downstream delivered first, then the state,
and faust commits no further than the guard allows (README, "Consistency").
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from typing import Any

import faust
import orjson
from aiohttp import web as aiohttp_web
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, ProducerFenced
from faust.exceptions import ProducerSendError
from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import PrometheusMonitor
from prometheus_client import CollectorRegistry, generate_latest

from workers import broker_compat, metrics
from workers.dispatch import envelope_error, load_verbs, parse_request, session_key_of
from workers.errors import VerbError
from workers.state.limits import check_request
from workers.scoring import endpoints as scoring_endpoints
from workers.stream.batching import LearnStream
from workers.stream import faust_internals
from workers.stream.faust_tuning import set_fetch_max_wait
from workers.stream.gaps import Admitted, GapGuard, KafkaProbe
from workers.stream import partitioning
from workers.stream.broker_health import BrokerHealth
from workers.stream.http_guard import FORWARDED, Guard, server_ssl_context, web_options
from workers.stream.partitioning import ORIGIN_HEADER, origin_of
from workers.stream.processor import BatchResult, Processor, dlq_entry
from workers.stream.records import Record
from workers.stream.settings import Settings
from workers.stream.tables import TABLE_NAMES, FaustStateAccess
from workers.stream.transactions import NotOwned, PartitionWork, Send, Transactions, source_partition
from workers.topics import Topic, by_name, input_topics, topics
from workers.verbs import REGISTRY

__all__ = ("build_app", "Runtime")

logger = logging.getLogger(__name__)

# Batches of results kept for writes whose reply arrives before the waiter registers (a write
# registers right after its send returns, so its batch is one of the last few).
_RECENT_BATCHES = 32
_LAG_INTERVAL_S = 2.0
# A read while this worker recovers (or rebalances) is answered 503 with this Retry-After.
_RECOVERING_RETRY_AFTER_S = 1
# A batch whose delivery failed is applied again (from the stored values) this many times, with
# backoff, before the agent gives up on it (faust restarts the agent; the guard re-reads it).
_HANDLE_ATTEMPTS = 5
_BROKER_PROBE_S = 1.0
# A batch writes a session's changed keys (a few 2 KiB pieces each): with aiokafka's default
# 16 kB batches and one request in flight per broker, the producer carried ~8 records per round
# trip and capped a worker at ~100 events/s. One request now carries up to 512 KiB.
_PRODUCER_BATCH_BYTES = 512 * 1024
_PRODUCER_LINGER_MS = 2


class Replies:
    """Futures of HTTP writes waiting for their (topic, partition, offset) to be applied."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, int, int], asyncio.Future] = {}
        # the last batches' results, for a write whose batch was applied before it registered
        self.recent: deque[dict[tuple[str, int, int], dict]] = deque(maxlen=_RECENT_BATCHES)

    def resolve(self, results: dict[tuple[str, int, int], dict]) -> None:
        for k in [k for k in self.waiting if k in results]:  # few waiters, many results: look up the waiters
            fut = self.waiting.pop(k)
            if not fut.done():
                fut.set_result(results[k])
        self.recent.append(results)  # kept whole: nothing is done per result

    async def wait(self, key: tuple[str, int, int], timeout: float) -> dict:
        for results in self.recent:
            if key in results:
                return results[key]
        fut = asyncio.get_running_loop().create_future()
        self.waiting[key] = fut
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.waiting.pop(key, None)


class Runtime:
    """Everything one worker process holds besides faust itself."""

    def __init__(self, app: faust.App, settings: Settings, tables: dict[str, Any]) -> None:
        self.app, self.settings, self.tables = app, settings, tables
        self.state = FaustStateAccess(tables, self.partition_of)
        self.processor = Processor(self.state, cache_bytes=settings.cache_bytes, limits=settings.limits())
        self.replies = Replies()
        self.topics = topics()
        self.channels: dict[str, Any] = {}
        self.probe_topic = self.topics["feedback"].name
        self.changelog_topic = tables["session"].changelog_topic.get_topic_name()
        self.probe = KafkaProbe(settings.broker or "", tail_from_start=settings.broker_kind == "embedded",
                                **settings.kafka_kwargs())
        self.guard = GapGuard({t.name for t in input_topics()}, start=self._start_offset,
                              first_record=self.probe.first_record, seek=self._seek)
        self.broker_health = BrokerHealth(settings.broker or "", settings.broker_unreachable_s,
                                          settings.kafka_kwargs())
        self.input_names = {t.name for t in input_topics()}
        self.txn = Transactions(settings.broker or "", settings.app_id, settings.app_id,
                                max_batch_size=_PRODUCER_BATCH_BYTES, linger_ms=_PRODUCER_LINGER_MS,
                                max_request_size=app.conf.producer_max_request_size,
                                **settings.kafka_kwargs()) if settings.transactions else None

    async def before_recovery(self, assigned: set[Any]) -> None:
        """Own the assigned input partitions' transactional producers before recovery reads the
        changelogs (starting one fences the previous owner and ends what it left open)."""
        assert self.txn is not None
        await self.txn.assign({tp.partition for tp in assigned if tp.topic in self.input_names})

    async def _start_offset(self, topic: str, partition: int) -> int:
        """Where a newly assigned partition starts: the committed offset, or the log start."""
        committed = faust_internals.committed_offset(self.app, topic, partition)
        if committed is None:  # faust keeps none (or 0, which it stores as none): ask the broker
            committed = await self.probe.committed(self.settings.app_id, topic, partition)
        return committed if committed is not None else await self.probe.log_start(topic, partition)

    async def _seek(self, topic: str, partition: int, offset: int) -> None:
        await faust_internals.seek(self.app, topic, partition, offset)

    def is_ready(self) -> bool:
        """Serving: table recovery finished, no rebalance in progress, and the broker reachable."""
        rec = self.app.tables.recovery
        return (rec.completed.is_set() and not rec.in_recovery and not self.app.rebalancing
                and self.broker_health.reachable())

    def partition_of(self, session_key: str) -> int:
        return partitioning.owner_partition(session_key, self.settings.partitions)

    def channel(self, role: str) -> Any:
        ch = self.channels.get(role)
        if ch is None:
            t = self.topics[role]
            ch = self.channels[role] = self.app.topic(
                t.name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                partitions=t.partitions or self.settings.partitions, replicas=self.settings.replication,
                config=t.config())
        return ch

    # -- the stream ---------------------------------------------------------------
    async def handle(self, events: list[Any]) -> None:
        """Apply one batch: guard -> apply -> deliver what it produced -> write the state."""
        t0 = time.perf_counter()
        admitted = await self.guard.admit(events, _where)
        if self.txn is not None:
            admitted = self._owned(admitted)
        for e in admitted.dropped:
            metrics.MESSAGES.labels(e.message.topic, "redelivered").inc()
        received = []
        by_partition = self.state.events.by_partition
        by_partition.clear()
        for e in admitted.events:
            m = e.message
            by_partition[m.partition] = e
            received.append(Record(m.topic, m.partition, m.offset, m.key, m.value, int((m.timestamp or 0) * 1000),
                                   origin_of(m.headers)))
        records, reroute, misplaced = partitioning.split(received, self.settings.partitions)
        if self.txn is None and (reroute or misplaced):
            await self._reroute(reroute, misplaced)
        res = None
        if records:
            try:
                res = self.processor.apply(records)
                if self.txn is None:
                    # Delivered before the state is written: a value (and its watermark) in the table or
                    # changelog always means its events are downstream too. A crash in between applies
                    # the records again and re-emits the same ids (consumers dedup on them).
                    await self._deliver(res.produce)
                    self.processor.save(res)
                    await self.state.durable()  # the batch's state is in the changelog before its offsets commit
                else:
                    self.processor.save(res)  # queued: written by the batch's transactions below
            except BaseException:
                self.processor.forget()  # the cache holds this batch's unsaved changes
                for write in self.state.take():
                    self.state.drop(write)
                raise
        if self.txn is not None:
            await self._commit(admitted, res, reroute, misplaced)
        if res is not None:
            self._count(res)
            self.replies.resolve(res.replies)
        self.guard.applied(admitted)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - t0)

    def _count(self, res: BatchResult) -> None:
        for (topic, outcome), n in res.by_topic.items():
            metrics.MESSAGES.labels(topic, outcome).inc(n)
        for (topic, outcome), n in res.events_by_topic.items():
            metrics.EVENTS.labels(topic, outcome).inc(n)
        for name, seconds in res.verb_seconds:
            metrics.KERNEL_SECONDS.labels(name).observe(seconds)
        for out in reversed(res.replies.values()):  # the gauge shows the latest norm of the batch
            data = out.get("data")
            if isinstance(data, dict) and "adapter_norm" in data:
                metrics.ADAPTER_NORM.set(data["adapter_norm"])
                break
        if self.txn is not None:  # without transactions _deliver counted them
            self._count_produced(res.produce)

    @staticmethod
    def _count_produced(produce: list[Any]) -> None:
        for p in produce:
            if p.role == "dlq":
                metrics.DLQ.labels(p.value["reason_code"]).inc()
            else:
                metrics.DOWNSTREAM.labels(p.role).inc()

    def _owned(self, admitted: Admitted) -> Admitted:
        """Only the events of partitions this worker holds a transactional producer for (one that
        was fenced belongs to another worker now: its events are that worker's to apply)."""
        assert self.txn is not None
        if all(self.txn.owns(p) for _, p in admitted.next):
            return admitted
        out = Admitted(dropped=admitted.dropped)
        for e in admitted.events:
            (out.events if self.txn.owns(e.message.partition) else out.dropped).append(e)
        out.next = {tp: n for tp, n in admitted.next.items() if self.txn.owns(tp[1])}
        return out

    async def _commit(self, admitted: Admitted, res: BatchResult | None, reroute: list[tuple[Record, int]],
                      misplaced: list[Record]) -> None:
        """One transaction per input partition of the batch: what its records produced downstream,
        their re-routed copies, the changelog records of the sessions they changed and the next
        input offsets (workers/stream/transactions.py). Each session write goes to RocksDB once its
        transaction committed; a failed partition raises after the others were stored, and the
        batch is applied again (the guard drops what was committed)."""
        assert self.txn is not None
        work: dict[int, PartitionWork] = defaultdict(PartitionWork)
        for (topic, partition), nxt in admitted.next.items():
            work[partition].offsets[topic] = nxt
        for rec, owner in reroute:
            work[rec.partition].sends.append(Send(rec.topic, rec.key, rec.value, owner, _origin(rec)))
            metrics.REROUTED.labels(rec.topic).inc()
            metrics.MESSAGES.labels(rec.topic, "rerouted").inc()
        for rec in misplaced:
            work[rec.partition].sends.append(Send(self.topics["dlq"].name, rec.key,
                                                  orjson.dumps(self._misplaced(rec).value)))
            metrics.DLQ.labels("wrong_partition").inc()
            metrics.MESSAGES.labels(rec.topic, "rejected").inc()
        for p in res.produce if res is not None else ():
            work[source_partition(p)].sends.append(Send(self.topics[p.role].name, p.key.encode(),
                                                        orjson.dumps(p.value)))
        writes = self.state.take()
        last: list[int] = []  # per write: index of its last record in its partition's sends
        for write in writes:
            table, partition, _, items = write
            topic, sends = self.state.changelog_topic(table), work[partition].sends
            sends.extend(Send(topic, k, v, partition) for k, v in items)
            last.append(len(sends) - 1)
        try:
            await self.app.producer.flush()  # the graph table's writes go through faust's producer
            done = await self.txn.commit_all(work)
        except BaseException:
            for write in writes:
                self.state.drop(write)
            self.processor.forget()
            raise
        for write, i in zip(writes, last, strict=True):
            got = done[write[1]]
            if isinstance(got, BaseException):
                self.state.drop(write)
            else:
                self.state.store(write, got[i].offset)
        for (topic, partition), nxt in admitted.next.items():
            if not isinstance(done.get(partition), BaseException):
                faust_internals.note_committed(self.app, topic, partition, nxt)
        failed = {p: e for p, e in done.items() if isinstance(e, BaseException)}
        if failed:
            self.processor.forget()
            gone = {p for p, e in failed.items() if isinstance(e, (NotOwned, ProducerFenced))}
            self.guard.applied(_only(admitted, set(done) - set(failed)))
            if len(gone) < len(failed):
                raise next(e for p, e in failed.items() if p not in gone)
            # every failure is a partition another worker owns now: not applied here, not an error
            logger.warning("partitions %s moved to another worker mid-batch; their events are its to apply",
                           sorted(gone))

    def _misplaced(self, rec: Record) -> Any:
        return dlq_entry(rec, f"re-routed copy arrived on partition {rec.partition}, which does not own its key "
                              f"(LEARNSTREAM_PARTITIONS={self.settings.partitions} differs from the topic's?)",
                         "wrong_partition")

    async def _reroute(self, reroute: list[tuple[Record, int]], misplaced: list[Record]) -> None:
        """Events on a partition that does not own their key: never applied here (see
        workers/stream/partitioning.py). Acknowledged by the broker before the batch is acked."""
        pending = []
        for rec, owner in reroute:
            pending.append(await self.channel(by_name(rec.topic).role).send(
                key=rec.key, value=rec.value, partition=owner, headers=_origin(rec)))
            metrics.REROUTED.labels(rec.topic).inc()
            metrics.MESSAGES.labels(rec.topic, "rerouted").inc()
        for rec in misplaced:
            pending.append(await self.channel("dlq").send(key=rec.key, value=orjson.dumps(self._misplaced(rec).value)))
            metrics.DLQ.labels("wrong_partition").inc()
            metrics.MESSAGES.labels(rec.topic, "rejected").inc()
        if pending:
            await asyncio.gather(*pending)

    async def _deliver(self, produce: list[Any]) -> None:
        """Send downstream events and DLQ entries; return once the broker acknowledged every one."""
        pending = []
        for p in produce:
            pending.append(await self.channel(p.role).send(key=p.key.encode(), value=orjson.dumps(p.value)))
        if pending:
            await asyncio.gather(*pending)
        self._count_produced(produce)

    # -- reads and writes from HTTP -----------------------------------------------
    def read(self, verb_name: str, body: dict, sk: str) -> dict:
        return self.processor.read(REGISTRY[verb_name], body, sk, self.partition_of(sk))

    def event_for_write(self, verb_name: str, body: dict) -> tuple[Topic, dict]:
        v = REGISTRY[verb_name]
        t = self.topics[v.topic]
        if t.verb == verb_name:
            return t, body
        for op, name in t.ops.items():
            if name == verb_name:
                return t, {"op": op, **body}
        return t, {"verb": verb_name, "body": body}

    async def write(self, verb_name: str, body: dict, sk: str) -> tuple[dict, int]:
        """Produce the write to its topic; answer (envelope, HTTP status) once this worker applied it.

        Within ``write_timeout_s`` whatever the broker does: 503 when the broker is unreachable or
        does not take the event in time (it may still land in the log: retrying may apply it twice),
        504 when it is in the log but not applied in time (it will be).
        """
        timeout = self.settings.write_timeout_s
        if not self.broker_health.reachable():
            return envelope_error(verb_name, f"broker unreachable for {self.broker_health.unreachable_for():.0f} s; "
                                             "retry later"), 503
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        topic, value = self.event_for_write(verb_name, {**body, "session_key": sk})
        try:
            async with asyncio.timeout(timeout):
                meta = await (await self.channel(topic.role).send(key=sk.encode(), value=orjson.dumps(value)))
        except (TimeoutError, KafkaError, ProducerSendError) as exc:
            # faust wraps the producer's errors in ProducerSendError
            cause = exc.__cause__ if isinstance(exc, ProducerSendError) else exc
            if isinstance(cause, MessageSizeTooLargeError):
                return envelope_error(verb_name, f"the event is too large for topic {topic.name}; send less per "
                                                 "request"), 413
            why = f"not taken by the broker within {timeout:.0f} s" if isinstance(exc, TimeoutError) else str(exc)
            return envelope_error(verb_name, f"write {why}; retry later"), 503
        key = (topic.name, meta.topic_partition.partition, meta.offset)
        written = f"{key[0]}:{key[1]}:{key[2]}"  # the id of the applied write (record_id)
        try:
            out = await self.replies.wait(key, max(deadline - loop.time(), 0.001))
        except asyncio.TimeoutError:
            # the event is in the log and will be applied (by whoever owns the partition by then)
            return {**envelope_error(verb_name, f"timed out after {timeout:.0f} s waiting for "
                                                f"{topic.name}[{key[1]}]@{key[2]} to be applied"), "id": written}, 504
        # a retried idempotency key answers with the id of the write that applied it first
        return {"id": written, **out}, 200 if out["ok"] else 422

    def owner_url(self, sk: str) -> str | None:
        """Base URL of the worker owning ``sk``, or None when it is this one (or unknown)."""
        try:
            url = self.app.router.key_store(TABLE_NAMES["session"], sk)
        except KeyError:
            return None
        mine = self.app.conf.canonical_url
        if (url.host, url.port) == (mine.host, mine.port):
            return None
        return str(url).rstrip("/")


def _where(event: Any) -> tuple[str, int, int]:
    m = event.message
    return (m.topic, m.partition, m.offset)


def _origin(rec: Record) -> list[tuple[str, bytes]]:
    """The header a re-routed copy carries (workers/stream/partitioning.py)."""
    return [(ORIGIN_HEADER, f"{rec.partition}:{rec.offset}".encode())]


def _only(admitted: Admitted, partitions: set[int]) -> Admitted:
    return Admitted(next={tp: n for tp, n in admitted.next.items() if tp[1] in partitions})


def build_app(settings: Settings) -> tuple[faust.App, Runtime]:
    load_verbs()
    set_fetch_max_wait(settings.fetch_max_wait_ms)
    if not settings.broker:
        raise ValueError("settings.broker must be set (the CLI starts the embedded broker first)")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    guard = Guard(settings)  # refuses to start on a non-loopback address without tokens
    scoring_endpoints.configure(settings.scoring_endpoints, settings.scoring_api_key_file)
    app = faust.App(
        settings.app_id,
        broker=",".join(f"kafka://{b}" for b in settings.broker.split(",")),
        store="learnstream://",  # faust's RocksDB store without the WAL (workers/stream/store.py)
        datadir=str(settings.data_dir),
        web_host=settings.web_host, web_port=settings.web_port, web_bind=settings.web_bind or settings.web_host,
        canonical_url=f"{settings.scheme}://{settings.web_host}:{settings.web_port}",
        web_application_options=web_options(guard), web_ssl_context=server_ssl_context(settings),
        # faust's own views serve raw table values and the cluster layout to anyone: off
        web_router_enabled=False, web_tables_enabled=False, web_graph_enabled=False, web_stats_enabled=False,
        web_metrics_enabled=False,
        topic_partitions=settings.partitions, topic_replication_factor=settings.replication,
        table_standby_replicas=settings.standby_replicas,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=settings.worker_id,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        producer_max_batch_size=_PRODUCER_BATCH_BYTES, producer_linger_ms=_PRODUCER_LINGER_MS,
        key_serializer="raw", value_serializer="raw",
        web_enabled=True, web_in_thread=False,
        Stream=LearnStream,  # adds take_batches
        loghandlers=[],
    )
    if settings.kafka:
        _apply_kafka_security(app, settings)
    if settings.broker_kind == "embedded" and settings.transactions:
        broker_compat.ignore_finished_aborts()
    tables = {
        # bytes types make faust pick the raw codec for the changelog (a Schema(...) argument is
        # silently ignored there and falls back to json, which cannot carry binary values).
        verb_table: app.Table(name, key_type=bytes, value_type=bytes, partitions=settings.partitions,
                              options={"driver": "rocksdict", "block_cache_size": settings.block_cache_bytes},
                              help=f"learnstream {verb_table} state")
        for verb_table, name in TABLE_NAMES.items()
    }
    rt = Runtime(app, settings, tables)
    inputs = [t for t in input_topics() if t.verb or t.ops or t.role == "commands"]
    for t in topics().values():
        rt.channel(t.role)  # declare every topic (faust creates missing ones)
    channel = app.topic(*[t.name for t in inputs], key_type=bytes, value_type=bytes,
                        key_serializer="raw", value_serializer="raw")

    async def learn(stream: Any) -> None:
        async for events in stream.take_batches(settings.batch_max, settings.batch_within_s, settings.batch_linger_s):
            for attempt in range(1, _HANDLE_ATTEMPTS + 1):
                try:
                    await rt.handle(events)
                    break
                except Exception:
                    if attempt == _HANDLE_ATTEMPTS:
                        raise  # not acked: the agent restarts and the guard re-reads the batch
                    logger.exception("batch of %d events failed (attempt %d); applying it again", len(events),
                                     attempt)
                    await asyncio.sleep(0.2 * 2 ** attempt)

    app.agent(channel, name="learnstream.learn", concurrency=1)(learn)  # >1 loses messages (faust #606)

    faust_internals.watch(app, rt.guard)
    if rt.txn is not None:
        faust_internals.transactional(app, rt.before_recovery, rt.probe.last_record)

    @app.on_partitions_revoked.connect
    async def _revoked(app: faust.App, revoked: Any, **_: Any) -> None:
        rt.processor.forget()
        rt.guard.reset()

    @app.on_partitions_assigned.connect
    async def _assigned(app: faust.App, assigned: Any, **_: Any) -> None:
        rt.processor.forget()
        rt.guard.reset()

    @app.on_rebalance_complete.connect
    async def _recovered(app: faust.App, **_: Any) -> None:
        rt.processor.forget()  # nothing read while recovering may be the base of a batch

    @app.service
    class _Probe(faust.Service):  # the guard's probe clients live as long as the app
        async def on_start(self) -> None:
            await rt.probe.start()

        async def on_stop(self) -> None:
            await rt.probe.close()
            if rt.txn is not None:
                await rt.txn.close()

    _install_web(app, rt, guard)
    _install_metrics(app, rt, inputs)
    return app, rt


def _apply_kafka_security(app: faust.App, settings: Settings) -> None:
    """SASL/TLS pass-through: faust takes a credentials object, built from the same kwargs as aiokafka."""
    k = settings.kafka_kwargs()
    context = k.get("ssl_context")
    if k.get("sasl_mechanism"):
        app.conf.broker_credentials = faust.SASLCredentials(
            username=k.get("sasl_plain_username"), password=k.get("sasl_plain_password"),
            mechanism=k["sasl_mechanism"], ssl_context=context)
    elif context is not None:
        app.conf.broker_credentials = context


def _json(web: Any, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    return web.bytes(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), content_type="application/json",
                     status=status, headers=headers)


def _install_web(app: faust.App, rt: Runtime, guard: Guard) -> None:
    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        try:
            # partitions of the input topics (co-partitioned, so one topic's numbers say it all)
            assigned = sorted({tp.partition for tp in app.assignor.assigned_actives() if tp.topic == rt.probe_topic})
            standby = sorted({tp.partition for tp in app.assignor.assigned_standbys()
                              if tp.topic == rt.changelog_topic})
        except Exception:  # noqa: BLE001 - before the first assignment
            assigned, standby = [], []
        return _json(web, {"status": "ok", "worker": rt.settings.worker_id or str(rt.settings.web_port),
                           "ready": rt.is_ready(), "broker_reachable": rt.broker_health.reachable(),
                           "active_partitions": assigned, "standby_partitions": standby})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        ok = rt.is_ready()
        out: dict[str, Any] = {"ready": ok}
        if not rt.broker_health.reachable():
            out["reason"] = f"broker unreachable for {rt.broker_health.unreachable_for():.0f} s"
        return _json(web, out, 200 if ok else 503)

    async def verb_request(web: Any, request: Any, req: Any) -> Any:
        parsed = parse_request(req)
        if isinstance(parsed, dict):
            return _json(web, parsed, 400)
        name, body = parsed
        try:
            sk = session_key_of(body)
        except VerbError as exc:
            return _json(web, envelope_error(name, str(exc)), 400)
        denied = guard.deny(request, name, sk, REGISTRY[name].writes)
        if denied is not None:
            return denied
        owner = rt.owner_url(sk)
        if owner is not None:
            if request.headers.get(FORWARDED):
                return _json(web, envelope_error(name, "partition owner unknown (rebalancing); retry"), 503,
                             {"Retry-After": "1"})
            return await guard.forward(app.http_client, owner, {"verb": name, "body": body}, name)
        if REGISTRY[name].writes:
            try:  # a configuration whose state could outgrow the session limit never reaches the log
                check_request(name, body, rt.processor.sessions.limits)
            except VerbError as exc:
                return _json(web, envelope_error(name, str(exc)), 400)
            out, status = await rt.write(name, body, sk)
        elif not rt.is_ready():
            # Recovering or rebalancing: the tables may not hold the session's value yet, and an
            # empty answer would be wrong. Never answered from (nor cached from) a partial value.
            return _json(web, envelope_error(name, "recovering: state not available yet; retry"), 503,
                         {"Retry-After": str(_RECOVERING_RETRY_AFTER_S)})
        else:
            out = rt.read(name, body, sk)
            status = 200 if out["ok"] else 422
        return _json(web, out, status)

    @app.page("/dispatch")
    class Dispatch(faust.web.View):
        async def post(self, request: Any) -> Any:
            req = await guard.read_json(request, "?")
            if isinstance(req, aiohttp_web.Response):
                return req
            return await verb_request(self.web, request, req)

    def shortcut(path: str, verb_name: str) -> None:
        class Shortcut(faust.web.View):
            async def post(self, request: Any) -> Any:
                body = await guard.read_json(request, verb_name)
                if isinstance(body, aiohttp_web.Response):
                    return body
                if not isinstance(body, dict):
                    return _json(self.web, envelope_error(verb_name, "parse: the body must be a JSON object"), 400)
                return await verb_request(self.web, request, {"verb": verb_name, "body": body})
        Shortcut.__name__ = f"Shortcut_{verb_name}"
        app.page(path)(Shortcut)

    shortcut("/route", "route")
    shortcut("/predict", "predict")

    @app.page("/graph/{session}/edges")
    class GraphEdges(faust.web.View):
        async def get(self, request: Any, session: str) -> Any:
            q = request.query
            body: dict[str, Any] = {"session_key": session}
            try:
                body["src"] = q["src"]
                for name in ("t", "known_at", "limit"):
                    if name in q:
                        body[name] = int(q[name])
            except (KeyError, ValueError) as exc:
                return _json(self.web, envelope_error("query_at", f"bad query parameter: {exc}"), 400)
            return await verb_request(self.web, request, {"verb": "query_at", "body": body})


class _LeanPrometheusMonitor(PrometheusMonitor):
    """faust's Prometheus sensor without its per-message series.

    Those hooks update labelled series on every message, table access and send (~45 µs a
    message, measured in bench/README.md "feedback"); ``learnstream_events_total`` and
    ``learnstream_batch_seconds`` count the same work per batch. Commit, rebalance, assignment
    and web metrics stay. The per-message hooks fall back to faust's plain Monitor, which is what
    a faust app without a sensor runs.
    """

    on_message_in = Monitor.on_message_in
    on_stream_event_in = Monitor.on_stream_event_in
    on_stream_event_out = Monitor.on_stream_event_out
    on_message_out = Monitor.on_message_out
    on_table_get = Monitor.on_table_get
    on_table_set = Monitor.on_table_set
    on_send_initiated = Monitor.on_send_initiated
    on_send_completed = Monitor.on_send_completed


# faust's series fed only by the per-message hooks _LeanPrometheusMonitor turns off
# (learnstream_events_total, learnstream_messages_total and learnstream_batch_seconds measure that work).
_SILENCED_FAUST_SERIES = (
    "messages_received", "active_messages", "messages_received_per_topics", "messages_received_per_topics_partition",
    "events_runtime_latency", "total_events", "total_active_events", "total_events_per_stream", "table_operations",
    "topic_messages_sent", "total_sent_messages", "producer_send_latency")


def _install_metrics(app: faust.App, rt: Runtime, inputs: list[Topic]) -> None:
    from faust.sensors.prometheus import setup_prometheus_sensors

    faust_registry = CollectorRegistry(auto_describe=True)
    # a fixed prefix (not the app id) so dashboards work for any deployment
    setup_prometheus_sensors(app, pattern="/metrics/faust", registry=faust_registry, name_prefix="faust")
    app.monitor.__class__ = _LeanPrometheusMonitor  # same metrics object, per-message hooks made cheap
    for name in _SILENCED_FAUST_SERIES:  # their hooks are off: exported, they would read 0 forever
        faust_registry.unregister(getattr(app.monitor._metrics, name))

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body = generate_latest(metrics.REGISTRY) + generate_latest(faust_registry)
        return web.bytes(body, content_type="text/plain; version=0.0.4")

    names = {t.name for t in inputs}

    @app.timer(_BROKER_PROBE_S)
    async def broker_probe() -> None:
        await rt.broker_health.probe()
        metrics.READY.set(1 if rt.is_ready() else 0)

    @app.timer(_LAG_INTERVAL_S)
    async def lag() -> None:
        consumer = app.consumer
        lag_by_topic: dict[str, int] = {t: 0 for t in names}
        try:
            assignment = consumer.assignment()
        except Exception:  # noqa: BLE001 - not started yet
            return
        for tp in assignment:
            if tp.topic not in names:
                continue
            hw = consumer.highwater(tp)  # from the last Fetch response: no extra request
            committed = consumer._committed_offset.get(tp)
            if hw is not None and committed is not None:
                lag_by_topic[tp.topic] += max(hw - committed, 0)  # committed = next offset to read
        for t, n in lag_by_topic.items():
            metrics.CONSUMER_LAG.labels(t).set(n)
        metrics.READY.set(1 if rt.is_ready() else 0)
