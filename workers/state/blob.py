"""The table value of one session: named state parts plus the applied-offset watermark.

Effectively-once under at-least-once delivery rests on one rule: a part's new
state and the source offsets it has applied are written in *one* value. After a
crash the consumer may redeliver events; every event at or below the watermark
of its topic-partition is skipped, so nothing is applied twice and, because the
value is written before offsets are committed, nothing is lost.

Format (little-endian): b"LSB" + version(1) + crc32(payload)(4) + payload, where
payload = u32 header length + orjson header + part bytes concatenated. The CRC
catches torn or foreign values; an unknown version is refused, never guessed.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import orjson

from workers.state.framing import pack_checked, unpack_checked

__all__ = ("Part", "StateBlob", "Watermark")

_MAGIC = b"LSB"
_VERSION = 1


class Part(Protocol):
    """Anything that round-trips through bytes can be a part of a session's state."""

    def to_bytes(self) -> bytes: ...

    @classmethod
    def from_bytes(cls, data: bytes) -> Part: ...


P = TypeVar("P")


_KEYS: dict[tuple[str, int], str] = {}  # "topic:partition" strings, built once (a few per topic)


class Watermark:
    """Highest applied source offset per ``topic:partition``."""

    __slots__ = ("offsets",)

    def __init__(self, offsets: dict[str, int] | None = None) -> None:
        self.offsets: dict[str, int] = dict(offsets or {})

    @staticmethod
    def _key(topic: str, partition: int) -> str:
        k = _KEYS.get((topic, partition))
        if k is None:
            k = _KEYS[(topic, partition)] = f"{topic}:{partition}"
        return k

    def seen(self, topic: str, partition: int, offset: int) -> bool:
        """True when this offset was already applied (a redelivery to skip)."""
        return offset <= self.offsets.get(self._key(topic, partition), -1)

    def advance(self, topic: str, partition: int, offset: int) -> None:
        k = self._key(topic, partition)
        if offset > self.offsets.get(k, -1):
            self.offsets[k] = offset

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Watermark) and other.offsets == self.offsets

    def __repr__(self) -> str:
        return f"Watermark({self.offsets!r})"


class StateBlob:
    """Lazily decoded named parts + watermark. Untouched parts stay raw bytes."""

    __slots__ = ("_raw", "_live", "watermark", "layout", "lazy")

    def __init__(self) -> None:
        self._raw: dict[str, bytes] = {}
        self._live: dict[str, Any] = {}
        self.watermark = Watermark()
        self.layout: dict[str, Any] = {}  # what the session's keys hold, per part (workers.state.layout)
        # parts read without their replay rows: their raw bytes end before the rows, which this reads
        # from the store ((lo, hi) -> those bytes of the rows; ``SessionState.decode`` with ``rows``)
        self.lazy: dict[str, Callable[[int, int], bytes]] = {}

    # -- parts ---------------------------------------------------------------
    def get(self, name: str, cls: type[P]) -> P | None:
        """The decoded part ``name`` (decoded once with ``cls.from_bytes``) or None."""
        obj = self._live.get(name)
        if obj is None:
            raw = self._raw.pop(name, None)
            if raw is None:
                return None
            rows = self.lazy.pop(name, None)
            stored = self.layout.get(name)
            if rows is not None:
                # read without its rows: the layout holds only the pieces before them already
                obj = cls.from_head(raw, rows)  # type: ignore[attr-defined]
                obj.saved(stored.token)  # what the keys hold: its rows stay there until replayed
            else:
                obj = cls.from_bytes(raw)  # type: ignore[attr-defined]
            self._live[name] = obj
            if stored is not None and rows is None:
                stored.release(obj)  # the decoded part holds these bytes' state: no second copy (layout)
        return obj

    def raw(self, name: str) -> bytes:
        """The bytes of part ``name``, not decoded (KeyError if it is): a part read without its
        replay rows reads them now."""
        data = self._raw[name]
        rows = self.lazy.pop(name, None)
        if rows is not None:
            stored = self.layout[name]
            data = self._raw[name] = data + rows(0, stored.size - stored.bounds[stored.rows_from])
        return data

    def set(self, name: str, obj: Any) -> None:
        self._raw.pop(name, None)
        self.lazy.pop(name, None)
        self._live[name] = obj

    def set_bytes(self, name: str, data: bytes) -> None:
        """Set ``name`` to a part's bytes, decoded only when a verb asks for it."""
        self._live.pop(name, None)
        self.lazy.pop(name, None)
        self._raw[name] = data

    def drop(self, name: str) -> None:
        self._raw.pop(name, None)
        self.lazy.pop(name, None)
        self._live.pop(name, None)

    def has(self, name: str) -> bool:
        return name in self._live or name in self._raw

    def names(self) -> list[str]:
        return sorted(set(self._raw) | set(self._live))

    # -- bytes ---------------------------------------------------------------
    def to_bytes(self) -> bytes:
        parts = [(n, self._live[n].to_bytes()) for n in self._live]
        parts += [(n, self.raw(n)) for n in list(self._raw)]
        parts.sort()
        header = orjson.dumps(
            {"wm": self.watermark.offsets, "parts": [[n, len(b)] for n, b in parts]}
        )
        payload = b"".join([struct.pack("<I", len(header)), header, *(b for _, b in parts)])
        return pack_checked(_MAGIC, _VERSION, payload)

    @classmethod
    def from_bytes(cls, data: bytes) -> StateBlob:
        payload = unpack_checked(data, _MAGIC, _VERSION, "state value", min_payload=4)
        (hlen,) = struct.unpack_from("<I", payload)
        header = orjson.loads(bytes(payload[4:4 + hlen]))
        blob = cls()
        blob.watermark = Watermark(header["wm"])
        # values written before 2026-12 also hold an always-empty "meta" map: ignored
        pos = 4 + hlen
        for name, n in header["parts"]:
            blob._raw[name] = bytes(payload[pos:pos + n])
            pos += n
        return blob
