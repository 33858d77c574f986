"""workers.kafka.clients.started: a client whose start fails is stopped, not left to the collector."""
from __future__ import annotations

import asyncio
import gc

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from workers.kafka.clients import started
from workers.local import free_port


async def _unclosed_after(start: object) -> list[str]:
    """asyncio's exception-handler messages once the client ``start`` failed on is collected."""
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: seen.append(context.get("message", "")))
    try:
        with pytest.raises(KafkaConnectionError):
            await start  # type: ignore[misc]
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    return [m for m in seen if m.startswith("Unclosed")]


@pytest.mark.parametrize("kind", [AIOKafkaConsumer, AIOKafkaProducer])
async def test_a_failed_start_leaves_no_unclosed_client(kind: type) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens: the bootstrap is refused at once
    assert await _unclosed_after(started(kind(bootstrap_servers=nobody))) == []
    # what it guards against: the plain start leaves the client for the collector to report
    assert await _unclosed_after(kind(bootstrap_servers=nobody).start()) == [f"Unclosed {kind.__name__}"]
