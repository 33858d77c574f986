"""Where the effectively-once guarantee reaches into faust's internals (all of it in this module).

Checked against faust-streaming 0.15.3 (mode-streaming 0.7.1, aiokafka 0.14.0): ``install`` warns
when another faust version runs. Each patch changes only what the :class:`~workers.stream.gaps.GapGuard`
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
4. **It lets the stream consume before the seek.** ``Consumer.perform_seek`` now pauses the
   stream partitions until the seek completed (the guard would catch the jump anyway; this
   removes its cause).

With learnstream's own transactions (:func:`transactional`, workers/stream/transactions.py):

5. **The input offsets are committed in the batches' transactions**, so faust commits none of
   the watched topics (``_new_offset`` trims its acked list and answers None).
6. **It reads uncommitted records** unless faust's own exactly-once mode is on. The worker's
   consumer (input topics and changelog recovery alike) reads ``read_committed``: an aborted
   batch's changelog records, downstream events and re-routed copies are never seen.
7. **Its recovery waits for an offset no record has.** A transactional changelog ends with a
   commit marker, so faust's highwater (end offset - 1) is never *delivered*; faust only looks
   past it in its own exactly-once mode, after two 5 s timeouts (and races the records still
   queued). The highwater is now the offset of the last committed record (a fetch of the tail).
8. **The new owner fences before recovery.** ``TableManager.on_rebalance`` (which starts the
   changelog recovery) starts the app's hook, which starts the partitions' transactional
   producers, and recovery awaits it before it reads a highwater: what a previous owner left
   open is aborted (or completed) before recovery reads.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

__all__ = ("FAUST_CHECKED", "install", "watch", "transactional", "note_committed", "seek", "committed_offset")

logger = logging.getLogger(__name__)

FAUST_CHECKED = "0.15.3"
_ATTR = "_learnstream_guard"
_TXN_ATTR = "_learnstream_before_recovery"
_LAST_ATTR = "_learnstream_last_record"
_FENCING_ATTR = "_learnstream_fencing"
_installed = False


class Watcher(Protocol):
    """What the patches ask the app's guard (see workers/stream/gaps.py)."""

    def watches(self, topic: str) -> bool: ...

    def commit_offset(self, topic: str, partition: int) -> int | None: ...


def watch(app: Any, guard: Watcher) -> None:
    """Make ``guard`` decide delivery and commits of the topics it watches, for this app."""
    install()
    setattr(app, _ATTR, guard)


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
    """Tell faust a transaction committed ``offset`` (its lag metric and the guard's start read it)."""
    from faust.types import TP

    app.consumer._committed_offset[TP(topic, partition)] = offset


async def seek(app: Any, topic: str, partition: int, offset: int) -> None:
    """Position the app's consumer on ``offset`` of one partition (the next fetch reads from there).

    ``seek_wait`` runs the seek in the consumer's own thread (``Consumer.seek`` would call the
    aiokafka consumer from this one) and returns once the position is set.
    """
    from faust.types import TP

    await app.consumer.seek_wait({TP(topic, partition): offset})


def committed_offset(app: Any, topic: str, partition: int) -> int | None:
    """The group's committed offset of a partition as faust loaded it (None: none, or 0)."""
    from faust.types import TP

    return app.consumer._committed_offset.get(TP(topic, partition))


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
    from faust.transport.producer import ProducerBuffer

    if faust.__version__ != FAUST_CHECKED:
        logger.warning("faust %s: learnstream's offset patches were checked against %s",
                       faust.__version__, FAUST_CHECKED)

    init, new_offset, perform_seek = Consumer.__init__, Consumer._new_offset, Consumer.perform_seek

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._read_offset = _ReadOffsets(self.app)

    def _new_offset(self: Any, tp: Any) -> int | None:
        g = _guard(self.app)
        if g is None or not g.watches(tp.topic):
            return new_offset(self, tp)
        limit = g.commit_offset(tp.topic, tp.partition)
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
        paused = streams - self._paused_partitions
        self.pause_partitions(paused)
        try:
            await perform_seek(self)
        finally:
            self.resume_partitions(paused & self.assignment())

    buffer_flush = ProducerBuffer.flush

    async def flush(self: Any) -> None:
        if self.app is None or _guard(self.app) is None:
            return await buffer_flush(self)
        while self.size:  # flush_atmost gives up after 0.1 s without a send: go on until empty
            await self.flush_atmost(None)

    from faust.tables.manager import TableManager
    from faust.tables.recovery import Recovery
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

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
        for tp, highwater in list(destination.items()):
            if highwater is not None and highwater >= 0:  # faust's highwater: end offset - 1
                last = await last_record(tp.topic, tp.partition, highwater + 1)
                destination[tp] = last if last is not None else -1

    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
    TableManager.on_rebalance = on_rebalance
    Recovery._build_highwaters = _build_highwaters
    Consumer.__init__ = __init__
    Consumer._new_offset = _new_offset
    Consumer.perform_seek = _perform_seek
    ProducerBuffer.flush = flush
    _installed = True
