"""The gap guard: no record is applied as if the records before it had been.

The guard knows, per input partition this worker owns, the next offset it must apply
(``next``): the group's committed offset when the partition was assigned, then one past
each record applied in order. A record is *admitted* only when it is that next record:

- below ``next``: already applied (a redelivery after a seek or rebalance): dropped;
- at ``next``: admitted;
- above ``next``: something between was not delivered. A fetch of the partition from
  ``next`` (its own consumer, outside faust) confirms it: if no record lies between, the
  offsets hold none (transaction markers, compaction) and the record is admitted; if one
  does, the guard seeks the worker's consumer back to it, drops every record of that
  partition until the re-read one arrives, counts the gap
  (``learnstream_offset_gaps_total{outcome="reread"}``) and logs it.

``next`` advances only once a batch was applied and its downstream events and DLQ
entries were delivered (:meth:`applied`), and faust commits exactly ``next``
(workers/stream/faust_internals.py), so a commit never passes an offset that was not
applied. A failed batch leaves ``next`` where it was: its records come again.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.kafka.admin import LazyAdmin
from workers.kafka.clients import started
from workers.stream import metrics

__all__ = ("GapGuard", "Admitted", "Fetcher", "KafkaProbe", "DeletedUnread")

logger = logging.getLogger(__name__)

# (topic, partition, from_offset, below) -> offset of the first record in [from_offset, below), or None
Fetcher = Callable[[str, int, int, int], Awaitable[int | None]]
# [(topic, partition), ...] -> the offset each starts at
Starts = Callable[[list[tuple[str, int]]], Awaitable[dict[tuple[str, int], int]]]


@dataclass
class Admitted:
    """One batch after the guard: the events to apply and where each partition then stands."""

    events: list[Any] = field(default_factory=list)
    dropped: list[Any] = field(default_factory=list)
    next: dict[tuple[str, int], int] = field(default_factory=dict)


class GapGuard:
    """Per-partition next offset to apply; see the module docstring.

    ``start(partitions)`` gives the offset each newly assigned ``(topic, partition)`` starts at
    (the committed one, or the log start); ``first_record`` fetches; ``seek`` moves the consumer.
    """

    def __init__(self, topics: set[str], *, start: Starts, first_record: Fetcher,
                 seek: Callable[[str, int, int], Awaitable[None]]) -> None:
        self.topics = set(topics)
        self.start, self.first_record, self.seek = start, first_record, seek
        self.next: dict[tuple[str, int], int] = {}
        self.seeking: dict[tuple[str, int], int] = {}  # sought back: drop until this offset comes

    def watches(self, topic: str) -> bool:
        return topic in self.topics

    def commit_offset(self, topic: str, partition: int) -> int | None:
        """The offset faust may commit: everything below it was applied (None: nothing known yet)."""
        return self.next.get((topic, partition))

    def reset(self) -> None:
        """Forget every partition (a rebalance: faust seeks to the committed offsets again)."""
        self.next.clear()
        self.seeking.clear()

    async def starts(self, tps: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Each watched partition's start, now ``next``: where a rebalance's seek must put the consumer.

        faust's seek to the committed offsets leaves a partition whose committed offset is 0 (or
        none) where the consumer's position was (aiokafka seeks only to offsets above 0), so records
        fetched there before the rebalance and never applied (a batch dropped as fenced, a fetch
        discarded during recovery) were not read again until a later record showed the gap."""
        mine = [tp for tp in tps if tp[0] in self.topics]
        if new := [tp for tp in mine if tp not in self.next]:
            self.next.update(await self.start(new))
        return {tp: self.next[tp] for tp in mine}

    async def admit(self, events: Sequence[Any], where: Callable[[Any], tuple[str, int, int]]) -> Admitted:
        """Split a consumed batch into the events to apply, in order, and the ones to drop."""
        out = Admitted()
        nxt = out.next
        for e in events:
            topic, partition, offset = where(e)
            tp = (topic, partition)
            if topic not in self.topics:
                out.events.append(e)
                continue
            exp = nxt.get(tp)
            if exp is None:
                exp = self.next.get(tp)
                if exp is None:
                    exp = self.next[tp] = (await self.start([tp]))[tp]
            target = self.seeking.get(tp)
            if target is not None:
                if offset != target:
                    out.dropped.append(e)  # still in flight from before the seek
                    continue
                del self.seeking[tp]
            if offset < exp:
                out.dropped.append(e)  # applied before
                continue
            if offset > exp:
                first = await self.first_record(topic, partition, exp, offset)
                if first is not None:
                    metrics.OFFSET_GAPS.labels("reread").inc()
                    logger.warning("%s[%d]: offset %d delivered while %d was next; seeking back to %d",
                                   topic, partition, offset, exp, first)
                    await self.seek(topic, partition, first)
                    self.seeking[tp] = first
                    # nothing readable lies below it: when it comes it is next, not a gap to probe (and
                    # report a deleted range of) again
                    self.next[tp] = max(self.next.get(tp, first), first)
                    out.dropped.append(e)
                    continue
                metrics.OFFSET_GAPS.labels("empty").inc()
                logger.info("%s[%d]: offsets %d..%d hold no record (markers, compaction or retention)", topic, partition,
                            exp, offset - 1)
            out.events.append(e)
            nxt[tp] = offset + 1
        return out

    def applied(self, admitted: Admitted) -> None:
        """The admitted events were applied and what they produced delivered: move ``next`` on."""
        for tp, n in admitted.next.items():
            if tp in self.next and n > self.next[tp]:
                self.next[tp] = n


# How long a probe waits for the records it was asked about (a record known to exist must come).
_PROBE_TIMEOUT_S = 30.0
# last_record reads this many offsets before the end first (a batch's transaction is usually
# shorter), then 4x more each time it found only markers and aborted records.
_TAIL_STEP = 256


class DeletedUnread:
    """Reports input the broker deleted before this worker read it: lost events (a retention smaller
    than the unread backlog; input_purge.py cuts only applied input). Each offset is counted once:
    the assignment's start check and the guard's fetch can both meet the same deleted range (the
    former's commit of the log start not yet read back when the latter asked)."""

    def __init__(self) -> None:
        self.reported: dict[tuple[str, int], int] = {}  # (topic, partition) -> end of what was reported

    def report(self, topic: str, partition: int, first: int, end: int) -> None:
        """Offsets ``first`` .. ``end - 1`` were deleted before they were consumed."""
        first = max(first, self.reported.get((topic, partition), first))
        if end <= first:
            return
        self.reported[(topic, partition)] = end
        metrics.INPUT_DELETED_UNREAD.labels(topic).inc(end - first)
        logger.error("%s[%d]: offsets %d..%d were deleted by the broker (retention) before they were consumed: "
                     "their events are lost", topic, partition, first, end - 1)


class KafkaProbe:
    """Reads a partition outside faust (no group): the guard's confirming fetch and log starts."""

    def __init__(self, bootstrap: str, *, tail_from_start: bool = False, **kafka: Any) -> None:
        self.bootstrap, self.kafka = bootstrap, kafka
        # last_record reads once from the log start or ``after`` (embedded broker: it answers a fetch with
        # everything up to the end wherever it starts, so windows growing backwards would each read the
        # tail again; a window starting inside an aborted transaction once counted its records too,
        # before broker_compat.ignore_finished_aborts looked for the transaction's marker)
        self.tail_from_start = tail_from_start
        self._consumer: Any = None
        self._admin = LazyAdmin(self.bootstrap, **self.kafka)
        self.deleted = DeletedUnread()
        self._lock = asyncio.Lock()  # one reader of the probe consumer at a time
        # one consumer made: log_start/log_end and start() come without _lock, and two callers that both
        # found none each started one, the first then left unclosed (a restarted worker logged it)
        self._making = asyncio.Lock()

    async def start(self) -> None:
        """Connect now (at worker start), so the first batch after an assignment does not wait for it."""
        await self._client()
        await self._admin_client()

    async def _admin_client(self) -> Any:
        return await self._admin.get()

    async def _client(self) -> Any:
        async with self._making:
            if self._consumer is None:
                from aiokafka import AIOKafkaConsumer

                self._consumer = await started(AIOKafkaConsumer(
                    bootstrap_servers=self.bootstrap, enable_auto_commit=False, isolation_level="read_committed",
                    **self.kafka))
        return self._consumer

    async def committed(self, group: str, topic: str, partition: int) -> int | None:
        """The group's committed offset of a partition, from the broker (None: none)."""
        from aiokafka.structs import TopicPartition

        return (await self.committed_many(group, [TopicPartition(topic, partition)]))[(topic, partition)]

    async def committed_many(self, group: str, tps: list[Any]) -> dict[tuple[str, int], int | None]:
        """:meth:`committed` of several partitions (``TopicPartition``-like) in one request."""
        from aiokafka.structs import TopicPartition

        want = [TopicPartition(tp.topic, tp.partition) for tp in tps]
        got = await (await self._admin_client()).list_consumer_group_offsets(group, partitions=want)
        return {(tp.topic, tp.partition): (o.offset if (o := got.get(tp)) is not None and o.offset >= 0 else None)
                for tp in want}

    async def log_starts(self, tps: list[Any]) -> dict[tuple[str, int], int]:
        """:meth:`log_start` of several partitions in one request."""
        from aiokafka.structs import TopicPartition

        got = await (await self._client()).beginning_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps])
        return {(tp.topic, tp.partition): offset for tp, offset in got.items()}

    async def log_start(self, topic: str, partition: int) -> int:
        from aiokafka.structs import TopicPartition

        return (await self.log_starts([TopicPartition(topic, partition)]))[(topic, partition)]

    async def log_end(self, topic: str, partition: int) -> int:
        from aiokafka.structs import TopicPartition

        return (await self.log_ends([TopicPartition(topic, partition)]))[(topic, partition)]

    async def log_ends(self, tps: list[Any]) -> dict[tuple[str, int], int]:
        """The last stable offset (read_committed) of several partitions in one request."""
        from aiokafka.structs import TopicPartition

        if not tps:
            return {}
        got = await (await self._client()).end_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps])
        return {(tp.topic, tp.partition): offset for tp, offset in got.items()}

    async def first_record(self, topic: str, partition: int, from_offset: int, below: int) -> int | None:
        """Offset of the first record in ``[from_offset, below)``, None when there is none.

        The record at ``below`` exists (it was delivered), so a fetch from ``from_offset`` returns
        either an earlier record or that one; control batches (transaction markers) and compacted
        offsets are never returned as records. Offsets below the log start were deleted (retention,
        DeleteRecords) before this worker consumed them: nothing can be read there (a fetch from
        them would be reset to the log end and wait for ever), so the fetch starts at the log start.
        """
        from aiokafka.structs import TopicPartition

        async with self._lock:
            c = await self._client()
            tp = TopicPartition(topic, partition)
            start = (await c.beginning_offsets([tp]))[tp]
            if start > from_offset:
                self.deleted.report(topic, partition, from_offset, min(start, below))
                if start >= below:
                    return None
                from_offset = start
            c.assign([tp])
            c.seek(tp, from_offset)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _PROBE_TIMEOUT_S
            while loop.time() < deadline:
                got = (await c.getmany(tp, timeout_ms=1000, max_records=1)).get(tp)
                if got:
                    first = got[0].offset
                    return first if first < below else None
        raise TimeoutError(f"{topic}[{partition}]: no record from offset {from_offset} within {_PROBE_TIMEOUT_S:.0f} s "
                           f"although {below} was delivered")

    async def last_record(self, topic: str, partition: int, end: int, after: int = -1) -> int | None:
        """Offset of the last committed record in ``(after, end)`` (None: none), reading the tail
        backwards in growing steps: a transactional log ends with a commit marker, not a record, and
        an aborted transaction's records are skipped.

        ``after``: an offset known to be at or past the end of a transaction (a committed record the
        local table holds), so no read has to start before it; on the embedded broker, which reads
        from there instead of from the log start, this is what keeps a restart from reading the
        whole changelog."""
        from aiokafka.structs import TopicPartition

        async with self._lock:
            c = await self._client()
            tp = TopicPartition(topic, partition)
            start = max((await c.beginning_offsets([tp]))[tp], after + 1)
            stable = (await c.end_offsets([tp]))[tp]  # read_committed: nothing past it can be read now
            c.assign([tp])
            loop = asyncio.get_running_loop()
            step, upper = _TAIL_STEP, min(end, stable)
            if self.tail_from_start:
                step = upper - start
            while upper > start:
                lower = max(start, upper - step)
                c.seek(tp, lower)
                last = None
                deadline = loop.time() + _PROBE_TIMEOUT_S
                while await c.position(tp) < upper:
                    if loop.time() > deadline:
                        raise TimeoutError(f"{topic}[{partition}]: offsets {lower}..{upper} not read within "
                                           f"{_PROBE_TIMEOUT_S:.0f} s")
                    got = (await c.getmany(tp, timeout_ms=500)).get(tp, [])
                    metrics.PROBED_RECORDS.inc(len(got))
                    for m in got:
                        if m.offset < upper:
                            last = m.offset
                if last is not None:
                    return last
                upper, step = lower, step * 4
            return None

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        await self._admin.close()
