"""The online learner's state format: versioned, checksummed, with incremental (delta) saves.

A state is a set of named *sections*: NumPy arrays or JSON values. Every part of a
learner writes its own sections through a :class:`StateWriter` (``save_state``) and
reads them back through a :class:`StateReader` (``load_state``); scoped views give
each part its own name prefix, so parts compose without knowing about each other.

Bytes (little-endian)::

    b"LSOL" | u16 version | u32 crc | payload
    payload = u32 header length | orjson header | chunk bytes

Each section's raw bytes are cut into chunks of at most :data:`CHUNK_BYTES`, each
with its own CRC in the header. A *delta* state (``StateWriter.to_bytes(base=...)``)
stores only the chunks whose CRC differs from its base's and names the base by the
base's CRC; reading it needs the base. An unknown version is refused, never guessed.

Version 2 (written now): ``crc`` is the CRC of the header length and the header, which
holds every chunk's CRC and the chunk bytes' total length (``"n"``), so a torn or
corrupted state still fails (a chunk's CRC, or the length), and a save no longer runs a
second CRC over all the bytes: a 1536-feature learner is ~3 MB, saved on every
``learn_example`` call. Version 1 (``crc`` over the whole payload) is still read.
"""
from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
import orjson

from workers.errors import CorruptStateError

__all__ = ("STATE_VERSION", "CHUNK_BYTES", "StateWriter", "StateReader", "rng_state", "set_rng_state")

_MAGIC = b"LSOL"
STATE_VERSION = 2
_READS = (1, 2)  # versions this build reads
_HEAD = struct.Struct("<4sHI")
_ULEN = struct.Struct("<I")
# Delta granularity: small enough that a reservoir replacing a few rows rewrites a
# few chunks, large enough that the header stays a small fraction of the bytes.
CHUNK_BYTES = 16 * 1024
_JSON_RANK = 100
# Array dtypes a state may hold; anything else (object arrays) cannot round-trip.
_DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8", "<u4", "<u8", "|u1", "|b1"})


def rng_state(rng: np.random.Generator) -> dict:
    """A Generator's state as JSON (PCG64 holds 128-bit integers, kept as decimal strings)."""
    st = rng.bit_generator.state
    return {"bit_generator": st["bit_generator"], "state": {k: str(v) for k, v in st["state"].items()},
            "has_uint32": st["has_uint32"], "uinteger": st["uinteger"]}


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    rng.bit_generator.state = {"bit_generator": state["bit_generator"],
                               "state": {k: int(v) for k, v in state["state"].items()},
                               "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]}


def _chunks(raw: bytes) -> list[memoryview]:
    """``raw`` cut into chunks (one, empty, for no bytes): views, not copies (a 1536-feature learner is
    3 MB per save)."""
    view = memoryview(raw)
    return [view[i:i + CHUNK_BYTES] for i in range(0, len(raw), CHUNK_BYTES)] or [view]


class _Scoped:
    """A view of a writer or reader that prefixes every section name."""

    __slots__ = ("_target", "_prefix")

    def __init__(self, target: Any, prefix: str) -> None:
        self._target = target
        self._prefix = prefix

    def scope(self, prefix: str) -> _Scoped:
        return _Scoped(self._target, f"{self._prefix}{prefix}.")

    def __getattr__(self, attr: str) -> Any:
        fn = getattr(self._target, attr)
        if attr in ("put_array", "put_json", "array", "json", "has"):
            return lambda name, *a, **kw: fn(self._prefix + name, *a, **kw)
        return fn


class StateWriter:
    """Collects named sections and encodes them.

    Examples
    --------
    >>> w = StateWriter()
    >>> w.put_json("config", {"lr": 0.1})
    >>> w.scope("model").put_array("theta", np.arange(3, dtype=np.float32))
    >>> r = StateReader.from_bytes(w.to_bytes())
    >>> r.json("config"), r.scope("model").array("theta").tolist()
    ({'lr': 0.1}, [0.0, 1.0, 2.0])
    """

    def __init__(self) -> None:
        self._sections: dict[str, tuple[str, str | None, list[int] | None, bytes, int]] = {}
        # after to_bytes: where the header ends and each section begins in its bytes (a session's
        # state is stored in pieces cut there, workers.state.layout: a section that grew or changed
        # rewrites its own pieces, not the ones of every section after it)
        self.cuts: list[int] = []

    def scope(self, prefix: str) -> _Scoped:
        """A writer whose section names start with ``prefix + "."``."""
        return _Scoped(self, prefix + ".")

    def put_array(self, name: str, arr: np.ndarray, *, rank: int = 0) -> None:
        """``rank``: sections are laid out by (rank, name). Arrays whose size never changes keep the
        default 0; one that grows (a buffer filling up) or shrinks takes a higher rank, so its size
        changes move only the sections after it."""
        a = np.ascontiguousarray(arr)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        a = a.astype(dt, copy=False)
        if a.dtype.str not in _DTYPES:
            raise TypeError(f"section {name!r}: dtype {a.dtype} cannot be stored")
        self._put(name, "a", a.dtype.str, list(a.shape), a.tobytes(), rank)

    def put_json(self, name: str, value: Any) -> None:
        """JSON sections (small, and changing in size with their numbers) come after every array."""
        self._put(name, "j", None, None, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY), _JSON_RANK)

    def _put(self, name: str, kind: str, dtype: str | None, shape: list[int] | None, raw: bytes, rank: int) -> None:
        if name in self._sections:
            raise ValueError(f"section {name!r} written twice")
        self._sections[name] = (kind, dtype, shape, raw, rank)

    def names(self) -> list[str]:
        return sorted(self._sections)

    def to_bytes(self, base: StateReader | None = None) -> bytes:
        """Encode all sections; with ``base``, only the chunks that differ from it (a delta)."""
        if base is not None and base.is_delta:
            raise ValueError("a delta's base must be a full state")
        header: dict[str, Any] = {"base": base.crc if base is not None else None, "sections": {}}
        data: list[bytes] = []
        pos = 0
        starts: list[int] = []
        for name in sorted(self._sections, key=lambda n: (self._sections[n][4], n)):
            kind, dtype, shape, raw, _ = self._sections[name]
            starts.append(pos)
            old = base._index.get(name) if base is not None else None
            same_layout = old is not None and (old["k"], old.get("dt"), old.get("sh")) == (kind, dtype, shape)
            chunks = []
            for i, c in enumerate(_chunks(raw)):
                crc = zlib.crc32(c)
                if same_layout and i < len(old["c"]) and old["c"][i][0] == crc and old["c"][i][2] == len(c):
                    chunks.append([crc, -1, len(c)])  # -1: take it from the base
                else:
                    chunks.append([crc, pos, len(c)])
                    data.append(c)
                    pos += len(c)
            entry: dict[str, Any] = {"k": kind, "c": chunks}
            if kind == "a":
                entry["dt"], entry["sh"] = dtype, shape
            header["sections"][name] = entry
        header["n"] = pos
        head = orjson.dumps(header)
        ulen = _ULEN.pack(len(head))
        begin = _HEAD.size + _ULEN.size + len(head)
        self.cuts = [begin + p for p in starts]
        crc = zlib.crc32(head, zlib.crc32(ulen))  # the chunks' own CRCs are in the header (module doc)
        return b"".join([_HEAD.pack(_MAGIC, STATE_VERSION, crc), ulen, head, *data])


class StateReader:
    """Decodes and verifies state bytes; sections are read by name (see :class:`StateWriter`)."""

    def __init__(self, index: dict[str, dict], data: memoryview, crc: int, base_crc: int | None,
                 base: StateReader | None) -> None:
        self._index = index
        self._data = data
        self.crc = crc
        self.base_crc = base_crc
        self._base = base

    @property
    def is_delta(self) -> bool:
        return self.base_crc is not None

    @staticmethod
    def peek(data: bytes) -> dict:
        """Verify the framing and return ``{"version", "crc", "base"}`` without decoding sections."""
        if len(data) < _HEAD.size + _ULEN.size:
            raise CorruptStateError(
                f"learner state too short ({len(data)} bytes): truncated write; resume from another checkpoint")
        magic, version, crc = _HEAD.unpack_from(data)
        if magic != _MAGIC:
            raise CorruptStateError("not a learnstream learner state (bad magic)")
        if version not in _READS:
            raise CorruptStateError(
                f"learner state format version {version} is unknown (this build reads "
                f"{', '.join(map(str, _READS))}); upgrade learnstream or resume from an older checkpoint")
        payload = memoryview(data)[_HEAD.size:]
        (hlen,) = _ULEN.unpack_from(payload)
        covered = payload if version == 1 else payload[:_ULEN.size + hlen]
        if zlib.crc32(covered) != crc:
            raise CorruptStateError(
                "learner state checksum mismatch: the bytes are corrupted or truncated; "
                "resume from another checkpoint")
        try:
            header = orjson.loads(bytes(payload[_ULEN.size:_ULEN.size + hlen]))
        except orjson.JSONDecodeError as exc:  # only a forged CRC gets here
            raise CorruptStateError(f"learner state header unreadable ({exc})") from None
        if not isinstance(header, dict):  # likewise
            raise CorruptStateError("learner state header unreadable (not a JSON object)")
        rest = payload[_ULEN.size + hlen:]
        if version > 1 and header.get("n") != len(rest):
            raise CorruptStateError(
                f"learner state holds {len(rest)} bytes of chunks, its header says {header.get('n')}: "
                "the bytes are truncated or extended; resume from another checkpoint")
        return {"version": version, "crc": crc, "base": header.get("base"), "header": header, "data": rest}

    @classmethod
    def from_bytes(cls, data: bytes, base: StateReader | None = None) -> StateReader:
        """Verify and index ``data``; a delta needs the full state it was saved against as ``base``."""
        info = cls.peek(data)
        base_crc = info["base"]
        if base_crc is not None:
            if base is None:
                raise CorruptStateError("incremental learner state needs its base checkpoint to be read")
            if base.crc != base_crc:
                raise CorruptStateError(
                    f"incremental learner state was saved against base crc {base_crc:#010x}, "
                    f"got {base.crc:#010x}; load it with its own base")
        else:
            base = None
        return cls(info["header"]["sections"], info["data"], info["crc"], base_crc, base)

    def scope(self, prefix: str) -> _Scoped:
        return _Scoped(self, prefix + ".")

    def names(self) -> list[str]:
        return sorted(self._index)

    def has(self, name: str) -> bool:
        return name in self._index

    def _raw(self, name: str) -> bytes:
        entry = self._index.get(name)
        if entry is None:
            raise CorruptStateError(f"learner state has no section {name!r} (written by another learner?)")
        out = []
        for i, (crc, off, n) in enumerate(entry["c"]):
            if off < 0:
                c = self._base._raw_chunk(name, i) if self._base is not None else b""
            else:
                c = bytes(self._data[off:off + n])
            if len(c) != n or zlib.crc32(c) != crc:
                raise CorruptStateError(
                    f"learner state section {name!r} chunk {i} fails its checksum: " +
                    ("the delta was saved against another base" if off < 0 else
                     "checksum mismatch, the bytes are corrupted; resume from another checkpoint"))
            out.append(c)
        return b"".join(out)

    def _raw_chunk(self, name: str, i: int) -> bytes:
        entry = self._index.get(name)
        if entry is None or i >= len(entry["c"]):
            return b""
        crc, off, n = entry["c"][i]
        return bytes(self._data[off:off + n])

    def array(self, name: str) -> np.ndarray:
        """The array ``name`` (a fresh, writeable copy)."""
        entry = self._index.get(name)
        if entry is not None and entry["k"] != "a":
            raise CorruptStateError(f"learner state section {name!r} is not an array")
        raw = self._raw(name)
        return np.frombuffer(raw, dtype=np.dtype(entry["dt"])).reshape(entry["sh"]).copy()

    def json(self, name: str) -> Any:
        entry = self._index.get(name)
        if entry is not None and entry["k"] != "j":
            raise CorruptStateError(f"learner state section {name!r} is not JSON")
        return orjson.loads(self._raw(name))
