"""Deleting input the worker has applied, on the embedded broker, so unconsumed input can be kept.

The embedded broker holds its whole log in memory (workers/kafka/broker_compat.py), so its input
topics used to get a small byte retention (4 MiB per partition). That dropped input a worker had
not read yet whenever producers ran ahead of it by more than that (a bulk load, a worker stopped
for a minute): events lost, with only a warning. Kafka Streams faces the same choice for its
repartition topics and purges them after each commit; this does the same for the input topics:

- the input topics get a large byte cap (``LEARNSTREAM_EMBEDDED_INPUT_RETENTION_BYTES``), a guard
  against unbounded memory, not the everyday bound;
- every ``LEARNSTREAM_EMBEDDED_INPUT_PURGE_S`` the worker deletes (DeleteRecords) each of its input
  partitions up to the offset *it* committed at least one period before, in a transaction that
  committed. The records it deletes were applied, and their state change and their downstream events are in
  committed transactions. A period (10 s by default) is many of the broker's snapshots (about one a
  second), so a broker that restarts from its snapshot never holds the cut without the commit it
  follows.

Another consumer group with a committed offset on an input partition (a second app on the same
broker, an analytics consumer) is never cut past that offset; a group that has not committed one is
not known to be behind, as with any retention.

Not purged: while the broker has been unreachable since the partitions were assigned (it may have
restarted without records it had acknowledged: the worker reads the partition again from its
start, and its committed offsets cannot be trusted, workers/stream/runtime.py), and offsets the
broker's own group offset has not reached (checked before each cut). Only with transactions (the
default): the worker then knows which of its commits went through. ``LEARNSTREAM_EMBEDDED_INPUT_PURGE_S=0``
turns it off (then the cap is the input's history, as before).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from workers.kafka.admin import LazyAdmin
from workers.stream import metrics

__all__ = ("InputPurge",)

logger = logging.getLogger(__name__)


class InputPurge:
    """Cuts input partitions below the offsets this worker committed a period ago (module docstring)."""

    def __init__(self, bootstrap: str, group: str, *, may_purge: Callable[[], bool], **kafka: Any) -> None:
        self.group = group
        self.may_purge = may_purge  # False once the broker was unreachable since the partitions' assignment
        self.committed: dict[tuple[str, int], int] = {}  # offsets this worker committed since the last tick
        self.due: dict[tuple[str, int], int] = {}  # ... as of the last tick: cut at the next
        self.cut: dict[tuple[str, int], int] = {}  # where each partition was last cut
        self.generation = 0
        self._admin = LazyAdmin(bootstrap, **kafka)

    def reset(self) -> None:
        """A rebalance: nothing noted before it is cut (the broker may have lost it meanwhile)."""
        self.generation += 1
        self.committed.clear()
        self.due.clear()

    def note(self, topic: str, partition: int, offset: int) -> None:
        """A transaction of this worker committed ``offset`` as the next input offset of the partition."""
        self.committed[(topic, partition)] = offset

    async def tick(self) -> dict[tuple[str, int], int]:
        """Cut what was due (committed a period ago and still committed), and make what was committed since
        due next time; what could not be cut yet (another group behind, the broker unsure) stays due.
        Returns the cuts made."""
        due, self.due, self.committed = self.due, self.committed, {}
        generation = self.generation
        due = {tp: off for tp, off in due.items() if off > self.cut.get(tp, 0)}
        if not due:
            return {}
        for tp, off in due.items():  # what is not cut now stays due (a newer commit replaces it)
            self.due.setdefault(tp, off)
        if not self.may_purge():
            return {}
        from aiokafka.admin import RecordsToDelete
        from aiokafka.structs import TopicPartition

        admin = await self._admin.get()
        tps = {tp: TopicPartition(*tp) for tp in due}
        cuts = dict(due)
        for group in {self.group, *(g[0] for g in await admin.list_consumer_groups())}:
            offsets = await admin.list_consumer_group_offsets(group, partitions=list(tps.values()))
            for tp in list(cuts):
                got = offsets.get(tps[tp])
                if group == self.group and (got is None or got.offset < cuts[tp]):
                    del cuts[tp]  # the broker's record of our commit must have reached the cut (unless it lost it)
                elif got is not None and got.offset >= 0:
                    cuts[tp] = min(cuts[tp], got.offset)  # another group reading the input: not past its offset
        cuts = {tp: off for tp, off in cuts.items() if off > self.cut.get(tp, 0)}
        if not cuts or generation != self.generation or not self.may_purge():
            return {}
        low = await admin.delete_records({tps[tp]: RecordsToDelete(off) for tp, off in cuts.items()})
        for tp, off in cuts.items():
            self.cut[tp] = low.get(tps[tp], off)
            metrics.INPUT_PURGES.labels(tp[0]).inc()
            if self.due.get(tp, 0) <= self.cut[tp]:
                self.due.pop(tp, None)
        logger.debug("input purged below %s", cuts)
        return cuts

    async def close(self) -> None:
        await self._admin.close()
