"""One Kafka transaction per batch and input partition: downstream events, state, offsets together.

Each input partition this worker owns has its own transactional producer, ``transactional.id =
<app_id>-p<partition>`` (the same on every worker). What a batch produced from partition *p*'s
records — its downstream events and DLQ entries, re-routed copies, the changelog records of the
sessions it changed (all of them live on *p*) — and the group's next offsets of *p*'s input topics
are written in one transaction of that producer. A ``read_committed`` consumer (the bench, the
worker's own changelog recovery and input consumer) sees all of it or none: a crash anywhere before
the commit aborts it, the records come again from the committed offsets and produce the same
events once.

Fencing: a producer with a given transactional id starting (``InitProducerId``) aborts any
transaction the id left open and fences its previous holder. Producers start when partitions are
assigned (:meth:`Transactions.assign`), before recovery reads the changelogs and before the
committed offsets are fetched, so a worker that was SIGKILLed mid-transaction, or a live one that
lost the partition, can never commit over the new owner's work, and the new owner never waits for
the old one's transaction to time out.

Why not faust's ``processing_guarantee="exactly_once"``: it commits a transaction per commit
interval, not per batch, while learnstream writes a session's keys to RocksDB only once the records
covering them are durable; those writes would have to wait for faust's interval. One transaction per
batch keeps the order "changelog committed, then local write, then the next batch" in one place.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ("Transactions", "PartitionWork", "Send", "NotOwned", "source_partition")

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Send:
    """One record of a transaction (``partition`` None: the producer's murmur2 partitioner on ``key``)."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: Sequence[tuple[str, bytes]] | None = None


def source_partition(produce: Any) -> int:
    """The input partition whose record caused a downstream event or DLQ entry: the second part of
    its deterministic id ``<topic>:<partition>:<offset>[:n]`` (a Kafka topic name has no ``:``)."""
    return int(produce.value["id"].split(":", 2)[1])


@dataclass
class PartitionWork:
    """What one batch writes for one input partition."""

    sends: list[Send] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)  # input topic -> next offset to consume
    # changelog topic -> its (key, value or None) records in order, on this partition: sent as whole
    # record batches (one ``send`` per record cost ~30 µs, and a cold session writes ~7 records)
    records: dict[str, list[tuple[bytes, bytes | None]]] = field(default_factory=dict)
    # after a commit: changelog topic -> the offset of its last record in the transaction
    last_offsets: dict[str, int] = field(default_factory=dict)


class Transactions:
    """Transactional producers of the owned input partitions (see the module docstring)."""

    def __init__(self, bootstrap: str, app_id: str, group_id: str, *, max_batch_size: int, linger_ms: int,
                 max_request_size: int, **kafka: Any) -> None:
        self.bootstrap, self.app_id, self.group_id = bootstrap, app_id, group_id
        self.producer_kwargs = dict(max_batch_size=max_batch_size, linger_ms=linger_ms,
                                    max_request_size=max_request_size, **kafka)
        self.producers: dict[int, Any] = {}
        self._lock = asyncio.Lock()

    def transactional_id(self, partition: int) -> str:
        return f"{self.app_id}-p{partition}"

    def owns(self, partition: int) -> bool:
        return partition in self.producers

    async def assign(self, partitions: set[int]) -> None:
        """Own exactly ``partitions``: start (and so fence) producers for new ones, stop the others."""
        async with self._lock:
            for p in sorted(set(self.producers) - partitions):
                await self._stop(p)
            new = sorted(partitions - set(self.producers))
            started = await asyncio.gather(*(self._start(p) for p in new))
            self.producers.update(zip(new, started, strict=True))

    async def _start(self, partition: int) -> Any:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap,
                                    transactional_id=self.transactional_id(partition), acks="all",
                                    **self.producer_kwargs)
        await producer.start()  # InitProducerId: aborts what this id left open, fences its old holder
        return producer

    async def _stop(self, partition: int) -> None:
        producer = self.producers.pop(partition, None)
        if producer is not None:
            with contextlib.suppress(Exception):  # fenced or the broker gone: nothing left to save
                await producer.stop()

    async def close(self) -> None:
        async with self._lock:
            for p in list(self.producers):
                await self._stop(p)

    async def commit(self, partition: int, work: PartitionWork) -> list[Any]:
        """Write ``work`` in one transaction of ``partition``'s producer; return each send's metadata
        (and set ``work.last_offsets``).

        Raises when the transaction did not commit (it is aborted, or was by the fencing owner);
        a fenced producer is dropped: this worker no longer owns the partition.
        """
        from aiokafka.errors import ProducerFenced
        from aiokafka.structs import TopicPartition

        from workers.stream.tables import send_records

        producer = self.producers.get(partition)
        if producer is None:
            raise NotOwned(partition)
        await producer.begin_transaction()
        try:
            futures = [await producer.send(s.topic, s.value, key=s.key, partition=s.partition,
                                           headers=list(s.headers) if s.headers else None) for s in work.sends]
            batches = {topic: await send_records(producer, topic, partition, items)
                       for topic, items in work.records.items() if items}
            if work.offsets:
                await producer.send_offsets_to_transaction(
                    {TopicPartition(t, partition): o for t, o in work.offsets.items()}, self.group_id)
            await producer.commit_transaction()
            for topic, (futs, last_count) in batches.items():
                work.last_offsets[topic] = futs[-1].result().offset + last_count - 1
        except ProducerFenced:
            logger.warning("partition %d: transactional producer fenced (another worker owns it now)", partition)
            await self._stop(partition)
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.abort_transaction()
            raise
        return [f.result() for f in futures]

    async def commit_all(self, work: Mapping[int, PartitionWork]) -> dict[int, list[Any] | BaseException]:
        """:meth:`commit` every partition's work concurrently; per partition its metadata or its error."""
        parts = sorted(work)
        done = await asyncio.gather(*(self.commit(p, work[p]) for p in parts), return_exceptions=True)
        return dict(zip(parts, done, strict=True))


class NotOwned(Exception):
    """A transaction for a partition this worker does not (or no longer) own."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"partition {partition} is not owned by this worker")
        self.partition = partition
