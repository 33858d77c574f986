"""In-process verbs: :class:`LearnSession` runs the verb surface over a :class:`ModelStore`, in memory
or on disk (rocksdict), with the worker's own session cache and context builder."""
from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from workers import _kernels
from workers.errors import VerbError
from workers.state import MemoryStore, ModelStore, RocksDictStore, StateBlob, idempotency
from workers.state.access import StoreStateAccess, state_key
from workers.state.layout import SEP, SessionState, StateTooLarge
from workers.state.limits import Limits, check_request
from workers.state.sessions import Sessions
from workers.verbs.codec import has_non_finite, json_default, loads
from workers.verbs.surface import (BLOB_TABLES, REGISTRY, Verb, VerbContext, VerbOptions, envelope_error,
                                   keys_table, parse_request, run_verb, session_key_of)

__all__ = ("LearnSession",)


def _as_json(body: dict) -> tuple[dict, str | None]:
    """``body`` as a worker would receive it, or why it is not JSON.

    What arrives over HTTP or a topic was JSON. A Python dict may hold NumPy values (an embedding as an
    array, a ``np.int64`` dim): they become what JSON carries for them (lists, floats, ints), so a verb
    answers them as it answers the same request from a worker. It may also hold what JSON cannot, such
    as a lone surrogate (text decoded with ``errors="surrogateescape"``), which a verb would only meet
    once it encoded a key or stored the string, after the session changed: that is refused. orjson
    (fast; a body of plain JSON values costs one ``dumps``) also refuses integers beyond 64 bits, which
    are JSON (the verbs refuse them by range): only what the standard library cannot write is refused."""
    try:
        orjson.dumps(_numbers_elided(body))
        return body, None
    except orjson.JSONEncodeError:
        pass
    if not has_non_finite(body):  # orjson writes NaN and infinities as null: a verb would read them as absent
        try:
            return orjson.loads(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)), None
        except orjson.JSONEncodeError:
            pass
    try:
        text = json.dumps(body, ensure_ascii=False, default=json_default)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        return body, str(exc)
    return json.loads(text), None


def _numbers_elided(value: Any, depth: int = 4) -> Any:
    """``value`` with each array of plain numbers (``_kernels.json_number_list``) in its first ``depth``
    levels (a body, an envelope's events, an event, its arrays) replaced by a 0: ``orjson.dumps`` of it
    fails exactly when it fails for ``value``, without writing out every number of an embedding (~11 µs
    for 384 floats, against ~0.3 µs for the check)."""
    if depth == 0:
        return value
    if type(value) is dict:
        return {k: _numbers_elided(v, depth - 1) for k, v in value.items()}
    if type(value) is list:
        return 0 if _kernels.json_number_list(value) else [_numbers_elided(v, depth - 1) for v in value]
    return value


class LearnSession:
    """Every verb, in process. ``LearnSession()`` keeps state in memory;
    ``LearnSession(path=...)`` keeps it in a RocksDB database that survives restarts.

    >>> s = LearnSession()
    >>> s.dispatch({"verb": "nope"})["error"]
    'unknown verb: nope'
    """

    def __init__(self, path: str | Path | None = None, *, store: ModelStore | None = None,
                 rng: random.Random | None = None,
                 emit: Callable[[str, dict], None] | None = None, cache_bytes: int | None = None,
                 limits: Limits | None = None, options: VerbOptions | None = None) -> None:
        self.store: ModelStore = store if store is not None else (
            RocksDictStore(path) if path is not None else MemoryStore())
        self.rng = rng or random.Random()
        self.emitted: list[tuple[str, dict]] = []  # downstream events, for inspection
        self._emit_cb = emit
        # the worker's session cache and context builder, over this store as one partition
        self.sessions = Sessions(StoreStateAccess(self.store), rng=self.rng, limits=limits, options=options,
                                 **({"cache_bytes": cache_bytes} if cache_bytes is not None else {}))

    def _emit(self, role: str, payload: dict) -> None:
        self.emitted.append((role, payload))
        if self._emit_cb is not None:
            self._emit_cb(role, payload)

    def blob(self, table: str, session_key: str) -> StateBlob:
        return self.sessions.blob(table, session_key, 0)

    def value(self, table: str, session_key: str) -> bytes | None:
        """The session's state as stored, read afresh and joined into one value (the one-value
        format, ``StateBlob.to_bytes``: comparable bytes for tests and tools), or None."""
        base = state_key(table, session_key)
        head = self.store.get(base)
        if head is None:
            return None
        n = len(base) + 1
        return SessionState.decode(head, ((k[n:], v) for k, v in self.store.iter_prefix(base + SEP))).blob.to_bytes()

    def context(self, v: Verb, session_key: str) -> VerbContext:
        return self.sessions.context(v, session_key, 0, emit=self._emit)

    def dispatch(self, request: Any) -> dict:
        parsed = parse_request(request)
        if isinstance(parsed, dict):
            return parsed
        name, body = parsed
        v = REGISTRY[name]
        body, refused = _as_json(body)
        if refused is not None:
            return envelope_error(name, f"parse: the body is not JSON ({refused})")
        key = None
        try:
            sk = session_key_of(body)
            if v.writes:
                check_request(name, body, self.sessions.limits)
                key, body = idempotency.take_key(body)
        except VerbError as exc:
            return envelope_error(name, str(exc))
        # As in the worker (Processor._apply_one): a write that carries an idempotency key the session
        # already applied is answered with the first reply; the key and its reply are kept with the state
        keys_at = keys_table(v.table)  # its own value, or the session table's for a graph write
        blob = self.sessions.blob(keys_at, sk, 0) if key is not None and keys_at is not None else None
        print_ = None
        if blob is not None:
            try:
                print_, again = idempotency.retried(blob, key, name, body)
            except VerbError as exc:  # the key was used for another write
                return envelope_error(name, str(exc))
            if again is not None:
                return again
        out = run_verb(v, self.context(v, sk), body)
        if blob is not None and out["ok"]:  # a refusal changed nothing: not kept (as in the worker)
            idempotency.remember(blob, key, out, print_)
        # As in the worker: a refused verb changed nothing (verbs validate before they mutate),
        # so the cached state is kept as it is, and only an applied one (with its key) is written.
        saves = [v.table] if v.writes and v.table in BLOB_TABLES and out["ok"] else []
        if blob is not None and keys_at != v.table and out["ok"]:
            saves.append(keys_at)
        try:
            for table in saves:
                self.sessions.save(table, sk, 0)
        except StateTooLarge as exc:  # not written; the cache now reads the stored state again
            out = envelope_error(name, str(exc))
        self.sessions.trim()
        return out

    def dispatch_json(self, line: str | bytes) -> str:
        try:
            request = loads(line)  # 1e400 is an infinity, as a worker reads it
        except ValueError as exc:
            return orjson.dumps(envelope_error("?", f"parse: {exc}")).decode()
        return orjson.dumps(self.dispatch(request), option=orjson.OPT_SERIALIZE_NUMPY).decode()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> LearnSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
