"""Worker-side compaction of transactional changelogs, for a broker that never compacts them.

The embedded broker (noida-db 0.2.3, ``src/kafka/log.rs`` ``compact``: "Transactional and control
batches are left as they are") keeps every record a transactional producer wrote, in memory. With
transactions on (the default) a changelog partition grows with every batch, not with its live
state: a 10-minute soak grew its snapshot ~130 MiB/min (bench/README.md, "broker_soak").

So the worker that owns a table partition compacts its changelog itself: once the partition's log
holds well more offsets than its table has keys (``> ratio x live keys + floor``: the log's offsets
are known from the batches' commits; the live keys are counted, again only once the log grew past
that threshold, on the last count plus the keys the batches since were sure to add
(``layout.key_growth``: while sessions fill their replay buffers the table grows with its log), and by
half the keys the last count found: ``count_due``), it

1. notes the log's end ``E`` (nothing of this partition is in flight: it runs between batches);
2. re-produces every live key of the table partition from its RocksDB, in order, on the partition's
   transactional producer (fenced like a batch's), in transactions of at most ``_CHUNK_BYTES``;
3. writes the last rewritten offset as the table's persisted changelog offset (the database holds
   exactly what the log says up to there);
4. deletes the records before ``E`` (DeleteRecords): the new log start.

Failures: a crash before a chunk commits aborts it (the next producer of the id aborts it on
start); nothing was deleted and the log replays to the same state. A crash after the commits but
before the delete leaves a longer log, which holds the old records and then the same values again.
Deleted keys: their tombstones before ``E`` go with the values they deleted, the rewrite does not
name them, so the key is absent either way. A worker whose local table was written up to an offset
before the new log start (it held the partition earlier, or crashed between 2 and 3) cannot patch
its table from there: the tombstones it missed are gone. Recovery empties such a partition and
rebuilds it from the log start (workers/stream/faust_internals.py, ``install_truncation_recovery``).

Not covered: a standby replica (another worker following the changelog) that lags behind a cut is
reset to the new log start by its consumer and keeps keys whose tombstones it missed; its persisted
offset is then past the cut, so recovery does not rebuild it if it becomes active. A cut comes at
most once per ``ratio x live + floor`` offsets, so a standby has to fall that far behind.

On only for the embedded broker with transactions (``LEARNSTREAM_CHANGELOG_REWRITE=auto``); Kafka
compacts transactional changelogs itself.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from workers.kafka.admin import LazyAdmin
from workers.stream import metrics
from workers.stream.faust_internals import changelog_offset_key, partition_db
from workers.stream.transactions import PartitionWork, ProducerLost, Transactions

__all__ = ("ChangelogRewriter", "count_due")

logger = logging.getLogger(__name__)

# One transaction of the rewrite carries at most this many key and value bytes: a table partition
# of thousands of ~100 kB sessions is several transactions, each a bounded one for the broker.
_CHUNK_BYTES = 16 * 1024 * 1024


class ChangelogRewriter:
    """Compacts the changelog partitions this worker's transactions wrote (module docstring)."""

    def __init__(self, txn: Transactions, tables: Mapping[str, Any], probe: Any, *, ratio: float, floor: int,
                 may_commit: Callable[[], bool], on_lost: Callable[[], Awaitable[None]],
                 topic_configs: Mapping[str, str], bootstrap: str, **kafka: Any) -> None:
        self.txn, self.probe = txn, probe
        self.on_lost = on_lost  # a partition's producer failed for good: rejoin the group (runtime.py)
        self.topic_configs = dict(topic_configs)  # the changelogs' configs (an old one gets them to allow the cut)
        self.ratio, self.floor, self.may_commit = ratio, floor, may_commit
        self.bootstrap, self.kafka = bootstrap, kafka
        # changelog topic -> its faust table
        self.tables = {t.changelog_topic.get_topic_name(): t for t in tables.values()}
        self.starts: dict[tuple[str, int], int] = {}  # known log start per changelog partition
        self.ends: dict[tuple[str, int], int] = {}  # last committed offset seen per changelog partition
        self.live: dict[tuple[str, int], int] = {}  # live keys per changelog partition, when last counted
        self.counted_at: dict[tuple[str, int], int] = {}  # the log's last offset at that count
        # keys the batches since that count added at least (layout.key_growth): while sessions are still
        # filling their replay buffers the table grows with its log, and the cheap check sees it uncounted
        self.grown: dict[tuple[str, int], int] = {}
        self.generation = 0  # bumped by every rebalance: a rewrite spanning one stops
        self._admin = LazyAdmin(self.bootstrap, **self.kafka)

    def reset(self) -> None:
        """A rebalance: forget what is known about the partitions (another worker may have cut them)."""
        self.generation += 1
        self.starts.clear()
        self.ends.clear()
        self.live.clear()
        self.counted_at.clear()
        self.grown.clear()

    def note(self, partition: int, last_offsets: Mapping[str, int], grown: Mapping[str, int] | None = None) -> None:
        """A batch's transaction of ``partition`` committed: its changelogs end at ``last_offsets``, and
        their tables gained at least ``grown`` keys (changelog topic -> keys; negative: lost)."""
        for topic, last in last_offsets.items():
            self.ends[(topic, partition)] = last
        for topic, n in (grown or {}).items():
            tp = (topic, partition)
            self.grown[tp] = self.grown.get(tp, 0) + n

    async def maybe_rewrite(self) -> None:
        """Rewrite every noted changelog partition that has grown past its live state (between batches)."""
        for (topic, partition), last in list(self.ends.items()):
            tp = (topic, partition)
            start, live = self.starts.get(tp), self.live.get(tp)
            if live is not None:
                live = max(live + self.grown.get(tp, 0), 0)  # at least what the last count found, plus since
            if start is not None and not self._outgrown(last, start, live or 0):
                continue  # the cheap check, on what is known
            table = self.tables.get(topic)
            if table is None or not self.txn.owns(partition):
                continue
            try:
                if start is None:
                    start = self.starts[tp] = await self.probe.log_start(topic, partition)
                    if not self._outgrown(last, start, live or 0):
                        continue
                if not count_due(last, self.counted_at.get(tp), live or 0):
                    continue
                # RocksDB's estimate-num-keys counts overwrites too: count (see count_due for how often)
                live = _count(partition_db(table, partition), changelog_offset_key(table))
                self._counted(tp, live, last)
                if not self._outgrown(last, start, live):
                    continue
                await self.rewrite(topic, partition, last - start)
            except ProducerLost:
                # its producer is dropped (commit()): like a batch's, the partition waits for a rebalance
                self.starts.pop(tp, None)
                await self.on_lost()
            except Exception as exc:  # noqa: BLE001 - nothing was deleted: the log is longer, not wrong
                logger.warning("changelog rewrite of %s[%d] failed (%r); the log keeps its records and the next "
                               "batch tries again", topic, partition, exc)
                self.starts.pop(tp, None)

    def _outgrown(self, last: int, start: int, live: int) -> bool:
        """Whether a log from ``start`` to ``last`` holds more offsets than ``ratio x live + floor``."""
        return last - start >= self.ratio * live + self.floor

    def _counted(self, tp: tuple[str, int], live: int, last: int) -> None:
        """``tp``'s table holds ``live`` keys as of its log's offset ``last``."""
        self.live[tp], self.counted_at[tp], self.grown[tp] = live, last, 0

    async def rewrite(self, topic: str, partition: int, size: int | None = None) -> int:
        """Re-produce every live key of ``topic``'s table partition, then cut the log before them;
        returns the new log start."""
        from aiokafka.structs import TopicPartition

        table = self.tables[topic]
        db = partition_db(table, partition)
        offset_key = changelog_offset_key(table)
        generation = self.generation
        cut = await self.probe.log_end(topic, partition)  # read_committed: nothing of this partition is open
        keys = nbytes = 0
        last = None
        items = _live(db, offset_key)
        while True:
            chunk, chunk_bytes = [], 0
            for k, v in items:
                chunk.append((k, v))
                chunk_bytes += len(k) + len(v)
                if chunk_bytes >= _CHUNK_BYTES:
                    break
            if not chunk:
                break
            if self.generation != generation:
                raise RuntimeError("a rebalance started during the rewrite")
            work = PartitionWork(records={topic: chunk})
            await self.txn.commit(partition, work, self.may_commit)
            last = work.last_offsets[topic]
            keys += len(chunk)
            nbytes += chunk_bytes
        if last is None:
            last = cut - 1  # an empty table partition: the log before the cut holds nothing it keeps
        if self.generation != generation:
            raise RuntimeError("a rebalance started during the rewrite")
        db.put(offset_key, str(last).encode())  # the database holds what the log holds up to `last`
        await self._delete_before(TopicPartition(topic, partition), cut)
        self.starts[(topic, partition)] = cut
        self._counted((topic, partition), keys, last)
        metrics.CHANGELOG_REWRITES.inc()
        metrics.CHANGELOG_REWRITE_BYTES.inc(nbytes)
        logger.info("changelog %s[%d] rewritten: %d live keys (%.1f MB) re-produced at offsets up to %d, records "
                    "before %d deleted (the log held %s offsets)", topic, partition, keys, nbytes / 1e6, last, cut,
                    size if size is not None else "?")
        return cut

    async def _delete_before(self, tp: Any, offset: int) -> None:
        from aiokafka.admin import RecordsToDelete
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
        from aiokafka.errors import PolicyViolationError

        admin = await self._admin_client()
        try:
            await admin.delete_records({tp: RecordsToDelete(offset)})
        except PolicyViolationError:
            # a changelog created compact-only (before this worker compacted them): allow DeleteRecords.
            # AlterConfigs replaces the topic's configs: all of them, as provision.py creates them.
            logger.warning("changelog %s is compact-only, which refuses DeleteRecords; setting its configs to %s",
                           tp.topic, self.topic_configs)
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, tp.topic, self.topic_configs)])
            await admin.delete_records({tp: RecordsToDelete(offset)})

    async def _admin_client(self) -> Any:
        return await self._admin.get()

    async def close(self) -> None:
        await self._admin.close()


def _live(db: Any, offset_key: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every key and value of a raw-mode partition database, in key order, but faust's offset key."""
    it = db.iter()
    it.seek_to_first()
    while it.valid():
        k = it.key()
        if k != offset_key:
            yield k, it.value()
        it.next()


def count_due(last: int, counted_at: int | None, live: int) -> bool:
    """Whether to count a partition's live keys again, its log now ending at ``last``: only once the
    log grew by half the keys the last count found. A count reads every key, so this bounds counting
    at two key reads per record produced, and a rewrite comes at most ``live / 2`` records late.

    Without it, a table whose sessions were still growing (replay buffers filling: a new key per event
    or so) was counted every few thousand records, as each count raised the threshold only a little:
    44 counts in one 2,000-session benchmark, ~9 us per event of the worker's 340 (bench/README.md)."""
    return counted_at is None or last - counted_at >= live // 2


def _count(db: Any, offset_key: bytes) -> int:
    """Keys of a partition database but faust's offset key."""
    # keys() walks in Rust and yields the keys: half the cost of a Python loop over an iterator's
    # valid() / key() / next() (25,000 keys: 5.5 against 10.8 ms), and 10,000 sessions make ~30,000
    # keys per partition, counted while the batches wait
    n = 0
    for _ in db.keys():
        n += 1
    return n - (db.get(offset_key) is not None)
