"""What the embedded broker (noida-db 0.2.3) needs that Apache Kafka does not.

Switched on only for the embedded broker (``LEARNSTREAM_BROKER_KIND=embedded``). Of the conformance
suite (``tests/broker``) it fails two checks (1 and 3 below); the others are defects the suite does
not cover or a property that hurts a long local run:

1. **A group member that dies without leaving is never expired** (Kafka drops it after
   ``session.timeout.ms``). A SIGKILLed worker stays the group's leader, so the next worker to join
   waits for a SyncGroup that never comes and is never ready. Fix: ``expel_group_members``
   (workers/stream/peers.py) before a worker joins: every member the group still lists whose worker does not answer HTTP leaves
   (LeaveGroup on its behalf). Live members stay: expelled, they kept processing their partitions
   until their next heartbeat while the newcomer, the group's only member, had taken every partition
   (two workers on one partition: stale reads, and events lost in an outside trial with three
   workers). They rejoin in the rebalance the newcomer causes, revoking first. A worker that dies for
   good while the others keep running is expelled by them (workers/stream/peers.py).
   Group membership is not persisted, so a restarted embedded broker starts clean.
2. **Memory.** It keeps the retained log in memory (and re-serialises all of it to a JSON snapshot
about once a second), and, like Kafka, it compacts or deletes only closed segments. Kafka's defaults (1 GiB or 7-day
segments, 7- to 30-day or infinite retention) would keep everything a local worker ever wrote. So every
topic the worker creates on it gets:

- small segments (``segment.bytes``, ``segment.ms``), so compaction keeps each changelog near its
  live state and retention can drop old records;
- on delete-policy topics, ``retention.bytes`` per partition: downstream topics and the DLQ
  ``LEARNSTREAM_EMBEDDED_RETENTION_BYTES`` (a bounded local history; state does not depend on it, it
  lives in the compacted changelogs), inputs a large cap on unread backlog
  (``LEARNSTREAM_EMBEDDED_INPUT_RETENTION_BYTES``): the worker deletes the input it applied itself
  (:mod:`workers.kafka.input_purge`).

and the broker process gets :data:`MALLOC_TUNABLES` (glibc), so each snapshot's buffers go back to
the OS. ``tests/unit/test_broker.py`` shows the broker's memory dropping with these configs and not
without; ``learnstream bench broker_soak`` measures a 10-minute run (bench/README.md).

3. **It never compacts transactional batches** (``src/kafka/log.rs``, ``compact``: "Transactional
   and control batches are left as they are"), and with transactions on (the default) every
   changelog record is in one: the changelogs grow with every batch, in the broker's memory.
   Fix: the worker compacts them itself, :mod:`workers.kafka.changelog_rewrite` (re-produce the live
   keys, then DeleteRecords before them); the changelogs get :data:`REWRITTEN_CHANGELOG_CONFIGS`.

4. **Its fetch responses list aborted transactions that ended before the fetch offset.** Kafka
   lists only those overlapping the fetched range. A ``read_committed`` client (aiokafka) then
   takes the producer as aborted from the first batch on and, never seeing that transaction's
   abort marker (it lies before the fetch offset), skips every later batch of the same producer id:
   a changelog recovered from a persisted offset after one aborted batch transaction (a worker
   SIGKILLed mid-commit) would read nothing of what the same partition's producer committed since.
   Fix: :func:`ignore_finished_aborts` decides, in the worker process, for each listed aborted
   transaction that starts before the fetch offset, whether it is still open there, from the
   response itself: one producer's transactions follow each other, so its first control batch at
   or after the fetch offset ends the transaction its records there belong to. An abort marker:
   they are aborted, the listing stands. A commit marker, or none: it ended before, and is dropped.
   A fetch *can* start inside an aborted transaction: on an input topic, re-routed copies (written
   in the transactions of other partitions) interleave with clients' records, and a group's
   committed offset may lie between two aborted copies. Dropping every early listing (this fix's
   first form) delivered the later copy as committed, out of order and before its re-sent
   duplicate, which was then dropped: one event lost. The embedded broker answers a fetch with
   everything up to the last stable offset (23 MB in one response, whatever the client's
   ``max_partition_fetch_bytes``), so the marker of a finished transaction is always in it.
   ``tests/integration/test_transactions.py`` fails without either half.

5. **It can answer SyncGroup with an empty assignment** (seen once in 21 two-worker rebalance
   start-ups of ``bench chaos``). aiokafka's group coordinator decodes it, fails ("unpack requires a
   buffer of 2 bytes") and its task dies: that worker is never ready. Fix:
   :func:`rejoin_on_empty_assignment` takes the empty answer as "this round left me out" and asks
   to rejoin, as aiokafka does for any other round that went wrong.

6. **It answers a fetch with nothing to return at once**, whatever its ``max_wait_ms`` (Kafka holds
   it until data arrives or the wait is up): ~0.3 ms at ``max_wait_ms`` 500, so an idle consumer
   sends ~450 fetch requests a second. In a worker (one fetch lists every assigned input partition)
   that kept faust's consumer thread busy ~75% of a core while idle, and while busy the fetches for
   the other, idle topics competed with the batches for the GIL. Fix: :func:`hold_empty_fetches`
   holds an empty answer in the client for up to :data:`EMPTY_FETCH_HOLD_MS`, or until the
   application consumed records (then there are partitions to fetch again, as when Kafka's long
   poll returns early). The price: a message arriving on an idle worker waits up to that long.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

__all__ = ("topic_configs", "ignore_finished_aborts", "rejoin_on_empty_assignment",
           "hold_empty_fetches", "EMPTY_FETCH_HOLD_MS", "SEGMENT_BYTES", "SEGMENT_MS", "MALLOC_TUNABLES",
           "REWRITTEN_CHANGELOG_CONFIGS")

logger = logging.getLogger(__name__)

# Segments this small roll within seconds under load, so compaction and retention keep up with a
# changelog that rewrites ~100 KB session values many times a second (bench/README.md, "broker_soak").
SEGMENT_BYTES = 1024 * 1024
SEGMENT_MS = 10_000
# noida uses glibc's malloc from a thread per connection (up to 8 arenas per core) and re-serialises
# its whole retained log to JSON, a few times the log's size, about once a second. With glibc's
# defaults the freed buffers stay in the arenas (the dynamic mmap threshold grows to 32 MiB), so the
# process keeps its peak. Two arenas, and every block of 256 KiB or more mmapped (freed at once),
# give that memory back after each snapshot (bench/README.md, "broker_soak").
MALLOC_TUNABLES = "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=262144:glibc.malloc.trim_threshold=1048576"
# A changelog the worker compacts itself (workers/kafka/changelog_rewrite.py): DeleteRecords needs
# "delete" in the policy (noida, like Kafka, answers POLICY_VIOLATION on a compact-only topic); no
# time or size retention, so only the rewrite's DeleteRecords ever removes a record.
REWRITTEN_CHANGELOG_CONFIGS = {"cleanup.policy": "compact,delete", "retention.ms": "-1", "retention.bytes": "-1"}
# Defect 6: how long an empty fetch answer is held in the client. Short, since a message that arrives
# meanwhile waits for it: an idle consumer then sends at most ~100 fetches a second, not ~450.
EMPTY_FETCH_HOLD_MS = 10
# Compact once a tenth of a changelog is superseded values (Kafka's default waits for half).
_DIRTY_RATIO = "0.1"


def topic_configs(cleanup_policy: str, retention_bytes: int) -> dict[str, str]:
    """Extra topic configs for a topic of ``cleanup_policy`` created on the embedded broker."""
    out = {"segment.bytes": str(SEGMENT_BYTES), "segment.ms": str(SEGMENT_MS)}
    if "compact" in cleanup_policy:
        out["min.cleanable.dirty.ratio"] = _DIRTY_RATIO
    if "delete" in cleanup_policy and retention_bytes > 0:
        out["retention.bytes"] = str(retention_bytes)
    return out


_aborts_patched = False
_fetched = threading.local()  # the bytes of the fetch response the fetcher is about to read (per thread)


def ignore_finished_aborts() -> None:
    """Defect 4 above: make aiokafka ignore listed aborted transactions that ended before the fetch
    offset (idempotent; call it in a process that talks to the embedded broker only)."""
    global _aborts_patched
    if _aborts_patched:
        return
    from aiokafka.consumer import fetcher

    memory_records, init = fetcher.MemoryRecords, fetcher.PartitionRecords.__init__

    def MemoryRecords(data: Any) -> Any:  # noqa: N802 - stands in for the class the fetcher calls
        _fetched.data = data  # the fetcher wraps it in PartitionRecords next, on the same thread
        return memory_records(data)

    def __init__(self: Any, tp: Any, records: Any, aborted_transactions: Any, fetch_offset: int,
                 *args: Any, **kwargs: Any) -> None:
        data, _fetched.data = getattr(_fetched, "data", None), None
        if aborted_transactions:  # (producer_id, first_offset) pairs
            early = {pid for pid, first in aborted_transactions if first < fetch_offset}
            open_ = _open_at(memory_records(data), early, fetch_offset) if early and data is not None else set()
            aborted_transactions = [a for a in aborted_transactions if a[1] >= fetch_offset or a[0] in open_]
        init(self, tp, records, aborted_transactions, fetch_offset, *args, **kwargs)

    fetcher.MemoryRecords = MemoryRecords
    fetcher.PartitionRecords.__init__ = __init__
    _aborts_patched = True


def _open_at(records: Any, pids: set[int], fetch_offset: int) -> set[int]:
    """Those of ``pids`` whose first control batch at or after ``fetch_offset`` in ``records`` (a
    separate reader of the response) is an abort marker: their records there are aborted."""
    from aiokafka.record.control_record import ABORT_MARKER, ControlRecord

    seen: set[int] = set()
    out: set[int] = set()
    while records.has_next() and len(seen) < len(pids):
        batch = records.next_batch()
        pid = batch.producer_id
        if pid not in pids or pid in seen or not batch.is_control_batch or batch.base_offset < fetch_offset:
            continue
        seen.add(pid)
        if ControlRecord.parse(next(iter(batch)).key) == ABORT_MARKER:
            out.add(pid)
    return out


_empty_assignment_patched = False


def rejoin_on_empty_assignment() -> None:
    """Defect 5 above: an empty SyncGroup assignment makes aiokafka's consumer rejoin the group
    instead of killing its coordinator task (idempotent)."""
    global _empty_assignment_patched
    if _empty_assignment_patched:
        return
    from aiokafka.consumer import group_coordinator

    on_join_complete = group_coordinator.GroupCoordinator._on_join_complete

    async def _on_join_complete(self: Any, generation: int, member_id: str, protocol: str,
                                member_assignment_bytes: bytes) -> None:
        if not member_assignment_bytes:
            logger.warning("embedded broker: empty assignment for generation %s of group %s; rejoining",
                           generation, self.group_id)
            self.request_rejoin()
            return
        await on_join_complete(self, generation, member_id, protocol, member_assignment_bytes)

    group_coordinator.GroupCoordinator._on_join_complete = _on_join_complete
    _empty_assignment_patched = True


_fetch_hold_patched = False


def hold_empty_fetches(hold_ms: int = EMPTY_FETCH_HOLD_MS) -> None:
    """Defect 6 above: an aiokafka fetch that brought nothing returns after ``hold_ms`` at the
    earliest, or as soon as the application consumed records (idempotent; embedded broker only)."""
    global _fetch_hold_patched
    if _fetch_hold_patched:
        return
    import time

    from aiokafka.consumer import fetcher

    proc = fetcher.Fetcher._proc_fetch_request
    hold_s = hold_ms / 1000.0

    async def _proc_fetch_request(self: Any, assignment: Any, node_id: int, request: Any) -> bool:
        consumed = self._wait_consume_future  # aiokafka: the fetcher loop's "records were consumed" future
        t0 = time.monotonic()
        got = await proc(self, assignment, node_id, request)
        left = hold_s - (time.monotonic() - t0)
        if got or left <= 0 or consumed is None or consumed.done() or not assignment.active:
            return got
        try:
            await asyncio.wait([consumed, assignment.unassign_future], timeout=left)
        except asyncio.CancelledError:
            return False  # as the original on cancellation: the result is of no interest
        return got

    fetcher.Fetcher._proc_fetch_request = _proc_fetch_request
    _fetch_hold_patched = True
