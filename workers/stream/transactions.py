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

A producer the broker no longer matches: a broker that lost records it had acknowledged (a
SIGKILLed embedded broker, README "Broker outages") still knows the producer but with fewer
sequence numbers, so its next send fails with ``OutOfOrderSequenceNumber`` and aiokafka's sender
stops for good. :meth:`Transactions.commit` then drops that producer and raises
:class:`ProducerLost`: the worker releases the partition and rejoins the group, and the
rebalance starts a new producer (``InitProducerId``: a new epoch, sequences from 0), rebuilds the
table partition if its changelog lost records, and re-reads the input from the committed offsets.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from workers.kafka.clients import started

__all__ = ("Transactions", "PartitionWork", "Send", "NotOwned", "ProducerLost", "source_partition")

logger = logging.getLogger(__name__)

# Aborting a transaction of a working producer takes one round trip; bounded in case the broker goes again.
_ABORT_TIMEOUT_S = 10.0
# aiokafka's stop() waits for whatever its sender still has in flight, a transactional request it
# retries included; a rebalance or a fencing must not wait on a producer that is being dropped.
_STOP_TIMEOUT_S = 10.0


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
        """Own exactly ``partitions``, each with a producer started (and so fencing) now.

        A partition this worker held before the rebalance gets a new producer too: it may have been
        another worker's in between. A member the coordinator dropped (the embedded broker drops the
        running worker when a second one joins; it learns at its next heartbeat) is readmitted to a
        later generation, while a generation without it gave its partitions to another worker, whose
        producers fenced its own. Kept, the fenced producer failed the first batch after the rebalance,
        and its events waited (30-60 s in 4 of 6 such joins) until a later record showed the gap."""
        _quiet_fenced_futures(asyncio.get_running_loop())
        async with self._lock:
            await asyncio.gather(*(self._stop(p) for p in sorted(self.producers)))  # as the starts: together
            new = sorted(partitions)
            started = await asyncio.gather(*(self._start(p) for p in new))
            self.producers.update(zip(new, started, strict=True))

    async def _start(self, partition: int) -> Any:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap,
                                    transactional_id=self.transactional_id(partition), acks="all",
                                    **self.producer_kwargs)
        return await started(producer)  # InitProducerId: aborts what this id left open, fences its old holder

    async def _stop(self, partition: int) -> None:
        producer = self.producers.pop(partition, None)
        if producer is not None:
            await _stop_producer(producer)

    async def close(self) -> None:
        async with self._lock:
            for p in list(self.producers):
                await self._stop(p)

    async def commit(self, partition: int, work: PartitionWork, may_commit: Callable[[], bool] = lambda: True
                     ) -> list[Any]:
        """Write ``work`` in one transaction of ``partition``'s producer; return each send's metadata
        (and set ``work.last_offsets``).

        Raises when the transaction did not commit (it is aborted, or was by the fencing owner);
        a fenced producer is dropped: this worker no longer owns the partition. A producer that can
        no longer be used (:func:`_unusable`) is dropped too and :class:`ProducerLost` raised, as
        when ``may_commit()`` says no once the records are acknowledged (the broker may have
        restarted since the partition was assigned: what was read before may be gone from the log).
        """
        from aiokafka.errors import ProducerFenced
        from aiokafka.structs import TopicPartition

        from workers.stream.tables import send_records

        producer = self.producers.get(partition)
        if producer is None:
            raise NotOwned(partition)
        if not may_commit():
            await self._lost(partition, BrokerOutage("the broker was unreachable since the partition was assigned"))
        try:
            await producer.begin_transaction()
            futures = [await producer.send(s.topic, s.value, key=s.key, partition=s.partition,
                                           headers=list(s.headers) if s.headers else None) for s in work.sends]
            batches = {topic: await send_records(producer, topic, partition, items)
                       for topic, items in work.records.items() if items}
            # Every record acknowledged before the offsets and the commit: the embedded broker was seen
            # committing a transaction (offsets included) whose sends had failed with
            # OutOfOrderSequenceNumber, which skipped the input those records came from.
            sent = list(await asyncio.gather(*futures))
            acked = {topic: await asyncio.gather(*futs) for topic, (futs, _) in batches.items()}
            if not may_commit():
                raise BrokerOutage("the broker was unreachable since the partition was assigned")
            if work.offsets:
                await producer.send_offsets_to_transaction(
                    {TopicPartition(t, partition): o for t, o in work.offsets.items()}, self.group_id)
            await producer.commit_transaction()
            for topic, (_, last_count) in batches.items():
                work.last_offsets[topic] = acked[topic][-1].offset + last_count - 1
        except ProducerFenced:
            logger.warning("partition %d: transactional producer fenced (another worker owns it now)", partition)
            await self._stop(partition)
            raise
        except BaseException as exc:
            if isinstance(exc, BrokerOutage):  # the producer works: end what it wrote, then replace it
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_ABORT_TIMEOUT_S):
                        await producer.abort_transaction()
            if isinstance(exc, Exception) and _unusable(producer, exc):
                if not isinstance(exc, BrokerOutage):
                    await _end_left_open(producer)
                await self._lost(partition, exc)
            with contextlib.suppress(Exception):
                await producer.abort_transaction()
            raise
        return sent

    async def _lost(self, partition: int, exc: Exception) -> NoReturn:
        logger.error("partition %d: transactional producer not trusted any more (%r): the broker may no longer "
                     "have what it acknowledged; releasing the partition until the group rebalances (new "
                     "producer, changelog and input read again)", partition, exc)
        await self._stop(partition)
        raise ProducerLost(partition, exc) from exc

    async def commit_all(self, work: Mapping[int, PartitionWork], may_commit: Callable[[], bool] = lambda: True
                         ) -> dict[int, list[Any] | BaseException]:
        """:meth:`commit` every partition's work concurrently; per partition its metadata or its error."""
        parts = sorted(work)
        done = await asyncio.gather(*(self.commit(p, work[p], may_commit) for p in parts), return_exceptions=True)
        return dict(zip(parts, done, strict=True))


_PROBE_TIMEOUT_S = 30.0


async def check_transactions(bootstrap: str, app_id: str, **kafka: Any) -> None:
    """ConfigError unless the broker starts a transactional producer (``InitProducerId``), under an id of its
    own (``<app_id>-probe``: the partitions' ids would fence a running worker's producers). A
    broker without transactions (an earlier embedded broker, Tansu; a Kafka-compatible service) crashed
    the worker at its first assignment, with a traceback, only after it had joined the group."""
    from aiokafka import AIOKafkaProducer

    from workers.errors import ConfigError

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{app_id}-probe", acks="all",
                                **kafka)
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            await started(producer)
    except Exception as exc:  # noqa: BLE001 - whatever the broker answered, said in the refusal
        why = "no answer" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"the broker at {bootstrap} did not start a transactional producer ({why}); "
                          "it may not support transactions: use one that does (Apache Kafka, Redpanda, "
                          "`learnstream broker`), or set LEARNSTREAM_TRANSACTIONS=false for at-least-once "
                          "delivery (README, Consistency)") from None
    await _stop_producer(producer)


def _quiet_fenced_futures(loop: asyncio.AbstractEventLoop) -> None:
    """Keep asyncio from logging ERROR "Future exception was never retrieved" for a fenced producer.

    When a producer is fenced, aiokafka fails futures of its own that nothing awaits once the
    producer is dropped (its transaction's waiter, a pending batch's waiters). asyncio logged each
    as an ERROR with a traceback when collected (two per fencing in the test), for a fencing that
    :meth:`Transactions.commit` reports as one warning. Only those (a ``ProducerFenced`` never
    retrieved) are dropped; everything else goes on to the handler that was there (idempotent)."""
    from aiokafka.errors import ProducerFenced

    previous = loop.get_exception_handler()
    if getattr(previous, "quiets_fenced_futures", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), ProducerFenced) and "never retrieved" in context.get("message", ""):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.quiets_fenced_futures = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


async def _stop_producer(producer: Any) -> None:
    """Stop a producer that is being dropped, in at most ``_STOP_TIMEOUT_S``: past that its sender is
    cancelled (the timeout cancels the stop that awaits it) and its connections are closed."""
    try:
        async with asyncio.timeout(_STOP_TIMEOUT_S):
            with contextlib.suppress(Exception):  # fenced or the broker gone: nothing left to save
                await producer.stop()
    except TimeoutError:
        txn = getattr(producer, "_txn_manager", None)  # aiokafka 0.14: TransactionManager.transactional_id
        logger.warning("transactional producer %s did not stop within %.0f s; its connections are closed",
                       getattr(txn, "transactional_id", "?"), _STOP_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await producer.client.close()


async def _end_left_open(producer: Any) -> None:
    """Abort the transaction a dead producer may have left open, with its own id and epoch.

    What its sends placed before one failed would otherwise hold back every ``read_committed``
    reader of those partitions: Kafka aborts it when the next producer of the transactional id
    starts, but the embedded broker, after a restart, gives that producer a new id and keeps the
    old transaction open for good (seen here; an EndTxn of the old id ends it).
    """
    from aiokafka.client import CoordinationType
    from aiokafka.protocol.transaction import EndTxnRequest

    txn = producer._txn_manager  # aiokafka 0.14: TransactionManager.transactional_id, producer_id/epoch
    if txn is None or txn.producer_id < 0:
        return
    try:
        async with asyncio.timeout(_ABORT_TIMEOUT_S):
            node = await producer.client.coordinator_lookup(CoordinationType.TRANSACTION, txn.transactional_id)
            resp = await producer.client.send(node, EndTxnRequest(txn.transactional_id, txn.producer_id,
                                                                  txn.producer_epoch, False))
        logger.info("%s: ended what the failed producer left open (error code %d: 0 aborted, others: none open)",
                    txn.transactional_id, resp.error_code)
    except Exception as exc:  # noqa: BLE001 - the broker gone again: the next producer's start aborts it on Kafka
        logger.warning("%s: could not abort what the failed producer left open: %r", txn.transactional_id, exc)


def _unusable(producer: Any, exc: Exception) -> bool:
    """True when ``producer`` cannot run another transaction: the broker refused its sequence numbers
    or producer id (aiokafka's sender task ends on these), or its transaction state is fatal."""
    from aiokafka.errors import InvalidTxnState, OutOfOrderSequenceNumber, UnknownProducerId

    if isinstance(exc, (OutOfOrderSequenceNumber, UnknownProducerId, InvalidTxnState, BrokerOutage)):
        return True
    # aiokafka 0.14: AIOKafkaProducer._sender.sender_task, ._txn_manager.is_fatal_error()
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    txn = getattr(producer, "_txn_manager", None)
    return bool((task is not None and task.done()) or (txn is not None and txn.is_fatal_error()))


class BrokerOutage(Exception):
    """A transaction not committed because the broker was unreachable since its partition was
    assigned (its producer is replaced like one that failed: the broker may have restarted)."""


class NotOwned(Exception):
    """A transaction for a partition this worker does not (or no longer) own."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"partition {partition} is not owned by this worker")
        self.partition = partition


class ProducerLost(NotOwned):
    """The partition's producer failed for good (see the module docstring); the partition is
    released until the next rebalance gives it a new producer."""

    def __init__(self, partition: int, cause: BaseException) -> None:
        Exception.__init__(self, f"partition {partition}: transactional producer failed ({cause!r})")
        self.partition = partition
