"""Every place learnstream reaches into faust's internals (private names, patched methods): all in
this module, each marked ``# faust 0.15.3:`` with what it relies on.

Checked against faust-streaming 0.15.3 (mode-streaming 0.7.1, aiokafka 0.14.0): ``install`` warns
when another faust version runs, and ``tests/unit/test_faust_internals.py`` fails when the source of
any faust function or attribute touched here differs from the one checked (:data:`TOUCHED`).

Besides the offset patches below: the consumer's long-poll (:func:`set_fetch_max_wait`), the
tables' RocksDB access (:func:`partition_db`, :func:`changelog_offset_key`, :func:`event_context`),
the store's write options (:class:`WalStore`), the stream's processor list (:func:`start_passive`,
:func:`remove_processor`) and the committed offsets the lag gauge reads (:func:`committed_offset`). Each patch changes only what the :class:`~workers.stream.gaps.GapGuard`
of an app watches (the app's input topics); other topics and other apps keep faust's behaviour.

What faust does, and why it loses events (README, "Consistency"):

1. **It commits past offsets it never delivered.** ``Consumer._drain_messages`` treats a jump in
   offsets as a *gap* (``_add_gap``) and ``_new_offset`` then counts the gap as acknowledged. A gap is
   legitimate for transaction markers or compaction, but after a restart the stream can also start
   consuming before "seek stream partitions to committed offsets" completes (``Recovery.
   on_recovery_completed`` resumes the stream partitions *first*); the seek discards the records
   fetched meanwhile, consumption resumes at a later offset, and the skipped offsets are committed.
   ``_new_offset`` also tests the head of the acked list with ``min(acked) - committed > 1``, so
   the record *at* the committed offset may be missing and still be committed over, and a
   committed offset of 0 disables the test. Patched: for watched partitions the commit offset is
   the guard's, the next offset after everything applied (or confirmed absent) in order.
2. **It drops redelivered records.** The drain loop skips any record below the last offset it
   delivered (``_read_offset``). After the guard seeks back to re-read skipped records, the
   records still in flight from before the seek would raise that mark again and the re-read
   ones would be dropped. Patched: for watched partitions the mark always reads as "none", so
   every fetched record reaches the guard, which knows what was applied.
3. **Its producer flush does not wait.** ``ProducerBuffer.flush`` returns after 0.1 s without a
   message sent, even with messages (changelog writes) still buffered; the offset commit that
   follows can then be durable before the state it covers. Patched: flush until the buffer is empty.
4. **It lets the stream consume before the seek, and skips offset 0.** ``Consumer.perform_seek``
   now pauses the stream partitions until the seek completed (the guard would catch the jump
   anyway; this removes its cause). aiokafka's ``seek_to_committed`` seeks only to offsets above
   0, so a partition committed at 0 kept the position it had before the rebalance, past records
   fetched and never applied: after faust's seek, every stream partition is sought to where the
   guard starts it (``GapGuard.starts``).

Not about losing events, but about time:

5. **Its table recovery costs a Python event per changelog record** (~1 MB/s).
   ``Recovery._build_offsets`` (called with ``title="active"`` once the active changelog
   partitions' highwaters are known, before faust seeks and reads them) now first lets
   :mod:`workers.stream.restore` apply those ranges in bulk and moves faust's start offsets past
   what it applied (:func:`bulk_recovery`).
6. **Its worker turns every debug log call into a record.** At a log level of WARNING or above,
   ``faust.Worker`` keeps a terminal spinner, sets the root logger to DEBUG and adds a handler
   that spins it for every record: every aiokafka and faust ``logger.debug`` call (several per
   fetch) was built and handled, ~7% of a busy worker's time (py-spy, 2,000 sessions).
   :func:`no_spinner` drops the spinner, so the root logger keeps the worker's level.
7. **Its changelog sends run its sensors per record.** :func:`kafka_producer` is the aiokafka
   producer underneath, to which the session tables' writes go as whole record batches.

With learnstream's own transactions (:func:`transactional`, workers/stream/transactions.py):

8. **The input offsets are committed in the batches' transactions**, so faust commits none of
   the watched topics (``_new_offset`` trims its acked list and answers None).
9. **It reads uncommitted records** unless faust's own exactly-once mode is on. The worker's
   consumer (input topics and changelog recovery alike) reads ``read_committed``: an aborted
   batch's changelog records, downstream events and re-routed copies are never seen.
10. **Its recovery waits for an offset no record has.** A transactional changelog ends with a
   commit marker, so faust's highwater (end offset - 1) is never *delivered*; faust only looks
   past it in its own exactly-once mode, after two 5 s timeouts (and races the records still
   queued). The highwater is now the offset of the last committed record (a fetch of the tail
   after what the table holds). An active partition keeps end offset - 1 until the bulk restore
   (patch 5) has read through it; only what that leaves is probed, from where it stopped.
11. **The new owner fences before recovery.** ``TableManager.on_rebalance`` (which starts the
   changelog recovery) starts the app's hook, which starts the partitions' transactional
   producers, and recovery awaits it before it reads a highwater: what a previous owner left
   open is aborted (or completed) before recovery reads.

About time again:

12. **Its consumer fetches the changelogs it does not read.** faust pauses partitions in its own
   set only; aiokafka keeps fetching every assigned one. At assignment that is each changelog
   partition from offset 0 (no committed offset), records recovery never uses (it seeks first); the
   embedded broker took 8 s to answer that fetch for a 1.1 GB changelog, and recovery's offset
   requests waited behind it. faust's pause/resume of changelog partitions now also pause/resume
   them in aiokafka (in the consumer's thread), so they are fetched only while recovery reads them.
13. **Its consumer thread died on stop while the broker was unreachable**, and the worker then
   waited 60 s (mode's stop timeout) for it: a SIGTERM took 63 s, past a pod's grace period.
   aiokafka 0.14's ``Fetcher.close`` cancels its pending fetch tasks and awaits each; one that is
   in its retry backoff (the broker refused the connection) raises ``CancelledError`` out of
   ``AIOKafkaConsumer.stop``, and so out of ``AIOKafkaConsumerThread.on_thread_stop``. That error
   is now taken as the end of the fetch it is (the client is closed as ``stop`` would have), unless
   the stop itself is being cancelled.
14. **Its graceful stop idled 2 s.** ``Consumer.wait_empty`` (the stop's "Wait for streams...") waits
   for acknowledgements while its set of unacknowledged messages is not empty; ``ack`` takes a
   message out of that set only on some paths (not when faust's committed offset, which learnstream's
   transactions move, is past it), so the wait ran out its full second before removing those already
   acknowledged. They are now removed first. And mode's worker sleeps 1 s before it closes the event
   loop (``Worker._sentinel_task``); :func:`quick_loop_close` makes that 0.1 s. Every SIGTERM (a
   rolling restart's pod, every test's worker) ends 2 s sooner.
15. **Its start idled 1 s.** ``TableManager.on_start`` sleeps 1 s before it registers the tables'
   changelogs, for tables defined late; every table of the app exists when the worker starts (a later
   one raises in faust), so the sleep is skipped: a worker is ready ~1 s sooner. (Skipping it made
   two stalls, each hidden by the sleep, show up in tests; both are fixed: a readmitted worker's
   fenced producers, workers/stream/transactions.py, and records a dropped batch left behind past a
   partition committed at 0, patch 4.)
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import defaultdict
from dataclasses import dataclass
from time import monotonic
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import rocksdict
from faust.stores import rocksdb
from faust.streams import _current_event  # faust 0.15.3: the context var a table reads its event from
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from aiokafka import TopicPartition
from faust.types import TP

from workers.state.rocksdb import open_database, rocksdb_options as database_options  # every learnstream database's

__all__ = ("FAUST_CHECKED", "TOUCHED", "install", "watch", "transactional", "note_committed", "seek",
           "committed_offset", "set_fetch_max_wait", "partition_db", "changelog_offset_key", "event_context",
           "WalStore", "start_passive", "remove_processor", "kafka_producer", "bulk_recovery", "BulkRestore",
           "no_spinner", "quick_loop_close", "shared_memory", "SharedMemory", "BLOCK_CACHE_BYTES", "MEMTABLE_BYTES",
           "install_truncation_recovery", "rejoin")

logger = logging.getLogger(__name__)

FAUST_CHECKED = "0.15.3"
# Every faust object this module relies on beyond its documented API (dotted path within faust),
# with what the code here assumes. The test hashes each one's source against faust 0.15.3.
TOUCHED = {
    "tables.recovery.Recovery._build_offsets": "fills recovery's start offsets (wrapped: truncated changelog rebuild, bulk restore)",
    "transport.drivers.aiokafka.AIOKafkaConsumerThread.verify_event_path": "asserts a position (wrapped: none while resetting)",
    "transport.consumer.Consumer.__init__": "sets self._read_offset (replaced by _ReadOffsets)",
    "transport.drivers.aiokafka.AIOKafkaConsumerThread._verify_aiokafka_event_path":
        "logs 'Has not committed' from tp_last_committed_at, which note_committed sets",
    "transport.consumer.Consumer._new_offset": "the commit offset of a partition (patched)",
    "transport.consumer.Consumer.perform_seek": "seeks to committed offsets after recovery (patched)",
    "transport.consumer.Consumer._drain_messages": "skips records below _read_offset, adds gaps",
    "transport.consumer.Consumer._add_gap": "records skipped offsets in self._gap",
    "transport.consumer.ThreadDelegateConsumer.seek_wait": "seeks in the consumer's thread",
    "transport.producer.ProducerBuffer.flush": "returns after 0.1 s without a send (patched)",
    "transport.producer.ProducerBuffer.flush_atmost": "sends what is buffered, for at most a timeout",
    "transport.drivers.aiokafka.AIOKafkaConsumerThread._create_worker_consumer":
        "builds the aiokafka consumer with fetch_max_wait_ms=1500 (patched)",
    "stores.rocksdb.Store._open_for_partition": "opens a partition's database (overridden by WalStore)",
    "stores.rocksdb.Store._db_for_partition": "a partition's open database",
    "stores.rocksdb.Store.persisted_offset": "reads the changelog offset under Store.offset_key",
    "streams.Stream._enable_passive": "starts a stream's channel without an iterating caller",
    "streams.Stream.add_processor": "appends to self._processors",
    "stores.rocksdb.Store.partition_path": "where a partition's database lives (WalStore opens it there)",
    "stores.rocksdb.RocksDBOptions.__init__": "keeps unknown table options in extra_options (WalStore's sizes)",
    "transport.drivers.aiokafka.Producer._ensure_producer": "the aiokafka producer (kafka_producer)",
    "worker.Worker._setup_spinner_handler": "spins self.spinner on every DEBUG record (no_spinner unsets it)",
    "tables.manager.TableManager.on_rebalance": "starts changelog recovery on an assignment (patched: fencing)",
    "tables.recovery.Recovery._build_highwaters": "reads each changelog's end offset - 1 (patched)",
    "transport.consumer.Consumer.pause_partitions": "pauses in faust's set only (changelogs mirrored to aiokafka)",
    "transport.consumer.Consumer.resume_partitions": "resumes in faust's set only (changelogs mirrored to aiokafka)",
    "transport.consumer.Consumer._is_changelog_tp": "whether a partition is a table changelog's",
    "transport.consumer.ThreadDelegateConsumer.__init__": "keeps the consumer thread in self._thread",
    "transport.drivers.aiokafka.AIOKafkaConsumerThread._ensure_consumer":
        "the aiokafka consumer (rejoin; changelogs paused in aiokafka)",
    "transport.drivers.aiokafka.AIOKafkaConsumerThread.on_thread_stop":
        "stops the aiokafka consumer in the consumer's thread (wrapped: a fetch's CancelledError)",
    "transport.consumer.Consumer.wait_empty": "waits 1 s for acks already made (wrapped: cleans first)",
    "transport.consumer.Consumer._clean_unacked_messages": "drops acknowledged messages from the unacked set",
    "mode:worker.Worker._sentinel_task": "sleeps 1 s before the loop closes (quick_loop_close replaces it)",
    "tables.manager.TableManager.on_start": "sleeps 1 s, then registers the changelogs (patched: no sleep)",
}
_ATTR = "_learnstream_guard"
_TXN_ATTR = "_learnstream_before_recovery"
_LAST_ATTR = "_learnstream_last_record"
_FENCING_ATTR = "_learnstream_fencing"
_RESTORE_ATTR = "_learnstream_bulk_restore"
_installed = False


class Watcher(Protocol):
    """What the patches ask the app's guard (see workers/stream/gaps.py)."""

    def watches(self, topic: str) -> bool: ...

    def commit_offset(self, topic: str, partition: int) -> int | None: ...

    async def starts(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]: ...


def watch(app: Any, guard: Watcher) -> None:
    """Make ``guard`` decide delivery and commits of the topics it watches, for this app."""
    install()
    setattr(app, _ATTR, guard)


class BulkRestore(Protocol):
    """Restores active changelog partitions: ``{tp: (table, start, highwater)}`` -> ``{tp: offset now held}``."""

    async def __call__(self, spans: dict[Any, tuple[Any, int, int]], time_limit_s: float) -> dict[Any, int]: ...


def no_spinner(worker: Any) -> None:
    """Keep ``worker`` (a ``faust.Worker``) from lowering the root logger to DEBUG for its spinner (patch 6)."""
    # faust 0.15.3: Worker._setup_spinner_handler sets the root logger to DEBUG while self.spinner is set
    worker.spinner = None


# What a stopping worker's event loop runs before it closes (mode's: 1 s), for callbacks such as a
# closed transport's to run.
LOOP_CLOSE_GRACE_S = 0.1


def quick_loop_close(worker: Any) -> None:
    """Make ``worker`` (a ``faust.Worker``) close its event loop 0.1 s after its services stopped (patch 14)."""
    async def sentinel() -> None:
        await asyncio.sleep(LOOP_CLOSE_GRACE_S)

    # mode-streaming 0.7.1: Worker._shutdown_loop runs self._sentinel_task() to completion, then closes the loop
    worker._sentinel_task = sentinel


def bulk_recovery(app: Any, restore: BulkRestore) -> None:
    """Make ``restore`` apply the active changelog ranges of this app's table recovery first (patch 5)."""
    install()
    setattr(app, _RESTORE_ATTR, restore)


def _guard(app: Any) -> Watcher | None:
    return getattr(app, _ATTR, None)


def transactional(app: Any, before_recovery: Callable[[set[Any]], Awaitable[None]],
                  last_record: Callable[[str, int, int], Awaitable[int | None]]) -> None:
    """The app commits its watched input offsets in its own transactions (patches 5-8 above).

    ``before_recovery(assigned)`` runs on every assignment before the changelogs are read;
    ``last_record(topic, partition, end)`` gives the offset of the last committed record below
    ``end`` (None: none), which recovery waits for instead of ``end - 1``.
    """
    install()
    setattr(app, _TXN_ATTR, before_recovery)
    setattr(app, _LAST_ATTR, last_record)


def _transactional(app: Any) -> bool:
    return getattr(app, _TXN_ATTR, None) is not None


def note_committed(app: Any, topic: str, partition: int, offset: int) -> None:
    """Tell faust a transaction committed ``offset`` (its lag metric and the guard's start read it), and
    when: its event-path check logged "Has not committed TP(...) at all since worker start" at ERROR for
    busy partitions, since the commits are the transactions', never its consumer's (an outside trial)."""
    tp = TP(topic, partition)
    app.consumer._committed_offset[tp] = offset
    thread = getattr(app.consumer, "_thread", None)  # AIOKafkaConsumerThread: its event-path check reads this
    if thread is not None:
        thread.tp_last_committed_at[tp] = monotonic()


async def seek(app: Any, topic: str, partition: int, offset: int) -> None:
    """Position the app's consumer on ``offset`` of one partition (the next fetch reads from there).

    ``seek_wait`` runs the seek in the consumer's own thread (``Consumer.seek`` would call the
    aiokafka consumer from this one) and returns once the position is set.
    """
    await app.consumer.seek_wait({TP(topic, partition): offset})


async def rejoin(app: Any) -> None:
    """Make the app's consumer rejoin its group: a full rebalance (revoke, assign, table recovery,
    seek to the committed offsets) even when the assignment stays the same."""

    thread = app.consumer._thread  # faust 0.15.3: ThreadDelegateConsumer._thread, the AIOKafkaConsumerThread

    async def _request() -> None:  # in the consumer's thread, where its coordinator lives
        thread._ensure_consumer()._coordinator.request_rejoin()  # aiokafka 0.14: GroupCoordinator.request_rejoin

    await thread.call_thread(_request)


def member_id(app: Any) -> str | None:
    """The app consumer's current group member id ("" while it joins; None before its consumer exists)."""
    consumer = getattr(getattr(app.consumer, "_thread", None), "_consumer", None)  # faust 0.15.3, aiokafka 0.14
    coordinator = getattr(consumer, "_coordinator", None)
    return getattr(coordinator, "member_id", None)


def committed_offset(app: Any, topic: str, partition: int) -> int | None:
    """The group's committed offset of a partition as faust loaded it (None: none, or 0)."""
    # faust 0.15.3: Consumer._committed_offset, TP -> the next offset to read
    return app.consumer._committed_offset.get(TP(topic, partition))


def kafka_producer(app: Any) -> Any:
    """The ``aiokafka.AIOKafkaProducer`` under faust's transport producer (started with the app; patch 7)."""
    # faust 0.15.3: aiokafka.Producer._ensure_producer returns (creating) its AIOKafkaProducer
    return app.producer._ensure_producer()


# -- the consumer's long-poll ----------------------------------------------------------------
# faust creates its consumer with ``fetch_max_wait_ms=1500`` (hard-coded). aiokafka keeps one
# fetch in flight per broker node and leaves out partitions that still hold buffered records, so
# a long poll on the idle input partitions holds back the busy ones; the embedded broker also
# answers a long poll late when data arrives (a lone message took ~508 ms at 1500 ms, ~14 ms at
# 100 ms). Measured in bench/README.md (feedback, route_http): HTTP writes went from ~750 ms to
# ~22 ms and single-event throughput roughly doubled with 50 ms.
_wait_ms: int | None = None


def set_fetch_max_wait(ms: int) -> None:
    """Make every faust worker consumer created from now on long-poll for at most ``ms``."""
    global _wait_ms
    if _wait_ms is None:
        # faust 0.15.3: AIOKafkaConsumerThread._create_worker_consumer builds the aiokafka consumer
        original = AIOKafkaConsumerThread._create_worker_consumer

        def _create_worker_consumer(self: AIOKafkaConsumerThread, transport: object) -> object:
            consumer = original(self, transport)
            consumer._fetch_max_wait_ms = _wait_ms  # aiokafka: read when the consumer starts its fetcher
            return consumer

        AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
    _wait_ms = int(ms)
    logger.info("worker consumer fetch_max_wait_ms=%d", ms)


# -- the tables' RocksDB ----------------------------------------------------------------------
def partition_db(table: Any, partition: int) -> Any:
    """The open rocksdict database of one partition of a faust table."""
    # faust 0.15.3: rocksdb.Store._db_for_partition (opens it on first use)
    return table.data._db_for_partition(partition)


def changelog_offset_key(table: Any) -> bytes:
    """The key under which faust keeps, in each partition database, the changelog offset it holds."""
    # faust 0.15.3: rocksdb.Store.offset_key, read back by Store.persisted_offset
    return table.data.offset_key


@contextlib.contextmanager
def event_context(event: Any) -> Iterator[None]:
    """Make ``event`` the current event, which a faust table write takes its partition from."""
    # faust 0.15.3: Table.__setitem__ reads streams._current_event for the changelog partition
    token = _current_event.set(weakref.ref(event) if event is not None else None)
    try:
        yield
    finally:
        _current_event.reset(token)


BLOCK_CACHE_BYTES = 64 * 1024 * 1024   # one cache for every table partition of a worker
MEMTABLE_BYTES = 64 * 1024 * 1024      # every memtable of a worker together, charged to that cache
# one memtable flushes at this size (faust's default 64 MiB per database, times 3 in flight)
_WRITE_BUFFER_BYTES = 8 * 1024 * 1024
_MEMORY_ATTR = "_learnstream_rocksdb_memory"


@dataclass
class SharedMemory:
    """The block cache and write buffer manager all of one app's table databases share."""

    cache: Any
    write_buffers: Any
    block_cache_bytes: int
    memtable_bytes: int


def shared_memory(app: Any, block_cache_bytes: int, memtable_bytes: int) -> SharedMemory:
    """The app's shared RocksDB memory (created on first use: one per worker process and app)."""
    mem = getattr(app, _MEMORY_ATTR, None)
    if mem is None:
        cache = rocksdict.Cache(block_cache_bytes + memtable_bytes)
        wbm = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(memtable_bytes, False, cache)
        mem = SharedMemory(cache, wbm, block_cache_bytes, memtable_bytes)
        setattr(app, _MEMORY_ATTR, mem)
    return mem


class WalStore(rocksdb.Store):
    """``rocksdb.Store`` whose partition DBs write through the WAL without fsync and share one
    block cache and one memtable budget per worker (rocksdict driver; workers/stream/store.py)."""

    def _open_for_partition(self, partition: int) -> Any:
        # faust 0.15.3: Store._open_for_partition opens one partition's DB; use_rocksdict says which driver.
        # Replaced for rocksdict: faust gives each database its own cache and 64 MiB memtables.
        if not self.use_rocksdict:
            return super()._open_for_partition(partition)
        # faust 0.15.3: RocksDBOptions keeps the table's unknown options in extra_options
        o = self.rocksdb_options
        extra = o.extra_options
        mem = shared_memory(self.app, int(extra.get("shared_block_cache_bytes", BLOCK_CACHE_BYTES)),
                            int(extra.get("memtable_bytes", MEMTABLE_BYTES)))
        opts = database_options(mem.cache)
        opts.set_max_open_files(o.max_open_files)
        opts.set_target_file_size_base(o.target_file_size_base)
        opts.set_write_buffer_size(min(_WRITE_BUFFER_BYTES, max(mem.memtable_bytes // 4, 1 << 20)))
        opts.set_max_write_buffer_number(2)
        opts.set_write_buffer_manager(mem.write_buffers)
        # faust 0.15.3: Store.partition_path, where faust keeps a partition's database
        db = open_database(self.partition_path(partition), opts, access_type=rocksdict.AccessType.read_write())
        db.set_read_options(rocksdict.ReadOptions())
        wo = rocksdict.WriteOptions()
        wo.disable_wal = False
        wo.sync = False
        db.set_write_options(wo)
        return db

    def drop_partition(self, partition: int) -> int:
        """Delete every key of one partition's database, its persisted changelog offset included, so
        recovery rebuilds it from the changelog; returns how many keys were deleted."""
        # faust 0.15.3: Store._db_for_partition opens/returns the partition DB; _key_index caches key -> partition
        db = self._db_for_partition(partition)
        keys = list(db.keys())
        for key in keys:
            del db[key]
        self._key_index.clear()  # key -> partition lookups may name this partition's keys
        return len(keys)


# -- the stream's processors ------------------------------------------------------------------
def start_passive(stream: Any) -> None:
    """Start pulling ``stream``'s channel through its processors without an ``async for`` over it."""
    # faust 0.15.3: Stream._enable_passive(channel) starts the passive consumer task
    stream._enable_passive(aiter(stream.channel))


def remove_processor(stream: Any, fn: Callable) -> None:
    """Undo ``stream.add_processor(fn)`` (faust has no public way)."""
    # faust 0.15.3: Stream.add_processor appends to Stream._processors
    stream._processors.remove(fn)


class _ReadOffsets(defaultdict):
    """faust's ``_read_offset`` map; reads as None (deliver everything) for watched partitions."""

    def __init__(self, app: Any) -> None:
        super().__init__(lambda: None)
        self._app = app

    def __getitem__(self, tp: Any) -> Any:
        g = _guard(self._app)
        if g is not None and g.watches(tp.topic):
            return None
        return super().__getitem__(tp)


def install() -> None:
    """Apply the patches (idempotent)."""
    global _installed
    if _installed:
        return
    import faust
    from faust.transport.consumer import Consumer
    from faust.tables.recovery import Recovery
    from faust.transport.producer import ProducerBuffer

    if faust.__version__ != FAUST_CHECKED:
        logger.warning("faust %s: learnstream's offset patches were checked against %s",
                       faust.__version__, FAUST_CHECKED)

    init, new_offset, perform_seek = Consumer.__init__, Consumer._new_offset, Consumer.perform_seek

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        # faust 0.15.3: Consumer._read_offset, a defaultdict(TP -> last delivered offset) _drain_messages reads
        self._read_offset = _ReadOffsets(self.app)

    def _new_offset(self: Any, tp: Any) -> int | None:
        g = _guard(self.app)
        if g is None or not g.watches(tp.topic):
            return new_offset(self, tp)
        limit = g.commit_offset(tp.topic, tp.partition)
        # faust 0.15.3: Consumer._acked (sorted acked offsets), _acked_index (their set), _gap (skipped ones)
        acked, index = self._acked[tp], self._acked_index[tp]
        if limit is not None and acked:
            done = [o for o in acked if o < limit]
            if done:
                acked[:] = [o for o in acked if o >= limit]
                index.difference_update(done)
        self._gap.pop(tp, None)  # never counted as applied here
        return None if _transactional(self.app) else limit

    async def _perform_seek(self: Any) -> None:
        g = _guard(self.app)
        if g is None:
            return await perform_seek(self)
        streams = {tp for tp in self.assignment() if g.watches(tp.topic)}
        # faust 0.15.3: Consumer._paused_partitions, the set pause_partitions adds to
        paused = streams - self._paused_partitions
        self.pause_partitions(paused)
        try:
            await perform_seek(self)
            # and every stream partition to where the guard starts it: faust's seek skips offset 0
            try:
                starts = await g.starts(sorted((tp.topic, tp.partition) for tp in streams & self.assignment()))
            except Exception as exc:  # noqa: BLE001 - the broker unreachable, say: the guard finds gaps as before
                logger.warning("stream partitions not sought to their starts (%r); a skip is found when a later "
                               "record comes", exc)
            else:
                if starts:
                    await self.seek_wait({TP(t, p): offset for (t, p), offset in starts.items()})
        finally:
            self.resume_partitions(paused & self.assignment())

    buffer_flush = ProducerBuffer.flush

    async def flush(self: Any) -> None:
        if self.app is None or _guard(self.app) is None:
            return await buffer_flush(self)
        # faust 0.15.3: ProducerBuffer.size and flush_atmost(None); flush_atmost gives up after 0.1 s
        # without a send: go on until empty
        while self.size:
            await self.flush_atmost(None)

    # faust 0.15.3: Recovery._build_offsets(consumer, tps, destination, title) fills destination with the
    # offsets recovery starts from; tp_to_table and active_highwaters are set before it runs
    build_offsets = Recovery._build_offsets

    async def _build_offsets(self: Any, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        await build_offsets(self, consumer, tps, destination, title)
        restore = getattr(self.app, _RESTORE_ATTR, None)
        if restore is None or title != "active":
            return
        spans = {}
        for tp in tps:
            table, hw, start = self.tp_to_table.get(tp), self.active_highwaters.get(tp), destination.get(tp)
            if table is not None and hw is not None and start is not None and hw > start:
                spans[tp] = (table, start, hw)
        if spans:
            # faust runs this under broker_request_timeout: stop well before it, faust reads the rest
            done = await restore(spans, 0.6 * float(self.app.conf.broker_request_timeout))
            for tp, offset in done.items():
                destination[tp] = max(destination[tp], offset)
        last_record = getattr(self.app, _LAST_ATTR, None)
        if last_record is None:
            return
        # What the bulk restore left (its time ran out, or it failed) is faust's: it must wait for the
        # last committed record, not for the end offset - 1 _build_highwaters left (patch 10). Probed
        # from where the table now stands, a committed record: only the rest of the log is read.
        for tp in tps:
            hw, start = self.active_highwaters.get(tp), destination.get(tp)
            if hw is not None and start is not None and hw > start:
                last = await last_record(tp.topic, tp.partition, hw + 1, start)
                self.active_highwaters[tp] = last if last is not None else start

    Recovery._build_offsets = _build_offsets

    from faust.tables.manager import TableManager

    create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create_worker_consumer(self, transport)
        if _transactional(self.app):
            consumer._isolation_level = "read_committed"  # read by AIOKafkaConsumer.start (its Fetcher)
        return consumer

    tables_on_rebalance = TableManager.on_rebalance

    async def on_rebalance(self: Any, assigned: Any, *args: Any, **kwargs: Any) -> None:
        hook = getattr(self.app, _TXN_ATTR, None)
        if hook is not None:
            # Started here, awaited when recovery starts (_build_highwaters): the rebalance callback
            # holds up the consumer's heartbeats, and a slow one gets the member kicked out again.
            setattr(self.app, _FENCING_ATTR, asyncio.ensure_future(hook(set(assigned))))
        await tables_on_rebalance(self, assigned, *args, **kwargs)

    build_highwaters = Recovery._build_highwaters

    async def _build_highwaters(self: Any, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        fencing = getattr(self.app, _FENCING_ATTR, None)
        if fencing is not None:
            await asyncio.shield(fencing)  # the previous owners are fenced before anything is read
        await build_highwaters(self, consumer, tps, destination, title)
        last_record = getattr(self.app, _LAST_ATTR, None)
        if last_record is None:
            return
        if title == "active" and getattr(self.app, _RESTORE_ATTR, None) is not None:
            # The bulk restore reads up to the end offset - 1 (through markers) and _build_offsets probes
            # only what it leaves: probing here would read each changelog once more before it.
            return
        for tp, highwater in list(destination.items()):
            if highwater is not None and highwater >= 0:  # faust's highwater: end offset - 1
                # faust 0.15.3: Recovery.tp_to_table, and Store.persisted_offset (a committed record or None)
                table = self.tp_to_table.get(tp)
                held = table.data.persisted_offset(tp) if table is not None else None
                after = held if held is not None and held <= highwater else -1
                last = await last_record(tp.topic, tp.partition, highwater + 1, after)
                destination[tp] = last if last is not None else after

    pause, resume = Consumer.pause_partitions, Consumer.resume_partitions

    def _mirror(consumer: Any, tps: Any, paused: bool) -> None:
        # faust 0.15.3: Consumer._is_changelog_tp, ThreadDelegateConsumer._thread (a mode ServiceThread
        # with its own thread_loop) and AIOKafkaConsumerThread._ensure_consumer (the aiokafka consumer)
        if _guard(consumer.app) is None:
            return
        changelogs = [TopicPartition(tp.topic, tp.partition) for tp in tps if consumer._is_changelog_tp(tp)]
        thread = consumer._thread
        if not changelogs or thread._consumer is None:
            return

        def apply() -> None:  # in the consumer's thread: aiokafka's pause/resume make loop-bound futures
            aio = thread._ensure_consumer()
            owned = aio.assignment()
            mine = [tp for tp in changelogs if tp in owned]
            if mine:
                (aio.pause if paused else aio.resume)(*mine)

        thread.thread_loop.call_soon_threadsafe(apply)

    def pause_partitions(self: Any, tps: Any) -> None:
        tps = list(tps)
        pause(self, tps)
        _mirror(self, tps, True)

    def resume_partitions(self: Any, tps: Any) -> None:
        tps = list(tps)
        resume(self, tps)
        _mirror(self, tps, False)

    thread_stop = AIOKafkaConsumerThread.on_thread_stop

    async def on_thread_stop(self: Any) -> None:
        try:
            await thread_stop(self)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this stop was cancelled: not a fetch's error
            logger.info("consumer stopped while a fetch was retrying (the broker unreachable)")
            with contextlib.suppress(Exception):
                # aiokafka 0.14: AIOKafkaConsumer._client, what stop() closes after the fetcher
                await self._consumer._client.close()

    async def tables_on_start(self: Any) -> None:
        # faust 0.15.3: TableManager.on_start less its first line, ``await self.sleep(1.0)``
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()

    wait_empty = Consumer.wait_empty

    async def _wait_empty(self: Any) -> None:
        self._clean_unacked_messages()  # else it waits a full second for acks that were already made
        await wait_empty(self)

    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
    AIOKafkaConsumerThread.on_thread_stop = on_thread_stop
    Consumer.wait_empty = _wait_empty
    TableManager.on_start = tables_on_start
    TableManager.on_rebalance = on_rebalance
    Consumer.pause_partitions = pause_partitions
    Consumer.resume_partitions = resume_partitions
    Recovery._build_highwaters = _build_highwaters
    # faust 0.15.3: the methods replaced (sources hashed in TOUCHED's test)
    Consumer.__init__ = __init__
    Consumer._new_offset = _new_offset
    Consumer.perform_seek = _perform_seek
    ProducerBuffer.flush = flush
    _installed = True


# -- a broker that lost acknowledged records ------------------------------------------------------
_truncation_installed = False


def install_truncation_recovery() -> None:
    """Patch faust's ``Recovery._build_offsets``: an active table partition whose persisted offset is
    past its changelog's end is emptied and rebuilt from the changelog, and so is a table partition
    (active or standby) whose changelog now starts past its persisted offset + 1 (idempotent)."""
    global _truncation_installed
    if _truncation_installed:
        return
    from faust.tables.recovery import Recovery

    # faust 0.15.3: Recovery._build_offsets(consumer, tps, destination, title) fills the offsets recovery starts from
    build_offsets = Recovery._build_offsets

    async def _build_offsets(self, consumer, tps, destination, title):  # noqa: ANN001, ANN202 - faust's signature
        held = {tp: destination.get(tp) for tp in tps}  # the persisted offsets (faust's below lifts them)
        await build_offsets(self, consumer, tps, destination, title)
        if not tps:
            return
        _cut_logs(self, tps, held, destination)
        if title != "active":
            return
        ends = await consumer.highwaters(*tps)
        for tp in tps:
            end, applied = ends.get(tp), destination.get(tp)
            # faust's offsets are "last applied" (end - 1 is the last record); -1 / None: nothing yet
            if end is None or applied is None or applied < end:
                continue
            table = self.tp_to_table[tp]
            drop = getattr(table.data, "drop_partition", None)
            if drop is None:
                continue  # not our store: faust's consistency check reports it
            n = drop(tp.partition)
            earliest = (await consumer.earliest_offsets(tp)).get(tp)
            destination[tp] = max(-1, (earliest or 0) - 1)  # faust reads from here + 1: the whole changelog
            logger.error(
                "changelog %s[%d] ends at offset %d but this worker's table was written up to offset %d: the broker "
                "lost records it had acknowledged (a SIGKILLed embedded broker loses up to its last second). "
                "Dropped the partition's %d local keys and rebuilding it from the changelog: the writes behind "
                "changelog records %d..%d are lost with all their effects.", tp.topic, tp.partition, end, applied,
                n, end, applied)

    def _cut_logs(self, tps, held, destination):  # noqa: ANN001, ANN202
        # faust starts from the log start when the persisted offset is below it. Here records were
        # deleted on purpose (the embedded broker's changelogs are compacted by a rewrite,
        # workers/kafka/changelog_rewrite.py): tombstones among them are gone, so the table cannot be
        # patched from its offset. Rebuild it from the log start.
        dropped = []
        for tp in sorted(tps):
            applied, start = held.get(tp), destination.get(tp)
            if applied is None or applied < 0 or start is None or start <= applied:
                continue
            drop = getattr(self.tp_to_table[tp].data, "drop_partition", None)
            if drop is None:
                continue
            n = drop(tp.partition)
            dropped.append(f"{tp.topic}[{tp.partition}] (table up to offset {applied}, log from {start + 1}, "
                           f"{n} keys dropped)")
        if dropped:  # one line: repeated warnings of a source line are rate-limited (workers/stream/logs.py)
            logger.warning("changelogs compacted by a rewrite past this worker's tables; rebuilding them from the "
                           "log start: %s", "; ".join(dropped))

    Recovery._build_offsets = _build_offsets

    # The input log shrank too: aiokafka answers OffsetOutOfRange by resetting the position, and
    # while it resets (position None) faust's livelock check asserts on it and crashes the consumer.
    # A partition being reset has no event path to verify yet.
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
    from aiokafka import TopicPartition as _TP

    # faust 0.15.3: AIOKafkaConsumerThread.verify_event_path(now, tp) asserts the partition has a position
    verify = AIOKafkaConsumerThread.verify_event_path

    def verify_event_path(self, now, tp):  # noqa: ANN001, ANN202 - faust's signature
        subs = self._ensure_consumer()._fetcher._subscriptions.subscription
        state = subs.assignment.state_value(_TP(tp.topic, tp.partition)) if subs is not None else None
        if state is not None and not state.has_valid_position:
            return None
        return verify(self, now, tp)

    AIOKafkaConsumerThread.verify_event_path = verify_event_path
    _truncation_installed = True
