"""Replay memory: bounded, O(1) memory per example, three strategies.

- ``"uniform"``: a ring (the oldest example is overwritten), sampled uniformly.
- ``"reservoir"``: Algorithm R (the i-th example replaces a random slot with
  probability capacity/i), so the memory is a uniform sample of the whole stream;
  sampled uniformly.
- ``"prioritized"``: sampled with probability ∝ priority^alpha (priority = the
  example's last loss, updated after each replay) through a :class:`SumTree`, so
  add, sample and update are O(log n). Which example a full memory evicts is
  ``eviction``: ``"reservoir"`` (default: the memory stays a uniform sample of the
  stream, which a class-incremental stream needs) or ``"fifo"`` (classic PER).

Each slot holds the features, the label, the task id, the logits the model gave
when the example was stored (dark experience replay) and its priority; all are
preallocated on the first add, so memory stays flat however long the stream.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from workers.online.base import Stateful
from workers.online.snapshot import rng_state, set_rng_state

__all__ = ("SumTree", "ReplayBuffer", "ReplaySample")

# Priority of a new example whose loss is unknown: the largest seen so far is the
# usual choice (PER), so every example is replayed at least with a fair chance.
_MIN_PRIORITY = 1e-6
_STRATEGIES = ("uniform", "reservoir", "prioritized")
_EVICTIONS = ("reservoir", "fifo")


class SumTree:
    """A complete binary tree of sums over ``capacity`` non-negative leaves.

    ``update`` and ``find`` walk one root-to-leaf path (O(log n)); both take arrays
    and walk all paths level by level, so a batch costs log n NumPy operations.

    Examples
    --------
    >>> t = SumTree(4)
    >>> t.update(np.array([0, 1, 2, 3]), np.array([1.0, 0.0, 3.0, 0.0]))
    >>> t.total, t.find(np.array([0.5, 1.5, 3.9])).tolist()
    (4.0, [0, 2, 2])
    """

    __slots__ = ("capacity", "size", "tree")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.size = 1 << max(0, (capacity - 1).bit_length())  # leaves, a power of two
        self.tree = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def leaves(self) -> np.ndarray:
        return self.tree[self.size:self.size + self.capacity]

    def update(self, idx: np.ndarray, values: np.ndarray) -> None:
        """Set leaves ``idx`` to ``values`` and repair the sums above them."""
        nodes = np.asarray(idx, dtype=np.int64) + self.size
        self.tree[nodes] = values  # a repeated index keeps its last value, as sequential sets would
        nodes = np.unique(nodes >> 1)
        while nodes.size and nodes[0] >= 1:
            self.tree[nodes] = self.tree[2 * nodes] + self.tree[2 * nodes + 1]
            if nodes[0] == 1:
                break
            nodes = np.unique(nodes >> 1)

    def find(self, mass: np.ndarray) -> np.ndarray:
        """The leaf where the running sum first exceeds each ``mass`` (0 <= mass < total)."""
        nodes = np.ones(len(mass), dtype=np.int64)
        m = np.asarray(mass, dtype=np.float64).copy()
        while nodes[0] < self.size:  # all paths have the same depth
            left = 2 * nodes
            lv = self.tree[left]
            go_right = m >= lv
            m -= np.where(go_right, lv, 0.0)
            nodes = left + go_right
        leaf = nodes - self.size
        # rounding can land past the last filled leaf; step back to a non-empty one
        return np.minimum(leaf, self.capacity - 1)

    def rebuild(self, leaves: np.ndarray) -> None:
        self.tree[:] = 0.0
        self.tree[self.size:self.size + len(leaves)] = leaves
        for i in range(self.size - 1, 0, -1):
            self.tree[i] = self.tree[2 * i] + self.tree[2 * i + 1]


class ReplaySample:
    """Slots drawn from a :class:`ReplayBuffer`, with views of their contents."""

    __slots__ = ("idx", "x", "y", "task", "logits", "has_logits")

    def __init__(self, buf: ReplayBuffer, idx: np.ndarray) -> None:
        self.idx = idx
        self.x = buf._x[idx]
        self.y = buf._y[idx]
        self.task = buf._task[idx]
        self.logits = buf._logits[idx] if buf._logits is not None else None
        self.has_logits = buf._has_logits[idx]

    def __len__(self) -> int:
        return len(self.idx)


class ReplayBuffer(Stateful):
    """Bounded replay memory.

    Parameters
    ----------
    capacity
        Maximum number of examples kept (0 disables replay). Default 200.
    strategy
        ``"uniform"``, ``"reservoir"`` or ``"prioritized"`` (see the module docstring).
        Default ``"prioritized"`` (with reservoir eviction: a uniform sample of the stream,
        replayed by loss).
    alpha
        Priority exponent of ``"prioritized"`` (0 = uniform). Default 0.6.
    eviction
        Which slot a full ``"prioritized"`` memory overwrites: ``"reservoir"`` or ``"fifo"``.
    seed
        Seed of the sampling RNG (its state is part of the saved state).

    Attributes
    ----------
    n_seen
        Examples offered to :meth:`add` so far.

    Examples
    --------
    >>> buf = ReplayBuffer(capacity=100, strategy="reservoir", seed=0)
    >>> for i in range(10_000):
    ...     buf.add(np.array([i], dtype=np.float32), i % 10)
    >>> len(buf), buf.n_seen
    (100, 10000)
    >>> float(np.mean(buf.sample(100).x)) > 2000   # a sample of the whole stream, not its tail
    True
    """

    _unit_test_params = {"capacity": 8, "strategy": "prioritized"}

    def __init__(self, capacity: int | None = None, strategy: str | None = None, alpha: float | None = None,
                 eviction: str | None = None, seed: int | None = None) -> None:
        self.capacity = capacity
        self.strategy = strategy
        self.alpha = alpha
        self.eviction = eviction
        self.seed = seed
        self._reset()

    # -- resolved hyperparameters ---------------------------------------------
    def in_force(self) -> dict[str, Any]:
        return {"capacity": self._cap, "strategy": self._strategy, "alpha": self._alpha, "eviction": self._eviction}

    @property
    def _cap(self) -> int:
        c = 200 if self.capacity is None else int(self.capacity)
        if c < 0:
            raise ValueError("capacity must be >= 0")
        return c

    @property
    def _strategy(self) -> str:
        s = self.strategy or "prioritized"
        if s not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {_STRATEGIES}, got {s!r}")
        return s

    @property
    def _alpha(self) -> float:
        return 0.6 if self.alpha is None else float(self.alpha)

    @property
    def _eviction(self) -> str:
        if self._strategy == "uniform":
            return "fifo"
        if self._strategy == "reservoir":
            return "reservoir"
        e = self.eviction or "reservoir"
        if e not in _EVICTIONS:
            raise ValueError(f"eviction must be one of {_EVICTIONS}, got {e!r}")
        return e

    def _reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self.n_seen = 0
        self._n = 0          # filled slots
        self._next = 0       # FIFO cursor
        self._x: np.ndarray = np.zeros((0, 0), dtype=np.float32)
        self._y = np.zeros(0, dtype=np.int32)
        self._task = np.zeros(0, dtype=np.int32)
        self._logits: np.ndarray | None = None
        self._has_logits = np.zeros(0, dtype=bool)
        self._tree: SumTree | None = None
        self._max_priority = 1.0

    def _allocate(self, n_features: int, n_logits: int) -> None:
        cap = self._cap
        self._x = np.zeros((cap, n_features), dtype=np.float32)
        self._y = np.zeros(cap, dtype=np.int32)
        self._task = np.zeros(cap, dtype=np.int32)
        self._logits = np.zeros((cap, n_logits), dtype=np.float32) if n_logits else None
        self._has_logits = np.zeros(cap, dtype=bool)
        self._tree = SumTree(cap) if self._strategy == "prioritized" else None

    def __len__(self) -> int:
        return self._n

    @property
    def n_features(self) -> int:
        return self._x.shape[1]

    # -- adding ----------------------------------------------------------------
    def _slots_for(self, k: int) -> np.ndarray:
        """Slot per new example, or -1 to drop it; advances the counters (vectorised)."""
        cap = self._cap
        out = np.empty(k, dtype=np.int64)
        fill = min(k, cap - self._n)
        out[:fill] = np.arange(self._n, self._n + fill)
        self._n += fill
        rest = k - fill
        if rest:
            if self._eviction == "fifo":  # the cursor is the oldest slot (0 right after filling)
                out[fill:] = (self._next + np.arange(rest)) % cap
                self._next = (self._next + rest) % cap
            else:  # Algorithm R: the i-th example (1-based) takes slot floor(u*i) if that is < cap
                i = self.n_seen + fill + 1 + np.arange(rest)
                r = np.floor(self._rng.random(rest) * i).astype(np.int64)
                out[fill:] = np.where(r < cap, r, -1)
        self.n_seen += k
        return out

    def add(self, x: np.ndarray, y: int, *, task: int = 0, logits: np.ndarray | None = None,
            priority: float | None = None) -> None:
        """Offer one example (see :meth:`add_many`)."""
        self.add_many(np.asarray(x, dtype=np.float32)[None, :], np.array([y]), task=task,
                      logits=None if logits is None else np.asarray(logits, dtype=np.float32)[None, :],
                      priority=None if priority is None else np.array([priority]))

    def add_many(self, X: np.ndarray, y: np.ndarray, *, task: int | np.ndarray = 0,
                 logits: np.ndarray | None = None, priority: np.ndarray | None = None) -> np.ndarray:
        """Offer examples in order; returns the slot each one went to (-1: not kept)."""
        if self._cap == 0:
            self.n_seen += len(X)
            return np.full(len(X), -1, dtype=np.int64)
        X = np.asarray(X, dtype=np.float32)
        if self._x.shape[0] == 0:
            self._allocate(X.shape[1], 0 if logits is None else logits.shape[1])
        elif X.shape[1] != self._x.shape[1]:
            raise ValueError(f"examples have {X.shape[1]} features, the memory holds {self._x.shape[1]}")
        if logits is not None and self._logits is None:
            self._logits = np.zeros((self._cap, logits.shape[1]), dtype=np.float32)
        slots = self._slots_for(len(X))
        keep = slots >= 0
        if not keep.any():
            return slots
        # a slot drawn twice in one call keeps the later example, as one-by-one adds would
        s, src = slots[keep], np.flatnonzero(keep)
        self._x[s] = X[src]
        self._y[s] = np.asarray(y)[src]
        self._task[s] = np.broadcast_to(np.asarray(task, dtype=np.int32), (len(X),))[src]
        if logits is not None:
            self._logits[s] = logits[src]
            self._has_logits[s] = True
        else:
            self._has_logits[s] = False
        if self._tree is not None:
            p = (np.full(len(src), self._max_priority) if priority is None
                 else np.maximum(np.asarray(priority, dtype=np.float64)[src], _MIN_PRIORITY))
            self._max_priority = max(self._max_priority, float(p.max()))
            self._tree.update(s, p ** self._alpha)
        return slots

    # -- sampling --------------------------------------------------------------
    def sample(self, k: int) -> ReplaySample:
        """``k`` slots (with replacement for ``"prioritized"``, without otherwise when possible)."""
        n = self._n
        if n == 0 or k <= 0:
            return ReplaySample(self, np.zeros(0, dtype=np.int64))
        if self._tree is not None and self._tree.total > 0:
            # stratified: one draw per equal slice of the mass, lower variance than k iid draws
            edges = (np.arange(k) + self._rng.random(k)) * (self._tree.total / k)
            idx = self._tree.find(edges)
            idx = np.minimum(idx, n - 1)
        elif k >= n:
            idx = self._rng.permutation(n)
        else:
            idx = self._rng.choice(n, size=k, replace=False)
        return ReplaySample(self, idx.astype(np.int64))

    def probabilities(self) -> np.ndarray:
        """Each filled slot's sampling probability."""
        n = self._n
        if self._tree is None:
            return np.full(n, 1.0 / n) if n else np.zeros(0)
        leaves = self._tree.leaves()[:n]
        return leaves / leaves.sum()

    def update_priorities(self, idx: np.ndarray, priority: np.ndarray) -> None:
        """Set the priority (e.g. the latest loss) of replayed slots."""
        if self._tree is None or len(idx) == 0:
            return
        p = np.maximum(np.asarray(priority, dtype=np.float64), _MIN_PRIORITY)
        self._max_priority = max(self._max_priority, float(p.max()))
        self._tree.update(np.asarray(idx), p ** self._alpha)

    @property
    def labels(self) -> np.ndarray:
        return self._y[:self._n]

    @property
    def tasks(self) -> np.ndarray:
        return self._task[:self._n]

    def nbytes(self) -> int:
        """Bytes held by the slots (flat once the memory is allocated)."""
        total = self._x.nbytes + self._y.nbytes + self._task.nbytes + self._has_logits.nbytes
        total += self._logits.nbytes if self._logits is not None else 0
        total += self._tree.tree.nbytes if self._tree is not None else 0
        return total

    # -- state -----------------------------------------------------------------
    def save_state(self, writer: Any) -> None:
        n = self._n
        writer.put_json("counters", {"n_seen": self.n_seen, "n": n, "next": self._next,
                                     "max_priority": self._max_priority,
                                     "rng": rng_state(self._rng),
                                     "shape": list(self._x.shape),
                                     "n_logits": 0 if self._logits is None else self._logits.shape[1]})
        # they grow until the buffer is full: after the fixed-size arrays, the large rows first, so
        # a stored row moves only when a smaller array before it grows (rank, StateWriter.put_array)
        writer.put_array("x", self._x[:n], rank=1)
        writer.put_array("y", self._y[:n], rank=2)
        writer.put_array("task", self._task[:n], rank=2)
        writer.put_array("has_logits", self._has_logits[:n], rank=2)
        if self._logits is not None:
            writer.put_array("logits", self._logits[:n], rank=2)
        if self._tree is not None:
            writer.put_array("priority", self._tree.leaves()[:n].copy(), rank=2)

    def load_state(self, reader: Any) -> None:
        self._reset()
        c = reader.json("counters")
        self.n_seen, self._n, self._next = c["n_seen"], c["n"], c["next"]
        self._max_priority = c["max_priority"]
        set_rng_state(self._rng, c["rng"])
        rows, n_features = c["shape"]
        if rows:
            self._allocate(n_features, c["n_logits"])
            n = self._n
            self._x[:n] = reader.array("x")
            self._y[:n] = reader.array("y")
            self._task[:n] = reader.array("task")
            self._has_logits[:n] = reader.array("has_logits")
            if self._logits is not None:
                self._logits[:n] = reader.array("logits")
            if self._tree is not None:
                self._tree.rebuild(reader.array("priority"))
