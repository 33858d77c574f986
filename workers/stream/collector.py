"""The worker's use of CPython's cyclic garbage collector.

Learnstream's state makes no reference cycles on the hot path (a session replaced in the cache is
freed by reference counting), so the collector's work is mostly *scanning* live containers:

- :func:`tune_collector` (at worker start) freezes the imports and the app, and collects the young
  generation every :data:`GC_GEN0_THRESHOLD` allocations instead of every 700.
- :func:`collector_paused` keeps it from running inside a batch. A batch builds transient containers
  per session it touches (its run of messages, the verb's context, the prepared writes, the replies)
  that all die when the batch ends. A collection in the middle of a batch scanned them and promoted
  them to the older generations, where the next collections scanned them again: at 10,000 sessions
  (a batch of 1,000 one-event messages is 1,000 sessions) that was ~10% of the batch's time
  (bench/README.md "state", thirty-third session). Paused, they are freed by reference counting
  before the collector looks; the allocation count it triggers on drops with them, so the next
  collection comes only when containers really accumulate (cyclic garbage, growing state).
"""
from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ("GC_GEN0_THRESHOLD", "tune_collector", "collector_paused")

# Net allocations between two young-generation collections (CPython's default: 700); see tune_collector.
GC_GEN0_THRESHOLD = 100_000


def tune_collector() -> tuple[int, int, int]:
    """The worker's garbage-collector settings (also what ``bench feedback``'s in-process row runs with);
    returns the thresholds it replaced (``gc.unfreeze`` and ``gc.set_threshold`` undo it)."""
    # faust's RocksDB store runs gc.collect() for every table on every rebalance (Store.revoke_partitions),
    # each a walk over the ~90k objects of the imports and the app (~80 ms on a loaded box). They live
    # as long as the process: out of the collector's generations, those walks cost nothing.
    gc.freeze()
    # Decoded sessions are thousands of long-lived containers: with the default threshold (700
    # allocations) the young generation is collected every few events and each older collection walks
    # them all. 10,000 sessions in process: 403 -> 283 us per event (275 with no collector at all).
    # A session touch leaves ~13 new containers in the cache and frees the ~13 its previous touch left,
    # so the count (allocations minus deallocations) grows slowly and a rare collection finds most of
    # them already gone; at 10,000 (threshold 10,000) each young collection walked ~25,000 cold ones
    # instead: 22 us per event in the 10,000-session worker, 4.5 at 100,000 (bench/README.md "state").
    old = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, *old[1:])
    return old


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic collection inside (module doc); the collector is enabled again on leaving only if
    it was enabled on entering, so pauses nest and a caller that disabled it keeps it disabled.
    ``gc.collect()`` called inside still collects."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
