"""The JSON verb surface ``{verb, body} -> {ok, verb, data|error}`` (spec: cores.md, Envelope).

:class:`LearnSession` runs verbs in process over a :class:`ModelStore`, in memory
or on disk (rocksdict). The worker runs the very same :func:`run_verb` on events
from topics, and HTTP ``/dispatch`` and ``learnstream dispatch`` speak this envelope.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from workers.errors import ValidationError, VerbError
from workers.state import MemoryStore, ModelStore, RocksDictStore, StateBlob
from workers.state.access import StoreStateAccess, state_key
from workers.state.layout import StateTooLarge
from workers.state.limits import Limits, check_request
from workers.state.sessions import Sessions
from workers.verbs import BLOB_TABLES, HEALTH, REGISTRY, Verb, VerbContext, params, verb

__all__ = ("LearnSession", "run_verb", "load_verbs", "state_key", "session_key_of", "check_session_key",
           "envelope_error", "envelope_ok")

logger = logging.getLogger(__name__)
DEFAULT_SESSION = "default"


def load_verbs() -> dict[str, Verb]:
    """Import every module that registers verbs (idempotent)."""
    import importlib

    for mod in ("workers.cores.instant", "workers.cores.deep", "workers.cores.loop", "workers.cores.temporal",
                "workers.cores.attention", "workers.cores.router", "workers.online.verbs",
                "workers.protocols.verbs", "workers.scoring.verbs"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name is None or not mod.startswith(exc.name):  # a real import error inside the module
                raise
    return REGISTRY


# The store separates key parts with \x1f: a session key holding it could read another session's keys.
_SESSION_KEY_MAX = 256
_CONTROL = re.compile("[\x00-\x1f]")


def check_session_key(sk: object) -> str:
    """A usable session key, or VerbError saying why not."""
    if not isinstance(sk, str) or not sk:
        raise VerbError("session_key must be a non-empty string")
    if len(sk) > _SESSION_KEY_MAX or _CONTROL.search(sk):
        raise VerbError(f"session_key must be at most {_SESSION_KEY_MAX} characters without control characters")
    return sk


def session_key_of(body: dict, default: str = DEFAULT_SESSION) -> str:
    return check_session_key(body.get("session_key", default))


def envelope_error(verb_name: str, error: str) -> dict:
    return {"ok": False, "verb": verb_name, "error": error}


def run_verb(v: Verb, ctx: VerbContext, body: dict) -> dict:
    """Run one verb; errors become the envelope's ``error`` (absent fields omitted)."""
    try:
        data = v.fn(ctx, body)
    except (VerbError, ValidationError) as exc:
        return envelope_error(v.name, str(exc))
    return envelope_ok(v.name, data)


def envelope_ok(verb_name: str, data: Any) -> dict:
    out = {"ok": True, "verb": verb_name}
    if data is not None:
        out["data"] = data
    return out


def parse_request(request: Any) -> tuple[str, dict] | dict:
    """(verb, body) or an error envelope."""
    if not isinstance(request, dict):
        return envelope_error("?", "parse: request must be a JSON object")
    name = request.get("verb")
    if not isinstance(name, str):
        return envelope_error("?", "parse: missing field `verb`")
    body = request.get("body")
    if not isinstance(body, dict):
        body = {}  # a missing body is null: every required field then reports "<field> required"
    if name not in REGISTRY:
        return envelope_error(name, f"unknown verb: {name}")
    return name, body


@verb("health", table="session", writes=False, params=params())
def _health(ctx: VerbContext, body: dict) -> dict:
    out: dict = {}
    for table, fn in HEALTH:
        state = ctx.state if table == "session" else ctx.load(table) if ctx.load else StateBlob()
        out.update(fn(dataclasses.replace(ctx, state=state)))
    return out


@verb("memory_info", table="memory", writes=False)
@verb("agent_info", table="agent", writes=False)
@verb("learner_info", table="learner", writes=False)
@verb("session_info", table="session", writes=False)
def _session_info(ctx: VerbContext, body: dict) -> dict:
    """What a session's state holds: parts with sizes and digests, the digest over all of the
    session's keys in key order, and the applied-offset watermark.

    Two workers (or a worker before and after a crash) hold the same state iff these are equal
    (``digest`` and ``parts`` leave the watermark out: an in-process session has none).
    ``session_info`` reads the learning-loop value; ``learner_info``, ``agent_info`` and ``memory_info``
    the online learner's, the agent protocols' and the memory scoring's.
    """
    import hashlib

    from workers.state.layout import digest

    blob = ctx.state
    parts = {}
    for name in blob.names():
        live = blob._live.get(name)
        b = live.to_bytes() if live is not None else blob._raw[name]  # canonical bytes, decoded or not
        parts[name] = {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
    sha, n = digest(blob)
    return {"parts": parts, "digest": sha, "keys": n, "watermark": dict(sorted(blob.watermark.offsets.items()))}


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
                 limits: Limits | None = None) -> None:
        load_verbs()
        self.store: ModelStore = store if store is not None else (
            RocksDictStore(path) if path is not None else MemoryStore())
        self.rng = rng or random.Random()
        self.emitted: list[tuple[str, dict]] = []  # downstream events, for inspection
        self._emit_cb = emit
        # the worker's session cache and context builder, over this store as one partition
        self.sessions = Sessions(StoreStateAccess(self.store), rng=self.rng, limits=limits,
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
        from workers.state.layout import SEP, SessionState

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
        try:
            sk = session_key_of(body)
            if v.writes:
                check_request(name, body, self.sessions.limits)
        except VerbError as exc:
            return envelope_error(name, str(exc))
        out = run_verb(v, self.context(v, sk), body)
        # As in the worker: a refused verb changed nothing (verbs validate before they mutate),
        # so the cached state is kept as it is, and only an applied one is written.
        if v.writes and v.table in BLOB_TABLES and out["ok"]:
            try:
                self.sessions.save(v.table, sk, 0)
            except StateTooLarge as exc:  # not written; the cache now reads the stored state again
                out = envelope_error(name, str(exc))
        self.sessions.trim()
        return out

    def dispatch_json(self, line: str | bytes) -> str:
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return orjson.dumps(envelope_error("?", f"parse: {exc}")).decode()
        return orjson.dumps(self.dispatch(request), option=orjson.OPT_SERIALIZE_NUMPY).decode()

    def close(self) -> None:
        self.store.close()
