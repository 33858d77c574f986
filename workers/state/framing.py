"""Byte framings of state, shared by every writer and reader of it.

A part's bytes (every core's ``to_bytes``/``from_bytes``): ``magic (3) + version (1) + u32 header
length + orjson header + payload``. The header says what the payload holds (names, shapes); the
payload is raw little-endian arrays, so decoding is a few ``np.frombuffer`` calls.

A checked value (a session's head, the one-value format): ``magic (3) + version (1) + u32 crc32 of
the payload + payload``: the CRC catches torn or foreign values, an unknown version is refused.
"""
from __future__ import annotations

import struct
import zlib

import orjson

from workers.errors import CorruptStateError

__all__ = ("pack_part", "unpack_part", "PART_HEAD", "pack_checked", "unpack_checked", "CHECKED_HEAD",
           "version_of")

PART_HEAD = struct.Struct("<3sBI")  # magic, version, header length
CHECKED_HEAD = struct.Struct("<3sBI")  # magic, version, crc32 of the payload


def version_of(data: bytes, readable: tuple[int, ...], current: int) -> int:
    """The version byte of a framed value (``PART_HEAD`` or ``CHECKED_HEAD``) when it is one of
    ``readable``, else ``current``: unpacking then refuses the value with its real version named."""
    return data[3] if len(data) > 3 and data[3] in readable else current


def pack_checked(magic: bytes, version: int, *payload: bytes) -> bytes:
    """A checked value whose payload is the ``payload`` chunks joined (joined once: the CRC runs
    over each in turn)."""
    crc = 0
    for chunk in payload:
        crc = zlib.crc32(chunk, crc)
    return b"".join((CHECKED_HEAD.pack(magic, version, crc), *payload))


def unpack_checked(data: bytes, magic: bytes, version: int, what: str, *, min_payload: int = 0) -> memoryview:
    """The payload of a checked value; :class:`CorruptStateError` naming ``what`` when it is too short,
    foreign (bad magic), of an unknown version, or torn (checksum)."""
    if len(data) < CHECKED_HEAD.size + min_payload:
        raise CorruptStateError(f"{what} too short ({len(data)} bytes)")
    m, v, crc = CHECKED_HEAD.unpack_from(data)
    if m != magic:
        raise CorruptStateError(f"not a learnstream {what} (bad magic)")
    if v != version:
        raise CorruptStateError(f"{what} version {v} is unknown (this build reads {version})")
    payload = memoryview(data)[CHECKED_HEAD.size:]
    if zlib.crc32(payload) != crc:
        raise CorruptStateError(f"{what} checksum mismatch (torn or corrupted write)")
    return payload


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
