"""Benchmark: drift detection delay and false alarms (``learnstream bench drift``).

Two suites. ``signals`` (the default; ``bench/_drift_signals.py``): abrupt, small,
gradual, binary-error and SEA concept-drift streams, 20 seeds each, with stationary
twins for the false-alarm rate, learnstream's detectors beside River's (ADWIN,
PageHinkley, KSWIN, and DDM/EDDM/HDDM on 0/1 signals). ``learner`` (``--suite learner``;
``bench/_drift_learner.py``): SEA, STAGGER and hyperplane streams through the learner's verbs,
ADWIN and DDM on its errors beside. ``digits`` (``--suite digits``):

A :class:`~workers.online.ContinualLearner` (128-unit MLP, its own drift reactions
off) is warmed up on digits (``load_digits``, no download), then learns
prequentially from a monitored stream drawn with replacement from the same pool:
each example is first predicted (giving its predicted class, label, cross-entropy
loss and 0/1 error), then learned. Two regimes: ``clean`` (2 warm-up passes, 3,000
examples) and ``noisy`` (Gaussian pixel noise 0.3, 1 warm-up pass, 6,000 examples:
a noisier loss that keeps falling as the model still learns). Streams, drift at
the midpoint:

- ``stationary``: the warm-up concept throughout;
- ``abrupt``: every image gets a new fixed pixel permutation;
- ``small``: a fixed permutation of only ``--small-pixels`` of the 64 pixels;
- ``gradual``: each example comes from the abrupt stream's new concept with a
  probability rising linearly from 0 to 1 over ``--ramp`` examples;
- ``prior``: class-prior drift: only classes 0-4 occur; the images do not change.

The same per-example signals go to every detector: learnstream's
:class:`~workers.online.KLDriftDetector` (prediction/label/loss windows),
:class:`~workers.online.PageHinkley` (loss) and the two together (what the learner
runs), and River's ``ADWIN`` and ``PageHinkley`` with their default settings, each
on the loss and on the 0/1 error. A false alarm is an alarm before the drift (any
alarm on a stationary stream); the delay is the number of examples from the
drift's start to the first alarm at or after it (a miss if none). Target (issue
6): fewer false alarms than ADWIN on stationary streams, at a comparable delay on
abrupt drift.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _digits import digits  # noqa: E402

from workers.online import MLP, ContinualLearner, KLDriftDetector, MeanShift, PageHinkley  # noqa: E402
from workers.online.models import cross_entropy  # noqa: E402

__all__ = ("main", "DETECTORS", "STREAMS")

_BATCH = 10


class _Ours:
    """Adapts learnstream's detectors to the per-example loop; ``both`` is what the learner runs."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.kl = KLDriftDetector(n_classes=10) if kind in ("kl", "both") else None
        self.ph = PageHinkley() if kind in ("ph", "both") else None
        self.ms = MeanShift() if kind in ("ms", "both") else None

    def update(self, pred: int, label: int, loss: float, err: float) -> bool:
        hit = False
        if self.ms is not None:
            self.ms.update(err)
            hit |= self.ms.drift_detected
        if self.kl is not None:
            self.kl.update(pred, label, loss)
            hit |= self.kl.drift_detected
        if self.ph is not None:
            self.ph.update(loss)
            hit |= self.ph.drift_detected
        return hit


class _RiverAdapter:
    """River's detectors with their default settings, fed the loss or the 0/1 error."""

    def __init__(self, kind: str, signal: str) -> None:
        from river import drift

        self.det = drift.ADWIN() if kind == "adwin" else drift.PageHinkley()
        self.signal = signal

    def update(self, pred: int, label: int, loss: float, err: float) -> bool:
        self.det.update(loss if self.signal == "loss" else err)
        return bool(self.det.drift_detected)


_KL, _PH, _BOTH = "learnstream KL (pred+label+loss)", "learnstream Page-Hinkley (loss)", "learnstream learner (KL|PH|MS)"
_MS = "learnstream MeanShift (error)"
_ADWIN = "river ADWIN (loss)"
DETECTORS: dict[str, Callable[[], object]] = {
    _KL: lambda: _Ours("kl"),
    _PH: lambda: _Ours("ph"),
    _MS: lambda: _Ours("ms"),
    _BOTH: lambda: _Ours("both"),
    _ADWIN: lambda: _RiverAdapter("adwin", "loss"),
    "river ADWIN (error)": lambda: _RiverAdapter("adwin", "error"),
    "river PageHinkley (loss)": lambda: _RiverAdapter("ph", "loss"),
    "river PageHinkley (error)": lambda: _RiverAdapter("ph", "error"),
}
STREAMS = ("stationary", "abrupt", "small", "gradual", "prior")
# (name, pixel noise std, warm-up passes, stream length): a well-trained model on
# clean digits, and a still-learning one on noisy digits (a noisier loss, and one
# that keeps falling: a two-sided detector takes the improvement for drift)
_REGIMES = (("clean", 0.0, 2, 3000), ("noisy", 0.3, 1, 6000))


def _stream(kind: str, X: np.ndarray, y: np.ndarray, n: int, t0: int, ramp: int, small: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.integers(0, len(X), n)
    if kind == "prior":  # class-prior drift: from t0 only half the classes occur; images unchanged
        keep = np.flatnonzero(y < 5)
        idx[t0:] = keep[rng.integers(0, len(keep), n - t0)]
    Xs, ys = X[idx].copy(), y[idx].copy()
    d = X.shape[1]
    if kind in ("stationary", "prior"):
        return Xs, ys
    if kind == "small":
        perm = np.arange(d)
        sel = rng.choice(d, size=small, replace=False)
        perm[sel] = rng.permutation(sel)
    else:
        perm = rng.permutation(d)
    new = np.zeros(n, dtype=bool)
    if kind == "gradual":
        new = rng.random(n) < np.clip((np.arange(n) - t0) / ramp, 0.0, 1.0)
    else:
        new[t0:] = True
    Xs[new] = Xs[new][:, perm]
    return Xs, ys


def _noisy(X: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(X + noise * rng.standard_normal(X.shape), 0.0, 1.0).astype(np.float32) if noise else X


def run(kind: str, seed: int, n: int, ramp: int, small: int, noise: float = 0.0,
        warmup: int = 2) -> dict[str, list[int]]:
    """Alarm positions of every detector on one stream."""
    rng = np.random.default_rng(seed)
    Xtr, ytr, Xte, yte = digits(seed)
    X, y = np.concatenate([Xtr, Xte]), np.concatenate([ytr, yte])
    learner = ContinualLearner(n_features=64, n_classes=10, classifier=MLP(hidden=128), batch_size=_BATCH,
                               boundary_on_drift=False, seed=seed)
    for _ in range(warmup):
        order = rng.permutation(len(Xtr))
        learner.learn_batch(_noisy(Xtr[order], noise, rng), ytr[order])
    t0 = n // 2
    Xs, ys = _stream(kind, X, y, n, t0, ramp, small, rng)
    Xs = _noisy(Xs, noise, rng)
    dets = {name: make() for name, make in DETECTORS.items()}
    alarms: dict[str, list[int]] = {name: [] for name in dets}
    for i in range(0, n, _BATCH):
        xb, yb = Xs[i:i + _BATCH], ys[i:i + _BATCH]
        P = learner.predict(xb)
        pred = P.argmax(1)
        loss = cross_entropy(P, yb)
        err = (pred != yb).astype(float)
        for j in range(len(yb)):
            for name, det in dets.items():
                if det.update(int(pred[j]), int(yb[j]), float(loss[j]), float(err[j])):  # type: ignore[attr-defined]
                    alarms[name].append(i + j)
        learner.learn_batch(xb, yb)
    return alarms


def summarize(kind: str, runs: list[list[int]], t0: int) -> dict[str, float]:
    if kind == "stationary":
        fa = [len(a) for a in runs]
        return {"fa": float(np.mean(fa)), "runs_with_fa": float(np.mean([f > 0 for f in fa]))}
    delays = [next((t - t0 for t in a if t >= t0), None) for a in runs]
    hit = [d for d in delays if d is not None]
    return {"fa": float(np.mean([sum(1 for t in a if t < t0) for a in runs])), "detected": len(hit) / len(runs),
            "delay": float(np.mean(hit)) if hit else float("nan"),
            "delay_median": float(np.median(hit)) if hit else float("nan")}


def _digits_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--runs", type=int, default=10, help="digits suite: streams per kind and regime (seeds)")
    ap.add_argument("--ramp", type=int, default=500, help="gradual drift: examples from 0 to 100%% new concept")
    ap.add_argument("--small-pixels", type=int, default=12, help="small drift: pixels permuted (of 64)")
    ap.add_argument("--streams", default=",".join(STREAMS))
    ap.add_argument("--regimes", default=",".join(r[0] for r in _REGIMES))


def _digits_suite(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    kinds = args.streams.split(",")
    w = max(len(k) for k in DETECTORS)
    ok = True
    for regime, noise, warmup, n in _REGIMES:
        if regime not in args.regimes.split(","):
            continue
        t0 = n // 2
        res: dict[str, dict[str, dict[str, float]]] = {}
        for kind in kinds:
            per: dict[str, list[list[int]]] = {name: [] for name in DETECTORS}
            for seed in range(args.runs):
                for name, a in run(kind, seed, n, args.ramp, args.small_pixels, noise, warmup).items():
                    per[name].append(a)
            res[kind] = {name: summarize(kind, runs, t0) for name, runs in per.items()}
        print(f"\n=== {regime}: pixel noise {noise}, {warmup} warm-up pass(es), {args.runs} runs per kind, "
              f"{n} examples, drift at {t0} (gradual ramp {args.ramp}, small = {args.small_pixels} pixels)")
        if "stationary" in res:
            print("stationary: false alarms per run (share of runs with any)")
            for name, r in res["stationary"].items():
                print(f"  {name:{w}s} {r['fa']:6.2f}  ({100 * r['runs_with_fa']:3.0f}%)")
        for kind in kinds:
            if kind == "stationary":
                continue
            print(f"{kind}: detected | mean delay (median), examples | false alarms per run before the drift")
            for name, r in res[kind].items():
                print(f"  {name:{w}s} {100 * r['detected']:4.0f}%  {r['delay']:7.1f} ({r['delay_median']:6.1f})"
                      f"  {r['fa']:5.2f}")
        if "stationary" in res and "abrupt" in res:
            for mine in (_KL, _PH, _MS, _BOTH):
                a, b = res["stationary"][mine]["fa"], res["stationary"][_ADWIN]["fa"]
                fewer = a < b or a == b == 0.0
                ok &= fewer
                print(f"{mine} vs {_ADWIN}: stationary false alarms {a:.2f} vs {b:.2f} per run, abrupt delay "
                      f"{res['abrupt'][mine]['delay']:.1f} vs {res['abrupt'][_ADWIN]['delay']:.1f}: "
                      f"{'fewer (or both none)' if fewer else 'NOT fewer'}")
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="learnstream bench drift", description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=("signals", "learner", "digits", "all"), default="signals",
                    help="signals (default: abrupt, small, gradual, binary-error, SEA over --seeds seeds), "
                         "learner (SEA, STAGGER, hyperplane through the learner's verbs, ~4 min), "
                         "digits (a learner on digits, slow), or all")
    ap.add_argument("--seeds", type=int, default=20, help="signals and learner suites: streams per kind (default 20)")
    ap.add_argument("--kswin", action="store_true", help="signals suite: add River's KSWIN (~6 s per stream)")
    ap.add_argument("--learner-examples", type=int, default=10_000,
                    help="learner suite: examples per stream, the drift at half (default 10,000)")
    _digits_args(ap)
    args = ap.parse_args(argv)
    ok = True
    if args.suite in ("signals", "all"):
        from _drift_signals import signals_suite

        ok &= signals_suite(args.seeds, args.kswin) == 0
    if args.suite in ("learner", "all"):
        from _drift_learner import learner_suite

        ok &= learner_suite(args.seeds, args.learner_examples) == 0
    if args.suite in ("digits", "all"):
        ok &= _digits_suite(args) == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
