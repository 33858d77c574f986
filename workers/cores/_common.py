"""Shared by the cores' state parts: the byte framing of a part and the spec's env overrides.

A part's bytes: ``magic (3) + version (1) + u32 header length + orjson header + payload``.
The header says what the payload holds (names, shapes); the payload is raw
little-endian arrays, so decoding is a few ``np.frombuffer`` calls.
"""
from __future__ import annotations

import math
import os
import struct

import orjson

from workers.errors import ConfigError, CorruptStateError

__all__ = ("pack_part", "unpack_part", "env_float")

_HEAD = struct.Struct("<3sBI")  # magic, version, header length


def pack_part(magic: bytes, version: int, header: dict, *chunks: bytes) -> bytes:
    h = orjson.dumps(header)
    return b"".join((_HEAD.pack(magic, version, len(h)), h, *chunks))


def unpack_part(data: bytes, magic: bytes, version: int, what: str) -> tuple[dict, int]:
    """The header and the payload's offset in ``data``; :class:`CorruptStateError` otherwise."""
    try:
        m, v, hlen = _HEAD.unpack_from(data)
    except struct.error:
        raise CorruptStateError(f"{what} state too short") from None
    if m != magic:
        raise CorruptStateError(f"not a {what} state (bad magic)")
    if v != version:
        raise CorruptStateError(f"{what} state version {v} is unknown (this build reads {version})")
    try:
        header = orjson.loads(data[_HEAD.size:_HEAD.size + hlen])
    except orjson.JSONDecodeError as exc:
        raise CorruptStateError(f"{what} state header is malformed ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptStateError(f"{what} state header is malformed (not an object)")
    return header, _HEAD.size + hlen


def env_float(var: str, default: float, *, cap: float | None = None) -> float:
    """A finite, non-negative number from ``$var`` (``default`` when unset), capped at ``cap``."""
    raw = os.environ.get(var)
    if raw is None or raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"{var}={raw!r} must be a finite number >= 0")
    return v if cap is None else min(v, cap)
