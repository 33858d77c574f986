"""Router core: which model a query should go to (spec: cores.md, Router core).

A FastGRNN-style cell over a sparse low-rank projection of the query embedding
(``h = (1 - z) * tanh(U V x)``, hidden 128, rank 8, 90% of ``U`` masked to zero)
feeds five heads: model logits, context-bucket logits, temperature, top_p and
confidence. The arithmetic lives in ``cpp/router.h``; this module holds the state
and the verbs.

- **Untrained** (fewer than ``threshold`` training samples) ``route`` is the rule
  route of the reference: the first target, the bucket of ``estimated_tokens``,
  temperature 0.7, top_p 0.9, confidence 0.5.
- **Trained**: argmax of the model logits (plus the instant adapter's logits when
  ``with_adapter`` and the instant core routes over the same targets), with
  probability ``epsilon`` replaced by a uniformly drawn other target.
- **[beyond] Learning.** ``record_outcome`` with the request's embedding is a
  training sample: one softmax cross-entropy step of the model head toward the
  target and of the context head toward the bucket of ``estimated_tokens``,
  signed by ``quality - b`` with lr ``0.05 * 2|quality - b|`` (a worse outcome
  pushes away). Only those two heads ever change. The spec's ``b`` is 0.5
  (``baseline=0.5``); the default ``baseline="ema"`` uses the target's outcome EMA
  before this outcome (starting at 0.5, so the first outcome of a target is the
  spec's step): an outcome counts as good when it beats what that model usually
  achieves. With a fixed 0.5, any model that is fair everywhere (a generalist
  at 0.65) is reinforced on every route and bad samples shift their mass to it,
  so the router settles on the single best model instead of learning where the
  specialists win (``learnstream bench router`` measures both).
- **[beyond] normalize** (opt-in, default off for parity): rescale each embedding
  to unit RMS before the projection. ``V``'s ``1/sqrt(in_dim)`` init assumes
  unit-variance coordinates; unit-norm sentence embeddings are ``sqrt(in_dim)``
  times smaller, which shrinks the features and slows learning accordingly
  (``learnstream bench router`` measures both).

``record_outcomes`` applies an envelope's outcomes in order with one GIL-free
training call, exactly equal to ``record_outcome`` row by row.

Persistence stores only what changes: the seed regenerates the frozen weights
(``V``, masked ``U``, cell biases, temperature/top_p/confidence heads)
bit-exactly, and the trained heads, the per-target outcome EMA and the counters
are stored as they are.

Examples
--------
>>> import numpy as np
>>> st = RouterState(["small", "large"], in_dim=4, threshold=0)
>>> st.route(np.ones(4, np.float32))["algo"]
'fastgrnn'
>>> st.record_outcome("large", 1.0)["quality_milli"]
550
"""
from __future__ import annotations

import logging
import math
import random
import zlib
from bisect import bisect_left
from typing import Any

import numpy as np

from workers import _kernels as _k
from workers.verbs.fields import MAX_DIM, targets_list, to_float
from workers.verbs.codec import embedding_field
from workers.state.framing import pack_part, unpack_part
from workers.cores.bandit import _COST_RATE, PROJECTIONS, BanditState
from workers.cores.instant import InstantState
from workers.errors import CorruptStateError, VerbError
from workers.verbs.registry import EMBEDDING, EMBEDDING_B64, VerbContext, health_contributor, params, verb

__all__ = ("PART", "MODES", "RouterState", "context_bucket")

logger = logging.getLogger(__name__)

PART = "router"  # the part's name in the session's StateBlob

_DEFAULT_SEED = 0xC0A5
_DEFAULT_IN_DIM = 384          # the instant core's default embedding width
_DEFAULT_THRESHOLD = 200       # training samples before the learned route takes over
_MAX_THRESHOLD = 2**31 - 1     # a sample count: bounded so it packs as an int64 whatever arrives
# Exploration rate: the reference mode's epsilon-greedy. The learned mode (LinUCB) explores
# by its confidence widths and after a drift by a decaying boost, so its default is 0: a
# standing 5% cost 0.01-0.02 regret per request in bench router and found nothing the
# widths did not.
_DEFAULT_EPSILON = 0.05
_DEFAULT_EPSILON_LEARNED = 0.0
# lambda of the learned mode: quality - lambda * cost. A router that never hears a cost routes as with 0;
# one that does was told what a request cost, and 1 weighs it in quality's units (0..1) as reported
_DEFAULT_COST_WEIGHT = 1.0
# A cost or a cost weight is a price against quality points: anything beyond this is a unit mistake, and
# keeps lambda * cost finite (an outside trial's 1e308 was accepted).
_MAX_COST = 1e9
# One reported cost moves a target's cost average as if it were at most this many times that average, or one
# quality point at the router's lambda, whichever is more: a single misreported cost (cents for dollars)
# made the best model look worthless, and the router never picked it again to learn otherwise.
_COST_JUMP = 10.0
_BASELINE_EMA = "ema"          # baseline: the target's outcome EMA (see the module doc)
# Context buckets: a request goes to the first bucket whose cap holds its tokens;
# the fifth bucket is unbounded.
_BUCKET_CAPS = (1000, 4000, 16000, 64000)
# The reference's rule route (untrained).
_RULE_TEMPERATURE = 0.7
_RULE_TOP_P = 0.9
_RULE_CONFIDENCE = 0.5
# Outcome EMA in milli-units: starts at 0.5, keeps 90% per outcome.
_MILLI_START = 500
_EMA_KEEP = np.float32(0.9)
_EMA_NEW = np.float32(0.1)
_MILLI = np.float32(1000.0)
_LR = 0.05                     # lr = 0.05 * 2|quality - baseline|: 0.05 at the widest gap
_U32_MAX = 0xFFFFFFFF

_MAGIC = b"LSR"
_VERSION = 2             # 2: mode, cost weight and the bandit; 1 (reference mode only) still reads
_LEARNED, _REFERENCE = "learned", "reference"
MODES = (_LEARNED, _REFERENCE)


def context_bucket(tokens: int) -> int:
    """Index of the first context cap ``>= tokens`` (caps 1000, 4000, 16000, 64000, inf).

    >>> [context_bucket(t) for t in (100, 1000, 1001, 4000, 16000, 64000, 10**6)]
    [0, 0, 1, 1, 2, 3, 4]
    """
    return bisect_left(_BUCKET_CAPS, tokens)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _quality(v: Any) -> float:
    """An outcome's quality: a number, NaN refused, clamped to [0, 1]."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)):
        raise ValueError("quality must be a number")
    v = to_float(v)
    if math.isnan(v):
        raise ValueError("quality must not be NaN")
    return min(max(v, 0.0), 1.0)


def _cost(v: Any) -> float | None:
    """An outcome's cost: None, or a finite number >= 0."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not 0 <= to_float(v) <= _MAX_COST:
        raise ValueError("cost must be a finite number in [0, 1e9]")
    return float(v)


def _cost_weight(v: Any) -> float:
    """A cost weight (lambda): a finite number in [0, _MAX_COST]; ValueError otherwise."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= to_float(v) <= _MAX_COST:
        raise ValueError("cost_weight must be a finite number in [0, 1e9]")
    return float(v)


def _bandit_options(v: Any) -> dict:
    """``init_router``'s ``bandit: {dim?, alpha?, gamma?, projection?, squares?, refit?}``, checked."""
    if v is None:
        return {}
    if not isinstance(v, dict) or set(v) - {"dim", "alpha", "gamma", "projection", "squares", "refit"}:
        raise ValueError("bandit must be an object with dim, alpha, gamma, projection, squares, refit")
    refit = v.get("refit")
    if refit is not None and not isinstance(refit, bool):
        raise ValueError("bandit.refit must be true or false")
    projection = v.get("projection")
    if projection is not None and projection not in PROJECTIONS:
        raise ValueError(f"bandit.projection must be one of {', '.join(PROJECTIONS)}")
    dim, alpha, gamma = v.get("dim"), v.get("alpha"), v.get("gamma")
    if dim is not None and (not _is_int(dim) or not 1 <= dim <= _k.BANDIT_MAX_DIM):
        raise ValueError(f"bandit.dim must be an integer 1..{_k.BANDIT_MAX_DIM}")
    squares = v.get("squares")
    if squares is not None and (not _is_int(squares) or not 0 <= squares <= _k.BANDIT_MAX_DIM):
        raise ValueError(f"bandit.squares must be an integer 0..{_k.BANDIT_MAX_DIM} (at most dim are used)")
    for name, val, ok in (("alpha", alpha, lambda a: 0.0 <= a <= 100.0), ("gamma", gamma, lambda g: 0.5 <= g <= 1.0)):
        if val is not None and (isinstance(val, bool) or not isinstance(val, (int, float)) or not ok(val)):
            raise ValueError(f"bandit.{name} out of range" + (" (0..100)" if name == "alpha" else " (0.5..1)"))
    return {k: val for k, val in (("dim", dim), ("alpha", alpha), ("gamma", gamma), ("projection", projection),
                                  ("squares", squares), ("refit", refit)) if val is not None}


def _tokens(v: Any) -> int:
    """``estimated_tokens``: a non-negative JSON integer (2.0 is refused, as by ``learn_feedback`` and the
    topics' schemas), default 0."""
    if v is None:
        return 0
    if not _is_int(v) or v < 0:
        raise ValueError("estimated_tokens must be a non-negative integer")
    return v


class RouterState:
    """The router of one session: weights, outcome EMA per target, training counters.

    Parameters
    ----------
    targets
        Model names to route among (unique, non-empty, at most 1024).
    in_dim
        Embedding width (default 384).
    epsilon
        Exploration probability of the learned route, 0..1 (default 0.05 in ``mode: reference``,
        0 in the learned mode, which explores by its confidence widths).
    threshold
        Training samples after which the learned route replaces the rule route
        (default 200; 0 = learned from the start).
    seed
        u32 seed of the deterministic init (default 0xC0A5).
    with_adapter
        Add the instant adapter's logits when it has the same targets (default True;
        False gives reference parity).
    normalize
        [beyond] Rescale embeddings to unit RMS before the projection (default False).
    baseline
        [beyond] What an outcome's quality is compared with to sign the training step:
        ``"ema"`` (default: the target's outcome EMA) or a fixed number in [0, 1]
        (0.5 is the spec's rule).

    Attributes
    ----------
    params
        The float32 parameter buffer (layout: ``workers._kernels.router_layout``).
    quality_milli, count
        Per-target outcome EMA (milli-units, starts 500) and outcome count.
    samples
        Training samples applied so far.
    """

    __slots__ = ("targets", "in_dim", "epsilon", "threshold", "seed", "with_adapter", "normalize", "baseline",
                 "mode", "cost_weight", "bandit", "params", "quality_milli", "count", "samples", "_index", "_rng")

    def __init__(self, targets: list[str], in_dim: int | None = None, epsilon: float | None = None,
                 threshold: int | None = None, seed: int | None = None, with_adapter: bool | None = None,
                 normalize: bool | None = None, baseline: str | float | None = None, mode: str | None = None,
                 cost_weight: float | None = None, trained: bool | None = None,
                 bandit: dict | None = None) -> None:
        # Everything is checked before anything is built: init_router refuses cleanly.
        try:  # the same messages as init_instant: one vocabulary for both cores
            targets = targets_list(targets)
        except VerbError as exc:
            raise ValueError(str(exc)) from None
        if len(targets) > _k.ROUTER_MAX_TARGETS:
            raise ValueError(f"targets: at most {_k.ROUTER_MAX_TARGETS}")
        in_dim = _DEFAULT_IN_DIM if in_dim is None else in_dim
        if not _is_int(in_dim) or in_dim < 1:
            raise ValueError("in_dim must be a positive integer")
        if in_dim > MAX_DIM:
            raise ValueError(f"in_dim must be at most {MAX_DIM}")
        if trained is not None and not isinstance(trained, bool):
            raise ValueError("trained must be a boolean")
        if trained:  # the reference's trained router: the learned path from the first request
            threshold = 0
        threshold = _DEFAULT_THRESHOLD if threshold is None else threshold
        if not _is_int(threshold) or not 0 <= threshold <= _MAX_THRESHOLD:
            raise ValueError(f"threshold must be an integer 0..{_MAX_THRESHOLD}")
        mode = _LEARNED if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if epsilon is None:
            epsilon = _DEFAULT_EPSILON_LEARNED if mode == _LEARNED else _DEFAULT_EPSILON
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon must be 0..1")  # NaN fails the range check too
        if cost_weight is None:  # a cost reported is a cost meant: in quality's units unless told otherwise
            cost_weight = _DEFAULT_COST_WEIGHT if mode == _LEARNED else 0.0
        cost_weight = _cost_weight(cost_weight)
        seed = _DEFAULT_SEED if seed is None else seed
        if not _is_int(seed) or not 0 <= seed <= _U32_MAX:
            raise ValueError("seed must be an integer 0..4294967295")
        with_adapter = True if with_adapter is None else with_adapter
        normalize = False if normalize is None else normalize
        if not isinstance(with_adapter, bool):
            raise ValueError("with_adapter must be a boolean")
        if not isinstance(normalize, bool):
            raise ValueError("normalize must be a boolean")
        baseline = _BASELINE_EMA if baseline is None else baseline
        if baseline != _BASELINE_EMA and (isinstance(baseline, bool) or not isinstance(baseline, (int, float))
                                          or not 0.0 <= baseline <= 1.0):
            raise ValueError('baseline must be "ema" or a number 0..1')

        self.targets: list[str] = list(targets)
        self.in_dim: int = in_dim
        self.epsilon: float = float(epsilon)
        self.threshold: int = threshold
        self.seed: int = seed
        self.with_adapter: bool = with_adapter
        self.normalize: bool = normalize
        self.baseline: str | float = baseline if baseline == _BASELINE_EMA else float(baseline)
        self.mode: str = mode
        self.cost_weight: float = float(cost_weight)
        self.bandit: BanditState | None = None
        if mode == _LEARNED:
            self.bandit = BanditState(len(targets), in_dim, seed=seed, **_bandit_options(bandit))
        self.params: np.ndarray = _k.router_init(seed, in_dim, len(targets))
        self.quality_milli: list[int] = [_MILLI_START] * len(targets)
        self.count: list[int] = [0] * len(targets)
        self.samples: int = 0
        self._index = {t: i for i, t in enumerate(targets)}
        self._rng: random.Random | None = None

    # ------------------------------------------------------------------ routing
    @property
    def trained(self) -> bool:
        """True once ``threshold`` training samples have been applied."""
        return self.samples >= self.threshold

    def route(self, x: np.ndarray, task_type: str | None = None, estimated_tokens: int = 0,
              rng: random.Random | None = None, adapter_logits: np.ndarray | None = None,
              cost_weight: float | None = None) -> dict:
        """Route one query.

        Parameters
        ----------
        x
            The query embedding (``in_dim`` floats; float32 avoids a copy).
        task_type
            Accepted for the reference's signature; does not change the route.
        estimated_tokens
            Decides the context bucket of the rule route.
        rng
            Exploration draws (``random()`` and ``randrange``); a private
            ``random.Random`` when None. Inject one for reproducible routes.
        adapter_logits
            ``len(targets)`` logits added to the model head (the instant adapter's).
        cost_weight
            lambda of this request (learned mode: maximise quality - lambda * cost); the
            router's ``cost_weight`` when None.

        Returns
        -------
        dict
            ``{model, context_bucket, temperature, top_p, confidence, algo, exploration}``.
        """
        if not self.trained:
            return {"model": self.targets[0], "context_bucket": context_bucket(estimated_tokens),
                    "temperature": _RULE_TEMPERATURE, "top_p": _RULE_TOP_P,
                    "confidence": _RULE_CONFIDENCE, "algo": "rule", "exploration": False}
        nt = len(self.targets)
        algo, explored, epsilon = "fastgrnn", False, self.epsilon
        bd = self.bandit
        if bd is None:
            best, _p, bucket, temperature, top_p, confidence = _k.router_route(
                self.params, x, nt, self.normalize, adapter_logits)
        else:
            # one kernel call for both (the hot path: bench router's p99 goal)
            lam = self.cost_weight if cost_weight is None else cost_weight
            best, bucket, temperature, top_p, confidence, ucb, greedy, tied = _k.router_route_learned(
                self.params, x, nt, self.normalize, adapter_logits, bd.P, bd.Ainv, bd.theta,
                bd.cost if lam else None, bd.alpha, lam)
            if not tied:  # a fresh bandit scores every target the same: FastGRNN decides
                best, algo, explored = ucb, "linucb", ucb != greedy
            if bd.boost_left:
                epsilon = bd.epsilon(epsilon)
        if epsilon > 0.0 and nt > 1:
            r = rng if rng is not None else self._private_rng()
            if r.random() < epsilon:
                j = r.randrange(nt - 1)  # uniform over the other targets
                best = j + (j >= best)
                explored = True
        return {"model": self.targets[best], "context_bucket": bucket, "temperature": temperature,
                "top_p": top_p, "confidence": confidence, "algo": algo, "exploration": explored}

    def _private_rng(self) -> random.Random:
        if self._rng is None:
            self._rng = random.Random()
        return self._rng

    # ----------------------------------------------------------------- learning
    def record_outcome(self, target: str, quality: float, embedding: np.ndarray | None = None,
                       estimated_tokens: int = 0, cost: float | None = None) -> dict:
        """Fold one outcome into the target's EMA; with ``embedding`` also train on it.

        An unknown target is a no-op (``{count: 0, quality_milli: 0}``). NaN quality
        is refused (ValueError, nothing changes); quality is clamped to [0, 1]. An
        embedding whose length is not ``in_dim`` is ignored for training (the EMA
        still updates): the learning loop feeds the router its instant core's embeddings,
        whatever the router's width. The ``record_outcome`` verb refuses such an embedding.

        Returns
        -------
        dict
            ``{count, quality_milli}`` of the target, plus ``samples`` and ``trained``.
        """
        q = _quality(quality)
        tokens = _tokens(estimated_tokens)
        c = _cost(cost)
        x = None
        if embedding is not None:
            x = np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1)
            if x.size != self.in_dim:
                x = None
            elif not np.isfinite(x).all():
                raise ValueError("embedding must be finite (NaN/Inf refused)")
        i = self._index.get(target)
        if i is None:
            return {"count": 0, "quality_milli": 0}
        c = self._bounded_cost(i, c)
        lr = self._fold(i, q)
        if x is not None:
            _k.router_train(self.params, x, len(self.targets), i, context_bucket(tokens), lr, self.normalize)
            self.samples += 1
            if self.bandit is not None:
                self.bandit.learn(np.array([i]), x.reshape(1, -1), np.array([q]),
                                  None if c is None else np.array([c]))
        elif self.bandit is not None and c is not None:
            self.bandit.observe_cost(i, c)
        return {"count": self.count[i], "quality_milli": self.quality_milli[i],
                "samples": self.samples, "trained": self.trained}

    def record_outcomes(self, targets: list[str], qualities: list[float], X: np.ndarray | None = None,
                        estimated_tokens: list[int] | None = None) -> dict:
        """Many outcomes in order (an envelope's), training in one GIL-free kernel call.

        Exactly equal to :meth:`record_outcome` row by row. ``X`` is ``(n, in_dim)``
        or None (EMA only). Everything is checked before anything changes.

        Returns
        -------
        dict
            ``{applied, samples, trained}``: ``applied`` counts the rows with a known target.
        """
        n = len(targets)
        qs = [_quality(q) for q in qualities]
        toks = [0] * n if estimated_tokens is None else [_tokens(t) for t in estimated_tokens]
        if len(qs) != n or len(toks) != n:
            raise ValueError("targets, qualities and estimated_tokens need one entry per outcome")
        if X is not None:
            X = np.ascontiguousarray(X, dtype=np.float32)
            if X.shape != (n, self.in_dim):
                raise ValueError(f"X must be ({n}, {self.in_dim}), got {X.shape}")
            if not np.isfinite(X).all():
                raise ValueError("embedding must be finite (NaN/Inf refused)")
        rows: list[int] = []
        idx: list[int] = []
        lrs: list[float] = []
        for r, (t, q) in enumerate(zip(targets, qs, strict=True)):
            i = self._index.get(t)
            if i is None:
                continue
            rows.append(r)
            idx.append(i)
            lrs.append(self._fold(i, q))
        if X is not None and rows:
            Xr = X if len(rows) == n else X[rows]
            _k.router_train_batch(self.params, Xr, len(self.targets), np.asarray(idx, np.int64),
                                  np.asarray([context_bucket(toks[r]) for r in rows], np.int64),
                                  np.asarray(lrs, np.float32), self.normalize)
            self.samples += len(rows)
            if self.bandit is not None:
                self.bandit.learn(np.asarray(idx, np.int64), Xr, np.asarray([qs[r] for r in rows]))
        return {"applied": len(rows), "samples": self.samples, "trained": self.trained}

    def _bounded_cost(self, i: int, c: float | None) -> float | None:
        """``c`` as target i's cost average takes it: at most ``_COST_JUMP`` times that average or one
        quality point at the router's lambda, whichever is more. A target's first cost sets its average: as
        reported when no other target has one (nothing to judge it by) or it is within that bound of their
        mean average; past it, the average takes one EMA step from that mean toward the bound, as any later
        report would. A misreported *first* cost (100 against others' 0.05) had set the average as reported,
        and the model was never routed to again for a report that could lower it (an outside trial); judged
        against 0 when none had a cost, real first costs at a large lambda were squashed and the first model
        to report looked cheapest (the next trial)."""
        b = self.bandit
        if c is None or b is None:
            return c
        # at lambda 0 (costs weighed only by a request's own cost_weight) the jump alone bounds a report: the
        # bound was skipped there, and a request at lambda 1 saw a misreport whole (the next trial)
        point = 1.0 / self.cost_weight if self.cost_weight > 0 else 0.0
        if b.cost_seen[i]:
            return min(c, max(_COST_JUMP * float(b.cost[i]), point))
        others = b.cost[b.cost_seen]
        if not others.size:
            return c
        prior = float(others.mean())
        bound = max(_COST_JUMP * prior, point)
        return c if c <= bound else prior + _COST_RATE * (bound - prior)

    def _fold(self, i: int, q: float) -> float:
        """EMA and count update of target i; returns the signed training lr of this outcome."""
        b = self.quality_milli[i] / 1000.0 if self.baseline == _BASELINE_EMA else self.baseline
        # float32 as the reference; round half away from zero (Rust's f32::round), q >= 0
        ema = _EMA_KEEP * (np.float32(self.quality_milli[i]) / _MILLI) + _EMA_NEW * np.float32(q)
        self.quality_milli[i] = math.floor(float(_MILLI * ema) + 0.5)
        self.count[i] += 1
        return math.copysign(_LR * 2.0 * abs(q - b), q - b)

    def weights(self) -> dict[str, np.ndarray]:
        """Named views into ``params`` (V, U, heads, biases) — for tests and inspection."""
        lay = _k.router_layout(self.in_dim, len(self.targets))
        return {name: self.params[off:off + math.prod(shape)].reshape(shape)
                for name, v in lay.items() if isinstance(v, tuple) for off, shape in [v]}

    # -------------------------------------------------------------- persistence
    def _trainable_offset(self) -> int:
        return _k.router_layout(self.in_dim, len(self.targets))["trainable"]

    def to_bytes(self) -> bytes:
        """The part framing (``LSR``, version 1) + settings and counters + the trained heads (LE float32)."""
        cut = self._trainable_offset()
        header = {
            "targets": self.targets, "in_dim": self.in_dim, "epsilon": self.epsilon,
            "threshold": self.threshold, "seed": self.seed, "with_adapter": self.with_adapter,
            "normalize": self.normalize, "baseline": self.baseline, "samples": self.samples,
            "quality_milli": self.quality_milli, "count": self.count,
            "frozen_crc": zlib.crc32(self.params[:cut].tobytes()),
            "mode": self.mode, "cost_weight": self.cost_weight,
        }
        heads = self.params[cut:].astype("<f4", copy=False).tobytes()
        bandit = self.bandit.to_bytes() if self.bandit is not None else b""
        header["heads_bytes"] = len(heads)
        return pack_part(_MAGIC, _VERSION, header, heads, bandit)

    @classmethod
    def from_bytes(cls, data: bytes) -> RouterState:
        """Rebuild a state: frozen weights from the seed, the rest from ``data``."""
        try:
            h, pos = unpack_part(data, _MAGIC, _VERSION, "router")
        except CorruptStateError:
            h, pos = unpack_part(data, _MAGIC, 1, "router")   # a version-1 state: the reference mode
            h = {**h, "mode": _REFERENCE, "cost_weight": 0.0}
        try:
            st = cls(h["targets"], in_dim=h["in_dim"], epsilon=h["epsilon"], threshold=h["threshold"],
                     seed=h["seed"], with_adapter=h["with_adapter"], normalize=h["normalize"],
                     baseline=h["baseline"], mode=_REFERENCE, cost_weight=h["cost_weight"])
            mode = h["mode"]
            milli, count, samples, crc = list(h["quality_milli"]), list(h["count"]), int(h["samples"]), h["frozen_crc"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStateError(f"router state header is malformed ({exc})") from None
        if len(milli) != len(st.targets) or len(count) != len(st.targets):
            raise CorruptStateError("router state: outcome table does not match the targets")
        cut = st._trainable_offset()
        n_heads = h.get("heads_bytes", len(data) - pos)
        if n_heads != 4 * (st.params.size - cut) or len(data) < pos + n_heads:
            raise CorruptStateError(f"router state holds {n_heads} bytes of heads, "
                                    f"expected {4 * (st.params.size - cut)}")
        st.params[cut:] = np.frombuffer(data, dtype="<f4", count=st.params.size - cut, offset=pos)
        st.mode = mode
        if mode == _LEARNED:
            st.bandit = BanditState.from_bytes(data[pos + n_heads:])
            if st.bandit.n_targets != len(st.targets) or st.bandit.in_dim != st.in_dim:
                raise CorruptStateError("router bandit does not match the router's targets")
        elif len(data) != pos + n_heads:
            raise CorruptStateError("router state (reference mode) has trailing bytes")
        if zlib.crc32(st.params[:cut].tobytes()) != crc:
            # Only a different libm could do this (the init rounds double math once to
            # float): the heads then sit on features that moved by an ulp or so.
            logger.warning("router weights regenerated from seed %d differ from the ones trained on", st.seed)
        st.quality_milli, st.count, st.samples = milli, count, samples
        return st

    def __repr__(self) -> str:
        return (f"RouterState(targets={self.targets!r}, in_dim={self.in_dim}, mode={self.mode}, "
                f"samples={self.samples}, trained={self.trained})")


# -------------------------------------------------------------------- verbs
def _state(ctx: VerbContext) -> RouterState:
    st = ctx.state.get(PART, RouterState)
    if st is None:
        raise VerbError("router not initialized")
    return st


def _embedding(body: dict, st: RouterState, *, required: bool) -> np.ndarray | None:
    if body.get("embedding") is None and body.get("embedding_b64") is None:
        if required:
            raise VerbError("embedding required")
        return None
    x = embedding_field(body, "embedding")
    if x.size != st.in_dim:  # a caller's wrong width is refused (the learning loop's own calls skip it)
        raise VerbError(f"embedding wrong dim (expected {st.in_dim}, got {x.size})")
    return x


def _body_tokens(body: dict) -> int:
    try:
        return _tokens(body.get("estimated_tokens"))
    except ValueError as exc:
        raise VerbError(str(exc)) from None


def _instant_logits(ctx: VerbContext, st: RouterState, x: np.ndarray) -> np.ndarray | None:
    """The instant adapter's logits for x when it routes over the same targets and width."""
    inst = ctx.state.get("instant", InstantState)  # None when the session has no instant core
    if inst is None or list(inst.targets) != st.targets or inst.dim != st.in_dim:
        return None
    return inst.logits(x)


@verb("init_router", table="session", writes=True, topic="commands", params=params(
    ("targets",), targets={"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
    in_dim={"type": "integer", "minimum": 1}, epsilon={"type": "number", "minimum": 0, "maximum": 1},
    threshold={"type": "integer", "minimum": 0, "maximum": _MAX_THRESHOLD,
               "description": "training samples (outcomes with an embedding) before the learned route; until "
                              "then the rule route (the first target). Default 200; in the learned mode 1 "
                              "lets the bandit explore from its first outcome. trained: true is 0"},
    seed={"type": "integer"}, with_adapter={"type": "boolean"},
    normalize={"type": "boolean"}, baseline={"type": "string"}, trained={"type": "boolean"},
    mode={"enum": list(MODES)},
    cost_weight={"type": "number", "minimum": 0,
                 "description": "lambda: the learned mode maximises quality - lambda * cost (default 1; "
                                "not in mode reference)"},
    bandit={"type": "object", "properties": {
        "dim": {"type": "integer", "minimum": 1, "maximum": _k.BANDIT_MAX_DIM},
        "alpha": {"type": "number", "minimum": 0, "maximum": 100},
        "gamma": {"type": "number", "minimum": 0.5, "maximum": 1},
        "projection": {"enum": list(PROJECTIONS)},
        "squares": {"type": "integer", "minimum": 0, "maximum": _k.BANDIT_MAX_DIM,
                    "description": "squared features of the first n projected ones (default 0)"},
        "refit": {"type": "boolean",
                  "description": "fit the projection again when queries come from topics it never saw "
                                 "(default true; projection pca)"}}}))
def _init_router(ctx: VerbContext, body: dict) -> dict:
    """``{targets, in_dim?, trained?, epsilon?, threshold?, seed?, with_adapter?, normalize?, baseline?,
    mode?, cost_weight?, bandit?}`` -> the settings."""
    try:
        st = RouterState(body.get("targets"), in_dim=body.get("in_dim"), epsilon=body.get("epsilon"),
                         threshold=body.get("threshold"), seed=body.get("seed"),
                         with_adapter=body.get("with_adapter"), normalize=body.get("normalize"),
                         baseline=body.get("baseline"), mode=body.get("mode"), cost_weight=body.get("cost_weight"),
                         trained=body.get("trained"), bandit=body.get("bandit"))
    except ValueError as exc:
        raise VerbError(str(exc)) from None
    if st.mode == _REFERENCE:  # what it would ignore: say so rather than answer as if it applied
        if st.cost_weight:
            raise VerbError("cost_weight needs mode learned (the reference mode has no cost term)")
        if body.get("bandit") is not None:
            raise VerbError("bandit needs mode learned (the reference mode routes by its FastGRNN heads)")
    ctx.state.set(PART, st)
    out = {"targets": st.targets, "in_dim": st.in_dim, "epsilon": st.epsilon, "threshold": st.threshold,
           "with_adapter": st.with_adapter, "normalize": st.normalize, "baseline": st.baseline,
           "mode": st.mode, "cost_weight": st.cost_weight, "trained": st.trained}
    if st.bandit is not None:
        out["bandit"] = st.bandit.info()
    return out


@verb("route", table="session", writes=False, params=params(
    (), embedding=EMBEDDING, embedding_b64=EMBEDDING_B64, task_type={"type": "string"},
    estimated_tokens={"type": "integer", "minimum": 0},
    cost_weight={"type": "number", "minimum": 0, "description": "lambda for this request (mode learned)"}))
def _route(ctx: VerbContext, body: dict) -> dict:
    """Pick the model for one query. ``{embedding|embedding_b64, task_type?, estimated_tokens?, cost_weight?}``
    -> ``{model, context_bucket, temperature, top_p, confidence, algo, exploration}``.

    Call ``init_router`` first. The embedding is required and has the router's ``in_dim``. Until the
    router is trained (``threshold`` outcomes with embeddings) the answer is the rule route: the first
    target (``algo: "rule"``)."""
    st = _state(ctx)
    x = _embedding(body, st, required=True)
    task_type = body.get("task_type")
    if task_type is not None and not isinstance(task_type, str):
        raise VerbError("task_type must be a string")
    tokens = _body_tokens(body)
    lam = body.get("cost_weight")
    if lam is not None:
        try:
            lam = _cost_weight(lam)
        except ValueError as exc:
            raise VerbError(str(exc)) from None
    if lam and st.mode == _REFERENCE:
        raise VerbError("cost_weight needs mode learned (the reference mode has no cost term)")
    adapter = _instant_logits(ctx, st, x) if st.with_adapter and st.trained else None
    return st.route(x, task_type, tokens, rng=ctx.rng, adapter_logits=adapter, cost_weight=lam)


@verb("record_outcome", table="session", writes=True, topic="commands", params=params(
    ("target", "quality"), target={"type": "string", "minLength": 1},
    quality={"type": "number", "description": "0..1; outside, clamped to it (the reference's rule); NaN is refused"},
    embedding=EMBEDDING, embedding_b64=EMBEDDING_B64, estimated_tokens={"type": "integer", "minimum": 0},
    cost={"type": "number", "minimum": 0, "description": "what this request cost (a per-model EMA; see cost_weight)"}))
def _record_outcome(ctx: VerbContext, body: dict) -> dict:
    """How a routed request went. ``{target, quality, embedding?|embedding_b64?, estimated_tokens?, cost?}``
    -> ``{count, quality_milli, samples?, trained?}``.

    ``quality`` is 0..1 (clamped). Give the request's embedding to learn from it. The answer is the
    target's outcome count and its quality EMA in thousandths (starts at 500, rate 0.1). An unknown
    target changes nothing and answers ``{count: 0, quality_milli: 0}`` (the reference's rule)."""
    st = _state(ctx)
    target = body.get("target")
    if not isinstance(target, str) or not target:
        raise VerbError("target required")
    quality = body.get("quality")
    if quality is None:
        raise VerbError("quality required")
    x = _embedding(body, st, required=False)
    tokens = _body_tokens(body)
    try:
        return st.record_outcome(target, quality, x, tokens, body.get("cost"))
    except ValueError as exc:
        raise VerbError(str(exc)) from None


@health_contributor
def _router_health(ctx: VerbContext) -> dict:
    """``router_ready`` (the reference's), and once it is, what the router has learned: per target its
    outcome count and quality EMA (thousandths), the training samples, and the bandit's state (learned mode)."""
    if ctx.state is None or not ctx.state.has(PART):
        return {"router_ready": False}
    st = ctx.state.get(PART, RouterState)
    router = {"mode": st.mode, "trained": st.trained, "samples": st.samples,
              "targets": {t: {"count": c, "quality_milli": q} for t, c, q in zip(st.targets, st.count, st.quality_milli)}}
    if st.bandit is not None:
        b = st.bandit
        router["bandit"] = {**b.info(), "pulls": dict(zip(st.targets, b.pulls.tolist())),
                            "cost": {t: c if seen else None for t, c, seen in zip(st.targets, b.cost.tolist(),
                                                                                   b.cost_seen.tolist())}}
    return {"router_ready": True, "router": router}
