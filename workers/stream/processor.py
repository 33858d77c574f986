"""Applying a batch of records to session state: the whole per-event logic of a worker.

It knows nothing of faust: state comes through :class:`StateAccess`, so the same
code runs in the worker and in tests. Order per batch (the commit order the
worker relies on): decode + validate -> skip redeliveries (watermark) -> apply
verb -> collect downstream events and DLQ entries -> write each dirty session
value once (state and watermark together) -> the caller commits downstream
events, DLQ entries, the changelog records and the input offsets in one Kafka
transaction per partition (workers/stream/transactions.py), so a crash anywhere
redelivers what was not committed, and the watermark turns a redelivery of what
was into a no-op.

Single events of one session that a verb can coalesce (``Verb.many``) are checked
as they arrive and applied together when anything else for that session comes, or
at the end of the batch; each message still gets its own reply, DLQ entry,
watermark step and downstream events, exactly as alone (tests/unit/test_coalescing.py).
"""
from __future__ import annotations

import base64
import hashlib
import logging
import random
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from workers.verbs.codec import json_type
from workers.verbs.surface import (BLOB_TABLES, DEFAULT_SESSION, REGISTRY, Verb, VerbContext, VerbOptions,
                                   decode_json, envelope_error, envelope_ok, keys_table, run_verb, session_key_of,
                                   shown_verb)
from workers.errors import CorruptStateError, ValidationError, VerbError
from workers.state.access import StateAccess, StoreStateAccess
from workers.state.blob import StateBlob
from workers.state.layout import StateTooLarge
from workers.state.limits import Limits, check_request
from workers.state.sessions import CACHE_BYTES, Sessions
from workers.state import idempotency
from workers.stream.collector import collector_paused
from workers.stream.records import Produce, Record, record_id
from workers.kafka.topics import Topic, by_name

__all__ = ("StateAccess", "StoreStateAccess", "Processor", "BatchResult", "dlq_entry", "encoded", "DLQ_MAX_BYTES")

logger = logging.getLogger(__name__)

# A DLQ entry carries the original bytes (base64, 4/3 of them). Kafka's default message limit is
# ~1 MiB (and the producer's max_request_size 1,000,000 B), so an entry stays below 512 KiB: a
# bigger original keeps its first _DLQ_PREFIX_BYTES, its length and its sha256.
DLQ_MAX_BYTES = 512 * 1024
_DLQ_PREFIX_BYTES = 64 * 1024
_DLQ_REASON_CHARS = 2000
_DLQ_KEY_BYTES = 1024


@dataclass
class BatchResult:
    produce: list[Produce] = field(default_factory=list)
    replies: dict[tuple[str, int, int], dict] = field(default_factory=dict)  # (topic, partition, offset) -> envelope
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    # (topic, partition, outcome) -> messages, and events (an envelope is one message of many events); by
    # partition, since a partition whose transaction does not commit is applied again, and counted then
    messages: dict[tuple[str, int, str], int] = field(default_factory=dict)
    events: dict[tuple[str, int, str], int] = field(default_factory=dict)
    # events in a message other than 1 (an envelope's ``events``), by (topic, partition, offset)
    sizes: dict[tuple[str, int, int], int] = field(default_factory=dict)
    verb_seconds: list[tuple[str, float]] = field(default_factory=list)  # time in each verb (its kernels)
    dirty: dict[tuple[str, str], int] = field(default_factory=dict)      # (table, session) -> partition, unsaved
    # each dirty session's keys to write, prepared by apply() (sizes checked before anything is delivered)
    writes: dict[tuple[str, str], tuple] = field(default_factory=dict)
    state_bytes: int = 0  # keys and values written to the session tables (and so to their changelogs)
    state_writes: int = 0  # keys written or deleted
    key_growth: dict[tuple[str, int], int] = field(default_factory=dict)  # (table, partition) -> keys gained, at least


# Every reason_code a DLQ entry can carry (topics/dlq.yaml's enum: a test keeps them equal)
DLQ_REASONS = ("bad_json", "invalid", "oversized", "unknown_verb", "refused", "corrupt_state", "bad_key", "internal",
               "too_large", "wrong_partition")


def dlq_entry(rec: Record, reason: str, code: str) -> Produce:
    """The DLQ entry of ``rec``: always small enough to be produced (see DLQ_MAX_BYTES)."""
    if code not in DLQ_REASONS:
        raise ValueError(f"DLQ reason_code {code!r} is not one of {DLQ_REASONS}")
    if len(reason) > _DLQ_REASON_CHARS:
        reason = reason[:_DLQ_REASON_CHARS] + "..."
    value = rec.value
    entry = {
        "id": record_id(rec), "reason": reason, "reason_code": code, "source": rec.source,
        "key_b64": _b64(rec.key, _DLQ_PREFIX_BYTES), "value_b64": _b64(value, None),
        "ts_ms": int(time.time() * 1000),
    }
    if value is not None and len(value) * 4 // 3 + len(entry["key_b64"] or "") + 4096 > DLQ_MAX_BYTES:
        entry.update(value_b64=_b64(value, _DLQ_PREFIX_BYTES), truncated=True, value_bytes=len(value),
                     value_sha256=hashlib.sha256(value).hexdigest())
    return Produce("dlq", _dlq_key(rec), entry)


def encoded(p: Produce, limit: int) -> tuple[Produce, bytes]:
    """``p`` and its JSON bytes; or, when it would be over the producer's request limit ``limit``,
    a DLQ entry in its place (``oversized``, its reason naming the event's topic role, size and
    sha256; the source record's id and position) and that entry's bytes. A downstream event derived from a near-limit input (a fine-tune candidate's content, say)
    would otherwise fail its send, and with it the batch, on every retry."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    value = orjson.dumps(p.value)
    key = p.key.encode()
    if DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, []) <= limit:
        return p, value
    logger.error("%s event %s of %d bytes is over the producer's limit (%d bytes): dead-lettered instead",
                 p.role, p.value.get("id"), len(value), limit)
    # value_b64 null: the input was applied; its bytes stay in its topic at ``source``
    entry = {"id": p.value.get("id"), "reason_code": "oversized", "source": p.value.get("source"),
             "reason": f"its {p.role} event of {len(value)} bytes (sha256 {hashlib.sha256(value).hexdigest()}) is "
                       f"over the producer's limit ({limit} bytes); it was not produced",
             "key_b64": _b64(key[:_DLQ_KEY_BYTES], None), "value_b64": None, "ts_ms": int(time.time() * 1000)}
    dead = Produce("dlq", p.key if len(key) <= _DLQ_KEY_BYTES else "sha256:" + hashlib.sha256(key).hexdigest(),
                   entry)
    return dead, orjson.dumps(entry)


def _dlq_key(rec: Record) -> str:
    """The DLQ record's key: the message key, or its hash when it is too long to be a record key
    beside the entry (a key near the broker's message limit would make the DLQ record too big to be
    produced, and its transaction would fail on every retry). The entry's ``key_b64`` keeps its prefix."""
    key = _key_str(rec)
    if key is None:
        return "default"
    if len(rec.key) > _DLQ_KEY_BYTES:
        return "sha256:" + hashlib.sha256(rec.key).hexdigest()
    return key


def _b64(data: bytes | None, limit: int | None) -> str | None:
    if data is None:
        return None
    return base64.b64encode(data if limit is None else data[:limit]).decode()


def _key_str(rec: Record) -> str | None:
    if rec.key is None:
        return None
    try:
        return rec.key.decode()
    except UnicodeDecodeError:
        return None


class _Reject(Exception):
    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason, self.code = reason, code


class _Failed(Exception):
    """Applying a record raised: the batch is applied again without it (see Processor.process)."""

    def __init__(self, keys: list[tuple[str, int, int]], reason: str) -> None:
        super().__init__(reason)
        self.keys, self.reason = keys, reason


def _last_line(exc: BaseException) -> str:
    """The last line of a traceback: ``OverflowError: Python int too large to convert to C long``."""
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def _where(rec: Record) -> tuple[str, int, int]:
    return (rec.topic, rec.partition, rec.offset)


class _Sources(Sequence):
    """The records' ``source`` dicts, built only for the few a verb uses (downstream events)."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        return self.records[i].source


@dataclass
class _Run:
    """Consecutive messages of one session waiting for one coalesced call (``Verb.many``)."""

    verb: Verb
    sk: str
    partition: int
    blob: StateBlob
    ctx: VerbContext
    records: list[Record] = field(default_factory=list)
    items: list = field(default_factory=list)    # what ``verb.prepare`` made of each body
    last: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> last offset

    def add(self, rec: Record, item: object) -> None:
        self.records.append(rec)
        self.items.append(item)
        topic, partition, offset = rec.mark
        self.last[(topic, partition)] = offset

    def holds(self, rec: Record) -> bool:
        topic, partition, offset = rec.mark
        return offset <= self.last.get((topic, partition), -1)


class Processor:
    """Applies batches of records; keeps decoded session blobs cached between batches.

    Call :meth:`forget` on every rebalance: another worker may have changed a
    session while this one did not own it.
    """

    def __init__(self, state: StateAccess, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time, cache_bytes: int = CACHE_BYTES,
                 limits: Limits | None = None, options: VerbOptions | None = None) -> None:
        self.state = state
        self.sessions = Sessions(state, cache_bytes=cache_bytes, limits=limits, rng=rng, options=options)
        self.rng = self.sessions.rng
        self.clock = clock
        self._topics: dict[str, Topic] = {}
        self._grew: dict[tuple[str, str], list[Record]] = {}  # records applied to each session in this batch

    def forget(self) -> None:
        self.sessions.forget()

    def _topic(self, name: str) -> Topic:
        t = self._topics.get(name)
        if t is None:
            t = self._topics[name] = by_name(name)
        return t

    def _blob(self, table: str, sk: str, partition: int) -> StateBlob:
        return self.sessions.blob(table, sk, partition)

    def _context(self, v: Verb, sk: str, partition: int, blob: StateBlob | None,
                 emit: Callable[[str, dict], None] | None = None, source: dict | None = None) -> VerbContext:
        return self.sessions.context(v, sk, partition, emit=emit, source=source, blob=blob)

    def read(self, v: Verb, body: dict, sk: str, partition: int) -> dict:
        """Answer a read verb from the current state (the cached session when there is one).

        A read never adds to the cache: only batches do, so a value read while the partition was
        still recovering (or owned elsewhere) cannot become the base of the next batch.
        """
        return run_verb(v, self.sessions.context(v, sk, partition, peek=True), body)

    def _resolve(self, rec: Record) -> tuple[Verb, dict, str]:
        """(verb, body, session_key) of a record, or _Reject."""
        try:
            value = decode_json(rec.value)
        except ValidationError as exc:
            code = "oversized" if "exceeds" in exc.rule else "bad_json"
            raise _Reject(exc.reason, code) from None
        if not isinstance(value, dict):
            raise _Reject(f"value must be a JSON object, got {json_type(value)}", "invalid")
        try:
            name, body = self._topic(rec.topic).request(value)
        except ValueError as exc:
            raise _Reject(str(exc), "invalid") from None
        v = REGISTRY.get(name)
        if v is None:
            raise _Reject(f"unknown verb: {shown_verb(name)}", "unknown_verb")
        if not v.writes:
            raise _Reject(f"verb {name} is a read; send reads to HTTP /dispatch", "invalid")
        try:
            check_request(name, body, self.sessions.limits)
        except VerbError as exc:
            raise _Reject(str(exc), "invalid") from None
        key = _key_str(rec)
        if key is None:
            # Partitioning is by key: without one (or with one we cannot read) nothing says this
            # partition owns the session, and applying it here could split the session's state.
            what = "missing" if rec.key is None else "not UTF-8"
            raise _Reject(f"message key {what}: it must be the session_key (UTF-8)", "bad_key")
        try:
            sk = session_key_of(body, key)
        except VerbError as exc:
            raise _Reject(str(exc), "invalid") from None
        if sk != key:
            # Partitioning is by key: state for sk lives elsewhere, applying here would split it.
            raise _Reject(f"session_key {sk!r} does not match the message key {key!r}", "invalid")
        return v, body, sk

    def process(self, records: list[Record]) -> BatchResult:
        """Apply a batch and write every session value it changed (:meth:`apply` + :meth:`save`), the
        collector paused meanwhile (``workers.stream.collector``; the worker pauses it around its
        whole batch, commit included)."""
        with collector_paused():
            res = self.apply(records)
            self.save(res)
        return res

    def apply(self, records: list[Record]) -> BatchResult:
        """Apply a batch to the cached session values; nothing is written until :meth:`save`.

        An exception while applying one record (a bug, a kernel's ``OverflowError``, anything)
        sends that record to the DLQ (reason ``internal``, the exception's last traceback line)
        and the rest of the batch is applied. Nothing was written yet, so the batch is simply
        applied again from the stored values without that record: a half-applied record leaves
        no trace. A coalesced run that raises is applied again one record at a time, which pins
        the failure on one record.
        """
        failed: dict[tuple[str, int, int], str] = {}
        alone: set[tuple[str, int, int]] = set()
        while True:
            self._grew.clear()
            try:
                res = self._apply(records, failed, alone)
            except _Failed as f:
                # drops this attempt's unsaved changes: the previous batch's writes are durable
                # (Runtime.handle awaits them), so every cached session can be read again
                self.sessions.forget()
                if len(f.keys) == 1:
                    failed[f.keys[0]] = f.reason
                    logger.warning("%s:%d:%d failed and goes to the DLQ: %s", *f.keys[0], f.reason)
                else:
                    alone.update(f.keys)
                continue
            self._prepare(res)
            return res

    def _prepare(self, res: BatchResult) -> None:
        """Cut each changed session into the keys to write; a session over its size limit is not
        written and its records of this batch go to the DLQ (``too_large``) before anything is
        delivered, so none of their downstream events leave."""
        for (table, sk) in list(res.dirty):
            try:
                res.writes[(table, sk)] = self.sessions.prepare(table, sk)
            except StateTooLarge as exc:
                del res.dirty[(table, sk)]
                self._too_large(self._grew.get((table, sk), []), str(exc), res)
        self._grew.clear()

    def save(self, res: BatchResult) -> None:
        """Write each session :meth:`apply` changed, its keys and watermark in one batch."""
        for (table, sk), partition in res.dirty.items():
            keys, nbytes, grown = self.sessions.save(table, sk, partition, res.writes.get((table, sk)))
            res.state_writes += keys
            res.state_bytes += nbytes
            res.key_growth[(table, partition)] = res.key_growth.get((table, partition), 0) + grown
        res.dirty.clear()
        res.writes.clear()
        self.sessions.trim()  # only now: a changed session must not be dropped before it was saved

    def _too_large(self, records: list[Record], reason: str, res: BatchResult) -> None:
        """The session's changes could not be written: its records of this batch were not applied."""
        ids = {record_id(rec) for rec in records}

        def caused(p: Produce) -> bool:  # a downstream id is "<topic>:<partition>:<offset>[:n]"
            i = p.value.get("id", "")
            return i in ids or i.rsplit(":", 1)[0] in ids

        res.produce = [p for p in res.produce if p.role == "dlq" or not caused(p)]
        for rec in records:
            where = (rec.topic, rec.partition, rec.offset)
            res.produce.append(dlq_entry(rec, reason, "too_large"))
            res.replies[where] = envelope_error(res.replies.get(where, {}).get("verb", "?"), reason)
            res.applied -= 1
            res.rejected += 1
            n = res.sizes.get(where, 1)
            res.messages[(rec.topic, rec.partition, "applied")] -= 1
            res.events[(rec.topic, rec.partition, "applied")] -= n
            self._count(res, rec, "too_large")

    def _apply(self, records: list[Record], failed: dict[tuple[str, int, int], str],
               alone: set[tuple[str, int, int]]) -> BatchResult:
        res = BatchResult()
        dirty = res.dirty
        # Runs of messages a coalesced verb can apply in one call, per session. Sessions are
        # independent, so only the order within a session matters: anything else for that
        # session applies its pending run first.
        runs: dict[str, _Run] = {}
        for rec in records:
            where = _where(rec)
            try:
                v, body, sk = self._resolve(rec)
            except _Reject as r:
                pending = runs.pop(_key_str(rec) or DEFAULT_SESSION, None)
                if pending is not None:  # keeps the session's DLQ entries in offset order
                    self._apply_run(pending, res, dirty)
                self._count(res, rec, self._reject(rec, r, res))
                continue
            except Exception as exc:  # noqa: BLE001 - isolated: this record goes to the DLQ
                if where in failed:
                    self._count(res, rec, self._internal(rec, None, failed[where], res, dirty))
                    continue
                raise _Failed([where], _last_line(exc)) from exc
            events = body.get(v.envelope) if v.envelope is not None else None
            if isinstance(events, list) and len(events) != 1:  # an envelope: its events count, not 1
                res.sizes[(rec.topic, rec.partition, rec.offset)] = len(events)
            if where in failed:
                run = runs.pop(sk, None)
                if run is not None:
                    self._apply_run(run, res, dirty)
                self._count(res, rec, self._internal(rec, (v, sk), failed[where], res, dirty))
                continue
            try:
                if v.many is not None and where not in alone and idempotency.FIELD not in body and v.joins(body):
                    self._join(runs, rec, v, body, sk, res, dirty)
                    continue
                run = runs.pop(sk, None)
                if run is not None:
                    self._apply_run(run, res, dirty)
                self._count(res, rec, self._apply_one(rec, v, body, sk, res, dirty))
            except _Failed:
                raise
            except Exception as exc:  # noqa: BLE001 - isolated: this record goes to the DLQ
                raise _Failed([where], _last_line(exc)) from exc
        for run in runs.values():
            self._apply_run(run, res, dirty)
        return res

    def _internal(self, rec: Record, resolved: tuple[Verb, str] | None, reason: str, res: BatchResult,
                  dirty: dict[tuple[str, str], int]) -> str:
        """Dead-letter a record whose application raised; its watermark moves past it when possible."""
        res.produce.append(dlq_entry(rec, reason, "internal"))
        res.replies[_where(rec)] = {"ok": False, "verb": resolved[0].name if resolved else "?", "error": reason}
        res.rejected += 1
        if resolved is not None and resolved[0].table in BLOB_TABLES:
            v, sk = resolved
            try:
                blob = self._blob(v.table, sk, rec.partition)
            except Exception:  # noqa: BLE001 - the stored value is unusable: nothing to advance
                return "rejected"
            blob.watermark.advance(rec.topic, rec.partition, rec.offset)  # a redelivery is not dead-lettered twice
            dirty[(v.table, sk)] = rec.partition
        return "rejected"

    def _join(self, runs: dict[str, _Run], rec: Record, v: Verb, body: dict, sk: str, res: BatchResult,
              dirty: dict[tuple[str, str], int]) -> None:
        """Check ``rec`` on arrival and add it to its session's pending run (a new one if needed)."""
        run = runs.get(sk)
        if run is not None and (run.verb is not v or run.partition != rec.partition):
            self._apply_run(runs.pop(sk), res, dirty)
            run = None
        blob = self._blob_for(rec, v, sk, res, dirty)
        if isinstance(blob, str):
            self._count(res, rec, blob)
            return
        if run is None:
            run = runs[sk] = _Run(v, sk, rec.partition, blob, self._context(v, sk, rec.partition, blob))
        elif run.holds(rec):  # redelivered within the batch: not yet in the watermark
            res.duplicates += 1
            self._count(res, rec, "duplicate")
            return
        try:
            item = v.prepare(run.ctx, body)
        except (VerbError, ValidationError) as exc:  # refused alone; nothing changed
            out = envelope_error(v.name, str(exc))
            self._count(res, rec, self._settle(rec, v, sk, blob, out, [], res, dirty))
            return
        except Exception as exc:  # noqa: BLE001 - isolated (see apply)
            raise _Failed([_where(rec)], _last_line(exc)) from exc
        run.add(rec, item)

    def _refusal_code(self, rec: Record) -> str:
        """``invalid`` when the event breaks its topic's schema (a wrong type, a missing field), else
        ``refused`` (well-formed, but the verb refuses it in this state). Only on the error path."""
        try:
            self._topic(rec.topic).validate(decode_json(rec.value))
        except ValidationError:
            return "invalid"
        return "refused"

    @staticmethod
    def _count(res: BatchResult, rec: Record, outcome: str) -> None:
        k = (rec.topic, rec.partition, outcome)
        res.messages[k] = res.messages.get(k, 0) + 1
        n = res.sizes.get((rec.topic, rec.partition, rec.offset), 1) if res.sizes else 1
        res.events[k] = res.events.get(k, 0) + n

    @staticmethod
    def _reject(rec: Record, r: _Reject, res: BatchResult) -> str:
        res.produce.append(dlq_entry(rec, r.reason, r.code))
        res.replies[(rec.topic, rec.partition, rec.offset)] = {"ok": False, "verb": "?", "error": r.reason}
        res.rejected += 1
        return "rejected"

    def _blob_for(self, rec: Record, v: Verb, sk: str, res: BatchResult,
                  dirty: dict[tuple[str, str], int]) -> StateBlob | str:
        """The session value ``rec`` applies to, or the record's outcome when it must not be applied."""
        try:
            blob = self._blob(v.table, sk, rec.partition)
        except CorruptStateError as exc:
            res.produce.append(dlq_entry(rec, f"stored state unusable: {exc}", "corrupt_state"))
            res.rejected += 1
            return "rejected"
        if blob.watermark.seen(*rec.mark):
            # Re-write every key anyway: after a crash the local RocksDB can be ahead of the
            # changelog, and this redelivery is the only chance to get that state into it.
            self.sessions.rewrite_all(v.table, sk)
            dirty[(v.table, sk)] = rec.partition
            res.duplicates += 1
            return "duplicate"
        return blob

    def _apply_one(self, rec: Record, v: Verb, body: dict, sk: str, res: BatchResult,
                   dirty: dict[tuple[str, str], int]) -> str:
        blob: StateBlob | None = None
        if v.table in BLOB_TABLES:
            got = self._blob_for(rec, v, sk, res, dirty)
            if isinstance(got, str):
                return got
            blob = got
        print_ = again = None
        # where the write's idempotency key is kept: its own session value, or the session table's for a
        # graph write (keys_table)
        keys_at = keys_table(v.table)
        keys = blob
        try:
            key, body = idempotency.take_key(body)
            if key is not None and keys_at is not None:
                if keys_at != v.table:
                    try:
                        keys = self._blob(keys_at, sk, rec.partition)
                    except CorruptStateError as exc:
                        res.produce.append(dlq_entry(rec, f"stored state unusable: {exc}", "corrupt_state"))
                        res.rejected += 1
                        return "rejected"
                print_, again = idempotency.retried(keys, key, v.name, body)
        except VerbError as exc:  # a malformed key, or one already used for another write
            return self._settle(rec, v, sk, blob, envelope_error(v.name, str(exc)), [], res, dirty)
        if again is not None:  # a client's retry of a write this session value already holds
            res.replies[(rec.topic, rec.partition, rec.offset)] = again
            if blob is not None:
                blob.watermark.advance(*rec.mark)
                dirty[(v.table, sk)] = rec.partition
            res.duplicates += 1
            return "duplicate"
        emitted: list[tuple[str, dict]] = []
        ctx = self._context(v, sk, rec.partition, blob, lambda role, p: emitted.append((role, p)), rec.source)
        t0 = time.perf_counter()
        out = run_verb(v, ctx, body)
        res.verb_seconds.append((v.name, time.perf_counter() - t0))
        if key is not None and keys is not None and out["ok"]:
            # same value, same table write as the state change and the watermark: all or nothing (a graph
            # write's key: the session table's value, produced in the same transaction as the graph's keys).
            # A refusal is not kept: it changed nothing, and the client's corrected write may reuse the key
            idempotency.remember(keys, key, {**out, "id": record_id(rec)}, print_)
            if keys_at != v.table:
                dirty[(keys_at, sk)] = rec.partition
        return self._settle(rec, v, sk, blob, out, emitted, res, dirty)

    def _apply_run(self, run: _Run, res: BatchResult, dirty: dict[tuple[str, str], int]) -> None:
        v = run.verb
        if not run.records:  # every message of the run was refused as it arrived
            return
        t0 = time.perf_counter()
        try:
            each = v.many(run.ctx, run.items, _Sources(run.records))
            res.verb_seconds.append((v.name, time.perf_counter() - t0))
            for rec, e in zip(run.records, each, strict=True):
                self._count(res, rec, self._settle(rec, v, run.sk, run.blob, envelope_ok(v.name, e.data),
                                                   e.emitted, res, dirty))
        except Exception as exc:  # noqa: BLE001 - isolated (see apply): retried one record at a time
            raise _Failed([_where(r) for r in run.records], _last_line(exc)) from exc

    def _settle(self, rec: Record, v: Verb, sk: str, blob: StateBlob | None, out: dict, emitted: list[tuple[str, dict]],
                res: BatchResult, dirty: dict[tuple[str, str], int]) -> str:
        """Record one applied message: its reply, watermark, DLQ entry or downstream events."""
        res.replies[(rec.topic, rec.partition, rec.offset)] = out
        if blob is not None:
            # A refused verb changed nothing (verbs validate before they mutate; tested per verb),
            # so the watermark may advance past it: a redelivery must not DLQ it twice.
            blob.watermark.advance(*rec.mark)
            dirty[(v.table, sk)] = rec.partition
        if not out["ok"]:
            res.produce.append(dlq_entry(rec, out["error"], self._refusal_code(rec)))
            res.rejected += 1
            return "rejected"
        now_ms = int(self.clock() * 1000) if emitted else 0
        if blob is not None:
            self._grew.setdefault((v.table, sk), []).append(rec)
        for n, (role, payload) in enumerate(emitted):
            value = {"id": record_id(rec, n), "session_key": sk, "ts_ms": now_ms, "source": rec.source, **payload}
            value["id"] = record_id(rec, n)  # the deterministic id wins over any payload field
            res.produce.append(Produce(role, sk, value))
        res.applied += 1
        return "applied"
