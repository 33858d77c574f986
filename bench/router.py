"""Benchmark: does the router learn which model to use, and how fast does it route (``learnstream bench router``).

**Regret.** A routing simulation: queries are 384-d embeddings drawn from
``--regions`` well-separated Gaussian clusters (no sentence-embedding model is
installed here, so the regions are synthetic; centres ~ N(0, I), spread
``--spread`` per coordinate). Each of 8 models has an expected quality per region:
one specialist per region is very good there (0.80-0.95), the generalist "large"
is fair everywhere (0.60-0.70, so it is the single best model), the rest are poor
(0.10-0.50). An outcome is the expected quality plus N(0, 0.1) noise, clipped to
[0, 1], and only the routed model's outcome is observed (bandit feedback). Regret
per request = best expected quality in the query's region minus the routed model's.
Every learned router runs through the verbs (``route``, then ``record_outcome``
with the request's embedding; the adapter row also sends ``feedback`` to the
instant core) and starts as the rule router until ``threshold`` samples.

**Latency.** In-process ``route`` for in_dim 384 and 8 targets: the kernel call,
``RouterState.route`` (what the worker calls), and the ``route`` verb through
``LearnSession.dispatch`` with an ``embedding_b64`` body.

Targets (issue 5): the learned router cuts the rule router's cumulative regret by
>= 50% over 5,000 requests; in-process route <= 20 us.
"""
from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from workers import _kernels as K
from workers.codec import encode_embedding_b64
from workers.cores.router import RouterState
from workers.dispatch import LearnSession

__all__ = ("main",)

_DIM = 384
_TARGETS = ["small", "medium", "large", "code", "math", "legal", "medical", "creative"]
_GENERALIST = "large"
_NOISE = 0.1             # std of an observed outcome around its expected quality
_EPS = 0.05              # the exploring row's epsilon (the default)
_THRESHOLD = 200         # training samples before the learned route takes over (the default)
_TARGET_CUT = 0.5
_TARGET_ROUTE_US = 20.0


@dataclass(frozen=True)
class World:
    """The simulated query distribution and its per-region model qualities."""

    centers: np.ndarray   # regions x dim
    quality: np.ndarray   # regions x targets, expected quality
    spread: float

    def queries(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        region = rng.integers(0, len(self.centers), n)
        X = self.centers[region] + self.spread * rng.standard_normal((n, self.centers.shape[1]))
        return X.astype(np.float32), region


def make_world(kind: str, regions: int, spread: float, seed: int) -> World:
    """``specialists``: each region has one very good model, the rest are poor.
    ``generalist``: the same plus "large", fair everywhere (the single best model)."""
    rng = np.random.default_rng(seed)
    nt = len(_TARGETS)
    q = rng.uniform(0.10, 0.50, (regions, nt))
    leaders = list(range(nt))
    if kind == "generalist":
        g = _TARGETS.index(_GENERALIST)
        q[:, g] = rng.uniform(0.60, 0.70, regions)
        leaders.remove(g)
    for k in range(regions):
        q[k, leaders[k % len(leaders)]] = rng.uniform(0.80, 0.95)  # every leader leads somewhere
    return World(rng.standard_normal((regions, _DIM)), q, spread)


@dataclass
class Run:
    name: str
    regret: np.ndarray     # per request
    explored: int = 0

    @property
    def total(self) -> float:
        return float(self.regret.sum())


def _fixed(name: str, world: World, region: np.ndarray, choice: int | np.ndarray) -> Run:
    q = world.quality[region]
    return Run(name, q.max(1) - q[np.arange(len(region)), choice])


def _learned(name: str, world: World, X: np.ndarray, region: np.ndarray, seed: int, *, epsilon: float,
             adapter: bool = False, unit_norm: bool = False, normalize: bool = False,
             baseline: str | float = "ema") -> Run:
    """One learned router through the verbs, fed the routed model's noisy outcome."""
    s = LearnSession(rng=random.Random(seed))
    s.dispatch({"verb": "init_router", "body": {"targets": _TARGETS, "in_dim": _DIM, "epsilon": epsilon,
                                                "threshold": _THRESHOLD, "with_adapter": adapter,
                                                "normalize": normalize, "baseline": baseline}})
    if adapter:
        s.dispatch({"verb": "init_instant", "body": {"targets": _TARGETS, "dim": _DIM}})
    if unit_norm:
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
    noise = np.random.default_rng(seed + 1).normal(0.0, _NOISE, len(X))
    best = world.quality[region].max(1)
    regret = np.empty(len(X))
    explored = 0
    for i, x in enumerate(X):
        b64 = encode_embedding_b64(x)
        r = s.dispatch({"verb": "route", "body": {"embedding_b64": b64}})["data"]
        m = _TARGETS.index(r["model"])
        explored += r["exploration"]
        expected = world.quality[region[i], m]
        regret[i] = best[i] - expected
        q = float(np.clip(expected + noise[i], 0.0, 1.0))
        out = s.dispatch({"verb": "record_outcome", "body": {"target": r["model"], "quality": q,
                                                             "embedding_b64": b64}})
        assert out["ok"], out
        if adapter:
            assert s.dispatch({"verb": "feedback", "body": {"embedding_b64": b64, "model": r["model"],
                                                            "quality": q}})["ok"]
    return Run(name, regret, explored)


def regret_table(kind: str, requests: int, regions: int, spread: float, seed: int) -> list[Run]:
    world = make_world(kind, regions, spread, seed)
    X, region = world.queries(requests, np.random.default_rng(seed + 100))
    single = int(world.quality.mean(0).argmax())
    runs = [
        _fixed("oracle (per query)", world, region, world.quality[region].argmax(1)),
        _fixed("rule router (untrained: always targets[0])", world, region, 0),
        _fixed(f"single best model ({_TARGETS[single]})", world, region, single),
        _learned("learned, eps 0", world, X, region, seed, epsilon=0.0),
        _learned("learned + instant adapter, eps 0", world, X, region, seed, epsilon=0.0, adapter=True),
        _learned(f"learned, eps {_EPS} (default)", world, X, region, seed, epsilon=_EPS),
        _learned("learned, eps 0, baseline 0.5 (spec's rule)", world, X, region, seed, epsilon=0.0,
                 baseline=0.5),
        _learned("learned, eps 0, unit-norm inputs", world, X, region, seed, epsilon=0.0, unit_norm=True),
        _learned("learned, eps 0, unit-norm inputs, normalize", world, X, region, seed, epsilon=0.0,
                 unit_norm=True, normalize=True),
    ]
    return runs


def _timed(fn: Callable[[], object], calls: int) -> tuple[float, float, float]:
    """mean, p50, p99 in microseconds over ``calls`` single calls (after a warm-up)."""
    for _ in range(min(calls, 2000)):
        fn()
    ts = np.empty(calls)
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        fn()
        ts[i] = clock() - t0
    ts /= 1000.0
    return float(ts.mean()), float(np.percentile(ts, 50)), float(np.percentile(ts, 99))


def latency_table(calls: int, seed: int) -> list[tuple[str, tuple[float, float, float]]]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((256, _DIM)).astype(np.float32)
    st = RouterState(_TARGETS, in_dim=_DIM, threshold=0, epsilon=_EPS)
    rule = RouterState(_TARGETS, in_dim=_DIM)
    adapter = rng.standard_normal(len(_TARGETS)).astype(np.float32)
    r = random.Random(seed)
    it = iter(range(1 << 62))

    def x() -> np.ndarray:
        return X[next(it) & 255]

    s = LearnSession(rng=random.Random(seed))
    s.dispatch({"verb": "init_router", "body": {"targets": _TARGETS, "in_dim": _DIM, "threshold": 0,
                                                "epsilon": _EPS}})
    sa = LearnSession(rng=random.Random(seed))
    sa.dispatch({"verb": "init_router", "body": {"targets": _TARGETS, "in_dim": _DIM, "threshold": 0,
                                                 "epsilon": _EPS}})
    sa.dispatch({"verb": "init_instant", "body": {"targets": _TARGETS, "dim": _DIM}})
    bodies = [{"verb": "route", "body": {"embedding_b64": encode_embedding_b64(v)}} for v in X]
    train = RouterState(_TARGETS, in_dim=_DIM)
    rows = [
        ("kernel router_route", lambda: K.router_route(st.params, x(), 8, False, None)),
        ("RouterState.route, rule (untrained)", lambda: rule.route(x(), rng=r)),
        ("RouterState.route, fastgrnn, eps 0.05", lambda: st.route(x(), rng=r)),
        ("RouterState.route, fastgrnn + adapter logits", lambda: st.route(x(), rng=r, adapter_logits=adapter)),
        ("route verb (dispatch, embedding_b64)", lambda: s.dispatch(bodies[next(it) & 255])),
        ("route verb + instant adapter (dispatch, b64)", lambda: sa.dispatch(bodies[next(it) & 255])),
        ("RouterState.record_outcome + training step", lambda: train.record_outcome("code", 0.8, x(), 3000)),
    ]
    out = [(name, _timed(fn, calls)) for name, fn in rows]
    big = rng.standard_normal((4096, _DIM)).astype(np.float32)
    t0 = time.perf_counter()
    for _ in range(5):
        K.router_forward_batch(st.params, big, 8)
    per_row = (time.perf_counter() - t0) / (5 * len(big)) * 1e6
    out.append(("router_forward_batch, per row (4096 rows)", (per_row, float("nan"), float("nan"))))
    return out


def _print_world(kind: str, args: argparse.Namespace) -> np.ndarray:
    """Run and print one world's regret table; returns the learned (eps 0) cut per seed."""
    t = time.perf_counter()
    per_seed = [regret_table(kind, args.requests, args.regions, args.spread, args.seed + k)
                for k in range(args.seeds)]
    rule_total = np.array([runs[1].total for runs in per_seed])
    tail = max(args.requests // 5, 1)
    print(f"world '{kind}': {_WORLDS[kind]}")
    print(f"{'policy':<46} {'cum. regret':>11} {'vs rule':>8} {'regret/req, last ' + str(tail):>24} "
          f"{'explored':>9}")
    cuts = {}
    for j, run in enumerate(per_seed[0]):
        total = np.array([runs[j].total for runs in per_seed])
        last = np.mean([runs[j].regret[-tail:].mean() for runs in per_seed])
        cuts[run.name] = 1.0 - total / rule_total
        explored = np.mean([runs[j].explored for runs in per_seed])
        print(f"{run.name:<46} {total.mean():>11.1f} {-cuts[run.name].mean():>+8.0%} {last:>24.3f} "
              f"{explored:>9.0f}")
    learned = cuts["learned, eps 0"]
    print(f"learned (eps 0) vs rule, per seed: {', '.join(f'-{c:.0%}' for c in learned)}   "
          f"[{time.perf_counter() - t:.1f} s]\n")
    return learned


_WORLDS = {
    "specialists": "one very good model per region (0.80-0.95), all others poor (0.10-0.50)",
    "generalist": "as 'specialists', plus 'large' fair everywhere (0.60-0.70): the single best model",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="learnstream bench router", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=5_000, help="routed requests per policy (default 5,000)")
    p.add_argument("--regions", type=int, default=16, help="Gaussian regions of embedding space (default 16)")
    p.add_argument("--spread", type=float, default=0.3, help="per-coordinate std of a region (centres ~ N(0,1))")
    p.add_argument("--world", choices=[*_WORLDS, "both"], default="both", help="quality table(s) to simulate")
    p.add_argument("--seeds", type=int, default=3, help="independent worlds per table; rows show their mean")
    p.add_argument("--latency-calls", type=int, default=20_000, help="timed calls per latency row")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    print(f"learnstream bench router: {args.requests:,} requests, {len(_TARGETS)} models, {args.regions} "
          f"Gaussian regions in {_DIM}-d (spread {args.spread}), outcome noise {_NOISE}, "
          f"threshold {_THRESHOLD}, {args.seeds} seed(s)")
    print("(synthetic Gaussian clusters: no sentence-embedding model is installed in this environment)\n")
    kinds = list(_WORLDS) if args.world == "both" else [args.world]
    cuts = {kind: _print_world(kind, args) for kind in kinds}
    ok_cut = all(bool(np.all(c >= _TARGET_CUT)) for c in cuts.values())
    for kind, c in cuts.items():
        print(f"target: learned router cuts the rule router's regret by >= {_TARGET_CUT:.0%} "
              f"in world '{kind}': min over seeds {c.min():.0%} -> {'PASS' if c.min() >= _TARGET_CUT else 'FAIL'}")

    print(f"\nin-process latency, in_dim {_DIM}, {len(_TARGETS)} targets, {args.latency_calls:,} calls per row (us)")
    print(f"{'call':<46} {'mean':>7} {'p50':>7} {'p99':>7}")
    lat = latency_table(args.latency_calls, args.seed)
    for name, (mean, p50, p99) in lat:
        print(f"{name:<46} {mean:>7.2f} {p50:>7.2f} {p99:>7.2f}")
    route_p99 = dict(lat)["RouterState.route, fastgrnn, eps 0.05"][2]
    ok_lat = route_p99 <= _TARGET_ROUTE_US
    print(f"\ntarget: RouterState.route p99 {route_p99:.2f} us <= {_TARGET_ROUTE_US:.0f} us -> "
          f"{'PASS' if ok_lat else 'FAIL'}")
    return 0 if ok_cut and ok_lat else 1


if __name__ == "__main__":
    raise SystemExit(main())
