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
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Protocol

__all__ = ("FAUST_CHECKED", "install", "watch", "seek", "committed_offset", "kafka_producer", "bulk_recovery",
           "BulkRestore", "no_spinner")

logger = logging.getLogger(__name__)

FAUST_CHECKED = "0.15.3"
_ATTR = "_learnstream_guard"
_RESTORE_ATTR = "_learnstream_bulk_restore"
_installed = False


class Watcher(Protocol):
    """What the patches ask the app's guard (see workers/stream/gaps.py)."""

    def watches(self, topic: str) -> bool: ...

    def commit_offset(self, topic: str, partition: int) -> int | None: ...


def watch(app: Any, guard: Watcher) -> None:
    """Make ``guard`` decide delivery and commits of the topics it watches, for this app."""
    install()
    setattr(app, _ATTR, guard)


class BulkRestore(Protocol):
    """Restores active changelog partitions: ``{tp: (table, start, highwater)}`` -> ``{tp: offset now held}``."""

    async def __call__(self, spans: dict[Any, tuple[Any, int, int]], time_limit_s: float) -> dict[Any, int]: ...


def no_spinner(worker: Any) -> None:
    """Keep ``worker`` (a ``faust.Worker``) from lowering the root logger to DEBUG for its spinner (patch 6)."""
    worker.spinner = None


def bulk_recovery(app: Any, restore: BulkRestore) -> None:
    """Make ``restore`` apply the active changelog ranges of this app's table recovery first (patch 5)."""
    install()
    setattr(app, _RESTORE_ATTR, restore)


def _guard(app: Any) -> Watcher | None:
    return getattr(app, _ATTR, None)


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


def kafka_producer(app: Any) -> Any:
    """The ``aiokafka.AIOKafkaProducer`` under faust's transport producer (started with the app; patch 7)."""
    return app.producer._ensure_producer()


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
        return limit

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

    Recovery._build_offsets = _build_offsets
    Consumer.__init__ = __init__
    Consumer._new_offset = _new_offset
    Consumer.perform_seek = _perform_seek
    ProducerBuffer.flush = flush
    _installed = True
