"""Consumer tuning faust does not expose as a setting.

faust creates its consumer with ``fetch_max_wait_ms=1500`` (hard-coded). aiokafka
keeps one fetch in flight per broker node and leaves out partitions that still
hold buffered records, so a long poll on the idle input partitions holds back
the busy ones; the embedded broker also answers a long poll late when data
arrives (a lone message took ~508 ms at 1500 ms, ~14 ms at 100 ms). Measured in
``bench/README.md`` (feedback, route_http): HTTP writes went from ~750 ms to
~22 ms and single-event throughput roughly doubled with 50 ms.
"""
from __future__ import annotations

import logging

__all__ = ("set_fetch_max_wait",)

logger = logging.getLogger(__name__)
_wait_ms: int | None = None


def set_fetch_max_wait(ms: int) -> None:
    """Make every faust worker consumer created from now on long-poll for at most ``ms``."""
    global _wait_ms
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if _wait_ms is None:
        original = AIOKafkaConsumerThread._create_worker_consumer

        def _create_worker_consumer(self: AIOKafkaConsumerThread, transport: object) -> object:
            consumer = original(self, transport)
            consumer._fetch_max_wait_ms = _wait_ms  # read when the consumer starts its fetcher
            return consumer

        AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
    _wait_ms = int(ms)
    logger.info("worker consumer fetch_max_wait_ms=%d", ms)
