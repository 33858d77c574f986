"""Benchmark: does the router learn the world, recover from drift, and route fast (``learnstream bench router``).

**The world** (synthetic: no sentence-embedding model is installed here). Queries are
384-d: ``--regions`` loose topic clusters (centres ~ N(0, I), per-coordinate spread
``--spread``), plus a continuous difficulty ``d ~ U(0, 1)`` that moves the query along
the region's own direction (``(2d - 1) * u_k``, ``u_k ~ N(0, I)``). Five models, each
with a price (``_PRICES``). A model's expected quality on a query is non-linear in the
difficulty: ``lo + (hi - lo) * sigmoid((d0 - d) / w)`` — good on easy queries, falling
off past its own difficulty threshold ``d0`` — with ``hi, lo, d0, w`` drawn per model and
region (bigger models: higher ``d0`` and ``hi`` on average, never everywhere). An outcome
is that quality plus N(0, 0.15) noise, clipped to [0, 1]; only the routed model's outcome is
seen (bandit feedback). Utility = quality - lambda * price (lambda ``--cost-weight``,
default 1); regret per request = the best model's expected utility on that query minus
the routed one's. **Drift** at the midpoint: two models regress (quality -0.25 on their
strongest regions' easy side ... everywhere ``hi`` and ``lo`` drop by 0.25), one improves
(+0.15, ``d0`` +0.2), one gains a new domain (in the region where it was worst it becomes
the best model there). **New topics** (``--arrivals K``, off by default): the first half of
the requests come from only K of the regions, the rest from all of them, so the topics the
router's projection was first fitted to are not the ones it must route later; ``--arrive-every N``:
the topics arrive one at a time, a new region every N requests; ``--topic-blocks N``: the topics come in
turns, N requests of one region, then N of the next. With any of them, the learned router also runs with
``bandit: {refit: false}`` (its first projection kept) beside it.

**Policies**: the oracle (per query), the rule router (untrained: always targets[0]),
the best single model in hindsight, a 30-line per-model online ridge regression on the
raw 384-d embedding with epsilon-greedy (0.05) and forgetting (0.998) — the baseline
the issue measured — and learnstream's router through the verbs (``route``, then
``record_outcome`` with the request's embedding and its ``cost``), in its default
``learned`` mode (LinUCB on a 32-d projection fitted to the first 200 outcomes' queries,
with forgetting, drift-raised exploration) and in ``mode: reference`` (the seed's FastGRNN head training). Both
routers are initialised with defaults (the learned mode's lambda is 1 by default; ``cost_weight``
is set only for another ``--cost-weight``; threshold 200: the first 200 requests use the rule route).

**Latency**: in-process ``route`` for in_dim 384 and 5 targets, p99 over single calls; the
learned route also at the common embedding widths 1536 and 3072 (``--latency-dims``; the
goal is judged at 384, the world's width).

Goals (issue 14), each printed PASS/FAIL: cumulative regret >= 70% below the rule router
and >= 40% below the best fixed model (mean over seeds); per-request regret (mean over
seeds, 200-request window) back within 0.05 of the oracle within 1,000 requests after
the drift; in-process ``RouterState.route`` p99 <= 20 us.
"""
from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from workers import _kernels as K
from workers.verbs.codec import encode_embedding_b64
from workers.cores.router import PART as ROUTER_PART
from workers.cores.router import RouterState
from workers.verbs.session import LearnSession
from workers.verbs.surface import DEFAULT_SESSION

__all__ = ("main", "World", "make_world")

_DIM = 384
_TARGETS = ["medium", "tiny", "small", "large", "xl"]
_PRICES = np.array([0.08, 0.01, 0.04, 0.18, 0.30])
_NOISE = 0.15
_TARGET_VS_RULE = 0.70
_TARGET_VS_FIXED = 0.40
_TARGET_RECOVERY = 1000      # requests after the drift
_RECOVERY_GAP = 0.05
_WINDOW = 200                # rolling window of per-request regret
_TARGET_ROUTE_US = 20.0


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class Params:
    """Per (region, model): quality hi (easy), lo (hard), difficulty threshold d0, width w."""

    hi: np.ndarray
    lo: np.ndarray
    d0: np.ndarray
    w: np.ndarray

    def quality(self, region: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Expected quality, (n, models)."""
        z = (self.d0[region] - d[:, None]) / self.w[region]
        return np.clip(self.lo[region] + (self.hi[region] - self.lo[region]) * _sigmoid(z), 0.0, 1.0)


@dataclass
class World:
    centers: np.ndarray      # regions x dim
    dirs: np.ndarray         # regions x dim: the difficulty direction of each region
    spread: float
    before: Params
    after: Params
    cost_weight: float

    def queries(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        region = rng.integers(0, len(self.centers), n)
        d = rng.random(n)
        X = (self.centers[region] + (2.0 * d - 1.0)[:, None] * self.dirs[region]
             + self.spread * rng.standard_normal((n, self.centers.shape[1])))
        return X.astype(np.float32), region, d

    def utility(self, region: np.ndarray, d: np.ndarray, drifted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(expected quality, expected utility), both (n, models)."""
        q = np.where(drifted[:, None], self.after.quality(region, d), self.before.quality(region, d))
        return q, q - self.cost_weight * _PRICES[None, :]


def make_world(regions: int, spread: float, cost_weight: float, seed: int) -> World:
    rng = np.random.default_rng(seed)
    nm = len(_TARGETS)
    size = np.argsort(_PRICES).argsort() / (nm - 1)          # 0 = cheapest .. 1 = dearest
    hi = np.clip(0.5 + 0.25 * size + rng.normal(0, 0.2, (regions, nm)), 0.2, 0.98)
    lo = np.clip(hi - rng.uniform(0.3, 0.7, (regions, nm)), 0.0, 0.9)
    d0 = np.clip(0.2 + 0.5 * size + rng.normal(0, 0.25, (regions, nm)), 0.05, 0.95)
    w = rng.uniform(0.04, 0.15, (regions, nm))
    before = Params(hi, lo, d0, w)
    a = Params(hi.copy(), lo.copy(), d0.copy(), w.copy())
    order = rng.permutation(nm)
    for m in order[:2]:                                      # two regress
        a.hi[:, m] -= 0.25
        a.lo[:, m] -= 0.25
    m = order[2]                                             # one improves
    a.hi[:, m] += 0.1
    a.lo[:, m] += 0.1
    a.d0[:, m] += 0.1
    m = order[3]                                             # one gains a new domain: its worst region
    k = int(np.argmin(hi[:, m] + lo[:, m]))
    a.hi[k, m], a.lo[k, m], a.d0[k, m] = 0.97, 0.9, 0.95
    for p in (a.hi, a.lo):
        np.clip(p, 0.0, 1.0, out=p)
    return World(rng.standard_normal((regions, _DIM)), rng.standard_normal((regions, _DIM)), spread,
                 before, a, cost_weight)


@dataclass
class Run:
    name: str
    regret: np.ndarray     # per request
    refits: int | None = None  # the learned router's projection fitted again (module doc of workers.cores.bandit)

    @property
    def total(self) -> float:
        return float(self.regret.sum())


class Stream:
    """One seed's queries, their expected utilities and the outcome noise."""

    def __init__(self, world: World, n: int, seed: int, arrivals: int = 0, every: int = 0, blocks: int = 0) -> None:
        rng = np.random.default_rng(seed + 100)
        self.X, self.region, self.d = world.queries(n, rng)
        # new topics, drawn after the default queries (so without them those are unchanged): the first half
        # from the first `arrivals` regions only, or one more region every `every` requests
        k = len(world.centers)
        pool = np.full(n, k)
        if arrivals:
            pool[:n // 2] = arrivals
        if every:
            pool = np.minimum(1 + np.arange(n) // every, k)
        for m in range(1, k):
            at = np.flatnonzero(pool == m)
            if len(at):
                early = World(world.centers[:m], world.dirs[:m], world.spread, world.before, world.after,
                              world.cost_weight)
                self.X[at], self.region[at], self.d[at] = early.queries(len(at), rng)
        if blocks:  # each query moved to the region of its block (its difficulty and noise kept)
            region = (np.arange(n) // blocks) % k
            self.X += (world.centers[region] - world.centers[self.region]
                       + (2.0 * self.d - 1.0)[:, None] * (world.dirs[region] - world.dirs[self.region])).astype(np.float32)
            self.region = region
        self.drifted = np.arange(n) >= n // 2
        self.q, self.u = world.utility(self.region, self.d, self.drifted)
        self.best = self.u.max(1)
        self.noise = rng.normal(0.0, _NOISE, n)
        self.n = n

    def outcome(self, i: int, m: int) -> float:
        return float(np.clip(self.q[i, m] + self.noise[i], 0.0, 1.0))

    def fixed(self, name: str, choice: np.ndarray | int) -> Run:
        return Run(name, self.best - self.u[np.arange(self.n), choice])


def ridge_baseline(s: Stream, world: World, seed: int, eps: float = 0.05, gamma: float = 0.998) -> Run:
    """Per-model online ridge on the raw embedding (+ bias) of the utility, epsilon-greedy, forgetting."""
    rng = np.random.default_rng(seed + 7)
    nm, d1 = len(_TARGETS), _DIM + 1
    Ainv = np.tile(np.eye(d1), (nm, 1, 1))
    b = np.zeros((nm, d1))
    theta = np.zeros((nm, d1))
    regret = np.empty(s.n)
    for i in range(s.n):
        phi = np.append(s.X[i] / np.sqrt(np.mean(s.X[i] ** 2)), 1.0)
        m = int(rng.integers(nm)) if rng.random() < eps else int(np.argmax(theta @ phi))
        regret[i] = s.best[i] - s.u[i, m]
        r = s.outcome(i, m) - world.cost_weight * _PRICES[m]
        u = Ainv[m] @ phi
        Ainv[m] = (Ainv[m] - np.outer(u, u) / (gamma + phi @ u)) / gamma
        b[m] = gamma * b[m] + r * phi
        theta[m] = Ainv[m] @ b[m]
    return Run(f"ridge on raw 384-d, eps {eps}, forget {gamma}", regret)


def learned(name: str, s: Stream, world: World, seed: int, **init: object) -> Run:
    """learnstream's router through the verbs: route, then record_outcome with embedding and cost."""
    sess = LearnSession(rng=random.Random(seed))
    body: dict = {"targets": _TARGETS, "in_dim": _DIM, **init}
    # the reference mode has no cost term (init_router refuses one); the learned mode's default is lambda 1
    if init.get("mode") != "reference" and world.cost_weight != 1.0:
        body["cost_weight"] = world.cost_weight
    out = sess.dispatch({"verb": "init_router", "body": body})
    assert out["ok"], out
    regret = np.empty(s.n)
    for i in range(s.n):
        b64 = encode_embedding_b64(s.X[i])
        r = sess.dispatch({"verb": "route", "body": {"embedding_b64": b64}})["data"]
        m = _TARGETS.index(r["model"])
        regret[i] = s.best[i] - s.u[i, m]
        out = sess.dispatch({"verb": "record_outcome", "body": {"target": r["model"], "quality": s.outcome(i, m),
                                                                 "cost": float(_PRICES[m]), "embedding_b64": b64}})
        assert out["ok"], out
    bandit = sess.blob("session", DEFAULT_SESSION).get(ROUTER_PART, RouterState).bandit
    return Run(name, regret, None if bandit is None else bandit.refits)


def regret_runs(args: argparse.Namespace, seed: int) -> list[Run]:
    world = make_world(args.regions, args.spread, args.cost_weight, seed)
    s = Stream(world, args.requests, seed, args.arrivals, args.arrive_every, args.topic_blocks)
    single = int(s.u.mean(0).argmax())
    kept = [learned("learnstream router, first projection kept", s, world, seed, bandit={"refit": False})
            ] if args.arrivals or args.arrive_every or args.topic_blocks else []
    return [
        s.fixed("oracle (per query)", s.u.argmax(1)),
        s.fixed(f"rule router (always targets[0] = {_TARGETS[0]})", 0),
        s.fixed(f"best fixed model in hindsight ({_TARGETS[single]})", single),
        ridge_baseline(s, world, seed),
        learned("learnstream router, mode reference", s, world, seed, mode="reference"),
        *kept,
        learned("learnstream router (defaults: learned)", s, world, seed),
    ]


def _timed(fn: Callable[[], object], calls: int) -> tuple[float, float, float, float]:
    """mean, p50, p99 of wall time and p99 of this thread's CPU time, in microseconds, over ``calls``
    single calls (after a warm-up). CPU time leaves out the time the OS gave other processes: on a
    shared, loaded machine the wall p99 is mostly preemption, the CPU p99 what the call itself costs."""
    for _ in range(min(calls, 2000)):
        fn()
    ts = np.empty(calls)
    cs = np.empty(calls)
    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    for i in range(calls):
        c0 = cpu()
        t0 = clock()
        fn()
        ts[i] = clock() - t0
        cs[i] = cpu() - c0
    ts /= 1000.0
    cs /= 1000.0
    return float(ts.mean()), float(np.percentile(ts, 50)), float(np.percentile(ts, 99)), float(np.percentile(cs, 99))


def _learned_router(seed: int, dim: int = _DIM) -> tuple[RouterState, np.ndarray]:
    """A learned-mode router whose bandit has learned something (untied scores: 2,000 outcomes), and 256
    queries of width ``dim`` to time it on."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((256, dim)).astype(np.float32)
    nt = len(_TARGETS)
    st = RouterState(_TARGETS, in_dim=dim, trained=True)
    st.record_outcomes([_TARGETS[i % nt] for i in range(2000)], rng.random(2000).tolist(),
                       rng.standard_normal((2000, dim)).astype(np.float32))
    return st, X


def latency_table(calls: int, seed: int) -> list[tuple[str, tuple[float, float, float, float]]]:
    learned_st, X = _learned_router(seed)
    nt = len(_TARGETS)
    ref = RouterState(_TARGETS, in_dim=_DIM, trained=True, mode="reference")
    rule = RouterState(_TARGETS, in_dim=_DIM)
    r = random.Random(seed)
    it = iter(range(1 << 62))

    def x() -> np.ndarray:
        return X[next(it) & 255]

    s = LearnSession(rng=random.Random(seed))
    s.dispatch({"verb": "init_router", "body": {"targets": _TARGETS, "in_dim": _DIM, "trained": True}})
    bodies = [{"verb": "route", "body": {"embedding_b64": encode_embedding_b64(v)}} for v in X]
    # the same queries as JSON arrays of numbers: what a client that does not encode b64 sends
    arrays = [{"verb": "route", "body": {"embedding": v.tolist()}} for v in X]
    train = RouterState(_TARGETS, in_dim=_DIM)
    b = learned_st.bandit
    assert b is not None
    rows = [
        ("kernel router_route (FastGRNN)", lambda: K.router_route(ref.params, x(), nt, False, None)),
        ("kernel bandit_route (LinUCB)", lambda: K.bandit_route(b.P, b.Ainv, b.theta, b.cost, x(), b.alpha, 1.0)),
        ("kernel router_route_learned (both, fused)",
         lambda: K.router_route_learned(ref.params, x(), nt, False, None, b.P, b.Ainv, b.theta, b.cost, b.alpha, 1.0)),
        ("RouterState.route, rule (untrained)", lambda: rule.route(x(), rng=r)),
        ("RouterState.route, mode reference", lambda: ref.route(x(), rng=r)),
        ("RouterState.route, learned (default)", lambda: learned_st.route(x(), rng=r)),
        ("route verb (dispatch, embedding_b64)", lambda: s.dispatch(bodies[next(it) & 255])),
        ("route verb (dispatch, JSON-array embedding)", lambda: s.dispatch(arrays[next(it) & 255])),
        ("RouterState.record_outcome + learning", lambda: train.record_outcome("small", 0.8, x(), 3000, 0.03)),
    ]
    return [(name, _timed(fn, calls)) for name, fn in rows]


def sizes_table(calls: int, seed: int, dims: list[int]) -> list[tuple[str, tuple[float, float, float, float]]]:
    """``RouterState.route`` (learned, after 2,000 outcomes) at other embedding widths: the
    projection ``P x`` grows with ``in_dim`` (32 x in_dim multiply-adds), the rest does not. Then the
    ``route`` verb through ``LearnSession.dispatch`` with that router, the embedding as base64 and as a
    JSON array: reading the embedding grows with the width too."""
    out = []
    for dim in dims:
        st, X = _learned_router(seed, dim)
        r = random.Random(seed)
        it = iter(range(1 << 62))
        out.append((f"RouterState.route, learned, in_dim {dim}", _timed(lambda: st.route(X[next(it) & 255], rng=r),
                                                                        calls)))
        s = LearnSession(rng=random.Random(seed))
        s.blob("session", DEFAULT_SESSION).set(ROUTER_PART, st)
        for name, field, encode in (("b64", "embedding_b64", encode_embedding_b64),
                                    ("JSON array", "embedding", lambda v: v.tolist())):
            bodies = [{"verb": "route", "body": {field: encode(v)}} for v in X]
            assert s.dispatch(bodies[0])["ok"]
            out.append((f"route verb (dispatch, {name}), in_dim {dim}", _timed(lambda: s.dispatch(bodies[next(it) & 255]),
                                                                             calls)))
    return out


def interleaved(calls: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-call wall times (us) of the bare fused kernel and of ``RouterState.route`` (learned), called
    alternately on the same query: both see the same load, so the difference is the route's own cost."""
    st, X = _learned_router(seed)
    nt = len(_TARGETS)
    b = st.bandit
    assert b is not None
    r = random.Random(seed)
    kern, route = np.empty(calls), np.empty(calls)
    clock = time.perf_counter_ns
    for i in range(-min(calls, 2000), calls):
        x = X[i & 255]
        t0 = clock()
        K.router_route_learned(st.params, x, nt, False, None, b.P, b.Ainv, b.theta, None, b.alpha, 0.0)
        t1 = clock()
        st.route(x, rng=r)
        t2 = clock()
        if i >= 0:
            kern[i], route[i] = (t1 - t0) / 1000.0, (t2 - t1) / 1000.0
    return kern, route


def _recovery(regret: np.ndarray, t0: int) -> int | None:
    """Requests after t0 until the rolling (window) mean regret is within the gap of the oracle."""
    c = np.convolve(regret[t0:], np.ones(_WINDOW) / _WINDOW, mode="valid")
    hit = np.flatnonzero(c <= _RECOVERY_GAP)
    return int(hit[0]) + _WINDOW if hit.size else None


def _widths(text: str) -> list[int]:
    """``--latency-dims``: comma-separated positive widths, or '' for none."""
    try:
        dims = [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of widths: {text!r}") from None
    if any(d < 1 or d > 65536 for d in dims):
        raise argparse.ArgumentTypeError(f"widths must be 1..65536: {text!r}")
    return dims


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="learnstream bench router", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=10_000, help="routed requests per policy (default 10,000)")
    p.add_argument("--regions", type=int, default=8, help="topic regions (default 8)")
    p.add_argument("--spread", type=float, default=0.7, help="per-coordinate std of a region (centres ~ N(0,1))")
    p.add_argument("--cost-weight", type=float, default=1.0, help="lambda: utility = quality - lambda * price")
    p.add_argument("--seeds", type=int, default=5, help="independent worlds (default 5)")
    p.add_argument("--latency-calls", type=int, default=20_000, help="timed calls per latency row")
    p.add_argument("--arrivals", type=int, default=0, metavar="K",
                   help="new topics: the first half of the requests from only K of the regions (default 0: all)")
    p.add_argument("--arrive-every", type=int, default=0, metavar="N",
                   help="new topics one at a time: one region at first, one more every N requests (default 0: off)")
    p.add_argument("--topic-blocks", type=int, default=0, metavar="N",
                   help="topics in turns: N requests from one region, then N from the next (default 0: mixed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-only", action="store_true", help="only the in-process latency rows and their goal")
    p.add_argument("--latency-dims", type=_widths, default="1536,3072",
                   help="other embedding widths whose learned route is timed too, comma-separated ('' for none)")
    args = p.parse_args(argv)
    if not 0 <= args.arrivals <= args.regions:
        p.error(f"--arrivals must be 0..{args.regions} (the regions)")
    if args.arrive_every < 0 or args.topic_blocks < 0 or sum(map(bool, (args.arrivals, args.arrive_every,
                                                                        args.topic_blocks))) > 1:
        p.error("--arrivals, --arrive-every, --topic-blocks: one at a time, each a positive number")
    if args.latency_only:
        goals: list[tuple[str, bool, str]] = []
        return _latency(args, goals)

    print(f"learnstream bench router: {args.requests:,} requests, {len(_TARGETS)} models (prices "
          f"{', '.join(f'{t} {c:g}' for t, c in zip(_TARGETS, _PRICES))}), lambda {args.cost_weight:g}, "
          f"{args.regions} regions in {_DIM}-d (spread {args.spread}), difficulty U(0,1), outcome noise {_NOISE}, "
          f"drift at {args.requests // 2:,}, {args.seeds} seeds"
          + (f"; the first half from {args.arrivals} of the regions only (new topics)" if args.arrivals else "")
          + (f"; one region at first, one more every {args.arrive_every:,} requests" if args.arrive_every else "")
          + (f"; the regions in turns, {args.topic_blocks:,} requests each" if args.topic_blocks else "")
          + "\n")
    t = time.perf_counter()
    per_seed = [regret_runs(args, args.seed + k) for k in range(args.seeds)]
    names = [r.name for r in per_seed[0]]
    t0 = args.requests // 2
    tot = {n: np.array([runs[j].total for runs in per_seed]) for j, n in enumerate(names)}
    rule, fixed = tot[names[1]], tot[names[2]]
    print(f"{'policy':<48} {'cum. regret':>12} {'vs rule':>8} {'vs fixed':>9} {'pre-drift/req':>14} "
          f"{'last 1k/req':>12} {'recovery':>9}")
    recov: dict[str, list[int | None]] = {}
    for j, n in enumerate(names):
        regs = [runs[j].regret for runs in per_seed]
        mean_reg = np.mean(regs, axis=0)
        recov[n] = [_recovery(r, t0) for r in regs]
        rec_mean = _recovery(mean_reg, t0)
        pre = float(np.mean([r[t0 - 1000:t0].mean() for r in regs]))
        last = float(np.mean([r[-1000:].mean() for r in regs]))
        print(f"{n:<48} {tot[n].mean():>7.0f} ±{tot[n].std():>4.0f} {-np.mean(1 - tot[n] / rule):>+8.0%} "
              f"{-np.mean(1 - tot[n] / fixed):>+9.0%} {pre:>14.3f} {last:>12.3f} "
              f"{'-' if rec_mean is None else rec_mean:>9}")
    ours = names[-1]
    cut_rule = float(np.mean(1 - tot[ours] / rule))
    cut_fixed = float(np.mean(1 - tot[ours] / fixed))
    rec = _recovery(np.mean([runs[-1].regret for runs in per_seed], axis=0), t0)
    print(f"\nrecovery per seed (requests after the drift until the {_WINDOW}-request mean regret <= "
          f"{_RECOVERY_GAP}): {recov[ours]}   [{time.perf_counter() - t:.0f} s]")
    print(f"projection fitted again (per seed): {[runs[-1].refits for runs in per_seed]}")
    goals = [
        (f"cumulative regret >= {_TARGET_VS_RULE:.0%} below the rule router", cut_rule >= _TARGET_VS_RULE,
         f"{cut_rule:.0%} (per seed {', '.join(f'{1 - a / b:.0%}' for a, b in zip(tot[ours], rule))})"),
        (f"cumulative regret >= {_TARGET_VS_FIXED:.0%} below the best fixed model", cut_fixed >= _TARGET_VS_FIXED,
         f"{cut_fixed:.0%} (per seed {', '.join(f'{1 - a / b:.0%}' for a, b in zip(tot[ours], fixed))})"),
        (f"regret back within {_RECOVERY_GAP} of the oracle within {_TARGET_RECOVERY:,} requests after the drift",
         rec is not None and rec <= _TARGET_RECOVERY, f"{rec} requests (mean over seeds)"),
    ]
    return _latency(args, goals)


def _latency(args: argparse.Namespace, goals: list[tuple[str, bool, str]]) -> int:
    """The latency rows, the p99 goal appended to ``goals``, then every goal printed; the exit status."""
    print(f"\nin-process latency, in_dim {_DIM}, {len(_TARGETS)} targets, {args.latency_calls:,} calls per row (us)")
    print(f"{'call':<48} {'mean':>7} {'p50':>7} {'p99':>7} {'p99 cpu':>8}")
    load0 = os.getloadavg()[0]
    lat = latency_table(args.latency_calls, args.seed)
    for name, (mean, p50, p99, p99cpu) in lat:
        print(f"{name:<48} {mean:>7.2f} {p50:>7.2f} {p99:>7.2f} {p99cpu:>8.2f}")
    load1 = os.getloadavg()[0]
    print(f"(load average {load0:.1f} before, {load1:.1f} after; {os.cpu_count()} CPUs. 'p99 cpu': this thread's "
          f"CPU time: leaves out the time other processes ran, not the slow-down of sharing a core)")
    kern, route = interleaved(args.latency_calls, args.seed)
    load2 = os.getloadavg()[0]
    kp, rp = np.percentile(kern, [50, 99]), np.percentile(route, [50, 99])
    print(f"interleaved, {args.latency_calls:,} pairs (the same query, one call after the other; load {load2:.1f}):")
    print(f"{'kernel router_route_learned (bare)':<48} {kern.mean():>7.2f} {kp[0]:>7.2f} {kp[1]:>7.2f}")
    print(f"{'RouterState.route, learned (default)':<48} {route.mean():>7.2f} {rp[0]:>7.2f} {rp[1]:>7.2f}")
    dims = args.latency_dims
    if dims:
        print(f"the learned route at other embedding widths ({args.latency_calls:,} calls each):")
        for name, (mean, p50, p99, p99cpu) in sizes_table(args.latency_calls, args.seed, dims):
            print(f"{name:<48} {mean:>7.2f} {p50:>7.2f} {p99:>7.2f} {p99cpu:>8.2f}")
    _mean, p50, p99, p99cpu = dict(lat)["RouterState.route, learned (default)"]
    goals.append((f"RouterState.route (learned) p99 <= {_TARGET_ROUTE_US:.0f} us (wall clock)",
                  p99 <= _TARGET_ROUTE_US,
                  f"{p99:.2f} us (p50 {p50:.2f}; CPU-time p99 {p99cpu:.2f}); interleaved with the bare fused kernel: "
                  f"route p50 {rp[0]:.2f} / p99 {rp[1]:.2f}, kernel p50 {kp[0]:.2f} / p99 {kp[1]:.2f}; load average "
                  f"{max(load0, load1, load2):.1f} on {os.cpu_count()} CPUs"))
    print("\ngoals (issue 14):")
    for text, ok, value in goals:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}: {value}")
    return 0 if all(ok for _, ok, _ in goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())
