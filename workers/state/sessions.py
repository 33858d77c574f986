"""Decoded sessions, shared by the worker's ``Processor`` and the in-process ``LearnSession``.

:class:`Sessions` loads a session's keys through a :class:`StateAccess`, keeps the decoded
state in an LRU cache with a *byte* budget (a 3072-d session weighs as much as a hundred
384-d ones), builds the :class:`VerbContext` a verb runs in, and writes a session's changed
keys back in one batch. Both callers use it the same way, so a refused verb behaves the
same in both: verbs validate before they mutate, so the cached state is kept as it is.
"""
from __future__ import annotations

import functools
import random
from collections import OrderedDict
from collections.abc import Callable

from workers.state.access import StateAccess, state_key
from workers.state.blob import StateBlob
from workers.state.layout import SEP, SessionState, StoredRows, key_growth
from workers.state.limits import Limits
from workers.verbs.registry import BLOB_TABLES, Verb, VerbContext, VerbOptions

__all__ = ("Sessions", "CACHE_BYTES")


# Decoded sessions kept between batches, counted with their decoded arrays: a 384-d learning-loop
# session with a full replay buffer weighs ~112 kB with its replay rows in memory (its instant core's
# arena), ~14 kB without them. Over the budget, the least recently used sessions first leave their
# rows in the store (read back one by one when a feedback event replays them), then go altogether
# (read again on demand: a head get, and the pieces before the rows).
CACHE_BYTES = 512 * 1024 * 1024


class Sessions:
    """Session state by (table, session key): cached, loaded on demand, saved in one batch each.

    Between two :meth:`trim` calls nothing is evicted, so a session changed in a batch stays
    in memory until it was saved. Call :meth:`forget` on every rebalance: another worker may
    have changed a session while this one did not own it.
    """

    def __init__(self, access: StateAccess, *, cache_bytes: int = CACHE_BYTES, limits: Limits | None = None,
                 rng: random.Random | None = None, options: VerbOptions | None = None) -> None:
        self.access = access
        self.cache_bytes = cache_bytes
        self.limits = limits or Limits()
        self.rng = rng or random.Random()
        self.options = options or VerbOptions()  # handed to every verb as ctx.options
        # least recently used first; value: (state, bytes it was last counted at)
        self._cache: OrderedDict[tuple[str, str], tuple[SessionState, int]] = OrderedDict()
        self._bytes = 0
        self._forgotten: set[tuple[str, str]] = set()  # forgotten, but kept while their write is pending
        # sessions that may hold replay rows the store has too, least recently used first (trim thins
        # them), with their partition
        self._fat: OrderedDict[tuple[str, str], int] = OrderedDict()
        # since start: state() answered from the cache / read from the store and decoded; sessions trim()
        # evicted. Misses with evictions mean the working set does not fit cache_bytes.
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    # -- reading ---------------------------------------------------------------
    def state(self, table: str, sk: str, partition: int) -> SessionState:
        """The session's state (CorruptStateError when its stored keys cannot be read)."""
        key = (table, sk)
        hit = self._cache.get(key)
        if hit is not None and key in self._forgotten and not self.access.pending(table, self.access.base_key(*key)):
            self._forgotten.discard(key)  # kept through a rebalance only until its write was readable
            self.discard(table, sk)
            hit = None
        if hit is not None:
            self._cache.move_to_end(key)
            if key in self._fat:
                self._fat.move_to_end(key)
            self.hits += 1
            return hit[0]
        self.misses += 1
        s = self._decode(table, sk, partition)
        size = s.nbytes()
        self._cache[key] = (s, size)
        self._bytes += size
        return s

    def _decode(self, table: str, sk: str, partition: int) -> SessionState:
        base = self.access.base_key(table, sk)
        head = self.access.get(table, partition, base)
        if head is None:
            return SessionState()
        prefix = base + SEP
        n = len(prefix)
        keys, scans, parsed = SessionState.reads(head)
        items = [(k, v) for k in keys if (v := self.access.get(table, partition, prefix + k)) is not None]
        for name in scans:
            items.extend((k[n:], v) for k, v in self.access.scan(table, partition, prefix + name.encode() + SEP))
        return SessionState.decode(head, items, rows=self._rows(table, partition, base), parsed=parsed)

    def _rows(self, table: str, partition: int, base: bytes) -> Callable[[StateBlob, str], StoredRows]:
        """What reads the replay rows of a session's part that are left in the store (``StoredRows``)."""
        get = functools.partial(self.access.get, table, partition)
        return lambda blob, name: StoredRows(get, base, blob, name)

    def blob(self, table: str, sk: str, partition: int) -> StateBlob:
        return self.state(table, sk, partition).blob

    def peek(self, table: str, sk: str, partition: int) -> StateBlob:
        """The cached session, or the stored one decoded *without* caching it (reads: a value read
        while a partition recovers must never become the base of the next batch)."""
        hit = self._cache.get((table, sk))
        if hit is not None:
            return hit[0].blob
        return self._decode(table, sk, partition).blob

    def context(self, v: Verb, sk: str, partition: int, *, emit: Callable[[str, dict], None] | None = None,
                source: dict | None = None, blob: StateBlob | None = None, peek: bool = False) -> VerbContext:
        """The context ``v`` runs in for session ``sk`` (its table's state, the graph store, the rng).
        ``peek``: for reads, which leave the cache as it was."""
        get = self.peek if peek else self.blob
        if blob is None and v.table in BLOB_TABLES:
            blob = get(v.table, sk, partition)
        return VerbContext(session_key=sk, state=blob, store=self.access.graph_store(partition),
                           prefix=state_key("graph", sk), emit=emit or (lambda role, payload: None),
                           rng=self.rng, source=source, load=lambda table: get(table, sk, partition),
                           options=self.options)

    # -- writing ---------------------------------------------------------------
    def rewrite_all(self, table: str, sk: str) -> None:
        """The next save of this session writes every key, changed or not (see ``layout``)."""
        hit = self._cache.get((table, sk))
        if hit is not None:
            hit[0].full = True

    def prepare(self, table: str, sk: str) -> tuple:
        """The keys the session's next save writes, without writing them.

        Raises :class:`~workers.state.layout.StateTooLarge` (the state is dropped from the
        cache so the next read sees the stored one).
        """
        s, _ = self._cache[(table, sk)]
        try:
            return s.changes(self.access.base_key(table, sk), max_value_bytes=self.limits.max_value_bytes,
                             max_session_bytes=self.limits.max_session_bytes)
        except Exception:
            self.discard(table, sk)
            raise

    def save(self, table: str, sk: str, partition: int, prepared: tuple | None = None) -> tuple[int, int, int]:
        """Write the session's changed keys (``prepared`` by :meth:`prepare`, or now) in one batch;
        returns the keys written or deleted, their key + value bytes, and at least how many keys the
        store gained (``key_growth``). Raises like :meth:`prepare`."""
        key = (table, sk)
        s, counted = self._cache[key]
        base = self.access.base_key(table, sk)
        ops, after = prepared if prepared is not None else self.prepare(table, sk)
        grown = key_growth(s.stored, after, ops, s.headed)
        self.access.write(table, partition, base, ops)
        s.written(after)
        size = s.nbytes()
        self._cache[key] = (s, size)
        self._bytes += size - counted
        self._fat[key] = partition
        self._fat.move_to_end(key)
        return len(ops), sum(len(k) + (len(v) if v is not None else 0) for k, v in ops.items()), grown

    def discard(self, table: str, sk: str) -> None:
        """Drop the cached state: the next read decodes what the store holds."""
        hit = self._cache.pop((table, sk), None)
        if hit is not None:
            self._bytes -= hit[1]
        self._forgotten.discard((table, sk))
        self._fat.pop((table, sk), None)

    def forget(self) -> None:
        """Drop every cached session; one whose write is still pending is dropped once it is readable."""
        for table, sk in list(self._cache):
            if self.access.pending(table, self.access.base_key(table, sk)):
                self._forgotten.add((table, sk))
            else:
                self.discard(table, sk)

    def trim(self) -> None:
        """Fit the cache to its byte budget: least recently used sessions first leave the replay rows
        the store holds (``SessionState.thin``), then go (never the last one, never one whose write is
        still pending: the store does not have it yet)."""
        if self._bytes <= self.cache_bytes:
            return
        pending = []
        while self._bytes > self.cache_bytes and self._fat:
            key, partition = self._fat.popitem(last=False)
            base = self.access.base_key(*key)
            if self.access.pending(key[0], base):
                pending.append((key, partition))
                continue
            s, counted = self._cache[key]
            if s.thin(self._rows(key[0], partition, base)):
                size = s.nbytes()
                self._cache[key] = (s, size)
                self._bytes += size - counted
        for key, partition in reversed(pending):
            self._fat[key] = partition
            self._fat.move_to_end(key, last=False)
        if self._bytes <= self.cache_bytes:
            return
        kept = []  # pending writes: never evicted, put back as least recently used
        while self._bytes > self.cache_bytes and len(self._cache) > 1:
            key, entry = self._cache.popitem(last=False)  # oldest first, without copying every key
            if self.access.pending(key[0], self.access.base_key(*key)):
                kept.append((key, entry))
                if not self._cache:
                    break
            else:
                self._bytes -= entry[1]
                self._forgotten.discard(key)
                self._fat.pop(key, None)
                self.evictions += 1
        for key, entry in reversed(kept):
            self._cache[key] = entry
            self._cache.move_to_end(key, last=False)

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._cache)
