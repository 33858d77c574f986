"""A session's state as many small keys: one head, and each part cut into pieces.

Keys, under the session's *base key* ``B`` (its key in the table)::

    B                                 head: watermark, meta, and each part's piece table
    B \\x1f <part> \\x1f <index> \\x1f <slot>   one piece of a part (index: 6 digits, slot: "0" or "1")

A part's bytes are cut into pieces of at most :data:`PIECE_BYTES`, and also wherever the
part asks (``piece_cuts()``: the instant core cuts at each replay slot, so a replay slot is
one key). A save writes only the pieces whose bytes changed, plus the head, so a write
costs about what changed and no value nears Kafka's 1 MiB message limit.

**A crash between two keys is never observed.** A changed piece is written to the slot its
current head does *not* reference; the head, which names each piece's slot, is written
after the pieces, and pieces a part no longer has are deleted after the head. Locally the
keys of one session go in one RocksDB write batch (atomic); in the changelog they are
produced in that order, on one partition, before the source offsets commit. Whatever
prefix of that order survives a crash (a changelog cut mid-session, a standby that applied
half, a local store ahead of its changelog), the head it holds names only pieces that were
complete when that head was written and that nothing has overwritten since: the session
reads as before the batch or as after it, never as a mix. The price is at most two copies
of a piece on disk.

A part of at most :data:`INLINE_BYTES` (the loop's counters, the deep core, the boundary
detector: 90-330 bytes, changed by every event) is kept *in the head* instead of in keys of
its own: a feedback event on a cold session writes two records fewer, and a cold read finds
fewer keys. It is written with the head, so it is atomic with the watermark.

A part that says so (``HEAD_PIECE = True`` on its class: the instant core, whose first piece holds
its counters and adapter and changes with every feedback event) keeps its *first piece* in the head
too, and the rest in keys: a one-event feedback save is two records (the head, the new replay slot),
not three. Its other pieces, and every part that does not say so, are as above: a save that changes
only another part rewrites that first piece with the head, which is why only a part that changes on
nearly every save of its session asks for it.

A part that knows what it changed since its last save says so (``changed_since``: its size, its
cuts and the regions of its bytes that may differ, built, or None when it cannot tell). For it a save
compares only the pieces those regions cover (which include every piece past the old end), and keeps
the others' bytes as they are (``_Stored.pieces``): the instant core's one-event save builds its hot
piece and the pushed replay row, not its whole ~100 kB, and hands the layout no other piece
(``learnstream bench save``). Any other part, or one that cannot tell, is built whole (``to_bytes``)
and compared piece by piece.

Head bytes (little-endian): ``b"LSH" + version (1) + crc32(payload) (4) + payload``, the
payload ``u32 length + orjson {"wm", "parts": {name: {"n", "p", "s"}}, "in": [[name, n], ...],
"h": [[name, n], ...]}`` then the inline parts' bytes in that order, then the first pieces named
in "h" in that order; a part in "parts" has its length, its piece lengths run-length encoded and its
slots as a hex bitmap (a first piece in the head has a slot there that nothing reads). Versions 1 (no
inline parts, the payload only the orjson object) and 2 (no "h") are still read. A head in the
previous one-value format (``b"LSB"``, a whole :class:`StateBlob`) is still read; its next
save rewrites it as keys.
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import orjson

from workers.errors import CorruptStateError
from workers.state.framing import pack_checked, unpack_checked, version_of
from workers.state.blob import StateBlob, Watermark

__all__ = ("PIECE_BYTES", "INLINE_BYTES", "SEP", "SessionState", "StoredRows", "piece_bounds", "pieces", "digest",
           "StateTooLarge", "is_piece_key", "key_growth")

# Small enough that one feedback event rewrites a few KB (adapter, counters, one replay
# slot), large enough that a 100 KB session is ~30 keys to restore, not thousands. At 384-d an
# instant core's header, counters, adapter and scalars (~3 kB) are one piece, kept in the head
# (HEAD_PIECE): a one-event save is 2 changelog records (the new replay slot, the head).
PIECE_BYTES = 4096
# Parts up to this size live in the head (see above): rewritten with it on every save anyway
# when they change, which the small per-event counters do. The boundary detector is 324 bytes
# (version 9): at 256 it left the head, and a one-event feedback save wrote 3 records, not 2.
INLINE_BYTES = 384
SEP = b"\x1f"
_MAGIC = b"LSH"
_LEGACY_MAGIC = b"LSB"
_VERSION = 3
_ULEN = struct.Struct("<I")


class StateTooLarge(Exception):
    """A session's keys would exceed a configured limit: its changes are not written."""


def is_piece_key(key: bytes) -> bool:
    """True for a piece key (a head key holds no separator: session keys have no control characters)."""
    return SEP in key


def piece_bounds(n: int, cuts: Iterable[int] = ()) -> list[int]:
    """Piece start offsets of an ``n``-byte part, then ``n``: a cut at every ``cuts`` offset and
    every :data:`PIECE_BYTES` after each cut."""
    if n <= PIECE_BYTES and not cuts:
        return [0, n] if n else [0]  # the small parts, saved with every event: no work
    return list(_bounds(n, tuple(cuts)))


@functools.lru_cache(maxsize=4096)
def _bounds(n: int, cuts: tuple[int, ...]) -> tuple[int, ...]:
    # Cached: a part's cuts change only when its shape does (an instant core's: one more replay
    # slot), and building them was a third of a one-event save.
    out = [0]
    for c in sorted({c for c in cuts if 0 < c < n}) + [n]:
        start = out[-1]
        out.extend(range(start + PIECE_BYTES, c, PIECE_BYTES))
        out.append(c)
    return tuple(out) if n else (0,)


def _rle(lengths: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for n in lengths:
        if out and out[-1][0] == n:
            out[-1][1] += 1
        else:
            out.append([n, 1])
    return out


@functools.lru_cache(maxsize=4096)
def _runs(bounds: tuple[int, ...]) -> list[list[int]]:
    """The piece lengths' runs of ``bounds`` (cached like :func:`_bounds`; never mutated by a caller)."""
    return _rle([b - a for a, b in zip(bounds, bounds[1:])])


def _unrle(runs: list[list[int]]) -> list[int]:
    return list(_unrle_cached(tuple((n, count) for n, count in runs)))


@functools.lru_cache(maxsize=4096)
def _unrle_cached(runs: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    # cached: a session read from the store repeats its part's piece table, and the loop was a tenth of a read
    bounds = [0]
    for n, count in runs:
        for _ in range(count):
            bounds.append(bounds[-1] + n)
    return tuple(bounds)


@functools.lru_cache(maxsize=1024)
def _relative_keys(name: str, count: int) -> tuple[tuple[bytes, bytes], ...]:
    """Piece ``i`` of part ``name``'s keys relative to the base key, in slot 0 and slot 1 (made once per
    part and piece count: formatting them was a fifth of reading a session from the store)."""
    prefix = name.encode() + SEP
    return tuple((b"%s%06d\x1f0" % (prefix, i), b"%s%06d\x1f1" % (prefix, i)) for i in range(count))


# A dropped piece (_Stored.release): equal to no bytes, so a save that compares against it writes
# the piece again; never joined or written.
_GONE: Any = object()


def _piece_key(base: bytes, name: str, i: int, slot: int) -> bytes:
    return b"%s\x1f%s\x1f%06d\x1f%d" % (base, name.encode(), i, slot)


class _Stored:
    """What the keys of one part hold now: its bytes (``data``), or, for a part saved piece by piece
    (``changed_since``), its pieces' bytes (``pieces``), so that a save replaces only the pieces that
    changed; ``data`` then joins them when asked.

    Once such a part is decoded its live object is the state, so the bytes behind it are dropped
    (:meth:`release`): a full 384-d instant core would otherwise be cached twice, its ~100 kB of
    replay rows once as bytes and once in its arena. The pieces before its replay rows are kept (a
    hot part's first piece is written into every head; the EWC state is compared on every save). A
    dropped piece reads as :data:`_GONE`, which equals no bytes: a save that must compare against it
    counts it as changed and writes it again, which only a rewritten replay row needs."""

    __slots__ = ("_data", "pieces", "bounds", "slots", "entry", "inline", "hot", "token", "released", "_held",
                 "rows_from")

    def __init__(self, data: bytes | None, bounds: list[int], slots: bytearray, entry: dict | None = None, *,
                 inline: bool = False, hot: bool = False, pieces: list[bytes] | None = None,
                 rows_from: int | None = None) -> None:
        self._data = data
        self.pieces = pieces
        self.bounds = bounds
        self.slots = slots
        self.entry = entry  # its piece table in the head (made once: most parts do not change in a save)
        self.inline = inline  # kept in the head, no keys of its own
        self.hot = hot  # its first piece is kept in the head, the others in keys (HEAD_PIECE)
        # What the live part was told the keys hold (``saved``), and what it checks ``changed_since``
        # against: the bytes it was decoded from, or the pieces of its last save
        self.token: object = data if data is not None else pieces
        # its pieces past the first are dropped (release; or it was saved from a released one's pieces)
        self.released = pieces is not None and _GONE in pieces  # a bare object(): equal only to itself
        self._held: int | None = None  # held, once counted (a released part's pieces do not change)
        # the first piece of its replay rows (a part with ``rows_offset``): the pieces from here on
        # may be left in the store when the session is read (SessionState.decode with ``rows``)
        self.rows_from = rows_from

    @property
    def data(self) -> bytes:
        if self._data is None:
            if self.released:
                raise RuntimeError("a released part's bytes are in its live object, not here")
            self._data = b"".join(self.pieces or ())
        return self._data

    @property
    def held(self) -> int:
        """The bytes it keeps in memory."""
        if not self.released:
            return self.bounds[-1]  # all of them, whole or as pieces
        if self._held is None:
            self._held = sum(len(p) for p in self.pieces or () if p is not _GONE)
        return self._held

    def release(self, live: Any) -> None:
        """Drop the bytes of the pieces from ``live.rows_offset()`` on: ``live``, decoded from them or
        just saved, holds the same state. ``live`` is told the new token (``rebind``), so its next
        save still builds only what it changed. A part without ``rows_offset`` keeps its bytes."""
        rows_offset = getattr(live, "rows_offset", None)
        if rows_offset is None or self.inline:
            return
        keep = bisect.bisect_left(self.bounds, rows_offset())
        if keep >= self.count:
            return
        pieces = [self.piece(i) for i in range(keep)]
        pieces += [_GONE] * (self.count - keep)
        old, self.token = self.token, object()
        self._data, self.pieces, self.released, self._held = None, pieces, True, self.bounds[keep]
        live.rebind(old, self.token)

    @property
    def size(self) -> int:
        return self.bounds[-1]

    @property
    def count(self) -> int:
        return len(self.bounds) - 1

    def piece(self, i: int) -> bytes:
        if self.pieces is not None:
            return self.pieces[i]
        return self._data[self.bounds[i]:self.bounds[i + 1]]

    def piece_list(self) -> list[bytes]:
        """Its pieces as a new list (their bytes shared)."""
        if self.pieces is not None:
            return list(self.pieces)
        b, d = self.bounds, self._data
        return [d[b[i]:b[i + 1]] for i in range(len(b) - 1)]

    def head_entry(self, runs: list[list[int]] | None = None) -> dict:
        """Its piece table; ``runs``: the piece lengths' runs when known (the cut did not change)."""
        if self.entry is None:
            if runs is None:
                runs = _runs(tuple(self.bounds))
            self.entry = {"n": self.size, "p": runs, "s": _slots_hex(self.slots)}
            if self.rows_from is not None:
                self.entry["l"] = self.rows_from
        return self.entry


class StoredRows:
    """Reads the replay rows a part was decoded without, or dropped (``thin``): ``rows(lo, hi)`` gives
    bytes ``lo:hi`` of the part's stored rows (those from its ``rows_from`` piece on; a row longer than
    PIECE_BYTES spans pieces), through the piece table the session's keys have *now*: a save moves a
    rewritten row to its other slot key. ``get`` reads a key of the session's store."""

    __slots__ = ("get", "base", "blob", "name")

    def __init__(self, get: Callable[[bytes], bytes | None], base: bytes, blob: StateBlob, name: str) -> None:
        self.get, self.base, self.blob, self.name = get, base, blob, name

    def __call__(self, lo: int, hi: int) -> bytes:
        stored = self.blob.layout.get(self.name)
        if stored is None or stored.rows_from is None:
            raise CorruptStateError(f"state part {self.name!r}: its keys hold no replay rows to read")
        bounds = stored.bounds
        start = bounds[stored.rows_from]
        if not 0 <= lo <= hi <= bounds[-1] - start:
            raise CorruptStateError(f"state part {self.name!r}: replay bytes {lo}:{hi} are outside its rows")
        lo, hi = start + lo, start + hi
        keys = _relative_keys(self.name, stored.count)
        out = []
        i = bisect.bisect_right(bounds, lo) - 1
        while i < stored.count and bounds[i] < hi:
            data = self.get(self.base + SEP + keys[i][stored.slots[i]])
            if data is None or len(data) != bounds[i + 1] - bounds[i]:
                raise CorruptStateError(f"state part {self.name!r}: piece {i} is missing or has the wrong length")
            out.append(data[max(lo - bounds[i], 0):hi - bounds[i]])
            i += 1
        return b"".join(out)


_BITS = bytes.maketrans(b"\x00\x01", b"01")


def _slots_from_hex(text: str, k: int) -> bytearray:
    """The first ``k`` slots of a bitmap written by :func:`_slots_hex`."""
    if not k:
        return bytearray()
    bits = bin(int(text, 16))[2:].zfill(len(text) * 4)[:k]
    if len(bits) != k:
        raise CorruptStateError("state head: slot bitmap shorter than its piece table")
    return bytearray(bits.encode().translate(_UNBITS))


_UNBITS = bytes.maketrans(b"01", b"\x00\x01")


def _slots_hex(slots: bytearray) -> str:
    """The slots as a bitmap, most significant bit first, zero-padded to whole bytes, in hex (what
    ``np.packbits(slots).tobytes().hex()`` gives, without NumPy's fixed cost on a few bits)."""
    k = len(slots)
    if not k:
        return ""
    pad = -k % 8
    return int(bytes(slots).translate(_BITS) + b"0" * pad, 2).to_bytes((k + pad) // 8, "big").hex()


def _current(obj: Any) -> tuple[bytes, list[int]]:
    """A live part's bytes and piece bounds: one piece when it is small enough for the head (its
    cuts do not apply there, and a digest must not depend on whether the part is decoded)."""
    data = obj.to_bytes()
    if len(data) <= INLINE_BYTES:  # the small parts, saved with every event
        return data, [0, len(data)] if data else [0]
    cuts = getattr(obj, "piece_cuts", None)
    return data, piece_bounds(len(data), cuts() if cuts is not None else ())


def _rows_from(live: Any, bounds: list[int], old: _Stored | None) -> int | None:
    """The piece where a part's replay rows begin: from the live part (``rows_offset``, on a piece
    bound), or, for bytes written unchanged in their old cut, where the old head said."""
    if live is None:
        return old.rows_from if old is not None and old.bounds == bounds else None
    rows_offset = getattr(live, "rows_offset", None)
    if rows_offset is None:
        return None
    offset = rows_offset()
    i = bisect.bisect_left(bounds, offset)
    return i if i < len(bounds) and bounds[i] == offset else None


def _changed_pieces(new: bytes, bounds: list[int], old: _Stored | None) -> list[int]:
    """The pieces of ``new`` that differ from what their keys hold, in order: piece ``i`` against the
    old piece ``i`` wherever each starts (a part whose beginning grew or shrank, a learner's header or
    an idempotency entry, rewrites only the pieces whose bytes changed, not every piece after it).

    A plain loop of slice compares: a session has a handful of pieces (a 3 MB learner ~1,500),
    and per part the NumPy version's fixed cost was most of a cold session's save."""
    k = len(bounds) - 1
    if old is None:
        return list(range(k))
    n_old = old.count
    return [i for i in range(k) if i >= n_old or new[bounds[i]:bounds[i + 1]] != old.piece(i)]


def _changed_since(live: Any, old: _Stored) -> tuple[list[bytes], list[int], list[int]] | None:
    """A part that says what it changed since ``old`` (``changed_since``): its pieces, its bounds and
    the indices of the pieces that changed, from the regions it built (the pieces they cover, and
    every piece past the old end, which they must cover); None when it cannot tell or its regions do
    not fall on piece bounds (then the whole part is built). The other pieces' bytes are shared with
    ``old``: a one-event save of a full replay buffer builds the hot piece and one row, not 100 kB."""
    got = live.changed_since(old.token)
    if got is None:
        return None
    n, cuts, regions = got
    if n <= INLINE_BYTES:
        return None
    bounds = piece_bounds(n, cuts)
    k, n_old = len(bounds) - 1, old.count
    if k < n_old or (bounds is not old.bounds and bounds[:n_old + 1] != old.bounds):
        return None  # the old cut is not kept: any piece can differ
    pieces, changed = old.piece_list(), []
    if k > n_old:
        pieces.extend([None] * (k - n_old))  # type: ignore[list-item]  # each filled by a region below
    for off, data in regions:
        i, end = bisect.bisect_left(bounds, off), off + len(data)
        if end > n or i >= k + (not data) or bounds[i] != off:
            return None
        while bounds[i] < end:
            b = bounds[i + 1]
            if b > end:
                return None
            piece = data if b - bounds[i] == len(data) else data[bounds[i] - off:b - off]
            if i >= n_old or piece != pieces[i]:
                pieces[i] = piece
                changed.append(i)
            i += 1
    if k > n_old and None in pieces:
        return None
    return pieces, bounds, sorted(set(changed))  # once each: overlapping regions name a new piece twice


class SessionState:
    """One session's decoded state (``blob``) and what its keys in the store hold (``stored``).

    Decoded lazily as today: parts stay raw bytes until a verb asks for them, and a save
    looks only at decoded parts (a raw part cannot have changed).
    """

    __slots__ = ("blob", "full", "headed", "_sizes")

    def __init__(self, blob: StateBlob | None = None) -> None:
        self.blob = blob if blob is not None else StateBlob()
        self.full = False  # the next save rewrites every key (the store may be ahead of its changelog)
        self.headed = False  # the store holds this session's head (it was read from one, or saved)
        self._sizes: dict[str, tuple[Any, int]] = {}  # part -> (decoded object, its array bytes)

    @property
    def stored(self) -> dict[str, _Stored]:
        """Per part, what its keys hold (kept on the blob, so a verb's digest sees the same cuts)."""
        return self.blob.layout

    # -- reading ---------------------------------------------------------------
    @staticmethod
    def reads(head: bytes) -> tuple[list[bytes], list[str], Any]:
        """What to read of a session with this head when its replay rows may stay in the store
        (:meth:`decode` with ``rows``): the keys (relative to the base key) of the pieces before the
        rows of each part that names where its rows begin, the parts to read whole (a prefix scan each:
        every part of a head from before parts named their rows), and the head as read, for
        :meth:`decode` (``parsed``: a session read from the store parses its head once)."""
        if head[:3] == _LEGACY_MAGIC:
            return [], [], None
        parsed = _read_head(head)
        header, _, hot = parsed
        keys: list[bytes] = []
        scans: list[str] = []
        for name, p in header["parts"].items():
            first = p.get("l") if isinstance(p, dict) else None
            if not isinstance(first, int):
                scans.append(name)
                continue
            bounds = _unrle(p["p"])
            k = min(first, len(bounds) - 1)
            slots = _slots_from_hex(p["s"], len(bounds) - 1)
            rel = _relative_keys(name, len(bounds) - 1)
            keys.extend(rel[i][slots[i]] for i in range(1 if name in hot else 0, k))
        return keys, scans, parsed

    @classmethod
    def decode(cls, head: bytes | None, pieces: Iterable[tuple[bytes, bytes]],
               rows: Callable[[StateBlob, str], Callable[[int, int], bytes]] | None = None,
               parsed: Any = None) -> SessionState:
        """The state from its head value and its piece items (keys relative to the base key,
        i.e. ``part \\x1f index \\x1f slot``; extra or stale pieces are ignored).

        With ``rows``, a part whose head entry says where its replay rows begin is read without them
        (its items need not include them, :meth:`reads`): it decodes with ``from_head`` and reads a row
        through ``rows(blob, part)`` ((lo, hi) -> those bytes of the stored rows) when a kernel first
        replays it. ``parsed``: what :meth:`reads` gave for this head."""
        if head is None:
            return cls()
        if head[:3] == _LEGACY_MAGIC:
            s = cls(StateBlob.from_bytes(head))
            s.full = s.headed = True
            return s
        header, inline, hot = parsed if parsed is not None else _read_head(head)
        have = dict(pieces)
        blob = StateBlob()
        blob.watermark = Watermark(header["wm"])
        s = cls(blob)
        s.headed = True
        for name, data in inline.items():
            blob._raw[name] = data
            blob.layout[name] = _Stored(data, piece_bounds(len(data)), bytearray(), inline=True)
        for name, p in header["parts"].items():
            bounds = _unrle(p["p"])
            if bounds[-1] != p["n"]:
                raise CorruptStateError(f"state part {name!r}: piece table does not add up to its length")
            k = len(bounds) - 1
            slots = _slots_from_hex(p["s"], k)
            rows_from = p.get("l")
            if rows_from is not None and (not isinstance(rows_from, int) or isinstance(rows_from, bool)
                                          or not 0 <= rows_from <= k):
                raise CorruptStateError(f"state part {name!r}: its replay rows begin outside its pieces")
            lazy = rows is not None and rows_from is not None and rows_from < k
            chunks = []
            keys = _relative_keys(name, k)
            first = hot.get(name)
            for i in range(rows_from if lazy else k):
                c = first if i == 0 and first is not None else have.get(keys[i][slots[i]])
                if c is None or len(c) != bounds[i + 1] - bounds[i]:
                    raise CorruptStateError(f"state part {name!r}: piece {i} is missing or has the wrong length")
                chunks.append(c)
            data = b"".join(chunks)
            blob._raw[name] = data
            if lazy:
                assert rows is not None
                blob.lazy[name] = rows(blob, name)
                blob.layout[name] = _Stored(None, bounds, slots, p, hot=first is not None, rows_from=rows_from,
                                            pieces=chunks + [_GONE] * (k - rows_from))
            else:
                blob.layout[name] = _Stored(data, bounds, slots, p, hot=first is not None, rows_from=rows_from)
        return s

    def thin(self, rows: Callable[[StateBlob, str], Callable[[int, int], bytes]]) -> int:
        """Drop from memory the replay rows the store holds (each decoded part that can, ``thin``),
        to be read back through ``rows(blob, part)``; the bytes freed."""
        freed = 0
        if self.full:
            return 0  # the store may not hold what this state holds
        for name, live in self.blob._live.items():
            stored = self.blob.layout.get(name)
            thin = getattr(live, "thin", None)
            if thin is not None and stored is not None and stored.rows_from is not None:
                freed += thin(rows(self.blob, name))
        return freed

    # -- writing ---------------------------------------------------------------
    def changes(self, base: bytes, *, max_value_bytes: int | None = None,
                max_session_bytes: int | None = None) -> tuple[dict[bytes, bytes | None], dict[str, _Stored]]:
        """The writes that bring the keys to the current state, in the order they must be applied
        (changed pieces, the head, then deletes), and what the keys hold after them.

        Raises :class:`StateTooLarge` (nothing is written) when a value would exceed
        ``max_value_bytes`` or the session's bytes ``max_session_bytes``.
        """
        blob, stored, full = self.blob, self.blob.layout, self.full
        puts: dict[bytes, bytes | None] = {}
        deletes: dict[bytes, bytes | None] = {}
        after: dict[str, _Stored] = {}
        total = 0
        for name in blob.names():
            old = stored.get(name)
            live = blob._live.get(name)
            if live is None and old is not None and not full:
                after[name] = old  # raw: unchanged since it was read
                total += old.size
                continue
            data: bytes | None = None
            pieces: list[bytes] | None = None
            if live is not None:
                hot = getattr(live, "HEAD_PIECE", False)
                got = None
                if old is not None and not full and not old.inline and old.hot == hot and hasattr(live, "changed_since"):
                    got = _changed_since(live, old)
                if got is not None:
                    pieces, bounds, changed = got
                    total += bounds[-1]
                    if not changed and bounds == old.bounds:
                        after[name] = old  # decoded but unchanged: same keys, same head entry
                        continue
                else:
                    data, bounds = _current(live)
            else:
                data = blob.raw(name)
                bounds = old.bounds if old is not None and old.bounds[-1] == len(data) else piece_bounds(len(data))
                hot = old is not None and old.hot
            if data is not None:
                total += len(data)
                if (old is not None and not full and bounds == old.bounds and hot == old.hot and not old.released
                        and data == old.data):
                    after[name] = old  # decoded but unchanged: same keys, same head entry
                    continue
                if len(data) <= INLINE_BYTES:  # into the head (one piece: _current); keys it had go after the head
                    after[name] = _Stored(data, bounds, bytearray(), inline=True)
                    if old is not None and not old.inline:
                        _delete_pieces(deletes, base, name, 0, old.count)
                    continue
                if old is not None and old.inline:
                    old = None  # out of the head: every piece is new
                changed = _changed_pieces(data, bounds, old)
            k = len(bounds) - 1
            hot = hot and k > 0
            # a new piece goes to slot 0 (as if slot 1 held it); a kept one keeps its slot
            slots = bytearray(old.slots[:k]) if old is not None else bytearray()
            slots.extend(b"\x01" * (k - len(slots)))
            if old is not None and k and hot != old.hot and (not changed or changed[0] != 0):
                changed.insert(0, 0)  # into the head, or out of it into a key
            for i in changed:
                slots[i] ^= 1
            prefix = b"%s\x1f%s\x1f" % (base, name.encode())
            for i in range(k) if full else changed:
                if i or not hot:  # a first piece in the head goes with it
                    puts[b"%s%06d\x1f%d" % (prefix, i, slots[i])] = \
                        pieces[i] if pieces is not None else data[bounds[i]:bounds[i + 1]]
            if old is not None:  # a part that shrank: pieces past its end go
                _delete_pieces(deletes, base, name, k, old.count)
                if hot and not old.hot:  # its first piece moved into the head: its keys go after it
                    _delete_pieces(deletes, base, name, 0, 1)
            kept = after[name] = _Stored(data, bounds, slots, hot=hot, pieces=pieces, rows_from=_rows_from(live, bounds, old))
            if old is not None and old.bounds == bounds:  # the same cut: its lengths' runs too
                kept.head_entry(old.head_entry()["p"])
        for name, old in stored.items():
            if name not in after and not old.inline:  # a dropped part
                _delete_pieces(deletes, base, name, 0, old.count)
        head = _write_head(blob, after)
        if max_session_bytes is not None and total > max_session_bytes:
            raise StateTooLarge(f"the session's state would be {total} bytes, over the limit of "
                                f"{max_session_bytes} bytes per session (LEARNSTREAM_MAX_SESSION_BYTES)")
        if max_value_bytes is not None and len(head) > max_value_bytes:
            raise StateTooLarge(f"the session's head value would be {len(head)} bytes, over the limit of "
                                f"{max_value_bytes} bytes per value (LEARNSTREAM_MAX_VALUE_BYTES)")
        ops = puts
        ops[base] = head
        ops.update(deletes)
        return ops, after

    def written(self, after: dict[str, _Stored]) -> None:
        """The writes of :meth:`changes` are applied: the keys now hold ``after``.

        A decoded part the save found unchanged goes back to its stored bytes: the next save skips it
        without serialising it again (the learning loop decodes the deep core on a session's first
        event and then rarely changes it), and a verb that needs it decodes it again."""
        blob, old = self.blob, self.stored
        for name, kept in after.items():
            live = blob._live.get(name)
            if live is None:
                continue
            if old.get(name) is kept and not kept.released:
                # the bytes it will be decoded from stand for what the keys hold (``saved`` in from_bytes)
                kept.token = kept.data
                blob.set_bytes(name, kept.token)
                self._sizes.pop(name, None)
            elif old.get(name) is not kept:
                saved = getattr(live, "saved", None)  # a part that tracks what changed since (changed_since)
                if saved is not None:
                    saved(kept.token)
                    kept.release(live)  # the live part holds what was written: keep no second copy
        blob.layout = after
        self.full = False
        self.headed = True

    # -- inspecting ------------------------------------------------------------
    def nbytes(self) -> int:
        """About what this state costs in memory: the bytes its keys hold, plus each decoded part's
        arrays as they are now (an instant core's arena grows with its replay rows, to ~100 kB at
        384-d: a size cached when the part was decoded left half of a grown session outside the
        cache's budget)."""
        stored = sum(s.held for s in self.stored.values())
        raw = sum(len(b) for n, b in self.blob._raw.items() if n not in self.stored)
        live = 0
        for name, obj in self.blob._live.items():
            own = getattr(obj, "memory_bytes", None)
            if own is not None:  # what it holds now (the instant core's arena grows with its rows)
                live += own()
                continue
            hit = self._sizes.get(name)
            if hit is None or hit[0] is not obj:  # a part without memory_bytes keeps its arrays' sizes
                hit = self._sizes[name] = (obj, _object_bytes(obj))
            live += hit[1]
        return stored + raw + live + 256


def _object_bytes(obj: Any) -> int:
    """The bytes of the NumPy arrays a decoded part holds in its own attributes, each buffer once
    (views of one array count it once), or its ``memory_bytes()`` if it says."""
    own = getattr(obj, "memory_bytes", None)
    if own is not None:
        return int(own())
    values = list(getattr(obj, "__dict__", {}).values())
    for cls in type(obj).__mro__:
        values.extend(getattr(obj, name) for name in getattr(cls, "__slots__", ()) if hasattr(obj, name))
    owners: dict[int, int] = {}
    for v in values:
        if isinstance(v, np.ndarray):
            root = v
            while isinstance(root.base, np.ndarray):
                root = root.base
            owners[id(root)] = max(owners.get(id(root), 0), root.nbytes)  # a view of bytes: its own size
    return sum(owners.values())


def key_growth(before: dict[str, _Stored], after: dict[str, _Stored], ops: dict[bytes, bytes | None],
               headed: bool) -> int:
    """At least how many keys a save that takes the keys from ``before`` to ``after`` with ``ops`` adds
    to the store (negative: removes). New keys it is sure of: the session's head if the store had none,
    and each part's pieces past its old end (a part that shrank deleted both slots of those, so they have
    no key); then every delete counts as a key gone. A piece written to its other slot may add a key too,
    uncounted. The changelog rewriter adds this up between its key counts (changelog_rewrite.py)."""
    n = 0 if headed else 1
    for name, s in after.items():
        if s.inline:
            continue
        old = before.get(name)
        had = 0 if old is None or old.inline else old.count
        n += max(0, s.count - max(had, 1 if s.hot else 0))  # a first piece in the head has no key
    return n - sum(1 for v in ops.values() if v is None)


def pieces(blob: StateBlob) -> Iterator[tuple[str, int, bytes]]:
    """(part, index, bytes) of every piece of a session's current state, in key order."""
    for name in blob.names():
        live = blob._live.get(name)
        old = blob.layout.get(name)
        if live is not None:
            data, bounds = _current(live)
        else:
            data = blob.raw(name)
            bounds = old.bounds if old is not None and old.bounds[-1] == len(data) else piece_bounds(len(data))
        for i in range(len(bounds) - 1):
            yield name, i, data[bounds[i]:bounds[i + 1]]


def digest(blob: StateBlob) -> tuple[str, int]:
    """sha256 over a session's meta and every piece key (without its slot) and value, in key order,
    and the number of pieces. Equal for equal state, whoever wrote it and however often; the
    watermark is left out (an in-process session has none)."""
    # the format once began with a "meta" map that was always empty; its JSON ("{}") stays the
    # digest's first bytes so the digests of states stored before keep their value
    h = hashlib.sha256(b"{}")
    n = 0
    for name, i, b in pieces(blob):
        key = b"%s\x1f%06d" % (name.encode(), i)
        h.update(struct.pack("<II", len(key), len(b)))
        h.update(key)
        h.update(b)
        n += 1
    return h.hexdigest(), n


def _delete_pieces(deletes: dict[bytes, bytes | None], base: bytes, name: str, start: int, stop: int) -> None:
    for i in range(start, stop):
        deletes[_piece_key(base, name, i, 0)] = None
        deletes[_piece_key(base, name, i, 1)] = None


def _write_head(blob: StateBlob, parts: dict[str, _Stored]) -> bytes:
    """The head over ``parts``, which are in name order (``changes`` fills them from ``blob.names()``)."""
    table: dict[str, dict] = {}
    inline: list[bytes] = []
    hot: list[bytes] = []
    in_lengths: list[list] = []
    hot_lengths: list[list] = []
    for name, s in parts.items():
        if s.inline:
            d = s.data
            inline.append(d)
            in_lengths.append([name, len(d)])
        else:
            table[name] = s.head_entry()
            if s.hot:
                d = s.piece(0)
                hot.append(d)
                hot_lengths.append([name, len(d)])
    header = orjson.dumps({"wm": blob.watermark.offsets, "parts": table, "in": in_lengths, "h": hot_lengths})
    return pack_checked(_MAGIC, _VERSION, _ULEN.pack(len(header)), header, *inline, *hot)


def _read_head(data: bytes) -> tuple[dict, dict[str, bytes], dict[str, bytes]]:
    """The head's header, its inline parts and the first pieces it holds (version 1 has neither,
    version 2 no first pieces)."""
    version = version_of(data, (1, 2, _VERSION), _VERSION)
    payload = unpack_checked(data, _MAGIC, version, "state head")
    inline: dict[str, bytes] = {}
    hot: dict[str, bytes] = {}
    try:
        if version == 1:
            header = orjson.loads(payload)
        else:
            (hlen,) = _ULEN.unpack_from(payload)
            header = orjson.loads(payload[_ULEN.size:_ULEN.size + hlen])
            pos = _ULEN.size + hlen
            for into, names in ((inline, header["in"]), (hot, header["h"] if version >= 3 else [])):
                for name, n in names:
                    into[name] = bytes(payload[pos:pos + n])
                    pos += n
            if pos != len(payload):
                raise CorruptStateError("state head: inline parts do not add up to its length")
    except (orjson.JSONDecodeError, struct.error, KeyError, TypeError, ValueError) as exc:
        raise CorruptStateError(f"state head unreadable ({exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("parts"), dict):
        raise CorruptStateError("state head malformed")
    return header, inline, hot
