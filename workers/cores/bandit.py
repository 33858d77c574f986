"""The router's contextual bandit: per-target ridge regression on the query with forgetting (LinUCB).

[beyond] The reference router (``cores.md``, Router core) trains only its output heads,
on a frozen, 90%-masked rank-8 random projection of the query: too little of the
query survives for the heads to learn where each model wins. This part learns the
representation the heads lack: per target ``k`` a ridge regression of the outcome
quality on features ``phi(x) = [P x_hat; 1]`` (``x`` rescaled to unit RMS, ``P`` a
dense ``dim x in_dim`` projection: fitted to the queries, below, or Gaussian), kept as the
inverse design matrix with exponential forgetting (Sherman-Morrison, ``O(dim^2)``
per outcome; ``cpp/router.h``, namespace ``bandit``). The other targets forget too, more
slowly (``_IDLE_GAMMA`` per outcome of any target, until their uncertainty is back at the
prior's): otherwise a target the router stopped choosing keeps its old evidence for good,
and if a drift made it the best somewhere, nothing ever sends it a query there again.
A route picks

    argmax_k  theta_k . phi  -  lambda * cost_k  +  alpha * sqrt(phi' Ainv_k phi)

(LinUCB; ``cost_k`` the target's outcome-cost EMA, ``lambda`` per router or per
request). When every target scores the same (nothing learned yet), the FastGRNN
route decides, so a fresh router routes exactly as the reference.

**A projection fitted to the queries** (``projection: "pca"``, the default). A random
projection keeps every direction of the query equally, noise included: with loose
topic clusters most of each feature is the queries' spread, not where they are (bench
router, ``--spread 1.5``: 39% below the best fixed model). So until :data:`FIT_AFTER`
outcomes with an embedding have been learned, each one's query is also kept: as given up to
:data:`RAW_KEEP_MAX` floats, a wider one pre-projected to :data:`SKETCH_DIM` random features
``z = R x_hat``. Then ``P = W`` (``W R``) with ``W`` the top ``dim`` principal directions of the
kept queries, rescaled as a route rescales them (of those ``z``), whitened (unit variance
each, the smallest lifted to a floor so noise is not blown up), and the kept outcomes are
learned again in the new features from a fresh prior. The principal directions are where
the queries differ (their topics and what moves within them), so the same ``dim`` features
carry much more of what decides a model's quality (``W`` is stored; ``R`` and ``P`` are
rebuilt from the seed). States written before the ``"sketch"`` header field kept 128 random
features at every width and read so. ``projection: "random"`` is the projection of state version 1.

**New topics: the projection is fitted again.** A projection fitted to the first queries keeps
only their directions: once queries come from topics it never saw, most of each new query falls
outside them and the heads cannot tell those topics, or where each model wins in them, apart
(bench router ``--arrivals 1``: the first half of the requests from one of 8 regions, the rest
from all 8). So after a fit the router measures the share of each query's energy that its ``dim``
directions hold (the fitted second moment's eigenvalues weigh the projected features). The mean share
over the first :data:`NOVELTY_BASE` outcomes after the fit is the baseline (queries the fit did not
see); a query holding less than :data:`NOVEL_SHARE` of it is *novel*, and the rate of novel queries
over the next :data:`NOVELTY_BASE` is the baseline rate. Then an EMA of that rate (rate
:data:`NOVELTY_RATE`) is tested: once it is :data:`REFIT_RISE` above the baseline rate (a new topic
with a sixth of the traffic is enough; a test of the mean share needed about a third), the router
keeps the next :data:`FIT_AFTER` outcomes' queries as before the first fit (still routing on the old
projection meanwhile) and fits again to them. Queries from the topics the fit saw do not raise the rate
(the default world of bench router and its sensitivity worlds never refit).

*Growing, or from scratch.* A fit again first tries to *grow* the projection (``_grow``): the kept
queries' part outside the fitted directions gives new directions, each one in which they vary at least
:data:`GROW_SHARE` of the fitted directions' mean variance, appended after the fitted ones. The fitted
directions, the features' places and every target's evidence on them stay as they are; the new features
start at the prior. So with topics in turns (bench router ``--topic-blocks``), a new topic adds its
directions and the topics before it are still routed on what was learned of them: fitted from scratch
to the kept queries of one topic, the router forgot every other (cum. regret 528 against 415 with turns
of 1,000 requests). When the kept queries need more than 1/:data:`GROW_MOST` of the width the projection
was fitted at in new directions at once (the traffic changed broadly: ``--arrivals``, where the first
fit saw one topic and the traffic then comes from eight), or the projection has grown to
:data:`GROW_LIMIT` times that width, it is fitted from scratch to the kept queries and learns them again
in the new features from a fresh prior, as the first fit does.

**Drift.** Each outcome's residual (quality minus the prediction before learning
it) feeds two per-target tests: the residuals' recent mean is far from 0 (an EMA
z-test against the residuals' long-run spread: the target got better or worse
everywhere), or their recent mean square is several times its long-run level (it
got better here and worse there, which leaves the mean at 0). On a mean alarm the
target's intercept moves by the residuals' mean at once and the target keeps 30% of
its evidence (where it wins relative to its level still holds); on a spread alarm
it keeps 5%. Every other target keeps half (``rho_all``): the confidence widths
grow, so the router explores again where it is uncertain, until new outcomes have
narrowed them; a decaying extra ``epsilon`` (``boost`` outcomes long) also finds
targets that got better where they are never chosen. There is no standing
epsilon in this mode (the router's default is 0 here): LinUCB explores by width.

State size: ``n_targets * (dim+1)^2`` doubles; ``dim`` shrinks for many targets so a
state stays under :data:`MAX_STATE_BYTES`.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from workers import _kernels as _k
from workers.state.framing import pack_part, unpack_part, version_of
from workers.errors import CorruptStateError

__all__ = ("PART", "BanditState", "MAX_STATE_BYTES", "bandit_dim", "PROJECTIONS", "FIT_AFTER", "SKETCH_DIM",
           "NOVELTY_BASE", "NOVEL_SHARE", "NOVELTY_RATE", "REFIT_RISE", "GROW_SHARE", "GROW_LIMIT",
           "GROW_MOST")

PART = "router_bandit"

# 32 projected features: the 384-d queries of bench router keep their regions and
# in-region directions apart, and a route costs ~33^2 per target.
_DEFAULT_DIM = 32
# Squared features of the first `squares` projected ones (the top principal directions once fitted;
# init_router {bandit: {squares}}): a model whose quality rises and falls along a direction is linear
# in them. Off by default: 16 of them cut bench router's regret (300 -> 264) but re-learn more slowly
# after a drift, with more to re-estimate (recovery 534 -> 600; 4 regions at spread 1.5, seed 2: 1,132
# requests against 200), and cost more in 16-region worlds (bench/README, twenty-fifth session).
_DEFAULT_SQUARES = 0
_DEFAULT_ALPHA = 0.15         # width of the confidence bonus, in quality units per unit width
_DEFAULT_GAMMA = 0.998        # forgetting per outcome of a target: a memory of ~500 of its outcomes
_RIDGE = 1.0                  # prior precision: Ainv starts at I / ridge
# forgetting of every *other* target per outcome (discounted LinUCB; ~5,000 outcomes of memory), up to
# the prior's uncertainty: a target that is never chosen does not keep its old evidence for good
_IDLE_GAMMA = 0.9998
MAX_STATE_BYTES = 1 << 20     # Ainv + b + theta of all targets (a changelog message is ~1 MiB at most)
# Drift test on the residuals of one target: EMA rate, minimum outcomes, z threshold.
_RES_RATE = 0.05
_RES_MIN = 30
# 6 until 2026-12-05; at 5, recovery on issue 14's loose-cluster trial world went 1,089 -> 860 requests,
# still with no alarm before its drift (10 runs)
_RES_Z = 5.0
_RES_FLOOR = 1e-4             # the long-run mean square the mean test assumes at least (residuals of sd 0.01):
                              # a noise-free stream's 1e-5 residuals are not a drift
_RES_SLOW = 0.01              # long-run mean square of the residuals: a memory of ~100 outcomes
_RES_RATIO = 3.0              # recent mean square / long-run one that counts as a drift
_RES_HOLD = 1.5               # ... and above which the long-run level stops following
_RES_CAP = 9.0                # a squared residual counts at most this many long-run levels
_RHO_ARM = 0.05               # a drifted target keeps 5% of its evidence
_RHO_SHIFT = 0.3              # ... 30% when its quality moved by the same amount everywhere
_RHO_ALL = 0.5                # the others keep 50%: every width grows, exploration resumes
_BOOST = 500                  # outcomes of raised epsilon after a drift
_BOOST_EPS = 0.1              # extra epsilon right after a drift, decaying linearly to 0
_COST_RATE = 0.1              # outcome-cost EMA rate (a first cost sets it: RouterState._bounded_cost)
PROJECTIONS = ("pca", "random")
FIT_AFTER = 200               # outcomes (with an embedding) whose queries the projection is fitted to
# Until the fit, a query of at most RAW_KEEP_MAX floats is kept as given (the fit sees every direction of
# it); a wider one as SKETCH_DIM random features (a kilobyte a row). A random sketch keeps only
# SKETCH_DIM / in_dim of each direction's energy against the same noise: on the loose-cluster world of
# issue 14 (384-d), fitting to a 128-feature sketch left ~0.01 more regret per request than fitting to the
# queries themselves (a NumPy model of the router, 5 seeds, K 6 and 12).
RAW_KEEP_MAX = 1024
SKETCH_DIM = 256
_OLD_SKETCH_DIM = 128         # the sketch of states written before the "sketch" header field
_SKETCH_SALT = 0x5CE7         # R's seed is the bandit's seed ^ this (P's is the seed itself)
_WHITEN_FLOOR = 0.05          # a direction's variance is lifted to at least this share of the kept ones' mean
# New topics (module doc): the baseline share of a query's energy in the fitted directions is the mean over
# this many outcomes after a fit, and the baseline rate of novel queries (a share under NOVEL_SHARE of it)
# that over the next as many; an EMA of the rate at NOVELTY_RATE that rises REFIT_RISE above it refits.
NOVELTY_BASE = 100
NOVEL_SHARE = 0.5
NOVELTY_RATE = 0.02
REFIT_RISE = 0.15
# Fitting again grows the projection (module doc, "New topics"): by each direction in which the kept queries
# vary, outside the fitted ones, at least GROW_SHARE of the fitted directions' mean variance (at least one),
# up to GROW_LIMIT times the width it was fitted at from scratch. Queries that need more than 1/GROW_MOST of
# that width in new directions at once (the traffic changed broadly), or a projection at its limit, are
# fitted from scratch instead.
GROW_SHARE = 0.5
GROW_LIMIT = 2
GROW_MOST = 6
_MAGIC = b"LSB"
_VERSION = 2                  # 2: projection, its fitted W or the kept queries; 1 (random projection) still reads


def bandit_dim(n_targets: int, dim: int = _DEFAULT_DIM, squares: int = 0) -> int:
    """The projected width for ``n_targets``: ``dim``, shrunk so the state fits MAX_STATE_BYTES
    (per target ``d1 x d1 + 2 d1`` doubles, ``d1 = dim + min(squares, dim) + 1``)."""
    per_target = MAX_STATE_BYTES // (8 * max(n_targets, 1))
    if not squares:  # the sizing of states without squared features, unchanged (a stored dim must read back)
        return max(1, min(dim, int(math.isqrt(max(per_target - 2 * (dim + 1), 1))) - 1))
    while dim > 1:
        d1 = dim + min(squares, dim) + 1
        if d1 * d1 + 2 * d1 <= per_target:
            break
        dim -= 1
    return max(1, dim)


class BanditState:
    """LinUCB with forgetting over ``n_targets`` targets (see the module doc).

    Parameters
    ----------
    n_targets, in_dim
        Targets and query width.
    dim
        Projected features (default 32; shrunk for many targets, see :func:`bandit_dim`).
    alpha
        Confidence-bonus weight (default 0.15).
    gamma
        Forgetting factor per outcome of a target, (0, 1] (default 0.998).
    seed
        u32 seed of the projection.
    projection
        ``"pca"`` (default: fitted to the first :data:`FIT_AFTER` outcomes' queries, see the
        module doc) or ``"random"``. A query of at most ``dim`` floats, or of no more floats
        than ``dim`` once pre-projected, has nothing to fit: ``"random"``.
    refit
        ``"pca"``: fit the projection again when queries come from topics it never saw (default
        True; module doc, "New topics"); False keeps the first fit.
    """

    __slots__ = ("n_targets", "in_dim", "dim", "squares", "alpha", "gamma", "seed", "projection", "sketch", "P",
                 "W", "kept", "Ainv", "b", "theta", "pulls", "cost", "cost_seen", "res_mean", "res_var", "res_base",
                 "res_n", "boost_left", "drifts", "nov_base", "nov_rate0", "nov_ema", "nov_n", "refits", "refit", "grown",
                 "_nov_w")

    def __init__(self, n_targets: int, in_dim: int, dim: int | None = None, alpha: float | None = None,
                 gamma: float | None = None, seed: int = 0xC0A5, projection: str | None = None, *,
                 seeded: bool = True, sketch: int | None = None, squares: int | None = None,
                 refit: bool = True) -> None:
        """``seeded`` False leaves ``P`` for the caller to set (a decoded fitted state: ``W R``);
        ``sketch`` the kept queries' width when sketched, 0 when kept as given (None: by ``in_dim``)."""
        self.n_targets = int(n_targets)
        self.in_dim = int(in_dim)
        want = _DEFAULT_SQUARES if squares is None else int(squares)
        self.dim = bandit_dim(self.n_targets, _DEFAULT_DIM if dim is None else int(dim), want)
        self.squares = min(want, self.dim)
        self.alpha = _DEFAULT_ALPHA if alpha is None else float(alpha)
        self.gamma = _DEFAULT_GAMMA if gamma is None else float(gamma)
        self.seed = int(seed)
        projection = PROJECTIONS[0] if projection is None else projection
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}")
        self.sketch = _default_sketch(self.in_dim) if sketch is None else int(sketch)
        self.projection = projection if self.kept_width > self.dim else "random"
        d1 = self.d1
        self.P = _k.bandit_projection(self.seed, self.dim, self.in_dim) if seeded else None
        self.W: np.ndarray | None = None  # pca, fitted: dim x kept_width (P = W, or W R when sketched)
        # pca, not fitted yet: the outcomes learned so far, their queries pre-projected (FIT_AFTER rows)
        self.kept: np.ndarray | None = None
        if self.projection == "pca":
            self.kept = np.empty(0, _kept_dtype(self.kept_width))
        self.Ainv = np.tile(np.eye(d1) / _RIDGE, (self.n_targets, 1, 1))
        self.b = np.zeros((self.n_targets, d1))
        self.theta = np.zeros((self.n_targets, d1))
        self.pulls = np.zeros(self.n_targets, np.int64)
        self.cost = np.zeros(self.n_targets)
        self.cost_seen = np.zeros(self.n_targets, bool)
        self.res_mean = np.zeros(self.n_targets)
        self.res_var = np.zeros(self.n_targets)
        self.res_base = np.zeros(self.n_targets)
        self.res_n = np.zeros(self.n_targets, np.int64)
        self.boost_left = 0
        self.drifts = 0
        # fitted pca: the baseline share of a query's energy in the fitted directions, the baseline rate and
        # the EMA of novel queries, the outcomes since the fit, and how often the projection was fitted again
        # (module doc, "New topics")
        self.nov_base = self.nov_rate0 = self.nov_ema = 0.0
        self.nov_n = 0
        self.refits = 0
        self.refit = bool(refit)  # False: the first fit's projection is kept whatever the queries do
        self.grown = 0  # directions added to the projection since it was fitted from scratch (_grow)
        self._nov_w: np.ndarray | None = None  # the fitted directions' weights in the share (from W)

    @property
    def d1(self) -> int:
        """Features per query: the projected ones, their squares, the intercept."""
        return self.dim + self.squares + 1

    @property
    def kept_width(self) -> int:
        """Floats per kept query: ``in_dim`` as given, or the sketch's width."""
        return self.sketch or self.in_dim

    # ------------------------------------------------------------------ routing
    def epsilon(self, base: float) -> float:
        """The exploration rate now: ``base`` plus the decaying boost after a drift."""
        return base + _BOOST_EPS * self.boost_left / _BOOST

    # ----------------------------------------------------------------- learning
    def learn(self, arms: np.ndarray, X: np.ndarray, quality: np.ndarray, costs: np.ndarray | None = None) -> int:
        """Outcomes in order (targets ``arms``, queries ``X``, qualities, optional costs; NaN cost =
        none given). Returns the number of drift alarms they raised.

        While the projection is not fitted (or, after new topics, is to be fitted again), the rows up to
        the :data:`FIT_AFTER`-th are kept and the fit happens right after it, whichever call it falls in:
        one call of many rows and many calls of one row end in the same state."""
        arms = np.ascontiguousarray(arms, np.int64)
        X = np.ascontiguousarray(X, np.float32)
        quality = np.ascontiguousarray(quality, np.float64)
        if self.kept is None:
            if self.W is None or not self.refit:
                return self._learn(arms, X, quality, costs)
            # the novelty test reads each query's share from the update kernel, which projects it anyway:
            # at most FIT_AFTER rows at a time, so that a refit starting in them cannot also end in them
            # (every row of the chunk is learned on the current projection either way)
            cut = min(FIT_AFTER, len(arms))
            shares = np.empty(cut)
            alarms = self._learn(arms[:cut], X[:cut], quality[:cut], None if costs is None else costs[:cut], shares)
            start = self._novelty(shares)
            if start is not None:
                # the rows after the one whose query completed a drop in the share the fit holds are the first
                # of the FIT_AFTER kept for the fit again
                self.kept = np.empty(0, _kept_dtype(self.kept_width))
                self._keep(arms[start:cut], X[start:cut], quality[start:cut])
        else:
            cut = min(FIT_AFTER - len(self.kept), len(arms))
            alarms = self._learn(arms[:cut], X[:cut], quality[:cut], None if costs is None else costs[:cut])
            self._keep(arms[:cut], X[:cut], quality[:cut])
            if len(self.kept) >= FIT_AFTER:
                self._fit()
        if cut < len(arms):  # the rest as if it came in a call of its own
            alarms += self.learn(arms[cut:], X[cut:], quality[cut:], None if costs is None else costs[cut:])
        return alarms

    def _share_weights(self) -> np.ndarray:
        """Weights of the projected features' squares that give a query's share of energy in the fitted
        directions (``share_weights`` of the update kernel)."""
        if self._nov_w is None:
            # (V_i . z)^2 = f_i^2 / |W_i|^2 for f = P x_hat = W z, over the energy of a unit-RMS query in the
            # kept space: in_dim, times the sketch's gain
            W = self.W
            assert W is not None
            self._nov_w = 1.0 / (np.maximum(np.einsum("ij,ij->i", W, W, dtype=np.float64), 1e-30)
                                 * (self.in_dim * _sketch_gain(self.seed, self.in_dim, self.sketch)))
        return self._nov_w

    def _novelty(self, shares: np.ndarray) -> int | None:
        """Fold the queries' shares of energy in the fitted directions (NaN: a zero query, which has
        none and is skipped) into the novelty test, in order; returns the number of rows up to the one
        that started the fit again (None: it did not). Row by row: one call of many rows and many calls
        of one row end in the same state."""
        for j, v in enumerate(shares.tolist()):
            if v != v:
                continue  # a zero query
            self.nov_n += 1
            n = self.nov_n
            if n <= NOVELTY_BASE:
                self.nov_base += (v - self.nov_base) / n
                continue
            novel = float(v < NOVEL_SHARE * self.nov_base)
            if n <= 2 * NOVELTY_BASE:
                self.nov_rate0 += (novel - self.nov_rate0) / (n - NOVELTY_BASE)
                self.nov_ema = self.nov_rate0
                continue
            self.nov_ema += NOVELTY_RATE * (novel - self.nov_ema)
            if n > 2 * NOVELTY_BASE + 1.0 / NOVELTY_RATE and self.nov_ema > self.nov_rate0 + REFIT_RISE:
                return j + 1
        return None

    def _keep(self, arms: np.ndarray, X: np.ndarray, quality: np.ndarray) -> None:
        """Append the rows to the kept outcomes, each query as given or pre-projected (``z = R x_hat``)."""
        if not len(arms):
            return
        rows = np.empty(len(arms), self.kept.dtype)
        rows["arm"], rows["q"] = arms, quality
        if not self.sketch:
            rows["z"] = X  # the refit rescales them exactly as a route does
        else:
            R = _sketch(self.seed, self.in_dim, self.sketch)
            for i, x in enumerate(X):
                rows["z"][i] = _k.bandit_features(R, x)[:self.sketch]  # the kernels' own arithmetic: P = W R gives W z
        self.kept = np.concatenate([self.kept, rows])

    def _fit(self) -> None:
        """Fit ``P`` to the kept queries: the first time (and once grown to its limit) from scratch,
        learning the kept outcomes again in its features; after that by growing it (:meth:`_grow`)."""
        kept, self.kept = self.kept, None
        Z = kept["z"].astype(np.float64)
        if not self.sketch:  # as a route sees them: rescaled to unit RMS
            norms = np.linalg.norm(Z, axis=1, keepdims=True)
            Z = np.divide(Z * math.sqrt(self.in_dim), norms, out=np.zeros_like(Z), where=norms > 0)
        n, width = Z.shape
        if float(np.einsum("ij,ij->", Z, Z)) / n < 1e-6 * width:  # trace of the second moment
            # nothing to fit (all-zero queries): keep the current features and try again on the next rows
            self.kept = np.empty(0, kept.dtype)
            return
        if self.W is not None:
            self.refits += 1
            if self._grow(Z):
                self._novelty_reset()
                return
            # not grown (too many new directions at once, or no room): from scratch, at the width it began with
            self.dim -= self.grown
            self.grown = 0
        if self.dim <= min(n, width):
            # the top directions of Z'Z/n from Z's SVD: O(n^2 width), where eigh of the width x width
            # second moment took 153 ms at 1,024-d (in the batch that brings the 200th outcome)
            _, sv, Vt = np.linalg.svd(Z, full_matrices=False)
            lam, V = sv[:self.dim] ** 2 / n, Vt[:self.dim].T
        else:  # more features than kept rows: the rest of the basis comes from the full eigendecomposition
            lam, V = np.linalg.eigh(Z.T @ Z / n)                      # ascending
            lam, V = lam[::-1][:self.dim], V[:, ::-1][:, :self.dim]
        lam = np.maximum(lam, 0.0) + _WHITEN_FLOOR * max(float(lam.mean()), 1e-12)
        self._novelty_reset()
        self.W = np.ascontiguousarray((V / np.sqrt(lam)).T, np.float32)
        self.P = _fitted_projection(self.W, self.seed, self.in_dim, self.sketch)
        self.Ainv = np.tile(np.eye(self.d1) / _RIDGE, (self.n_targets, 1, 1))
        self.b = np.zeros((self.n_targets, self.d1))
        self.theta = np.zeros((self.n_targets, self.d1))
        # the residual tests start again: their long-run level was that of the old features
        self.res_mean[:] = self.res_var[:] = self.res_base[:] = 0.0
        self.res_n[:] = 0
        _k.bandit_update_batch(self.W, self.Ainv, self.b, self.theta, np.ascontiguousarray(kept["arm"]),
                               np.ascontiguousarray(kept["z"]), np.ascontiguousarray(kept["q"]), self.gamma,
                               normalize=not self.sketch, idle_gamma=_IDLE_GAMMA, idle_cap=self.d1 / _RIDGE)

    def _novelty_reset(self) -> None:
        """The novelty test starts again on the new directions (module doc, "New topics")."""
        self.nov_base = self.nov_rate0 = self.nov_ema = 0.0
        self.nov_n = 0
        self._nov_w = None

    def _grow(self, Z: np.ndarray) -> bool:
        """Add directions for what the kept queries ``Z`` (rescaled as a route sees them) hold outside
        the fitted ones; the features and evidence the router has stay as they are. False (fit from
        scratch) when they need more new directions than :data:`GROW_MOST` allows, or than the room left
        (:data:`GROW_LIMIT`, the state's budget, the kept space, the kernels' widest projection)."""
        assert self.W is not None
        base = self.dim - self.grown
        room = min(bandit_dim(self.n_targets, GROW_LIMIT * base, self.squares), self.kept_width,
                   _k.BANDIT_MAX_DIM) - self.dim
        if room <= 0:
            return False
        W = self.W.astype(np.float64)
        # each fitted direction's variance as it was whitened (the floor included): W's rows are V_i / sqrt(lam_i)
        lam_old = 1.0 / np.maximum(np.einsum("ij,ij->i", W, W), 1e-30)
        Q, _ = np.linalg.qr(W.T)  # an orthonormal basis of the fitted directions, in the kept space
        R = Z - (Z @ Q) @ Q.T
        n, width = R.shape
        # the decision from the eigenvalues alone (its smaller Gram matrix: ~1 ms at 200 x 384, where the SVD
        # with its vectors took ~8): a fit from scratch follows a refused growth and makes its own SVD
        k = max(1, int(np.count_nonzero(np.linalg.eigvalsh(R.T @ R if width < n else R @ R.T) / n
                                        >= GROW_SHARE * lam_old.mean())))
        if k > min(room, max(1, base // GROW_MOST)):
            return False
        _, sv, Vt = np.linalg.svd(R, full_matrices=False)
        lam = sv ** 2 / n
        lam = lam[:k] + _WHITEN_FLOOR * float(np.concatenate([lam_old, lam[:k]]).mean())
        d_old, sq = self.dim, self.squares
        self.W = np.ascontiguousarray(np.vstack([self.W, (Vt[:k].T / np.sqrt(lam)).T.astype(np.float32)]))
        self.P = _fitted_projection(self.W, self.seed, self.in_dim, self.sketch)
        self.dim += k
        self.grown += k
        # the old features keep their places (the new ones go after the projected ones, before the squares
        # of the first `squares` of them and the intercept) and their evidence; the new ones start at the prior
        at = np.r_[np.arange(d_old), np.arange(self.dim, self.dim + sq + 1)]
        Ainv = np.tile(np.eye(self.d1) / _RIDGE, (self.n_targets, 1, 1))
        Ainv[:, at[:, None], at] = self.Ainv
        b, theta = np.zeros((self.n_targets, self.d1)), np.zeros((self.n_targets, self.d1))
        b[:, at], theta[:, at] = self.b, self.theta
        self.Ainv, self.b, self.theta = Ainv, b, theta
        return True

    def _learn(self, arms: np.ndarray, X: np.ndarray, quality: np.ndarray, costs: np.ndarray | None,
               shares: np.ndarray | None = None) -> int:
        """Learn the rows; ``shares``: filled with each query's share of energy in the fitted directions."""
        alarms = 0
        start, n = 0, len(arms)
        while start < n:
            # exactly row by row: when a residual raises an alarm, the memory is cut right
            # after that row, so rows after it must be learned again from the restored copy
            snap = (self.Ainv.copy(), self.b.copy(), self.theta.copy()) if n - start > 1 else None
            preds = self._update(arms[start:], X[start:], quality[start:],
                                 None if shares is None else shares[start:])
            stop = n
            for j, pred in enumerate(preds.tolist()):
                i = start + j
                k = int(arms[i])
                self.pulls[k] += 1
                if costs is not None and not math.isnan(costs[i]):
                    self.observe_cost(k, float(costs[i]))
                if self.boost_left:
                    self.boost_left -= 1
                alarm, shift = self._residual_alarm(k, float(quality[i]) - pred)
                if alarm:
                    if i + 1 < n and snap is not None:
                        self.Ainv[:], self.b[:], self.theta[:] = snap
                        self._update(arms[start:i + 1], X[start:i + 1], quality[start:i + 1])
                    self.drift(k, shift)
                    alarms += 1
                    stop = i + 1
                    break
            start = stop
        return alarms

    def observe_cost(self, k: int, c: float) -> None:
        """Fold one outcome's cost into target k's cost EMA (the first cost sets it)."""
        self.cost[k] = c if not self.cost_seen[k] else self.cost[k] + _COST_RATE * (c - self.cost[k])
        self.cost_seen[k] = True

    def _update(self, arms: np.ndarray, X: np.ndarray, quality: np.ndarray,
                shares: np.ndarray | None = None) -> np.ndarray:
        return _k.bandit_update_batch(self.P, self.Ainv, self.b, self.theta, arms, X, quality, self.gamma,
                                      idle_gamma=_IDLE_GAMMA, idle_cap=self.d1 / _RIDGE,
                                      share_weights=None if shares is None else self._share_weights(),
                                      shares=shares)

    def _residual_alarm(self, k: int, e: float) -> tuple[bool, float]:
        """Fold target k's residual into its tests: (alarm, the quality shift when the mean moved, else 0)."""
        self.res_n[k] += 1
        n = int(self.res_n[k])
        self.res_mean[k] += _RES_RATE * (e - self.res_mean[k])
        # one outlier (a query the linear model fits badly) must not look like a drift: the
        # recent level takes each square at most _RES_CAP times the long-run level
        e2 = e * e if n <= _RES_MIN else min(e * e, _RES_CAP * max(self.res_base[k], 1e-6))
        self.res_var[k] += _RES_RATE * (e2 - self.res_var[k])
        # the long-run level is a plain mean until it has a memory's worth of outcomes; it holds
        # still while the recent level is well above it, so a change cannot leak into it
        if n < _RES_MIN or self.res_var[k] <= _RES_HOLD * self.res_base[k]:
            self.res_base[k] += max(1.0 / n, _RES_SLOW) * (e * e - self.res_base[k])
        if n < _RES_MIN:
            return False, 0.0
        # the EMA's sd from the long-run level, not the recent one: a shift inflates the recent
        # squares too, which made the test wait until the EMA had nearly the whole shift
        sd = math.sqrt(max(self.res_base[k], _RES_FLOOR) * _RES_RATE / (2.0 - _RES_RATE))
        m = float(self.res_mean[k])
        if abs(m) > _RES_Z * sd:
            return True, m
        return bool(self.res_var[k] > _RES_RATIO * max(self.res_base[k], 1e-6)), 0.0

    def drift(self, k: int | None = None, shift: float = 0.0) -> None:
        """React to a drift (of target k, or of the world when None): forget, explore again.

        ``shift``: target k's quality moved by this much everywhere (its residuals' mean):
        its intercept takes the shift at once and it keeps more of its evidence (the
        shape of where it wins still holds); without one it keeps only 5%."""
        if k is not None and shift:
            A = np.linalg.inv(self.Ainv[k])    # (dim+1)^3 once per alarm
            self.theta[k, -1] += shift
            self.b[k] = A @ self.theta[k]
        for j in range(self.n_targets):
            rho = (_RHO_SHIFT if shift else _RHO_ARM) if j == k else _RHO_ALL
            self.Ainv[j] /= rho
            self.b[j] *= rho
        if k is not None:
            self.res_mean[k] = self.res_var[k] = self.res_base[k] = 0.0
            self.res_n[k] = 0
        self.boost_left = _BOOST
        self.drifts += 1

    # -------------------------------------------------------------- persistence
    def to_bytes(self) -> bytes:
        header = {"n_targets": self.n_targets, "in_dim": self.in_dim, "dim": self.dim, "alpha": self.alpha,
                  "gamma": self.gamma, "seed": self.seed, "boost_left": self.boost_left, "drifts": self.drifts,
                  "projection": self.projection, "fitted": self.W is not None, "sketch": self.sketch,
                  "squares": self.squares}
        if not self.refit:  # only then: a default state's bytes are those written before the option
            header["refit"] = False
        if self.grown:  # only then, likewise
            header["grown"] = self.grown
        if self.W is not None:
            header["novelty"] = [self.nov_base, self.nov_rate0, self.nov_ema, self.nov_n, self.refits,
                                 self.kept is not None]
        # last: the kept outcomes, which only grow (a save appends a row, the pieces before it keep their bytes)
        tail = ((self.W.astype("<f4", copy=False).tobytes() if self.W is not None else b"")
                + (self.kept.tobytes() if self.kept is not None else b""))
        return pack_part(_MAGIC, _VERSION, header,
                         *(a.astype("<f8", copy=False).tobytes()
                           for a in (self.Ainv, self.b, self.theta, self.cost, self.res_mean, self.res_var,
                                     self.res_base)),
                         *(a.astype("<i8", copy=False).tobytes() for a in (self.pulls, self.res_n)),
                         self.cost_seen.astype(np.uint8).tobytes(), tail)

    @classmethod
    def from_bytes(cls, data: bytes) -> BanditState:
        version = version_of(data, (1, _VERSION), _VERSION)
        h, pos = unpack_part(data, _MAGIC, version, "router bandit")
        try:
            projection = h.get("projection", "random") if version >= 2 else "random"
            fitted = bool(h.get("fitted", False))
            # written before the field: kept queries sketched to 128 features
            sketch = h.get("sketch", min(_OLD_SKETCH_DIM, int(h["in_dim"])))
            if type(sketch) is not int or not (sketch == 0 or 0 < sketch <= min(_k.BANDIT_MAX_DIM, int(h["in_dim"]))):
                raise ValueError("sketch")
            refit = h.get("refit", True)  # written before the field: fitted again on new topics (as now)
            if type(refit) is not bool:
                raise ValueError("refit")
            squares = h.get("squares", 0)  # written before the field: none
            if type(squares) is not int or not 0 <= squares <= int(h["dim"]):
                raise ValueError("squares")
            grown = h.get("grown", 0)  # written before the field: never grown
            if type(grown) is not int or not 0 <= grown < int(h["dim"]) or (grown and not fitted):
                raise ValueError("grown")
            # a fitted state's P is W (R), set below: the seeded one would be drawn only to be replaced
            st = cls(h["n_targets"], h["in_dim"], dim=h["dim"], alpha=h["alpha"], gamma=h["gamma"], seed=h["seed"],
                     projection=projection, seeded=not fitted, sketch=sketch, squares=squares, refit=refit)
            boost, drifts = int(h["boost_left"]), int(h["drifts"])
            # written before the field (or not fitted): no baseline yet, never fitted again, not keeping
            base, rate0, ema, nov_n, refits, collecting = (_novelty_field(h) if fitted
                                                           else (0.0, 0.0, 0.0, 0, 0, False))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptStateError(f"router bandit header is malformed ({exc})") from None
        if (st.dim != h["dim"] or st.squares != squares or st.projection != projection
                or (fitted and projection != "pca")):
            raise CorruptStateError("router bandit header is malformed (dim or projection)")
        nt, d1 = st.n_targets, st.d1
        need = pos + 8 * (nt * d1 * d1 + 2 * nt * d1 + 4 * nt) + 16 * nt + nt
        m = st.kept_width
        w_bytes = 4 * st.dim * m if fitted else 0
        if fitted and not collecting:
            st.kept = None
        if st.kept is not None:
            row = st.kept.dtype.itemsize
            rest = len(data) - need - w_bytes
            tail = w_bytes + rest if rest >= 0 and rest % row == 0 else -1
            if rest > row * (FIT_AFTER - 1):
                tail = -1  # the fit runs at FIT_AFTER rows: never stored with that many
        else:
            tail = w_bytes
        if tail < 0 or len(data) != need + tail:
            raise CorruptStateError(f"router bandit state has {len(data)} bytes, which does not match its header")

        def take(dtype: str, count: int) -> np.ndarray:
            nonlocal pos
            a = np.frombuffer(data, dtype, count, pos)
            pos += a.nbytes
            return a

        st.Ainv[:] = take("<f8", nt * d1 * d1).reshape(nt, d1, d1)
        st.b[:] = take("<f8", nt * d1).reshape(nt, d1)
        # stored, not recomputed: a restarted worker must predict bit for bit as the live one did
        st.theta[:] = take("<f8", nt * d1).reshape(nt, d1)
        st.cost[:], st.res_mean[:], st.res_var[:] = take("<f8", nt), take("<f8", nt), take("<f8", nt)
        st.res_base[:] = take("<f8", nt)
        st.pulls[:], st.res_n[:] = take("<i8", nt), take("<i8", nt)
        st.cost_seen[:] = take("u1", nt).astype(bool)
        st.boost_left, st.drifts = boost, drifts
        st.nov_base, st.nov_rate0, st.nov_ema, st.nov_n, st.refits = base, rate0, ema, nov_n, refits
        st.grown = grown
        if fitted:
            st.W = take("<f4", st.dim * m).reshape(st.dim, m).copy()
            if not np.isfinite(st.W).all():
                raise CorruptStateError("router bandit projection is not finite")
            st.P = _fitted_projection(st.W, st.seed, st.in_dim, st.sketch)
        if st.kept is not None:
            st.kept = np.frombuffer(data, st.kept.dtype, offset=pos).copy()
            if (st.kept["arm"] < 0).any() or (st.kept["arm"] >= nt).any():
                raise CorruptStateError("router bandit kept outcomes name unknown targets")
            if not (np.isfinite(st.kept["z"]).all() and np.isfinite(st.kept["q"]).all()):
                raise CorruptStateError("router bandit kept outcomes are not finite")  # the fit would fail on them
        return st

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BanditState) and other.to_bytes() == self.to_bytes()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"BanditState(n_targets={self.n_targets}, dim={self.dim}, pulls={int(self.pulls.sum())}, "
                f"drifts={self.drifts})")

    def info(self) -> dict[str, Any]:
        return {"dim": self.dim, "squares": self.squares, "alpha": self.alpha, "gamma": self.gamma,
                "drifts": self.drifts, "boost_left": self.boost_left, "projection": self.projection,
                "fitted": self.W is not None if self.projection == "pca" else None,
                "kept": len(self.kept) if self.kept is not None else 0, "refit": self.refit, "refits": self.refits,
                "grown": self.grown,
                "novelty": {"share": self.nov_base, "novel_rate": self.nov_ema, "baseline_rate": self.nov_rate0}
                if self.W is not None else None}


def _novelty_field(header: dict) -> tuple[float, float, float, int, int, bool]:
    """A fitted state's header ``novelty``: [baseline share, baseline rate of novel queries, its EMA, outcomes
    since the fit, refits, keeping queries for the fit again]; absent (written before the field): none yet."""
    if "novelty" not in header:
        return 0.0, 0.0, 0.0, 0, 0, False
    v = header["novelty"]
    if not (isinstance(v, list) and len(v) == 6 and all(type(x) in (int, float) and math.isfinite(x) for x in v[:3])
            and 0.0 <= v[1] <= 1.0 and 0.0 <= v[2] <= 1.0
            and type(v[3]) is int and type(v[4]) is int and type(v[5]) is bool and v[3] >= 0 and v[4] >= 0):
        raise ValueError(f"novelty {v!r}")
    return float(v[0]), float(v[1]), float(v[2]), v[3], v[4], v[5]


def _default_sketch(in_dim: int) -> int:
    """0 (kept as given) up to RAW_KEEP_MAX floats, else the sketch's width."""
    return 0 if in_dim <= RAW_KEEP_MAX else min(SKETCH_DIM, in_dim)


def _kept_dtype(m: int) -> np.dtype:
    """One kept outcome: the query pre-projected (m float32), its target, its quality."""
    return np.dtype([("z", "<f4", (m,)), ("arm", "<i8"), ("q", "<f8")])


@functools.lru_cache(maxsize=8)
def _sketch(seed: int, in_dim: int, width: int) -> np.ndarray:
    """R (width x in_dim): a Gaussian projection like P's, from its own seed (read-only, shared)."""
    R = _k.bandit_projection((seed ^ _SKETCH_SALT) & 0xFFFFFFFF, width, in_dim)
    R.flags.writeable = False
    return R


@functools.lru_cache(maxsize=8)
def _sketch_gain(seed: int, in_dim: int, sketch: int) -> float:
    """How much a sketch ``z = R x`` scales a query's energy on average (``|R|_F^2 / in_dim``; 1 unsketched)."""
    if not sketch:
        return 1.0
    R = _sketch(seed, in_dim, sketch).astype(np.float64)
    return float(np.einsum("ij,ij->", R, R)) / in_dim


def _fitted_projection(W: np.ndarray, seed: int, in_dim: int, sketch: int) -> np.ndarray:
    """P = W, or W R when the kept queries were sketched (float32): what a route projects a query with
    once the projection is fitted."""
    if not sketch:
        return np.ascontiguousarray(W, np.float32)
    return np.ascontiguousarray(W @ _sketch(seed, in_dim, sketch), np.float32)
