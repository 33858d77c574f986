"""Client idempotency keys: a write retried after a timeout is applied once.

A write may carry ``idempotency_key`` in its body (the MCP server and the SDK's
write-and-wait methods always send one). When the worker applies it, the key and the
reply (with the id ``topic:partition:offset`` of the message that was applied) are
kept in the session's value, in the same table write as the state change and the
watermark (``LearnSession`` keeps them the same way; its replies have no id). A later
message with the same key - the client's retry after a timeout, or after the worker
was killed before it could answer - is not applied again: it is answered with the
first reply. Because the key lives in the session value, it survives
a worker restart and moves with the partition to another worker; and because the retry
travels through the same partition as the original, it is always applied after it.
A graph write's key is kept in the session's value in the ``session`` table (the graph has no
session value: ``workers.verbs.registry.keys_table``), which the worker produces in the same
transaction as the graph's keys. A refused write is not kept: it changed nothing, so a client
that fixes its request and sends it again under the same key has it applied (a refusal kept under
the key locked that out), and the same bad request sent again is refused again.

Keys are kept per session and table value, the most recent ``_KEEP`` of them; a retry
must come within that many writes of the session (a client retries within seconds).

Stored as a ring of entries, each its own piece of the session's state (``piece_cuts``,
workers.state.layout): remembering a key rewrites one entry and the small ring header,
not the whole list (up to a few hundred KB). Bytes: ``b"IK2"`` + u32 next slot + u32
count + per entry u32 length + orjson ``[key, reply]``, zero-padded to a multiple of
``_ALIGN`` bytes: the session's head lists its pieces' lengths run-length encoded, and
entries of equal padded length (replies of the same verbs) keep that list one run long
instead of one number per key. A value in the first format (one orjson list, oldest
first) is still read.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Any

import orjson

from workers import _kernels
from workers.errors import CorruptStateError, VerbError
from workers.state.blob import StateBlob

__all__ = ("FIELD", "PART", "AppliedKeys", "take_key", "fingerprint", "lookup", "retried", "remember")

FIELD = "idempotency_key"
PART = "idempotency"
_KEEP = 1024        # recent keys per session value: ~1024 retries' worth, a few hundred KB at most
_MAX_KEY = 128      # characters (a UUID is 36)
_MAX_REPLY = 4096   # bytes of a reply kept whole; a longer one is kept without its data
_MAGIC = b"IK2"
_HEAD = struct.Struct("<3sII")
_LEN = struct.Struct("<I")
_ALIGN = 256


def _padded(entry: bytes) -> int:
    return -(-(_LEN.size + len(entry)) // _ALIGN) * _ALIGN


class AppliedKeys:
    """The recent idempotency keys of one session value, with their replies, in a ring of ``_KEEP``
    slots: slot ``next`` is overwritten next (the oldest once the ring is full)."""

    __slots__ = ("replies", "_slots", "_slot_of", "_next", "_entry_bytes")

    def __init__(self) -> None:
        self.replies: dict[str, dict] = {}
        self._slots: list[bytes] = []          # each slot's stored entry: orjson [key, reply]
        self._slot_of: dict[str, int] = {}
        self._next = 0
        self._entry_bytes = 0                  # sum(len(e) for e in self._slots), kept as they change

    def add(self, key: str, reply: dict) -> None:
        entry = orjson.dumps([key, reply], option=orjson.OPT_SERIALIZE_NUMPY)
        slot = self._slot_of.get(key)
        if slot is None:
            if len(self._slots) < _KEEP:
                slot = len(self._slots)
                self._slots.append(b"")
            else:
                slot, self._next = self._next, (self._next + 1) % _KEEP
                gone = orjson.loads(self._slots[slot])[0]
                del self.replies[gone], self._slot_of[gone]
            self._slot_of[key] = slot
        self._entry_bytes += len(entry) - len(self._slots[slot])
        self._slots[slot] = entry
        self.replies[key] = orjson.loads(entry)[1]  # as it reads back after a restart

    def to_bytes(self) -> bytes:
        out = [_HEAD.pack(_MAGIC, self._next, len(self._slots))]
        for e in self._slots:
            out.append(_LEN.pack(len(e)))
            out.append(e)
            out.append(bytes(_padded(e) - _LEN.size - len(e)))
        return b"".join(out)

    def piece_cuts(self) -> list[int]:
        """Each entry in its own piece(s), after the ring header."""
        cuts, pos = [], _HEAD.size
        for e in self._slots:
            cuts.append(pos)
            pos += _padded(e)
        return cuts

    def memory_bytes(self) -> int:
        """The entries and their decoded replies, roughly (asked on every save of the session)."""
        return self._entry_bytes * 3

    @classmethod
    def from_bytes(cls, data: bytes) -> AppliedKeys:
        keys = cls()
        if data[:3] != _MAGIC:  # the first format: one orjson list of [key, reply], oldest first
            for k, v in orjson.loads(data)[-_KEEP:]:
                keys.add(k, v)
            return keys
        try:
            _, keys._next, n = _HEAD.unpack_from(data)
            pos = _HEAD.size
            for slot in range(n):
                (m,) = _LEN.unpack_from(data, pos)
                entry = bytes(data[pos + _LEN.size:pos + _LEN.size + m])
                if len(entry) != m:
                    raise ValueError(f"entry {slot} truncated")
                pos += _padded(entry)
                k, v = orjson.loads(entry)
                keys._slots.append(entry)
                keys._entry_bytes += len(entry)
                keys._slot_of[k] = slot
                keys.replies[k] = v
        except (struct.error, orjson.JSONDecodeError, ValueError) as exc:
            raise CorruptStateError(f"idempotency keys unreadable ({exc})") from None
        return keys


def take_key(body: dict) -> tuple[str | None, dict]:
    """(the body's idempotency key or None, the body without it); VerbError on a malformed key."""
    if FIELD not in body:
        return None, body
    key = body[FIELD]
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY:
        raise VerbError(f"{FIELD} must be a non-empty string of at most {_MAX_KEY} characters")
    return key, {k: v for k, v in body.items() if k != FIELD}


# kept beside a reply: which write the key was first used for (its print, :func:`fingerprint`); a reply
# kept before numbers were compared by value has its print under the first name (:func:`_print_v1`)
_PRINT = "body_print"
_PRINT_V1 = "body_sha256"


def fingerprint(verb: str, body: dict) -> str | None:
    """What a retry must repeat: the verb and its body (without ``session_key``, which routing already
    matched), as a short hash; None for a body that is not JSON (an in-process caller's own objects).

    Numbers count by value, as JSON has them: ``1`` and ``1.0`` (and ``1e0``), or ``0`` and ``-0.0``, are
    the same number, so a retry whose client wrote its numbers another way is still the same write. An
    array of plain numbers is hashed as its doubles (``_kernels.float64_from_numbers``, one C++ pass)."""
    try:
        raw = orjson.dumps([verb, _by_value({k: v for k, v in body.items() if k != "session_key"})],
                           option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    except (TypeError, RecursionError):
        return None
    return hashlib.sha256(raw).hexdigest()[:32]


def _by_value(value: Any) -> Any:
    """``value`` with each number as the one form of its value: an int within 2^53 as its double (``0.0``
    for either zero), a list of such numbers as the hash of its doubles."""
    t = type(value)
    if t is float:
        return value + 0.0  # -0.0 + 0.0 is 0.0
    if t is int:
        return float(value) + 0.0 if -_EXACT <= value <= _EXACT else value
    if t is dict:
        return {k: _by_value(v) for k, v in value.items()}
    if t is list or t is tuple:
        doubles = _kernels.float64_from_numbers(value)  # None for a tuple: item by item
        if doubles is not None:
            return "f64:" + hashlib.sha256((doubles + 0.0).tobytes()).hexdigest()
        return [_by_value(v) for v in value]
    return value


_EXACT = 2**53  # every int up to this is a double exactly


def _print_v1(verb: str, body: dict) -> str | None:
    """The print kept beside replies before numbers were compared by value (``1`` and ``1.0`` differed)."""
    try:
        raw = orjson.dumps([verb, {k: v for k, v in body.items() if k != "session_key"}],
                           option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return None
    return hashlib.sha256(raw).hexdigest()[:32]


def _kept(blob: StateBlob, key: str) -> dict | None:
    """What ``key`` keeps: the first write's reply, with that write's print when it was kept."""
    keys = blob.get(PART, AppliedKeys)
    return None if keys is None else keys.replies.get(key)


def _reply(kept: dict) -> dict:
    return {k: v for k, v in kept.items() if k not in (_PRINT, _PRINT_V1)}


def lookup(blob: StateBlob, key: str) -> dict | None:
    """The reply of the write that already applied ``key`` in this session value, or None."""
    kept = _kept(blob, key)
    return None if kept is None else _reply(kept)


def retried(blob: StateBlob, key: str, verb: str, body: dict) -> tuple[str | None, dict | None]:
    """For a write of ``verb`` with ``body`` carrying ``key``: its print (:func:`fingerprint`, to
    :func:`remember` with its reply) and the answer to a retry of a write this session value already
    applied under ``key`` (its first reply, marked ``duplicate``), or None when ``key`` is new. The worker
    and ``LearnSession`` both.

    A key reused for a *different* write (another verb or body) is refused (VerbError): answering it
    with the first write's reply would tell the client its new write was applied. Keys remembered
    before prints were kept are answered as before."""
    print_ = fingerprint(verb, body)
    kept = _kept(blob, key)
    if kept is None:
        return print_, None
    was, now = kept.get(_PRINT), print_
    if was is None and kept.get(_PRINT_V1) is not None:  # kept before numbers were compared by value
        was, now = kept[_PRINT_V1], _print_v1(verb, body)
    if now is not None and was is not None and was != now:
        raise VerbError(f"{FIELD} {key!r} was already used in this session for a different write "
                        f"(another verb or body); use a new key for a new write")
    return print_, {**_reply(kept), "duplicate": True}


def remember(blob: StateBlob, key: str, reply: dict, print_: str | None = None) -> None:
    """Keep ``reply`` (carrying its ``id``) under ``key``, with the write's ``print_``; the oldest key goes
    beyond ``_KEEP``."""
    keys = blob.get(PART, AppliedKeys)
    if keys is None:
        keys = AppliedKeys()
        blob.set(PART, keys)
    if len(orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY)) > _MAX_REPLY:
        reply = {k: v for k, v in reply.items() if k != "data"} | {"data_omitted": True}
    if print_ is not None:
        reply = {**reply, _PRINT: print_}
    keys.add(key, reply)
