"""A worker's runtime: batches off the input topics -> :class:`~workers.stream.processor.Processor`
-> downstream topics and replies to waiting HTTP writes.

Agents stay thin: a batch of events (``take_batches``) passes the
:class:`~workers.stream.gaps.GapGuard` (records in offset order, nothing skipped), the
:class:`~workers.stream.processor.Processor` applies it, its downstream events and DLQ
entries, re-routed copies, changelog records and next input offsets go, per input partition, in
one Kafka transaction (:mod:`workers.stream.transactions`); the session values go to RocksDB once
it committed. With ``LEARNSTREAM_TRANSACTIONS=false``: downstream delivered first, then the state,
and faust commits no further than the guard allows (README, "Consistency").
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Any

import faust
import orjson
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, ProducerFenced
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from faust.exceptions import ProducerSendError

from workers.kafka.changelog_rewrite import ChangelogRewriter
from workers.kafka.input_purge import InputPurge
from workers.kafka.topics import Topic, by_name, input_topics, topics
from workers.scoring import prefetch
from workers.stream import faust_internals, metrics, partitioning, provision, restore
from workers.stream.broker_health import BrokerHealth
from workers.stream.collector import collector_paused
from workers.stream.gaps import Admitted, GapGuard, KafkaProbe
from workers.stream.partitioning import ORIGIN_HEADER, origin_of
from workers.stream.peers import DeadPeers
from workers.stream.processor import BatchResult, Processor, dlq_entry, encoded
from workers.stream.records import Record
from workers.stream.settings import Settings
from workers.stream.tables import TABLE_NAMES, FaustStateAccess
from workers.stream.transactions import (NotOwned, PartitionWork, ProducerLost, Send, Transactions,
                                         source_partition)
from workers.verbs.codec import dumps_wide
from workers.verbs.surface import REGISTRY, envelope_error

__all__ = ("Runtime", "Replies", "OwnerUnknown")

logger = logging.getLogger(__name__)
# "session cache too small": a batch with evictions whose misses outnumber its hits and this many
_THRASH_MIN_MISSES = 50
_THRASH_WARN_EVERY_S = 300.0

# Batches of results kept for writes whose reply arrives before the waiter registers (a write
# registers right after its send returns, so its batch is one of the last few).
_RECENT_BATCHES = 32
# A batch whose delivery failed is applied again (from the stored values) this many times, with
# backoff, before the agent gives up on it (faust restarts the agent; the guard re-reads it).
_HANDLE_ATTEMPTS = 5
# Producer batching, faust's producer and the transactional ones alike: a batch writes a session's
# changed keys (a few 2 KiB pieces each): with aiokafka's default 16 kB batches and one request in
# flight per broker, the producer carried ~8 records per round trip and capped a worker at ~100
# events/s. One request now carries up to 512 KiB.
PRODUCER_BATCH_BYTES = 512 * 1024
PRODUCER_LINGER_MS = 2


class OwnerUnknown(LookupError):
    """No assignment yet: which worker owns a session is not known (Runtime.owner_url)."""


class PartitionMoved(Exception):
    """A write's partition was revoked from this worker while it waited: its result comes elsewhere."""


class WorkerStopping(Exception):
    """A write's result will not come from this worker: it is stopping (Replies.stop)."""


class AppliedElsewhere(Exception):
    """A write's offset is below where this worker took up its partition: another worker applied it."""


# How often a waiting write checks whether its result can still come from this worker (Runtime._fate)
_FATE_CHECK_S = 0.5


class Replies:
    """Futures of HTTP writes waiting for their (topic, partition, offset) to be applied."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, int, int], asyncio.Future] = {}
        # the last batches' results, for a write whose batch was applied before it registered
        self.recent: deque[dict[tuple[str, int, int], dict]] = deque(maxlen=_RECENT_BATCHES)
        self.stopping = False

    def release_except(self, partitions: set[int]) -> None:
        """Writes waiting on any other partition than ``partitions`` (this worker's new assignment: another
        worker applies them now) answer now, not at their timeout."""
        for key, fut in self.waiting.items():
            if key[1] not in partitions and not fut.done():
                fut.set_exception(PartitionMoved())

    def stop(self) -> None:
        """The worker is stopping: it applies nothing more, so every write waiting for its result, and every
        later one, is answered now (WorkerStopping) instead of at its timeout: a stop waited for them,
        ~30 s with writes in flight, past the grace period of a Kubernetes pod."""
        self.stopping = True
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(WorkerStopping())

    def resolve(self, results: dict[tuple[str, int, int], dict]) -> None:
        for k in [k for k in self.waiting if k in results]:  # few waiters, many results: look up the waiters
            fut = self.waiting.pop(k)
            if not fut.done():
                fut.set_result(results[k])
        self.recent.append(results)  # kept whole: nothing is done per result

    async def wait(self, key: tuple[str, int, int], timeout: float,
                   fate: Callable[[tuple[str, int, int]], Exception | None] | None = None) -> dict:
        """The write's result once this worker applied it; asyncio.TimeoutError after ``timeout``. Every
        :data:`_FATE_CHECK_S`, ``fate(key)`` says whether the result can still come from here: an exception
        it gives twice in a row (a batch's result may be a moment behind where its partition stands) is
        raised. An outside trial's writes to a worker resumed after a long pause waited their whole 30 s:
        its partitions had moved, or come back past their offsets, in rebalances no assignment hook
        answered for them."""
        for results in self.recent:
            if key in results:
                return results[key]
        if self.stopping:
            raise WorkerStopping()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.waiting[key] = fut
        end, strikes = loop.time() + timeout, 0
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), min(end - loop.time(), _FATE_CHECK_S))
                except asyncio.TimeoutError:
                    if loop.time() >= end or fate is None:
                        raise
                why = fate(key)
                strikes = strikes + 1 if why is not None else 0
                if why is not None and strikes >= 2:
                    raise why
        finally:
            self.waiting.pop(key, None)


class Runtime:
    """Everything one worker process holds besides faust itself."""

    def __init__(self, app: faust.App, settings: Settings, tables: dict[str, Any]) -> None:
        self.app, self.settings, self.tables = app, settings, tables
        self.state = FaustStateAccess(tables, self.partition_of)
        self.processor = Processor(self.state, cache_bytes=settings.cache_bytes, limits=settings.limits(),
                                   options=settings.verb_options())
        self._cache_counted = (0, 0, 0)   # the session cache's (hits, misses, evictions) already exported
        self._cache_warned = -math.inf    # monotonic time of the last "cache too small" warning
        self.replies = Replies()
        self.topics = topics()
        self.channels: dict[str, Any] = {}
        self.changelog_topic = tables["session"].changelog_topic.get_topic_name()
        self.probe = KafkaProbe(settings.broker or "", tail_from_start=settings.broker_kind == "embedded",
                                **settings.kafka_kwargs())
        self.guard = GapGuard({t.name for t in input_topics()}, start=self._start_offsets,
                              first_record=self.probe.first_record, seek=self._seek)
        self.broker_health = BrokerHealth(settings.broker or "", settings.broker_unreachable_s,
                                          settings.kafka_kwargs())
        self.input_names = {t.name for t in input_topics()}
        # input partitions this worker owns: set on each assignment, emptied when they are revoked (GET /health)
        self.active_partitions: list[int] = []
        self.txn = Transactions(settings.broker or "", settings.app_id, settings.app_id,
                                max_batch_size=PRODUCER_BATCH_BYTES, linger_ms=PRODUCER_LINGER_MS,
                                max_request_size=app.conf.producer_max_request_size,
                                **settings.kafka_kwargs()) if settings.transactions else None
        # the embedded broker never compacts transactional changelogs: the worker does (changelog_rewrite.py)
        self.rewriter = ChangelogRewriter(
            self.txn, tables, self.probe, ratio=settings.changelog_rewrite_ratio, floor=settings.changelog_rewrite_floor,
            may_commit=self.log_unchanged, on_lost=lambda: faust_internals.rejoin(app),
            topic_configs=provision.changelog_configs(settings), bootstrap=settings.broker or "",
            **settings.kafka_kwargs()) if self.txn is not None and settings.rewrites_changelogs else None
        # the embedded broker keeps unread input (a large cap) and deletes applied input (input_purge.py)
        self.purge = InputPurge(
            settings.broker or "", settings.app_id, may_purge=self.log_unchanged, **settings.kafka_kwargs()
        ) if self.txn is not None and settings.broker_kind == "embedded" and settings.embedded_input_purge_s else None
        self._rejoined_at = -float("inf")  # when _owned last made the consumer rejoin its group
        self._rejoin_later: asyncio.Task | None = None  # a rejoin put off until the session timeout passed
        self._outages_at_assign = 0  # broker_health.outages when the partitions were last assigned
        # input partitions whose committed offset may be stale (the broker lost records): where to start instead
        self._unapplied_from: dict[tuple[str, int], int] = {}
        self._outages_at_start: dict[tuple[str, int], int] = {}  # broker_health.outages at a partition's start
        self._outages_at_reply = 0  # broker_health.outages when Replies.recent was last trusted
        # the embedded broker never expires a dead member: the workers do it (workers/stream/peers.py)
        self.dead_peers = DeadPeers(settings.broker or "", settings.app_id, str(app.conf.canonical_url),
                                    settings.session_timeout_s, own_member=lambda: faust_internals.member_id(app),
                                    **settings.kafka_kwargs()) if settings.broker_kind == "embedded" else None

    async def before_recovery(self, assigned: set[Any]) -> None:
        """Own the assigned input partitions' transactional producers before recovery reads the
        changelogs (starting one fences the previous owner and ends what it left open)."""
        assert self.txn is not None
        self._outages_at_assign = self.broker_health.outages
        if self.rewriter is not None:
            self.rewriter.reset()
        if self.purge is not None:
            self.purge.reset()
        await self.txn.assign({tp.partition for tp in assigned if tp.topic in self.input_names})
        await self._commit_starts(assigned)

    async def _commit_starts(self, assigned: set[Any]) -> None:
        """Commit a readable start for every assigned input partition: its log start where the group
        never committed on it, or where the broker deleted input past the group's offset.

        The guard read where a partition without a committed offset starts at its first record: the
        log start of that moment, so input the broker deleted before it (a backlog past the embedded
        broker's cap while the worker was stopped) was lost silently. With the start committed at
        assignment, a later deletion leaves the offset below the log start; a consumer sought there
        waited for new input (the embedded broker answers such a fetch from the log's end), and the
        loss was seen only when new input came. So that loss is reported here (an ERROR and
        ``learnstream_input_deleted_unread_total``) and the offset moved to the log start."""
        assert self.txn is not None
        tps = [tp for tp in assigned if tp.topic in self.input_names and self.txn.owns(tp.partition)]
        if not tps:
            return
        try:
            committed = await self.probe.committed_many(self.settings.app_id, tps)
            starts = await self.probe.log_starts(tps)
            work: dict[int, PartitionWork] = defaultdict(PartitionWork)
            for tp in tps:
                key = (tp.topic, tp.partition)
                at = committed.get(key)
                if at is None or self._readable(key, at, starts[key]) != at:
                    work[tp.partition].offsets[tp.topic] = starts[key]
            if not work:
                return
            done = await self.txn.commit_all(work, self.log_unchanged)
        except Exception as exc:  # noqa: BLE001 - the partitions start as before (at the log start when read)
            logger.warning("could not commit the start of input partitions without a committed offset: %r", exc)
            return
        for partition, w in work.items():
            if not isinstance(done[partition], BaseException):
                for topic, offset in w.offsets.items():
                    faust_internals.note_committed(self.app, topic, partition, offset)

    def log_unchanged(self) -> bool:
        """No broker outage since the partitions were assigned. After one, the broker may have
        restarted without records it had acknowledged, input this worker already read among them:
        no transaction commits until a rebalance (new producers, the tables checked against the
        changelogs, the input read again from the committed offsets)."""
        return self.broker_health.outages == self._outages_at_assign

    async def _start_offsets(self, tps: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Where newly assigned partitions start: the committed offset, or the log start (one request
        per kind of offset for all of them)."""
        from aiokafka.structs import TopicPartition

        # faust keeps none (or 0, which it stores as none): ask the broker, with the logs' bounds
        committed = {tp: faust_internals.committed_offset(self.app, *tp) for tp in tps}
        ask = [TopicPartition(*tp) for tp, at in committed.items() if at is None]
        all_tps = [TopicPartition(*tp) for tp in tps]
        requests = [self.probe.log_starts(all_tps), self.probe.log_ends(all_tps)]
        if ask:
            requests.append(self.probe.committed_many(self.settings.app_id, ask))
        starts, ends, *asked = await asyncio.gather(*requests)
        for got in asked:
            committed.update(got)
        out: dict[tuple[str, int], int] = {}
        for tp, at in committed.items():
            # a committed offset below the log start: _commit_starts moves it, but its commit may not be read back yet
            out[tp] = starts[tp] if at is None else self._start_after_outages(
                tp, self._readable(tp, at, starts[tp]), starts[tp], ends[tp])
        return out

    def _readable(self, tp: tuple[str, int], committed: int, start: int) -> int:
        """Where a partition the group committed on can be read from: the committed offset, or the log start
        when the broker deleted input past it before it was read (reported as lost: ``DeletedUnread``). A seek
        below the log start would wait at the log's end on the embedded broker."""
        if committed >= start:
            return committed
        self.probe.deleted.report(*tp, committed, start)
        return start

    def _start_after_outages(self, tp: tuple[str, int], committed: int, start: int, end: int) -> int:
        """The start of a partition the group committed on, unless the broker may have lost records
        (``start``, ``end``: its log's, as just read)."""
        topic, partition = tp
        outages, seen = self.broker_health.outages, self._outages_at_start.get(tp)
        self._outages_at_start[tp] = outages
        if self.settings.broker_kind == "embedded" and seen is not None and outages > seen:
            # The embedded broker may have restarted without records it had acknowledged (SIGKILL), and
            # taken new ones at their offsets since; it was seen keeping the group's offsets past them.
            # No offset tells old from new: read the partition again from its start (at most its
            # retention) and let the sessions' watermarks skip what was applied (README "Broker outages").
            self._unapplied_from[tp] = start
            logger.warning("%s[%d]: the broker was unreachable since this partition was last started; reading it "
                           "again from offset %d (committed: %d), applied records are skipped as duplicates",
                           topic, partition, self._unapplied_from[tp], committed)
        floor = self._unapplied_from.get(tp)
        if floor is not None and committed > floor:
            return floor  # until a transaction of this partition commits, the broker's offset may be stale
        if committed > end:
            # the group's offset survived records below it that the broker lost: start before them
            logger.error("%s[%d]: committed offset %d is past the log's end %d (the broker lost records it had "
                         "acknowledged); reading again from %d", topic, partition, committed, end, start)
            self._unapplied_from[tp] = start
            return start
        return committed

    async def bulk_restore(self, spans: dict[Any, tuple[Any, int, int]], time_limit_s: float) -> dict[Any, int]:
        """Apply active changelog ranges in bulk before faust's recovery reads them (restore.py)."""
        keyed = {(tp.topic, tp.partition): tp for tp in spans}
        try:
            done = await restore.restore(
                {k: restore.Span(faust_internals.partition_db(table, tp.partition),
                                  faust_internals.changelog_offset_key(table), start, hw)
                 for k, tp in keyed.items() for table, start, hw in [spans[tp]]},
                {"bootstrap_servers": self.settings.broker, **self.settings.kafka_kwargs()},
                time_limit_s=time_limit_s)
        except Exception as exc:  # noqa: BLE001 - a broker outage, say: faust's recovery reads it all instead
            # What was written is a prefix with its offset: faust replays from its own start, the same
            # records in the same order, which changes nothing already applied.
            logger.warning("bulk restore failed (%s); faust's recovery reads the changelogs", exc)
            return {}
        metrics.RESTORED_RECORDS.inc(done.records)
        metrics.RESTORED_BYTES.inc(done.bytes)
        metrics.RESTORE_SECONDS.inc(done.seconds)
        if done.records:
            logger.info("bulk restore: %d changelog records, %.1f MB in %.1f s", done.records, done.bytes / 1e6,
                        done.seconds)
        return {keyed[k]: offset for k, offset in done.offsets.items()}

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
    async def consume(self, stream: Any) -> None:
        """The agent: batches off the input topics, each applied by :meth:`handle` (retried with backoff)."""
        s = self.settings
        async for events in stream.take_batches(s.batch_max, s.batch_within_s, s.batch_linger_s):
            for attempt in range(1, _HANDLE_ATTEMPTS + 1):
                try:
                    await self.handle(events)
                    break
                except Exception:
                    if attempt == _HANDLE_ATTEMPTS:
                        raise  # not acked: the agent restarts and the guard re-reads the batch
                    logger.exception("batch of %d events failed (attempt %d); applying it again", len(events),
                                     attempt)
                    await asyncio.sleep(0.2 * 2 ** attempt)
            if self.rewriter is not None:
                await self.rewriter.maybe_rewrite()  # between batches: no transaction of ours is open

    async def handle(self, events: list[Any]) -> None:
        """Apply one batch: guard -> apply -> deliver what it produced -> write the state. The
        collector is paused until the batch's transient objects are gone (``workers.stream.collector``)."""
        with collector_paused():
            await self._handle(events)

    async def _handle(self, events: list[Any]) -> None:
        t0 = time.perf_counter()
        admitted = await self.guard.admit(events, _where)
        if self.txn is not None:
            admitted = await self._owned(admitted)
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
        records, reroute, misplaced, forged = partitioning.split(received, self.settings.partitions)
        reroute, dead = self._routable(reroute, misplaced)
        dead += [(rec, dlq_entry(rec, why, "invalid")) for rec, why in forged]
        if self.txn is None and (reroute or dead):
            await self._reroute(reroute, dead)
        res = None
        if records:
            try:
                # scoring calls are made between passes, off the event loop (workers/scoring/prefetch.py)
                res = await prefetch.settle(lambda: self.processor.apply(records), self.http,
                                            discard=self.processor.forget)
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
        failed: set[int] = set()
        if self.txn is not None:
            failed = await self._commit(admitted, res, reroute, dead)
        if res is not None:
            self._count(res, failed)
            # a write of a partition whose transaction did not commit is not answered as applied
            self.replies.resolve({k: v for k, v in res.replies.items() if k[1] not in failed} if failed
                                 else res.replies)
        self.guard.applied(_only(admitted, {p for _, p in admitted.next} - failed) if failed else admitted)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - t0)

    def _count(self, res: BatchResult, failed: set[int]) -> None:
        # a partition whose transaction did not commit is applied again (here or by its new owner): not counted
        for (topic, partition, outcome), n in res.messages.items():
            if partition not in failed:
                metrics.MESSAGES.labels(topic, outcome).inc(n)
        for (topic, partition, outcome), n in res.events.items():
            if partition not in failed:
                metrics.EVENTS.labels(topic, outcome).inc(n)
        for name, seconds in res.verb_seconds:
            metrics.KERNEL_SECONDS.labels(name).observe(seconds)
        metrics.STATE_WRITES.inc(res.state_writes)
        metrics.STATE_WRITE_BYTES.inc(res.state_bytes)
        self._count_cache()
        for out in reversed(res.replies.values()):  # the gauge shows the latest norm of the batch
            data = out.get("data")
            if isinstance(data, dict) and "adapter_norm" in data:
                metrics.ADAPTER_NORM.set(data["adapter_norm"])
                break
        if self.txn is not None:  # without transactions _deliver counted them
            self._count_produced([p for p in res.produce if source_partition(p) not in failed] if failed
                                 else res.produce)

    def _count_cache(self) -> None:
        """Export the session cache's counters; warn (at most every few minutes) while most lookups miss
        and sessions are evicted: the sessions in use do not fit LEARNSTREAM_CACHE_BYTES."""
        s = self.processor.sessions
        counts = (s.hits, s.misses, s.evictions)
        hits, misses, evicted = (now - then for now, then in zip(counts, self._cache_counted))
        self._cache_counted = counts
        metrics.SESSION_CACHE_LOOKUPS.labels("hit").inc(hits)
        metrics.SESSION_CACHE_LOOKUPS.labels("miss").inc(misses)
        metrics.SESSION_CACHE_EVICTIONS.inc(evicted)
        metrics.SESSION_CACHE_BYTES.set(s.cached_bytes)
        metrics.SESSION_CACHE_SESSIONS.set(len(s))
        now = time.monotonic()
        if evicted and misses > max(hits, _THRASH_MIN_MISSES) and now - self._cache_warned > _THRASH_WARN_EVERY_S:
            self._cache_warned = now
            logger.warning("session cache too small: %d of %d session lookups in this batch missed while %d "
                           "sessions were evicted (%d cached, %.0f MiB of LEARNSTREAM_CACHE_BYTES=%d); each miss "
                           "reads and decodes a whole session: raise it or spread the sessions over more workers",
                           misses, hits + misses, evicted, len(s), s.cached_bytes / 2**20, s.cache_bytes)

    @staticmethod
    def _count_produced(produce: list[Any]) -> None:
        for p in produce:
            if p.role == "dlq":
                metrics.DLQ.labels(p.value["reason_code"]).inc()
            else:
                metrics.DOWNSTREAM.labels(p.role).inc()

    async def _owned(self, admitted: Admitted) -> Admitted:
        """Only the events of partitions this worker holds a transactional producer for (one that
        was fenced belongs to another worker now: its events are that worker's to apply).

        Events of such a partition still arriving mean the consumer still holds it: either its
        revocation is on the way, or the fencing came from another worker's stale assignment (one
        the group had already replaced: seen on the embedded broker in a 2 -> 1 -> 2 rebalance) and
        no rebalance will ever come; the partition would then stop for good. So the consumer
        rejoins its group (at most once per session timeout): the rebalance gives the partition to
        whoever the group says, whose producer fences every other, and recovery reads the
        changelogs (what the fencing worker committed included) before anything is applied again.
        """
        assert self.txn is not None
        if all(self.txn.owns(p) for _, p in admitted.next):
            return admitted
        out = Admitted(dropped=admitted.dropped)
        for e in admitted.events:
            if self.txn.owns(e.message.partition):
                out.events.append(e)
            else:  # not a redelivery: another worker's to apply, or this one's again after the rejoin
                metrics.MESSAGES.labels(e.message.topic, "not_owned").inc()
        out.next = {tp: n for tp, n in admitted.next.items() if self.txn.owns(tp[1])}
        await self._rejoin({p for _, p in admitted.next} - {p for _, p in out.next})
        return out

    async def _rejoin(self, fenced: set[int]) -> None:
        """Make the consumer rejoin its group, at most once per session timeout (see _owned).

        Within that time the rejoin is put off, not dropped: the events of a partition fenced again
        soon after a rejoin were dropped here, and until a later record came nothing read them again."""
        now = time.monotonic()
        wait = self._rejoined_at + self.settings.session_timeout_s - now
        if wait < 0:
            self._rejoined_at = now
            logger.warning("partitions %s: consumed here without a transactional producer (fenced); rejoining "
                           "the group", sorted(fenced))
            await faust_internals.rejoin(self.app)
        elif self._rejoin_later is None or self._rejoin_later.done():
            self._rejoin_later = asyncio.ensure_future(self._rejoin_after(wait, fenced))

    async def _rejoin_after(self, wait: float, fenced: set[int]) -> None:
        await asyncio.sleep(wait + 0.01)
        assert self.txn is not None
        try:
            consumed = {tp.partition for tp in self.app.consumer.assignment() if tp.topic in self.input_names}
            if still := {p for p in fenced & consumed if not self.txn.owns(p)}:  # no rebalance gave it one since
                await self._rejoin(still)
        except Exception as exc:  # noqa: BLE001 - a task nothing awaits: the next fenced batch asks again
            logger.warning("the rejoin put off for partitions %s failed: %r", sorted(fenced), exc)

    def stop_rejoin(self) -> None:
        """Cancel a rejoin put off (the worker stops)."""
        if self._rejoin_later is not None:
            self._rejoin_later.cancel()

    async def _commit(self, admitted: Admitted, res: BatchResult | None, reroute: list[tuple[Record, int]],
                      dead: list[tuple[Record, Any]]) -> set[int]:
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
        for rec, entry in dead:
            work[rec.partition].sends.append(Send(self.topics["dlq"].name, rec.key, orjson.dumps(entry.value)))
            metrics.DLQ.labels(entry.value["reason_code"]).inc()
            metrics.MESSAGES.labels(rec.topic, "rejected").inc()
        limit = self.app.conf.producer_max_request_size
        out = [encoded(p, limit) for p in res.produce] if res is not None else []
        for p, value in out:
            work[source_partition(p)].sends.append(Send(self.topics[p.role].name, p.key.encode(), value))
        if res is not None:
            res.produce = [p for p, _ in out]  # what is sent (and counted): an oversized event's DLQ entry
        writes = self.state.take()
        by_tp: dict[tuple[str, int], list[Any]] = defaultdict(list)  # (table, partition) -> its writes, in order
        for write in writes:
            table, partition, _, items = write
            by_tp[(table, partition)].append(write)
            work[partition].records.setdefault(self.state.changelog_topic(table), []).extend(items)
        try:
            await self.app.producer.flush()  # the graph table's writes go through faust's producer
            done = await self.txn.commit_all(work, self.log_unchanged)
        except BaseException:
            for write in writes:
                self.state.drop(write)
            self.processor.forget()
            raise
        for (table, partition), tp_writes in by_tp.items():
            if isinstance(done[partition], BaseException):
                for write in tp_writes:
                    self.state.drop(write)
            else:
                self.state.store(tp_writes, work[partition].last_offsets[self.state.changelog_topic(table)])
        # the sessions this batch wrote could not leave the cache before their writes were local (Processor.save
        # trims before the commit): fit the budget now, not at the next batch (an outside trial's idle worker
        # held 11 times its LEARNSTREAM_CACHE_BYTES until the next write came)
        self.processor.sessions.trim()
        if self.rewriter is not None:
            grown: dict[int, dict[str, int]] = defaultdict(dict)  # partition -> changelog topic -> keys gained
            for (table, partition), n in (res.key_growth.items() if res is not None else ()):
                grown[partition][self.state.changelog_topic(table)] = n
            for partition, w in work.items():
                if not isinstance(done[partition], BaseException):
                    self.rewriter.note(partition, w.last_offsets, grown.get(partition))
        for (topic, partition), nxt in admitted.next.items():
            if not isinstance(done.get(partition), BaseException):
                faust_internals.note_committed(self.app, topic, partition, nxt)
                if self.purge is not None:
                    self.purge.note(topic, partition, nxt)
                self._unapplied_from.pop((topic, partition), None)  # the broker's offset is true again
        failed = {p: e for p, e in done.items() if isinstance(e, BaseException)}
        if failed:
            self.processor.forget()
            gone = {p for p, e in failed.items() if isinstance(e, (NotOwned, ProducerFenced))}
            self.guard.applied(_only(admitted, set(done) - set(failed)))
            lost = sorted(p for p, e in failed.items() if isinstance(e, ProducerLost))
            if lost:
                # The broker lost what it acknowledged, or may have (workers/stream/transactions.py): the rebalance
                # gives these partitions new producers, rebuilds their tables if their changelogs
                # shrank, and re-reads their input from the committed offsets.
                logger.warning("partitions %s released (producer failed, or the broker was unreachable); rejoining "
                               "the group", lost)
                await faust_internals.rejoin(self.app)
            if len(gone) < len(failed):
                raise next(e for p, e in failed.items() if p not in gone)
            # every other failure is a partition another worker owns now: not applied here, not an error
            if moved := sorted(gone - set(lost)):
                logger.warning("partitions %s moved to another worker mid-batch; their events are its to apply", moved)
                # unless the fencing worker acted on a stale assignment: a rebalance settles who owns them
                await self._rejoin(set(moved))
        return set(failed)

    def _misplaced(self, rec: Record) -> Any:
        return dlq_entry(rec, f"re-routed copy arrived on partition {rec.partition}, which does not own its key "
                              f"(LEARNSTREAM_PARTITIONS={self.settings.partitions} differs from the topic's?)",
                         "wrong_partition")

    def _routable(self, reroute: list[tuple[Record, int]], misplaced: list[Record]
                  ) -> tuple[list[tuple[Record, int]], list[tuple[Record, Any]]]:
        """(the re-routes the producer can send, (record, DLQ entry) of the rest and of ``misplaced``).

        A copy over the producer's request limit (an input near the broker's message limit, plus the
        origin header) would fail its send, and with it the batch's transaction, on every retry: the
        input partition would never move again. It is dead-lettered where it arrived instead."""
        limit = self.app.conf.producer_max_request_size
        ok: list[tuple[Record, int]] = []
        dead = [(rec, self._misplaced(rec)) for rec in misplaced]
        for rec, owner in reroute:
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(rec.key, rec.value, _origin(rec))
            if size <= limit:
                ok.append((rec, owner))
            else:
                dead.append((rec, dlq_entry(rec, f"event of {size} bytes on partition {rec.partition}, which does not "
                                                 f"own its key, is too large to re-route to partition {owner} (the "
                                                 f"producer's limit is {limit} bytes)", "oversized")))
        return ok, dead

    async def _reroute(self, reroute: list[tuple[Record, int]], dead: list[tuple[Record, Any]]) -> None:
        """Events on a partition that does not own their key: never applied here (see
        workers/stream/partitioning.py). Acknowledged by the broker before the batch is acked."""
        pending = []
        for rec, owner in reroute:
            pending.append(await self.channel(by_name(rec.topic).role).send(
                key=rec.key, value=rec.value, partition=owner, headers=_origin(rec)))
            metrics.REROUTED.labels(rec.topic).inc()
            metrics.MESSAGES.labels(rec.topic, "rerouted").inc()
        for rec, entry in dead:
            pending.append(await self.channel("dlq").send(key=rec.key, value=orjson.dumps(entry.value)))
            metrics.DLQ.labels(entry.value["reason_code"]).inc()
            metrics.MESSAGES.labels(rec.topic, "rejected").inc()
        if pending:
            await asyncio.gather(*pending)

    async def _deliver(self, produce: list[Any]) -> None:
        """Send downstream events and DLQ entries; return once the broker acknowledged every one."""
        pending, sent = [], []
        for p, value in (encoded(x, self.app.conf.producer_max_request_size) for x in produce):
            pending.append(await self.channel(p.role).send(key=p.key.encode(), value=value))
            sent.append(p)
        if pending:
            await asyncio.gather(*pending)
        self._count_produced(sent)

    # -- reads and writes from HTTP -----------------------------------------------
    def http(self) -> Any:
        """The worker's aiohttp session for outbound calls (faust's, closed with the app)."""
        return self.app.http_client

    async def read(self, verb_name: str, body: dict, sk: str) -> dict:
        """Answer a read; its scoring calls (``important_memories``) are made off the event loop."""
        v, partition = REGISTRY[verb_name], self.partition_of(sk)
        return await prefetch.settle(lambda: self.processor.read(v, body, sk, partition), self.http)

    def event_for_write(self, verb_name: str, body: dict) -> tuple[Topic, dict]:
        t = self.topics[REGISTRY[verb_name].topic]
        return t, t.event(verb_name, body)

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
                meta = await (await self.channel(topic.role).send(key=sk.encode(), value=dumps_wide(value)))
        except (TimeoutError, KafkaError, ProducerSendError) as exc:
            # faust wraps the producer's errors in ProducerSendError
            cause = exc.__cause__ if isinstance(exc, ProducerSendError) else exc
            if isinstance(cause, MessageSizeTooLargeError):
                return envelope_error(verb_name, f"the event is too large for topic {topic.name}; send less per "
                                                 "request"), 413
            why = f"not taken by the broker within {timeout:.0f} s" if isinstance(exc, TimeoutError) else str(exc)
            return envelope_error(verb_name, f"write {why}; retry later"), 503
        if self.broker_health.outages != self._outages_at_reply:
            # results kept from before an outage may be of records whose offsets the broker gave again
            self.replies.recent.clear()
            self._outages_at_reply = self.broker_health.outages
        key = (topic.name, meta.topic_partition.partition, meta.offset)
        written = f"{key[0]}:{key[1]}:{key[2]}"  # the id of the applied write (record_id)
        try:
            out = await self.replies.wait(key, max(deadline - loop.time(), 0.001), self._fate)
        except asyncio.TimeoutError:
            # the event is in the log and will be applied (by whoever owns the partition by then)
            return {**envelope_error(verb_name, f"timed out after {timeout:.0f} s waiting for "
                                                f"{topic.name}[{key[1]}]@{key[2]} to be applied"), "id": written}, 504
        except AppliedElsewhere:
            return {**envelope_error(verb_name, f"{topic.name}[{key[1]}]@{key[2]} was applied by the partition's "
                                                "previous owner, before this worker took the partition up: retry "
                                                "with the same idempotency_key for its result"), "id": written}, 504
        except (WorkerStopping, PartitionMoved) as exc:
            why = "this worker is stopping" if isinstance(exc, WorkerStopping) else "its partition moved to another worker"
            return {**envelope_error(verb_name, f"{why}: {topic.name}[{key[1]}]@{key[2]} is in the log and will be "
                                                "applied by the partition's next owner"), "id": written}, 504
        # a retried idempotency key answers with the id of the write that applied it first
        return {"id": written, **out}, 200 if out["ok"] else 422

    def _fate(self, key: tuple[str, int, int]) -> Exception | None:
        """Why a waiting write's result cannot come from this worker (``Replies.wait``), or None: its partition
        is not among this worker's (once it has an assignment), or it is, and this worker takes it up past the
        write's offset (the gap guard's next offset: below it, records are not applied here)."""
        topic, partition, offset = key
        if not self.active_partitions:  # between a revocation and the next assignment: not known yet
            return None
        if partition not in self.active_partitions:
            return PartitionMoved()
        nxt = self.guard.next.get((topic, partition))
        return AppliedElsewhere() if nxt is not None and offset < nxt else None

    def owner_url(self, sk: str) -> str | None:
        """Base URL of the worker owning ``sk``, or None when it is this one; OwnerUnknown before this
        worker's first assignment (it may never own ``sk``: a write it waited for was applied elsewhere)."""
        try:
            url = self.app.router.key_store(TABLE_NAMES["session"], sk)
        except KeyError:
            raise OwnerUnknown(sk) from None
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
