"""The byte framing of one state part, shared by every core's ``to_bytes``/``from_bytes``.

A part's bytes: ``magic (3) + version (1) + u32 header length + orjson header + payload``.
The header says what the payload holds (names, shapes); the payload is raw
little-endian arrays, so decoding is a few ``np.frombuffer`` calls.
"""
from __future__ import annotations

import struct

import orjson

from workers.errors import CorruptStateError

__all__ = ("pack_part", "unpack_part", "PART_HEAD")

PART_HEAD = struct.Struct("<3sBI")  # magic, version, header length


def pack_part(magic: bytes, version: int, header: dict, *chunks: bytes) -> bytes:
    h = orjson.dumps(header)
    return b"".join((PART_HEAD.pack(magic, version, len(h)), h, *chunks))


def unpack_part(data: bytes, magic: bytes, version: int, what: str) -> tuple[dict, int]:
    """The header and the payload's offset in ``data``; :class:`CorruptStateError` otherwise."""
    try:
        m, v, hlen = PART_HEAD.unpack_from(data)
    except struct.error:
        raise CorruptStateError(f"{what} state too short") from None
    if m != magic:
        raise CorruptStateError(f"not a {what} state (bad magic)")
    if v != version:
        raise CorruptStateError(f"{what} state version {v} is unknown (this build reads {version})")
    try:
        header = orjson.loads(data[PART_HEAD.size:PART_HEAD.size + hlen])
    except orjson.JSONDecodeError as exc:
        raise CorruptStateError(f"{what} state header is malformed ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptStateError(f"{what} state header is malformed (not an object)")
    return header, PART_HEAD.size + hlen
