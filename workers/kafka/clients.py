"""Starting aiokafka clients without leaving half-started ones behind."""
from __future__ import annotations

import contextlib
from typing import Any, TypeVar

__all__ = ("started",)

C = TypeVar("C")


async def started(client: C) -> C:
    """``client`` (an aiokafka consumer, producer or admin client) once its ``start()`` returned.

    A start that fails or is cancelled (a rebalance cancels recovery's reads) stops the client
    again before the error goes on: aiokafka's clients count as open from construction, and one
    collected unstopped is logged as an ERROR ("Unclosed AIOKafkaConsumer"), its connections left
    to the collector."""
    c: Any = client
    try:
        await c.start()
    except BaseException:
        with contextlib.suppress(Exception):  # the start's error is the one to raise
            await (c.stop() if hasattr(c, "stop") else c.close())  # the admin client has close()
        raise
    return client
