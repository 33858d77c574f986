"""Batches that close when the stream goes quiet: big under load, prompt when idle.

faust's ``take_events(max_, within)`` closes a batch only when it is full or ``within``
has passed. With a short window, a busy worker writes every session it touched
(~115 kB at 384-d) many times a second. With a long one, a lone HTTP write waits
the whole window. ``take_batches`` adds a *linger*: the batch also closes once no
event arrived for ``linger`` seconds. An idle worker applies a lone event after
``linger``. Under load events keep arriving, and the batch grows to ``within`` or
``max_``; a batch that opens while the previous one was cut that way lingers 4x longer,
so a pause between two fetches does not cut it short (bench/README.md, "feedback").

While the caller applies a batch (and waits on the broker to commit it), events keep
gathering for the next one, up to ``max_`` in all: the per-batch commit overlaps with the
stream's per-event work instead of adding to it.

Acks work as in ``take_events``: nothing is acked before its batch was applied, and a
batch whose caller raised is not acked at all.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import faust
from faust.types import EventT

from workers.stream import faust_internals

__all__ = ("LearnStream", "BUSY_LINGER_FACTOR")

# Under load a batch waits this many lingers for the next event (at most 20 ms by default): long
# enough to bridge two fetches, short enough for the last events of a burst.
BUSY_LINGER_FACTOR = 4


class LearnStream(faust.Stream):
    """faust's Stream plus :meth:`take_batches` (set as the app's ``Stream`` class)."""

    async def take_batches(self, max_: int, within: float, linger: float) -> AsyncIterator[list[EventT]]:
        """Yield lists of events: at most ``max_``, closed ``linger`` s after the last arrival or
        ``within`` s after the first, whichever comes first; acked after the caller's turn."""
        events: list[EventT] = []
        full = asyncio.Event()       # max_ events buffered
        arrived = asyncio.Event()    # the batch has its first event
        consumed = asyncio.Event()   # the caller finished with a batch (add waits on it when full)
        last_arrival = 0.0

        async def add(value: Any) -> Any:
            nonlocal last_arrival
            event = self.current_event
            if event is None:
                raise RuntimeError("take_batches: no current event")
            # Keeps gathering while the caller holds a batch (its apply and commit wait on the
            # broker): the next batch starts with what came meanwhile. At most max_ events in all.
            events.append(event)
            last_arrival = time.monotonic()
            arrived.set()
            if len(events) >= max_:
                full.set()
                consumed.clear()
                await self.wait(consumed)  # type: ignore[arg-type]  # never more than max_
            return value

        enable_acks = self.enable_acks
        self.enable_acks = False  # acked below, after the batch was applied
        self.add_processor(add)
        faust_internals.start_passive(self)
        busy = False        # the last batch was cut by max_ or within, not by a quiet gap
        closed = 0.0        # when the last batch was handed out
        try:
            while not self.should_stop:
                await self.wait_for_stopped(arrived)  # type: ignore[arg-type]  # idle: no timer runs
                opened = time.monotonic()
                # Under load (events were waiting as the last batch closed), a short pause between
                # two fetches must not cut the batch: it lingers BUSY_LINGER_FACTOR times longer.
                gap = linger * BUSY_LINGER_FACTOR if busy and opened - closed < linger else linger
                busy = True
                while not full.is_set() and not self.should_stop:
                    now = time.monotonic()
                    if now >= last_arrival + gap:
                        busy = False
                        break
                    deadline = min(opened + within, last_arrival + gap)
                    if now >= deadline:
                        break
                    await self.wait_for_stopped(full, timeout=deadline - now)  # type: ignore[arg-type]
                if not events:
                    arrived.clear()
                    continue
                batch = events[:max_]
                handled = False
                try:
                    yield batch
                    handled = True  # the caller asked for the next batch: this one was applied
                finally:
                    del events[:len(batch)]  # what arrived meanwhile stays for the next batch
                    if handled:  # a batch whose caller raised is never acked (it is read again)
                        for event in batch:
                            await self.ack(event)
                    if len(events) < max_:
                        full.clear()
                    if not events:
                        arrived.clear()
                    consumed.set()
                    closed = time.monotonic()
        finally:
            self.enable_acks = enable_acks
            faust_internals.remove_processor(self, add)
