"""Benchmark: instant and deep kernels vs their NumPy references (``learnstream bench kernels``).

Per-event (or per-call) time of every kernel of issue 3 against the NumPy
reference in ``tests/reference/`` that the tests check it against, at input dim
384 and 4 targets, measured in one run (best of ``--repeats``):

- Hebbian update: one event, and a batch per event;
- feedback (Hebbian + replay push + weighted replay pick + replayed step), one
  event, and the batch kernel the learning loop uses per event;
- adapter forward (batch), global norm clamp, EWC pull, weighted pick;
- Fisher EMA, EWC penalty (θ = [A; B], 776 floats), loss-window z-score;
- and, for scale, the whole learning loop (``learn_feedback`` through
  ``LearnSession.dispatch``, ``embedding_b64`` bodies, in-memory store) per event,
  one event per message vs envelopes of ``--envelope`` events.

Target (issue 3): the batched Hebbian/feedback kernel >= 10x faster per event
than the NumPy reference.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from workers import _kernels as K
from workers.verbs.codec import encode_embedding_b64
from workers.cores.deep import DeepState
from workers.cores.instant import REPLAY_CAP, InstantState
from workers.verbs.session import LearnSession

try:  # the references live with the tests (they are not part of the package)
    from reference import deep_ref, instant_ref
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from reference import deep_ref, instant_ref

__all__ = ("main",)

_TARGETS = ["small", "medium", "large", "code"]
_TARGET_SPEEDUP = 10.0


def _best(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls (the least disturbed by the shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _events(n: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    T = rng.integers(0, len(_TARGETS), n)
    Q = rng.random(n).astype(np.float32)
    NOW = rng.integers(0, 2 ** 40, n)
    return X, T, Q, NOW


def run(dim: int, events: int, repeats: int, seed: int) -> list[tuple[str, float, float]]:
    """Rows (name, kernel seconds per event, reference seconds per event)."""
    X, T, Q, NOW = _events(events, dim, seed)
    S = (2 * Q - 1).astype(np.float32)
    nt = len(_TARGETS)
    n_ref = min(events, 500)  # the references are slow: time them on a prefix
    rows: list[tuple[str, float, float]] = []

    def fresh() -> tuple[InstantState, instant_ref.InstantRef]:
        s = InstantState(_TARGETS, dim)
        s._room(REPLAY_CAP)  # the kernels are called directly: every replay row allocated up front
        return s, instant_ref.InstantRef(dim, nt)

    # -- Hebbian update ------------------------------------------------------------
    def k_heb_single() -> None:
        s = fresh()[0]
        for i in range(events):
            K.instant_hebbian(s._arena, s._meta, X[i], int(T[i]), float(S[i]))

    def k_heb_batch() -> None:
        s = fresh()[0]
        K.instant_hebbian_batch(s._arena, s._meta, X, T, S)

    def r_heb() -> None:
        r = fresh()[1]
        for i in range(n_ref):
            r.hebbian_update(X[i], int(T[i]), float(S[i]))

    t_ref = _best(r_heb, repeats) / n_ref
    rows.append(("hebbian_update (one event per call)", _best(k_heb_single, repeats) / events, t_ref))
    rows.append(("hebbian_update (batch, per event)", _best(k_heb_batch, repeats) / events, t_ref))

    # -- feedback (Hebbian + replay) -------------------------------------------------
    def k_fb_single() -> None:
        s = fresh()[0]
        for i in range(events):
            K.instant_feedback(s._arena, s._meta, X[i], int(T[i]), float(Q[i]), int(NOW[i]))

    def k_fb_batch() -> None:
        s = fresh()[0]
        K.instant_feedback_batch(s._arena, s._meta, X, T, Q, NOW)

    def r_fb() -> None:
        r = fresh()[1]
        for i in range(n_ref):
            r.feedback(X[i], int(T[i]), float(Q[i]), int(NOW[i]))

    t_ref = _best(r_fb, repeats) / n_ref
    rows.append(("feedback incl. replay (one event per call)", _best(k_fb_single, repeats) / events, t_ref))
    rows.append(("feedback incl. replay (batch, per event)", _best(k_fb_batch, repeats) / events, t_ref))

    # a trained state for the read-only kernels
    s, r = fresh()
    s.feedback_batch(X, T, Q, NOW)
    r._set_theta(s.theta.copy())
    A, B = r.A, r.B
    rows.append(("adapter_forward (batch, per row)",
                 _best(lambda: s.logits(X), repeats) / events,
                 _best(lambda: instant_ref.adapter_forward(A, B, X), repeats) / events))
    x0 = X[0]
    rows.append(("adapter_forward (one row per call)",
                 _best(lambda: [s.logits(x0) for _ in range(1000)], repeats) / 1000,
                 _best(lambda: [instant_ref.adapter_forward(A, B, x0) for _ in range(1000)], repeats) / 1000))

    theta = (s.theta * 100).astype(np.float32)
    work = theta.copy()

    def k_clamp() -> None:
        for _ in range(1000):
            work[:] = theta
            K.clamp_norm(work, 5.0)

    def r_clamp() -> None:
        for _ in range(1000):
            work[:] = theta
            instant_ref.clamp_norm(work)

    rows.append(("clamp_norm (over theta)", _best(k_clamp, repeats) / 1000, _best(r_clamp, repeats) / 1000))
    rng = np.random.default_rng(seed + 1)
    F = (rng.random(s.n_params) * 1e-3).astype(np.float32)
    snap = rng.standard_normal(s.n_params).astype(np.float32)
    rows.append(("ewc_pull (over theta)",
                 _best(lambda: [K.ewc_pull(work, F, snap, 0.01) for _ in range(1000)], repeats) / 1000,
                 _best(lambda: [instant_ref.ewc_pull(work, F, snap, 0.01) for _ in range(1000)], repeats) / 1000))
    scales = rng.uniform(-1, 1, 64).astype(np.float32)
    seeds = rng.integers(0, 2 ** 32, 200)
    rows.append(("weighted_pick (64 entries)",
                 _best(lambda: [K.weighted_pick(scales, int(z), 63) for z in seeds], repeats) / len(seeds),
                 _best(lambda: [instant_ref.weighted_pick(scales, int(z), 63) for z in seeds], repeats)
                 / len(seeds)))

    # -- deep ------------------------------------------------------------------------
    g = rng.standard_normal(s.n_params).astype(np.float32)
    Fw = np.zeros(s.n_params, np.float32)
    rows.append(("fisher_ema (over theta)",
                 _best(lambda: [K.fisher_ema(Fw, g, 0.999) for _ in range(1000)], repeats) / 1000,
                 _best(lambda: [deep_ref.fisher_ema(Fw, g) for _ in range(1000)], repeats) / 1000))
    rows.append(("ewc_penalty (over theta)",
                 _best(lambda: [K.ewc_penalty(F, snap, theta, 2000.0) for _ in range(1000)], repeats) / 1000,
                 _best(lambda: [deep_ref.ewc_penalty(F, snap, theta) for _ in range(1000)], repeats) / 1000))
    losses = rng.normal(1.0, 0.1, 1000)

    def k_loss() -> None:
        d = DeepState()
        for v in losses:
            d.observe_loss(float(v))

    def r_loss() -> None:
        w = deep_ref.LossWindowRef()
        for v in losses:
            w.record(float(v))

    rows.append(("loss-window z-score (DeepState.observe_loss)",
                 _best(k_loss, repeats) / len(losses), _best(r_loss, repeats) / len(losses)))
    return rows


def run_loop(dim: int, envelope: int, repeats: int, seed: int, arrays: bool = False) -> tuple[float, float]:
    """Seconds per event of learn_feedback: (one event per message, envelopes of ``envelope``); the
    embeddings as ``embedding_b64``, or with ``arrays`` as JSON arrays of numbers (the reference's form)."""
    X, T, Q, NOW = _events(envelope, dim, seed)
    evs = [{"model": _TARGETS[int(T[i])], "quality": float(Q[i]), "now_ms": int(NOW[i]),
            **({"embedding": X[i].tolist()} if arrays else {"embedding_b64": encode_embedding_b64(X[i])})}
           for i in range(envelope)]
    n_single = min(envelope, 200)

    def session() -> LearnSession:
        s = LearnSession()
        s.dispatch({"verb": "init_instant", "body": {"targets": _TARGETS, "dim": dim}})
        return s

    def singles() -> None:
        s = session()
        for ev in evs[:n_single]:
            s.dispatch({"verb": "learn_feedback", "body": ev})

    def env() -> None:
        session().dispatch({"verb": "learn_feedback", "body": {"events": evs}})

    return _best(singles, repeats) / n_single, _best(env, repeats) / envelope


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="learnstream bench kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=384, help="embedding dim (default 384)")
    ap.add_argument("--events", type=int, default=5000, help="events per kernel run (default 5000)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per measurement, best kept (default 5)")
    ap.add_argument("--envelope", type=int, default=500, help="events per learn_feedback envelope (default 500)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    rows = run(args.dim, args.events, args.repeats, args.seed)
    w = max(len(r[0]) for r in rows)
    print(f"kernels vs NumPy reference, dim {args.dim}, {len(_TARGETS)} targets, "
          f"{args.events} events, best of {args.repeats}")
    print(f"{'kernel':<{w}}  {'kernel us':>10}  {'numpy us':>10}  {'speedup':>8}")
    for name, k, r in rows:
        print(f"{name:<{w}}  {k * 1e6:>10.3f}  {r * 1e6:>10.2f}  {r / k:>7.1f}x")
    batch = dict((n, r / k) for n, k, r in rows)
    ok = all(batch[n] >= _TARGET_SPEEDUP for n in ("hebbian_update (batch, per event)",
                                                   "feedback incl. replay (batch, per event)"))
    for arrays, form in ((False, "embedding_b64"), (True, "JSON-array embedding")):
        single, env = run_loop(args.dim, args.envelope, args.repeats, args.seed, arrays)
        print(f"learn_feedback via LearnSession.dispatch ({form}, in-memory store), per event: "
              f"one per message {single * 1e6:.1f} us ({1 / single:,.0f}/s); envelopes of {args.envelope} "
              f"{env * 1e6:.1f} us ({1 / env:,.0f}/s)")
    print(f"target: batched Hebbian/feedback >= {_TARGET_SPEEDUP:.0f}x the reference per event: "
          f"{'met' if ok else 'NOT met'}  ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
