"""Instant core: a rank-2 Hebbian MicroLoRA adapter with prioritized replay (spec: cores.md, Instant core).

The state is two flat arrays the C++ kernels (``cpp/instant.h``) mutate in place:
``arena`` (float32: θ = [A; B], the EWC Fisher and snapshot, lr, replay rows and
scales) and ``meta`` (int64: dims, counters, replay ring, replay targets). The
attributes below are NumPy views into them, so a feedback event allocates nothing
and serializing is a few ``tobytes`` calls (:meth:`InstantState.to_bytes`). **[beyond]** the replay buffer, lr and
EWC state persist with the adapter.

Examples
--------
>>> import numpy as np
>>> s = InstantState(["small", "large"], dim=4)
>>> out = s.feedback(np.array([1, 0, 0, 0], np.float32), "large", 0.9)
>>> out["feedback_count"], round(out["lr"], 5)
(1, 0.00995)
>>> int(np.argmax(s.logits(np.array([1, 0, 0, 0], np.float32))))
1
"""
from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from workers import _kernels as _k
from workers.verbs.fields import MAX_DIM, epoch_ms, int_accepted, targets_list, to_float
from workers.verbs.codec import embedding_field
from workers.state.framing import pack_part, unpack_part, version_of
from workers.errors import CorruptStateError, VerbError
from workers.verbs.registry import EMBEDDING, EMBEDDING_B64, VerbContext, health_contributor, params, state_size, verb

__all__ = (
    "RANK", "DECAY", "LR0", "LR_MIN", "MAX_NORM", "REPLAY_CAP", "DEFAULT_DIM",
    "NOT_INITIALIZED", "InstantState", "read_embedding", "read_quality", "read_now_ms",
)

_C = _k.INSTANT_CONSTANTS
RANK: int = _C["rank"]
DECAY = 0.995
LR0 = 0.01
LR_MIN = 1e-3
MAX_NORM = 5.0
REPLAY_CAP: int = _C["replay_cap"]
DEFAULT_DIM = 384                      # the spec's input dim when init_instant gives none
NOT_INITIALIZED = "instant not initialized; call init_instant"

_M = _C["meta"]
_S = _C["scalars"]
_MAGIC = b"LSI"
# 3: the ring's targets and scales in the hot piece, a stored replay slot its row alone (so a session
# read from the store can leave its rows there: ``from_head``); 2: each slot its row, target and scale;
# 1: meta and the arena as laid out, EWC zeros included (2 and 1 still read)
_VERSION = 3

_RL, _RH, _FC, _EWC = _M["replay_len"], _M["replay_head"], _M["feedback_count"], _M["has_ewc"]
# The stored bytes are little-endian; on such a host (every platform the wheels build for) a replay row
# is its arrays' own bytes, else it goes through the structured dtype
_LITTLE_ENDIAN = sys.byteorder == "little"


@functools.lru_cache(maxsize=256)
def _layout_of(dim: int, n_targets: int) -> dict[str, int]:
    """The kernel's arena layout, one dict per shape (read only) rather than one per cached core."""
    return _k.instant_layout(dim, n_targets)


@functools.lru_cache(maxsize=1024)
def _slot_cuts(hot: int, start: int, row: int, n: int, ewc: bool) -> tuple[int, ...]:
    """A core's piece cuts, shared by every core of its shape: a tuple of Python ints per cached
    session cost 27 MB at 10,000 sessions (bench/README.md "state", twenty-seventh session)."""
    return ((hot,) if ewc else ()) + tuple(range(start, start + row * n, row))


# A thin core (its rows in the store) learns from at most this many events at a time on a scratch
# arena (_thin_call), holding the rows they push until its next thinning; more grow its own arena.
_HELD_MAX = 8
_SCRATCH_SIZES = 4  # scratch arenas kept per thread (one per core shape in use; a 4096-d one is ~1 MB)
_scratch = threading.local()


def _scratch_arena(size: int) -> np.ndarray:
    """This thread's scratch arena of ``size`` floats (the kernels drop the GIL: one per thread),
    reused while its contents are dead: ``_thin_call`` fills what the kernel reads before each call."""
    pool: dict[int, np.ndarray] | None = getattr(_scratch, "arenas", None)
    if pool is None:
        pool = _scratch.arenas = {}
    arena = pool.pop(size, None)
    if arena is None:
        arena = np.empty(size, np.float32)
        while len(pool) >= _SCRATCH_SIZES:
            pool.pop(next(iter(pool)))
    pool[size] = arena  # the most recently used last
    return arena


class InstantState:
    """One session's adapter, replay buffer, lr and EWC state.

    Parameters
    ----------
    targets
        Model names, in logit order (at least one, unique).
    dim
        Embedding dimension (default 384).
    lr_min
        lr floor; default ``LR_MIN``, capped at ``LR0`` (the verbs pass ``LEARNSTREAM_LR_MIN`` from Settings).

    Attributes
    ----------
    theta, A, B
        The flat parameters [A; B] and their (RANK, dim) / (RANK, nt) views.
    ewc_f, ewc_snap
        EWC Fisher and snapshot over θ (meaningful when ``has_ewc``).
    """

    # its first stored piece (counters, adapter, scalars: changed by every feedback event) is kept in
    # the session's head, not a key of its own (workers.state.layout): a one-event save is two records
    HEAD_PIECE = True

    __slots__ = ("targets", "dim", "_index", "_arena", "_meta", "theta", "A", "B", "ewc_f", "ewc_snap",
                 "replay_x", "replay_scale", "replay_idx", "_layout", "_prefix", "_cuts", "_hot", "_synced", "_synced_at",
                 "_sections", "_absent", "_rows_source", "_held")

    def __init__(self, targets: Sequence[str], dim: int | None = None, lr_min: float | None = None) -> None:
        self.targets: list[str] = list(targets)
        self.dim: int = DEFAULT_DIM if dim is None else int(dim)
        if not self.targets or len(set(self.targets)) != len(self.targets) or self.dim <= 0:
            raise ValueError("InstantState needs unique targets and dim > 0")
        self._index = {t: i for i, t in enumerate(self.targets)}
        self._layout = _layout_of(self.dim, len(self.targets))
        self._prefix: bytes | None = None  # to_bytes' framing and header: targets and dim never change
        self._cuts: tuple[tuple[int, bool], tuple[int, ...]] | None = None  # ((replay_len, has_ewc), piece_cuts())
        # What the store holds of this core (changed_since): the bytes it was decoded from, or the token
        # of its last save (``saved``); and then where their replay rows begin, how many they hold,
        # the ring's head and the feedback count
        self._synced: object = None
        self._synced_at = (0, 0, 0, 0)
        self._hot: int | None = None
        # Replay slots whose row is not in the arena but in the store, read through ``_rows_source``
        # ((lo, hi) -> those bytes of the stored rows) when a kernel is about to read them (``from_head``, ``thin``)
        self._absent: set[int] = set()
        self._rows_source: Callable[[int, int], bytes] | None = None
        # Rows a thin core (no rows in its arena) pushed since it was thinned, by slot (_thin_call); each
        # slot of a thin core's buffer is either here or absent. Growing the arena moves them into it.
        self._held: dict[int, np.ndarray] = {}
        self._arena = np.zeros(self._layout["replay_x"], np.float32)  # no replay rows yet: see _room
        self._meta = np.zeros(_C["meta_size"], np.int64)
        self._meta[_M["dim"]] = self.dim
        self._meta[_M["nt"]] = len(self.targets)
        sc = self._layout["scalars"]
        self._arena[sc + _S["lr"]] = LR0
        self._arena[sc + _S["lr_min"]] = LR_MIN if lr_min is None else min(float(lr_min), LR0)
        self._bind_views()

    def _bind_views(self) -> None:
        L, a, d, nt = self._layout, self._arena, self.dim, len(self.targets)
        p = L["n_params"]
        self.theta = a[L["theta"]:L["theta"] + p]
        self.A = self.theta[:RANK * d].reshape(RANK, d)
        self.B = self.theta[RANK * d:].reshape(RANK, nt)
        self.ewc_f = a[L["ewc_f"]:L["ewc_f"] + p]
        self.ewc_snap = a[L["ewc_snap"]:L["ewc_snap"] + p]
        self.replay_scale = a[L["replay_scale"]:L["replay_scale"] + REPLAY_CAP]
        self.replay_x = a[L["replay_x"]:].reshape(-1, d)
        self.replay_idx = self._meta[_M["replay_idx"]:_M["replay_idx"] + REPLAY_CAP]
        self._sections = (self._meta[:_M["replay_idx"]], a[L["theta"]:L["ewc_f"]], a[L["scalars"]:L["replay_x"]],
                          a[L["ewc_f"]:L["scalars"]])

    def _room(self, pushes: int) -> None:
        """Make the arena hold the replay rows ``pushes`` more events need.

        The arena is allocated with the rows in use, not all REPLAY_CAP of them (at 384-d those
        are 98 kB of a 108 kB core): a session that has seen a few events decodes to ~10 kB, so
        the session cache holds ten times as many of them. It grows by doubling, up to the cap.
        """
        rows = self.replay_x.shape[0]
        need = min(int(self._meta[_RL]) + pushes, REPLAY_CAP)
        if need <= rows:
            return
        grown = min(REPLAY_CAP, max(need, 2 * rows, 4))
        # not zeroed (a thinned core grows back on every touch): a new row is pushed or read from the
        # store before anything reads it, and nothing reads the rows past the buffer's length
        arena = np.empty(self._layout["replay_x"] + grown * self.dim, np.float32)
        arena[:self._arena.size] = self._arena
        self._arena = arena
        self._bind_views()
        for r, row in self._held.items():  # a thin core's pushed rows (only a thin core holds any)
            self.replay_x[r] = row
        self._held.clear()

    def memory_bytes(self) -> int:
        """The bytes its arrays hold (the attributes are views into these two, and the held rows)."""
        return self._arena.nbytes + self._meta.nbytes + 4 * self.dim * len(self._held)

    # -- scalars -------------------------------------------------------------
    def _scalar(self, name: str) -> float:
        return float(self._arena[self._layout["scalars"] + _S[name]])

    @property
    def nt(self) -> int:
        return len(self.targets)

    @property
    def n_params(self) -> int:
        return int(self._layout["n_params"])

    @property
    def lr(self) -> float:
        return self._scalar("lr")

    @property
    def lr_min(self) -> float:
        return self._scalar("lr_min")

    @property
    def ewc_lambda(self) -> float:
        return self._scalar("ewc_lam")

    @property
    def feedback_count(self) -> int:
        return int(self._meta[_M["feedback_count"]])

    @property
    def resets(self) -> int:
        return int(self._meta[_M["resets"]])

    @property
    def replay_len(self) -> int:
        return int(self._meta[_M["replay_len"]])

    @property
    def has_ewc(self) -> bool:
        return bool(self._meta[_M["has_ewc"]])

    @property
    def adapter_norm(self) -> float:
        return float(_k.instant_norm(self._arena, self._meta))  # the kernels' own sum: replies match traces

    def replay_entries(self) -> list[tuple[np.ndarray, int, float]]:
        """The replay buffer oldest first, as (x, target index, scale) copies."""
        head, n = int(self._meta[_M["replay_head"]]), self.replay_len
        self._load(range(n))
        rows = [(head + i) % REPLAY_CAP for i in range(n)]
        return [(self.replay_x[r].copy(), int(self.replay_idx[r]), float(self.replay_scale[r])) for r in rows]

    # -- validation ----------------------------------------------------------
    def target_index(self, model: str | int) -> int:
        """Index of a model name (or a checked index); the spec's error otherwise."""
        if isinstance(model, str):
            i = self._index.get(model)
            if i is not None:
                return i
        elif isinstance(model, (int, np.integer)) and not isinstance(model, bool) and 0 <= model < self.nt:
            return int(model)
        raise VerbError("unknown model name; not in registered targets")

    def check_feedback(self, x: np.ndarray, model: str | int, quality: float) -> tuple[np.ndarray, int, float]:
        """Validate one event in the spec's order; returns (x float32, target index, quality)."""
        q = _quality(quality)
        x = np.asarray(x, dtype=np.float32)
        if x.shape != (self.dim,):
            raise VerbError("embedding wrong dim")
        return x, self.target_index(model), q

    # -- learning ------------------------------------------------------------
    def feedback(self, x: np.ndarray, model: str | int, quality: float, now_ms: int = 0) -> dict:
        """One feedback event: Hebbian step, replay push and a replayed step.

        Returns ``{adapter_norm, feedback_count, lr}``. Raises :class:`VerbError`
        (``"quality must be 0..1"``, ``"embedding wrong dim"``,
        ``"unknown model name; not in registered targets"``) before any change.
        """
        x, t, q = self.check_feedback(x, model, quality)
        arena, done = self._kernel_arena(np.array([q], np.float32), np.array([now_ms], np.int64), 1)
        learned, norm = _k.instant_feedback(arena, self._meta, x, t, q, int(now_ms))
        done(int(learned))
        return {"adapter_norm": float(norm), "feedback_count": self.feedback_count, "lr": self.lr}

    def feedback_batch(self, X: np.ndarray, targets: np.ndarray, qualities: np.ndarray,
                       now_ms: np.ndarray | None = None, trace: np.ndarray | None = None) -> dict:
        """Validated events in order, in one GIL-free kernel call; exactly equal to
        calling :meth:`feedback` per row. ``targets`` are indices. ``trace``, a float64
        (n, 2) array, receives (adapter_norm, lr) after each row."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise VerbError("embedding wrong dim")
        n = X.shape[0]
        t = np.ascontiguousarray(targets, dtype=np.int64)
        q = np.ascontiguousarray(qualities, dtype=np.float32)
        if t.shape != (n,) or q.shape != (n,):
            raise ValueError("targets and qualities need one entry per row")
        if n and (t.min() < 0 or t.max() >= self.nt):
            raise VerbError("unknown model name; not in registered targets")
        if n and not (np.all(q >= 0) and np.all(q <= 1)):  # NaN fails both
            raise VerbError("quality must be 0..1")
        now = np.zeros(n, np.int64) if now_ms is None else np.ascontiguousarray(now_ms, dtype=np.int64)
        learned, norm = self.learn_checked(X, t, q, now, trace)
        return {"learned": int(learned), "adapter_norm": float(norm),
                "feedback_count": self.feedback_count, "lr": self.lr}

    def learn_checked(self, X: np.ndarray, targets: np.ndarray, qualities: np.ndarray, now_ms: np.ndarray,
                      trace: np.ndarray | None = None) -> tuple[int, float]:
        """:meth:`feedback_batch` for rows the caller has checked (the learning loop validates each
        event as it arrives): (learned, adapter_norm). The bindings still check shapes and target
        indices, and convert dtypes."""
        arena, done = self._kernel_arena(qualities, now_ms, len(X))
        learned, norm = _k.instant_feedback_batch(arena, self._meta, X, targets, qualities, now_ms, trace)
        done(learned)
        return learned, norm

    # -- replay rows left in the store -------------------------------------------
    def _kernel_arena(self, qualities: np.ndarray, now_ms: np.ndarray,
                      n: int) -> tuple[np.ndarray, Callable[[int], None]]:
        """The arena a feedback kernel over these ``n`` events runs on, with the rows it will replay in
        place, and what to call with its count of learned events afterwards: a thin core's scratch arena
        (``_thin_call``), or its own arena grown for the pushes (``_before_kernel``, ``_room``)."""
        thin = self._thin_call(qualities, now_ms, n)
        if thin is not None:
            return thin[0], functools.partial(self._after_thin_call, thin)
        ring = self._before_kernel(qualities, now_ms)
        self._room(n)
        return self._arena, functools.partial(self._after_kernel, ring)

    def _before_kernel(self, qualities: np.ndarray, now_ms: np.ndarray) -> tuple[int, int] | None:
        """Read the absent rows these events will replay (``_k.instant_replay_reads`` names them from
        the ring and scales alone); the ring's (head, len) when rows are absent, to mark the pushed ones."""
        if not self._absent:
            return None
        self._load(_k.instant_replay_reads(self._arena, self._meta, np.ascontiguousarray(qualities, np.float32),
                                           np.ascontiguousarray(now_ms, np.int64)).tolist())
        return int(self._meta[_RH]), int(self._meta[_RL])

    def _after_kernel(self, ring: tuple[int, int] | None, learned: int) -> None:
        """The slots the kernel pushed into hold their rows now."""
        if ring is None or not self._absent:
            return
        h0, n0 = ring
        self._absent.difference_update((h0 + n0 + j) % REPLAY_CAP for j in range(min(learned, REPLAY_CAP)))

    def _thin_call(self, qualities: np.ndarray, now_ms: np.ndarray, n: int) -> tuple[np.ndarray, int, int] | None:
        """For a thin core and at most a few events (``_HELD_MAX`` held rows after them): a scratch arena
        of its shape holding its hot part and the rows these events replay, for the kernel to run on,
        and the ring's (head, len) before them; None: the core's own arena is grown to every row
        (``_before_kernel``, ``_room``). A thin core touched by one event at a time (many sessions, each
        rarely) then never allocates its ~100 kB of rows only to drop them again after the save."""
        if self.replay_x.shape[0] or not self._absent or len(self._held) + n > _HELD_MAX:
            return None
        hot, d = self._layout["replay_x"], self.dim
        arena = _scratch_arena(hot + REPLAY_CAP * d)[:hot + min(int(self._meta[_RL]) + n, REPLAY_CAP) * d]
        arena[:hot] = self._arena
        for r in _k.instant_replay_reads(self._arena, self._meta, np.ascontiguousarray(qualities, np.float32),
                                         np.ascontiguousarray(now_ms, np.int64)).tolist():
            row = self._held.get(r)
            arena[hot + r * d:hot + (r + 1) * d] = self._stored_row(r) if row is None else row
        return arena, int(self._meta[_RH]), int(self._meta[_RL])

    def _after_thin_call(self, call: tuple[np.ndarray, int, int], learned: int) -> None:
        """Take back what the kernel changed in the scratch arena: the hot part, and the pushed rows (held)."""
        arena, h0, n0 = call
        hot, d = self._layout["replay_x"], self.dim
        self._arena[:] = arena[:hot]
        for j in range(min(learned, REPLAY_CAP)):
            r = (h0 + n0 + j) % REPLAY_CAP
            self._held[r] = arena[hot + r * d:hot + (r + 1) * d].copy()
            self._absent.discard(r)

    def _load(self, slots: Iterable[int]) -> None:
        """Bring the rows of these slots into the arena, those absent from it (read from the store)."""
        if not self._absent and not self._held:
            return
        need = [r for r in slots if r in self._absent]
        if need or self._held:
            self._room(0)  # a thin core's arena grows to its rows (and takes its held ones)
        for r in need:
            self.replay_x[r] = self._stored_row(r)
            self._absent.discard(r)

    def _stored_row(self, r: int) -> np.ndarray:
        """Replay slot ``r``'s row as the store holds it (a slot absent from memory)."""
        if self._rows_source is None:  # pragma: no cover - absent rows always come with their source
            raise CorruptStateError("instant state: replay rows are absent and there is no store to read them from")
        width = 4 * self.dim
        data = self._rows_source(r * width, (r + 1) * width)
        if len(data) != width:
            raise CorruptStateError(f"instant state: replay row {r} is missing or has the wrong length")
        return np.frombuffer(data, "<f4")

    def thin(self, source: Callable[[int, int], bytes]) -> int:
        """Drop the replay rows from memory when the store holds exactly them (the last save, or the
        bytes this core was read from), to be read back through ``source`` when a kernel replays one:
        a full 384-d core shrinks from ~100 kB to ~10 kB (a thin core drops the rows it held since). The
        bytes freed (0: nothing to drop, or rows the store does not have yet)."""
        m = self._meta
        if (self._synced is None or (self.replay_x.shape[0] == 0 and not self._held)
                or self._synced_at != (self._rows_start(), int(m[_RL]), int(m[_RH]), int(m[_FC]))):
            return 0
        if self._held:  # thin already: its pushed rows are in the store now
            freed = 4 * self.dim * len(self._held)
            self._held.clear()
            self._absent = set(range(int(m[_RL])))
            self._rows_source = source
            return freed
        before = self._arena.nbytes
        self._arena = self._arena[:self._layout["replay_x"]].copy()
        self._bind_views()
        self._absent = set(range(int(m[_RL])))
        self._rows_source = source
        return before - self._arena.nbytes

    # -- what changed since the stored bytes (workers.state.layout) --------------
    def changed_since(self, stored: object) -> tuple[int, tuple[int, ...], list[tuple[int, bytes]]] | None:
        """What a save must look at, when the store holds ``stored`` (the token the layout keeps for
        this core, see :meth:`saved`): ``(len(to_bytes()), piece_cuts(), regions)``, ``regions`` the
        ``(offset, bytes)`` of :meth:`to_bytes` outside which nothing differs from ``stored`` (everything
        before the replay rows, then each row the kernel wrote since, in order); None when that is not
        known. A one-event save of a full replay buffer builds 2 pieces, not 65.

        Every event counts once and pushes at most once, to consecutive ring positions from
        ``head + len`` (the head moves only once the ring is full): fewer events than the ring holds
        since then, and the ring's head and length say which rows."""
        if stored is not self._synced or stored is None:
            return None
        start0, n0, h0, fc0 = self._synced_at
        m = self._meta
        fc, n, head = int(m[_FC]), int(m[_RL]), int(m[_RH])
        start = self._rows_start()
        if fc - fc0 >= REPLAY_CAP or start != start0:  # the ring may have gone round; EWC state moved the rows
            return None
        pushes = (n - n0) + (head - h0) % REPLAY_CAP
        row = 4 * self.dim
        regions = [(0, self._before_rows())]
        rows = [(h0 + n0 + j) % REPLAY_CAP for j in range(pushes)]
        if pushes > 1:
            rows.sort()
        regions += [(start + r * row, self._rows(r, r + 1)) for r in rows]
        return start + n * row, self.piece_cuts(), regions

    def saved(self, token: object) -> None:
        """The store now holds what :meth:`to_bytes` gives; ``token`` stands for it (its bytes, or the
        pieces the layout keeps): nothing is dirty."""
        m = self._meta
        fc, n, head = int(m[_FC]), int(m[_RL]), int(m[_RH])
        self._synced = token
        self._synced_at = (self._rows_start(), n, head, fc)

    def rebind(self, old: object, new: object) -> None:
        """The store's bytes ``old`` stood for are now called ``new`` (the layout dropped its copy of
        the replay rows): if this core was in step with ``old``, it is with ``new``."""
        if self._synced is old and old is not None:
            self._synced = new

    def rows_offset(self) -> int:
        """Where the replay rows begin in :meth:`to_bytes`: the layout keeps no copy of the stored bytes
        from here on (``_Stored.release``). A save compares a row only when the kernel rewrote it; the
        bytes before (counters, adapter, EWC state) are compared on every save."""
        return self._rows_start()

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Adapter forward: (dim,) -> (nt,) or (n, dim) -> (n, nt)."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape[-1:] != (self.dim,) or x.ndim not in (1, 2):
            raise VerbError("embedding wrong dim")
        return _k.adapter_forward(self._arena, self._meta, x)

    def reset(self) -> dict:
        """Zero A and B, restore lr; replay, EWC and feedback_count stay."""
        self.theta[:] = 0.0
        self._arena[self._layout["scalars"] + _S["lr"]] = LR0
        self._meta[_M["resets"]] += 1
        return {"resets": self.resets, "lr": self.lr}

    def set_ewc(self, F: np.ndarray, snapshot: np.ndarray, lam: float) -> None:
        """Receive EWC state over θ (both of length ``n_params``)."""
        if len(F) != self.n_params or len(snapshot) != self.n_params:
            raise ValueError(f"EWC state must have length {self.n_params}")
        self.ewc_f[:] = F
        self.ewc_snap[:] = snapshot
        self._arena[self._layout["scalars"] + _S["ewc_lam"]] = lam
        self._meta[_M["has_ewc"]] = 1

    # -- bytes ---------------------------------------------------------------
    # Version 3 writes what changes together, together:
    #   counters | the ring's targets (i4) | θ | lr, lr_min, ewc_lam, the ring's scales   one "hot" piece
    #   EWC Fisher | EWC snapshot            only once set_ewc gave them (before: 2 x n_params zeros)
    #   per used replay slot: x (dim f4)                                       one piece per slot
    # so a feedback event rewrites the hot piece and the slot it pushed, and which rows an event
    # replays is known from the hot piece alone (``from_head``). Version 2 kept a slot's target and
    # scale with its row; version 1 wrote meta and the arena as laid out.
    def _hot_bytes(self) -> int:
        if self._hot is None:  # fixed by targets and dim, asked on every save
            L = self._layout
            self._hot = (len(self._framing()) + 8 * _M["replay_idx"] + 4 * REPLAY_CAP
                         + 4 * (L["ewc_f"] - L["theta"] + L["replay_x"] - L["scalars"]))
        return self._hot

    def to_bytes(self) -> bytes:
        """b"LSI" + version + header length + orjson {targets, dim} + the sections above."""
        return self._before_rows() + self._rows(0, self.replay_len)

    def _before_rows(self) -> bytes:
        """The bytes before the replay rows: framing, counters, adapter, scalars, EWC state."""
        if _LITTLE_ENDIAN:  # every save builds these: views bound with the arena (_bind_views)
            counters, theta, scalars, ewc = self._sections
            parts = [self._framing(), counters.tobytes(), self.replay_idx.astype(np.int32).tobytes(), theta.tobytes(),
                     scalars.tobytes()]
            if self._meta[_EWC]:
                parts.append(ewc.tobytes())
            return b"".join(parts)
        L, a = self._layout, self._arena.astype("<f4", copy=False)
        ewc = a[L["ewc_f"]:L["scalars"]].tobytes() if self.has_ewc else b""
        return b"".join([self._framing(), self._meta[:_M["replay_idx"]].astype("<i8").tobytes(),
                         self.replay_idx.astype("<i4").tobytes(), a[L["theta"]:L["ewc_f"]].tobytes(), a[L["scalars"]:L["replay_x"]].tobytes(), ewc])

    def _rows(self, lo: int, hi: int) -> bytes:
        """Replay rows ``lo:hi`` as stored: each its row (its target and scale are in the hot piece)."""
        held = self._held
        if held and hi == lo + 1 and lo in held:  # a row a thin core pushed: its save asks for these one by one
            row = held[lo]
            return row.tobytes() if _LITTLE_ENDIAN else row.astype("<f4").tobytes()
        self._load(range(lo, hi))
        rows = self.replay_x[lo:hi]
        return rows.tobytes() if _LITTLE_ENDIAN else rows.astype("<f4").tobytes()

    def _rows_start(self) -> int:
        """Where the replay rows begin in :meth:`to_bytes`."""
        return self._hot_bytes() + (8 * self.n_params if self._meta[_M["has_ewc"]] else 0)

    def _framing(self) -> bytes:
        """What :func:`pack_part` puts before the payload (made once: every save needs it)."""
        if self._prefix is None:
            self._prefix = pack_part(_MAGIC, _VERSION, {"targets": self.targets, "dim": self.dim})
        return self._prefix

    def piece_cuts(self) -> tuple[int, ...]:
        """Offsets in :meth:`to_bytes` where a stored piece must start (``workers.state.layout``):
        after the hot piece (counters, adapter, scalars), and at each replay slot, so one feedback
        event rewrites the hot piece and one slot."""
        m = self._meta
        n, ewc = int(m[_RL]), bool(m[_EWC])
        if self._cuts is None or self._cuts[0] != (n, ewc):
            hot = self._hot_bytes()
            self._cuts = ((n, ewc), _slot_cuts(hot, hot + (8 * self.n_params if ewc else 0), 4 * self.dim, n, ewc))
        return self._cuts[1]

    @classmethod
    def from_bytes(cls, data: bytes) -> InstantState:
        return cls._decode(data, None)

    @classmethod
    def from_head(cls, data: bytes, rows: Callable[[int, int], bytes]) -> InstantState:
        """The core from the bytes :meth:`to_bytes` gives *before its replay rows* (``rows_offset``);
        a row is read through ``rows`` ((lo, hi) -> those bytes of the stored rows) when a kernel
        first replays it."""
        return cls._decode(data, rows)

    @classmethod
    def _decode(cls, data: bytes, rows: Callable[[int, int], bytes] | None) -> InstantState:
        version = version_of(data, (1, 2, _VERSION), _VERSION)
        if rows is not None and version != _VERSION:
            raise CorruptStateError(f"instant state version {version} cannot be read without its replay rows")
        header, pos = unpack_part(data, _MAGIC, version, "instant")
        try:
            obj = cls(header["targets"], header["dim"], lr_min=LR0)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStateError(f"instant state header is malformed ({exc})") from None
        k = obj._meta.size if version == 1 else _M["replay_idx"]  # v2, v3: the counters (v3 then the targets)
        meta = np.frombuffer(data, dtype="<i8", count=k, offset=pos) if len(data) >= pos + 8 * k else None
        if (meta is None or meta[_M["dim"]] != obj.dim or meta[_M["nt"]] != obj.nt
                or meta[_M["has_ewc"]] not in (0, 1) or not 0 <= meta[_M["replay_len"]] <= REPLAY_CAP):
            raise CorruptStateError("instant state meta does not match its header")
        pos += 8 * k
        obj._meta[:k] = meta
        if version == _VERSION:
            if len(data) < pos + 4 * REPLAY_CAP:
                raise CorruptStateError("instant state arena has the wrong length")
            obj._meta[k:] = np.frombuffer(data, "<i4", REPLAY_CAP, pos)
            pos += 4 * REPLAY_CAP
        L, n = obj._layout, obj.replay_len
        ewc = 8 * obj.n_params if obj.has_ewc else 0
        held = 0 if rows is not None else n  # the rows the bytes hold
        if version == 1:
            expect = 4 * (L["replay_x"] + n * obj.dim)
        elif version == 2:
            expect = 4 * (L["ewc_f"] - L["theta"] + L["replay_scale"] - L["scalars"]) + ewc + n * _v2_row(obj.dim).itemsize
        else:
            expect = 4 * (L["ewc_f"] - L["theta"] + L["replay_x"] - L["scalars"]) + ewc + 4 * held * obj.dim
        if len(data) - pos != expect:
            raise CorruptStateError("instant state arena has the wrong length")
        used = L["replay_x"] + held * obj.dim
        arena = np.zeros(used, np.float32)  # its own copy; what v2 and v3 leave out stays zero
        if version == 1:
            arena[:] = np.frombuffer(data, "<f4", used, pos)
        else:
            def take(count: int) -> np.ndarray:
                nonlocal pos
                out = np.frombuffer(data, "<f4", count, pos)
                pos += 4 * count
                return out
            arena[L["theta"]:L["ewc_f"]] = take(L["ewc_f"] - L["theta"])
            if version == 2:
                arena[L["scalars"]:L["replay_scale"]] = take(L["replay_scale"] - L["scalars"])
            else:
                arena[L["scalars"]:L["replay_x"]] = take(L["replay_x"] - L["scalars"])
            if obj.has_ewc:
                arena[L["ewc_f"]:L["scalars"]] = take(L["scalars"] - L["ewc_f"])
            if version == 2:
                v2 = np.frombuffer(data, _v2_row(obj.dim), n, pos)
                arena[L["replay_x"]:used] = v2["x"].reshape(-1)
                arena[L["replay_scale"]:L["replay_scale"] + n] = v2["s"]
                obj._meta[_M["replay_idx"]:_M["replay_idx"] + n] = v2["i"]
            else:
                arena[L["replay_x"]:used] = take(held * obj.dim)
        obj._arena = arena
        obj._bind_views()
        if rows is not None:
            obj._absent = set(range(n))
            obj._rows_source = rows
        if version == _VERSION and rows is None:  # older bytes are not what to_bytes gives; a head's
            obj.saved(data)  # reader says what its bytes stand for (StateBlob.get)
        return obj

    def __eq__(self, other: object) -> bool:
        if not (isinstance(other, InstantState) and other.targets == self.targets and other.dim == self.dim
                and np.array_equal(other._meta, self._meta)):
            return False
        self._load(range(self.replay_len))  # rows left in the store are state too
        other._load(range(other.replay_len))
        used = self._layout["replay_x"] + self.replay_len * self.dim  # rows past the buffer are room, not state
        return np.array_equal(other._arena[:used], self._arena[:used])

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"InstantState(targets={self.targets!r}, dim={self.dim}, feedback_count={self.feedback_count}, "
                f"lr={self.lr:.6g}, adapter_norm={self.adapter_norm:.4g})")


@functools.lru_cache(maxsize=64)
def _v2_row(dim: int) -> np.dtype:
    """A replay slot as version 2 stored it: its row, target and scale (made once per dim: building a
    dtype costs ~2 us)."""
    return np.dtype([("x", "<f4", (dim,)), ("i", "<i8"), ("s", "<f4")])


def _quality(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise VerbError("quality must be 0..1")
    q = to_float(value)
    if not 0.0 <= q <= 1.0:  # NaN fails too
        raise VerbError("quality must be 0..1")
    return q


# -- request fields ------------------------------------------------------------
def read_quality(body: dict, prefix: str = "") -> float:
    """The event's quality: the reference's ``payload: {quality, signal?}`` or a flat ``quality``
    ([beyond]); when both are given they must agree. ``signal`` is optional free text."""
    flat = body.get("quality")
    payload = body.get("payload")
    nested = None
    if payload is not None:
        if not isinstance(payload, dict):
            raise VerbError(f"{prefix}payload must be an object")
        nested = payload.get("quality")
        signal = payload.get("signal")
        if signal is not None and not isinstance(signal, str):
            raise VerbError(f"{prefix}payload.signal must be a string")
    if flat is None and nested is None:
        raise VerbError(f"{prefix}payload.quality required")
    try:
        q = _quality(nested if flat is None else flat)
        if flat is not None and nested is not None and _quality(nested) != q:
            raise VerbError("quality and payload.quality disagree")
    except VerbError as exc:
        raise VerbError(f"{prefix}{exc}") from None
    return q


def read_embedding(body: dict, dim: int, prefix: str = "") -> np.ndarray:
    """``embedding`` (array) or ``embedding_b64`` of exactly ``dim`` floats."""
    if body.get("embedding") is None and body.get("embedding_b64") is None:
        raise VerbError(f"{prefix}embedding required")
    x = embedding_field(body, "embedding", prefix=prefix)
    if x.size != dim:
        raise VerbError(f"{prefix}embedding wrong dim")
    return x


def read_now_ms(body: dict, prefix: str = "") -> int:
    """The event's ``now_ms`` (0 when absent): epoch milliseconds, not before 1970, as the topic schemas say."""
    return epoch_ms(body, "now_ms", 0, prefix=prefix, lo=0)


def read_model(body: dict, state: InstantState, prefix: str = "") -> int:
    model = body.get("model")
    if model is None:
        raise VerbError(f"{prefix}model required")
    if not isinstance(model, str):
        raise VerbError(f"{prefix}unknown model name; not in registered targets")
    try:
        return state.target_index(model)
    except VerbError as exc:
        raise VerbError(f"{prefix}{exc}") from None


def _instant(ctx: VerbContext) -> InstantState:
    s = ctx.state.get("instant", InstantState)
    if s is None:
        raise VerbError(NOT_INITIALIZED)
    return s


# -- verbs ---------------------------------------------------------------------
@verb("init_instant", table="session", writes=True, topic="commands", params=params(
    ("targets",), targets={"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                           "uniqueItems": True},
    dim={"type": "integer", "minimum": 1, "maximum": MAX_DIM, "default": DEFAULT_DIM,
         "description": "the width of the embeddings feedback will send (every later feedback embedding must "
                        "have exactly this many floats, or it is refused as 'embedding wrong dim')"}))
def init_instant(ctx: VerbContext, body: dict) -> dict:
    """{targets: [str, ...], dim?} -> {targets, dim}. Replaces any previous adapter."""
    targets = targets_list(body.get("targets"))
    dim = body.get("dim", DEFAULT_DIM)
    if dim is None:
        dim = DEFAULT_DIM
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise VerbError("dim must be a positive integer")
    if dim > MAX_DIM:
        raise VerbError(f"dim must be at most {MAX_DIM}")
    ctx.state.set("instant", InstantState(targets, dim, lr_min=ctx.options.lr_min))
    return {"targets": list(targets), "dim": dim}


# the reference hosts' body ({payload: {quality, signal?}}) or a flat quality: one of them at least, as in
# topics/feedback.yaml
_FEEDBACK_PARAMS = {**params(
    ("model",), model={"type": "string", "minLength": 1},
    quality={"type": "number", "minimum": 0, "maximum": 1},
    payload={"type": "object", "properties": {"quality": {"type": "number", "minimum": 0, "maximum": 1},
                                              "signal": {"type": "string"}}, "required": ["quality"]},
    embedding=EMBEDDING, embedding_b64=EMBEDDING_B64, now_ms={"type": "integer", "minimum": 0}),
    "allOf": [{"anyOf": [{"required": ["quality"]}, {"required": ["payload"]}]},
              {"oneOf": [{"required": ["embedding"]}, {"required": ["embedding_b64"]}]}]}


@verb("feedback", table="session", writes=True, topic="commands", params=_FEEDBACK_PARAMS)
def feedback(ctx: VerbContext, body: dict) -> dict:
    """{embedding|embedding_b64, model, payload: {quality, signal?} | quality, now_ms?}
    -> {adapter_norm, feedback_count, lr}."""
    s = _instant(ctx)
    q = read_quality(body)
    x = read_embedding(body, s.dim)
    t = read_model(body, s)
    now_ms = read_now_ms(body)
    return s.feedback(x, t, q, now_ms)


@verb("apply_adapter", table="session", writes=False)
def apply_adapter(ctx: VerbContext, body: dict) -> dict:
    """{embedding|embedding_b64} -> {logits, targets}."""
    s = _instant(ctx)
    x = read_embedding(body, s.dim)
    return {"logits": s.logits(x).tolist(), "targets": list(s.targets)}


@verb("reset_adapter", table="session", writes=True, topic="commands")
def reset_adapter(ctx: VerbContext, body: dict) -> dict:
    """{} -> {resets, lr}: zero A and B, lr back to LR0."""
    return _instant(ctx).reset()


@health_contributor
def _health(ctx: VerbContext) -> dict:
    """``instant_ready`` (the reference's), and once it is: what a write answers, readable without one."""
    if ctx.state is None or not ctx.state.has("instant"):
        return {"instant_ready": False}
    s = ctx.state.get("instant", InstantState)
    return {"instant_ready": True, "feedback_count": s.feedback_count, "adapter_norm": s.adapter_norm,
            "adapter_resets": s.resets, "lr": s.lr}


@state_size("init_instant")
def _state_size(body: dict) -> tuple[str, int] | None:
    dim = int_accepted(body, "dim", DEFAULT_DIM, MAX_DIM)
    targets = body.get("targets")
    if not dim or not isinstance(targets, list) or not targets:
        return None
    c = _C
    nt = len(targets)
    # theta, EWC Fisher and snapshot over rank * (dim + nt) params, scalars, and a full replay ring
    floats = 3 * c["rank"] * (dim + nt) + 16 + c["replay_cap"] * (dim + 1)
    return "dim", 4 * floats + 8 * (c["meta_size"] + c["replay_cap"])
