"""Benchmark: task boundaries that mean something (``learnstream bench boundaries``).

Both boundary modes of the learning loop, on the same streams:

- ``cusum`` (default): :class:`workers.cores.boundary.LossCusum`;
- ``zscore`` (the reference's, and always the ``record_loss`` verb's): the deep core's
  ``|loss - mean| / std > 2.5`` over the previous 10 losses.

**Loss streams with task switches** (precision / recall / F1; a firing counts as a hit of
the first switch at most ``--tolerance`` losses before it, one firing per switch, every
other firing is a false alarm):

- ``curves``: synthetic training-loss curves. Each task starts at U(2.0, 2.5) (chance level
  of a 10-class cross-entropy is 2.3) and falls exponentially (time constant U(5, 20)
  batches) to a floor U(0.05, 0.4), plus Gaussian noise of std 0.02, 0.1, 0.2 or 0.4.
  Tasks of 25 batches (``short``) or U(25, 200) batches (``mixed``), 20 tasks per stream.
- ``digits``: the batch loss (mean cross-entropy of 10 examples, measured before learning
  them) of a naive learner (softmax regression, SGD, no replay) on Permuted-Digits
  (scikit-learn's bundled digits, a new fixed pixel permutation per task), tasks of 25 or
  100 batches.
- ``feedback``: the same curves as answer qualities, ``q = clip(1 - loss / 2.5, 0, 1)`` (a
  new task's answers start bad and improve as the agent learns it; the noise is the curve's
  over 2.5), sent one event per call through ``learn_feedback``, the loop's real input:
  the detector sees ``max(1 - q_eff, 0)`` with ``q_eff = 0.7 q + 0.3 m``, not the loss itself.
  A firing is an event whose call reports a boundary.

**Stationary feedback** (adapter resets): 10,000 ``learn_feedback`` events (envelopes of
100 through ``LearnSession.dispatch``, 16-d embeddings, two models) whose quality never
changes in distribution: uniform, Bernoulli with p = 0.1 / 0.3 / 0.5 / 0.9 / 0.95, Beta(5, 2),
N(0.7, 0.15) clipped, and four levels {0.2, 0.5, 0.8, 1}. Every boundary resets the
adapter, so the count of resets is the instant core's ``resets``. Printed beside them, not
counted in the goal: *autocorrelated* stationary qualities, 0.7 + 0.15 z with z an AR(1) of
lag-1 correlation 0.5 or 0.9 (a stretch of bad answers that lasts ~2 or ~20 events). The
detector assumes independent losses around a level or a falling curve; a wandering level is
read as rises, and it resets there (a known limit, README "Learning quality").

**Honest-world check**: the same curves (25-batch tasks) under a two-window test that is
told each stream's noise sd, at several thresholds, beside its false alarms on i.i.d. noise of
that sd (as many losses as the stationary feedback runs). It shows whether a switch is
detectable within the tolerance at a false-alarm level that 0 resets over 10,000 events allows,
for a test with one threshold. The default detector is not one: after a short task it tests the
next at a lower threshold (a stream that switches often is likely to switch again), which is
how it passes this bound on the noisiest short tasks.

Goals (issue 14), printed PASS/FAIL for the default mode: F1 >= 0.9 on every stream
(each noise level, short tasks included); 0 adapter resets in every stationary run.
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

from workers.verbs.codec import encode_embedding_b64  # noqa: E402
from workers.cores.boundary import LossCusum  # noqa: E402
from workers.cores.deep import DeepState  # noqa: E402
from workers.verbs.session import LearnSession  # noqa: E402

__all__ = ("main", "curve_stream", "digits_stream", "score")

_NOISES = (0.02, 0.1, 0.2, 0.4)
_TARGET_F1 = 0.9
_QUALITIES = ("uniform", "bernoulli 0.1", "bernoulli 0.3", "bernoulli 0.5", "bernoulli 0.9", "bernoulli 0.95",
              "beta(5,2)", "normal(0.7,0.15)", "levels")
# stationary but not independent: reported beside the goal, not in it (see the module doc)
_AUTOCORRELATED = ("AR(1) 0.5", "AR(1) 0.9")
MODES: dict[str, Callable[[], Callable[[float], bool]]] = {
    "cusum (default)": lambda: LossCusum().push,
    "zscore (reference)": lambda: (lambda d: (lambda v: d.observe_loss(v).boundary_fired))(DeepState()),
}


def curve_stream(rng: np.random.Generator, n_tasks: int, length: int | None, noise: float) -> tuple[np.ndarray, list[int]]:
    """(losses, switch positions): ``length`` batches per task, or U(25, 200) when None."""
    out: list[np.ndarray] = []
    switches: list[int] = []
    t = 0
    for j in range(n_tasks):
        n = length if length is not None else int(rng.integers(25, 201))
        if j:
            switches.append(t)
        start, floor, tau = rng.uniform(2.0, 2.5), rng.uniform(0.05, 0.4), rng.uniform(5, 20)
        out.append(floor + (start - floor) * np.exp(-np.arange(n) / tau) + noise * rng.standard_normal(n))
        t += n
    return np.concatenate(out), switches


def digits_stream(seed: int, n_tasks: int, length: int, batch: int = 10, lr: float = 0.5) -> tuple[np.ndarray, list[int]]:
    """Batch losses of a naive softmax regression on Permuted-Digits (loss measured before each step)."""
    rng = np.random.default_rng(seed)
    Xtr, ytr, _, _ = digits(seed)
    d, c = Xtr.shape[1], 10
    W, b = np.zeros((d, c)), np.zeros(c)
    losses: list[float] = []
    switches: list[int] = []
    for j in range(n_tasks):
        perm = np.arange(d) if j == 0 else rng.permutation(d)
        if j:
            switches.append(len(losses))
        for _ in range(length):
            idx = rng.integers(0, len(Xtr), batch)
            X, y = Xtr[idx][:, perm], ytr[idx]
            z = X @ W + b
            z -= z.max(1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(1, keepdims=True)
            losses.append(float(-np.log(p[np.arange(batch), y] + 1e-12).mean()))
            p[np.arange(batch), y] -= 1.0
            W -= lr * X.T @ p / batch
            b -= lr * p.mean(0)
    return np.array(losses), switches


_FEEDBACK_SCALE = 2.5   # a curve's loss at quality 0 (its starts are 2.0-2.5)
_FEEDBACK_DIM = 16      # embedding width of the feedback streams


def _feedback_session(dim: int = _FEEDBACK_DIM, n_models: int = 2) -> LearnSession:
    """An in-process session with an instant core over ``n_models`` models (a, b, ...), ready for ``learn_feedback``."""
    s = LearnSession()
    assert s.dispatch({"verb": "init_instant", "body": {"targets": list("abcde"[:max(n_models, 2)]), "dim": dim}})["ok"]
    return s


def _send_feedback(s: LearnSession, q: np.ndarray, models: np.ndarray, X: np.ndarray, envelope: int,
                   mode: str | None = None) -> list[int]:
    """Qualities ``q`` (model index and embedding per event) through ``learn_feedback`` in envelopes of
    ``envelope`` events; the calls that reported a boundary, as the index of their last event (the event
    itself with envelopes of 1). ``mode``: the session's boundary mode (None: the default)."""
    fired = []
    for i in range(0, len(q), envelope):
        end = min(i + envelope, len(q))
        body: dict = {"events": [{"embedding_b64": encode_embedding_b64(X[j]), "model": "abcde"[models[j]],
                                  "quality": float(q[j]), "now_ms": j} for j in range(i, end)]}
        if mode is not None:
            body["boundary"] = mode
        out = s.dispatch({"verb": "learn_feedback", "body": body})
        assert out["ok"], out
        fired += [end - 1] * out["data"]["boundaries"]
    return fired


def feedback_firings(mode: str, losses: np.ndarray, seed: int, dim: int = _FEEDBACK_DIM) -> list[int]:
    """The events of ``q = clip(1 - loss / 2.5, 0, 1)``, one per ``learn_feedback`` call, whose call fired."""
    q = np.clip(1.0 - losses / _FEEDBACK_SCALE, 0.0, 1.0)
    X = np.random.default_rng(seed).standard_normal((len(q), dim)).astype(np.float32)
    return _send_feedback(_feedback_session(dim), q, np.arange(len(q)) & 1, X, 1, mode)


def score(fired: list[int], switches: list[int], tolerance: int) -> tuple[int, int, int]:
    """(hits, false alarms, misses)."""
    used: set[int] = set()
    hits = 0
    for s in switches:
        f = next((f for f in fired if s <= f < s + tolerance and f not in used), None)
        if f is not None:
            used.add(f)
            hits += 1
    return hits, len(fired) - len(used), len(switches) - hits


def _prf(h: int, fa: int, miss: int) -> tuple[float, float, float]:
    p = h / (h + fa) if h + fa else 0.0
    r = h / (h + miss) if h + miss else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def loss_table(args: argparse.Namespace) -> dict[str, dict[str, tuple[float, float, float]]]:
    # (name, stream of a seed, through learn_feedback as qualities rather than straight into the detector)
    cells: list[tuple[str, Callable[[int], tuple[np.ndarray, list[int]]], bool]] = []
    for noise in _NOISES:
        for length, name in ((25, "short"), (None, "mixed")):
            cells.append((f"curves noise {noise} {name}",
                          lambda s, n=noise, L=length: curve_stream(np.random.default_rng(s), 20, L, n), False))
    for length in (25, 100):
        cells.append((f"digits naive learner, {length}-batch tasks",
                      lambda s, L=length: digits_stream(s, 6 if L == 100 else 12, L), False))
    for noise in _NOISES:
        for length, name in ((25, "short"), (None, "mixed")):
            cells.append((f"feedback noise {noise / _FEEDBACK_SCALE:.3g} {name}",
                          lambda s, n=noise, L=length: curve_stream(np.random.default_rng(s), 20, L, n), True))
    res: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name, make, through_verbs in cells:
        totals = {m: [0, 0, 0] for m in MODES}
        for seed in range(args.seeds):
            losses, switches = make(args.seed + seed)
            for m, det in MODES.items():
                if through_verbs:
                    fired = feedback_firings(m.split()[0], losses, args.seed + seed)
                else:
                    push = det()
                    fired = [i for i, v in enumerate(losses.tolist()) if push(v)]
                for k, v in enumerate(score(fired, switches, args.tolerance)):
                    totals[m][k] += v
        res[name] = {m: _prf(*t) for m, t in totals.items()}
    return res


def known_noise_detector(sigma: float, threshold: float, test: int = 6, ref: int = 10,
                         trend: bool = False) -> Callable[[float], bool]:
    """The honest-world check: a two-window test that is *told* the noise sd. The mean of the last
    k losses (k = 1..test) against the mean of the ``ref`` losses before the last ``test``:
    z = (mean_k - mean_ref) / (sigma sqrt(1/k + 1/ref)) > threshold fires (and restarts).
    No real detector knows sigma; this bounds what a causal test of this shape can reach.
    ``trend``: the reference is a least-squares line through the ``ref`` losses, extrapolated to
    the last k (a falling loss forecast lower); z divides by the sd of that difference under
    i.i.d. noise, sigma sqrt(1/k + 1/ref + (xbar_k - xbar_ref)^2 / Sxx), so it stays calibrated."""
    if trend:
        return _trend_detector(sigma, threshold, test, ref)

    def fires(h: list[float]) -> bool:
        m_ref = sum(h[:ref]) / ref
        s = 0.0
        for k in range(1, test + 1):
            s += h[-k]
            if (s / k - m_ref) / (sigma * (1.0 / k + 1.0 / ref) ** 0.5) > threshold:
                return True
        return False
    return _windowed(test + ref, fires)


def _windowed(size: int, fires: Callable[[list[float]], bool]) -> Callable[[float], bool]:
    """A detector over the last ``size`` losses: ``fires(window)`` once it is full; a firing restarts it."""
    h: list[float] = []

    def push(v: float) -> bool:
        h.append(v)
        if len(h) > size:
            h.pop(0)
        if len(h) < size or not fires(h):
            return False
        h.clear()
        return True
    return push


def _trend_detector(sigma: float, threshold: float, test: int, ref: int) -> Callable[[float], bool]:
    xs = np.arange(ref, dtype=float)
    xbar = float(xs.mean())
    sxx = float(((xs - xbar) ** 2).sum())
    w = (xs - xbar) / sxx                     # slope = w . (y - mean)
    # the last k losses sit at positions ref + test - k .. ref + test - 1: their mean position
    pos = [ref + test - (k + 1) / 2.0 for k in range(1, test + 1)]
    scale = [sigma * (1.0 / k + 1.0 / ref + (pos[k - 1] - xbar) ** 2 / sxx) ** 0.5 for k in range(1, test + 1)]

    def fires(h: list[float]) -> bool:
        y = np.asarray(h[:ref])
        m_ref = float(y.mean())
        slope = float(w @ (y - m_ref))
        s = 0.0
        for k in range(1, test + 1):
            s += h[-k]
            if (s / k - (m_ref + slope * (pos[k - 1] - xbar))) / scale[k - 1] > threshold:
                return True
        return False
    return _windowed(test + ref, fires)


def oracle_table(args: argparse.Namespace, thresholds: tuple[float, ...] = (2.75, 3.5, 4.0, 4.5, 5.0),
                 trend: bool = False) -> list[tuple[float, int, list[tuple[float, float, float]]]]:
    """Per threshold: (threshold, false alarms over ``--feedback-seeds`` x ``--events`` i.i.d. Gaussian
    losses (the test is scale-free: the same for every noise level), (P, R, F1) on the 25-batch-task
    curves of each noise level)."""
    streams = {noise: [curve_stream(np.random.default_rng(args.seed + s), 20, 25, noise) for s in range(args.seeds)]
               for noise in _NOISES}
    iid = [np.random.default_rng(10_000 + args.seed + s).standard_normal(args.events) for s in range(args.feedback_seeds)]
    rows = []
    for thr in thresholds:
        fa = 0
        for x in iid:
            push = known_noise_detector(1.0, thr, trend=trend)
            fa += sum(push(v) for v in x.tolist())
        prf = []
        for noise, lst in streams.items():
            t = [0, 0, 0]
            for losses, switches in lst:
                push = known_noise_detector(noise, thr, trend=trend)
                fired = [i for i, v in enumerate(losses.tolist()) if push(v)]
                for k, v in enumerate(score(fired, switches, args.tolerance)):
                    t[k] += v
            prf.append(_prf(*t))
        rows.append((thr, fa, prf))
    return rows


def _quality(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "uniform":
        return rng.random(n)
    if kind.startswith("bernoulli"):
        return (rng.random(n) < float(kind.split()[1])).astype(float)
    if kind == "beta(5,2)":
        return rng.beta(5, 2, n)
    if kind == "normal(0.7,0.15)":
        return np.clip(rng.normal(0.7, 0.15, n), 0.0, 1.0)
    if kind.startswith("AR(1)"):   # 0.7 + 0.15 z, z a unit-variance AR(1) with this lag-1 correlation
        phi = float(kind.split()[1])
        e = rng.standard_normal(n) * np.sqrt(1.0 - phi * phi)
        z = np.empty(n)
        z[0] = rng.standard_normal()
        for i in range(1, n):
            z[i] = phi * z[i - 1] + e[i]
        return np.clip(0.7 + 0.15 * z, 0.0, 1.0)
    return rng.choice([0.2, 0.5, 0.8, 1.0], n)


def feedback_resets(mode: str, kind: str, seed: int, events: int, envelope: int = 100) -> int:
    """Adapter resets over a stationary feedback stream through the learn_feedback verb (every boundary of
    the loop consolidates and resets the adapter once)."""
    rng = np.random.default_rng(seed)
    q = _quality(kind, rng, events)
    X = rng.standard_normal((events, _FEEDBACK_DIM)).astype(np.float32)
    models = rng.integers(0, 2, events)
    return len(_send_feedback(_feedback_session(), q, models, X, envelope, mode))


def _embeddings(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(10_000 + seed).standard_normal((n, _FEEDBACK_DIM)).astype(np.float32)


def wide(args: argparse.Namespace) -> int:
    """The default mode on the wider feedback worlds (bench/_feedback_worlds.py): adapter resets on
    i.i.d. stationary qualities, and how soon lasting quality drops are found. Reported, not judged."""
    from _feedback_worlds import SHIFTS, STATIONARY

    print(f"learnstream bench boundaries --wide {args.wide}: cusum (default), {len(STATIONARY)} stationary i.i.d. "
          f"quality kinds x {args.wide} runs of {args.events:,} events (envelopes of 100)", flush=True)
    total, hit = 0, []
    for kind, make in STATIONARY.items():
        r = []
        for seed in range(args.wide):
            q, m = make(np.random.default_rng(seed), args.events)
            r.append(len(_send_feedback(_feedback_session(n_models=int(m.max()) + 1), q, m,
                                        _embeddings(seed, len(q)), 100)))
        total += sum(r)
        if sum(r):
            hit.append(kind)
            print(f"  {kind:<36} resets per run {r}", flush=True)
    runs = len(STATIONARY) * args.wide
    print(f"stationary: {total} resets in {runs} runs ({len(hit)} of {len(STATIONARY)} kinds reset at least once)")
    print(f"\nlasting drops (segments of 500-1500 events alternating before/after, 4 drops per stream, "
          f"{args.shift_seeds} streams each, one event per call): found within 50 events / other firings", flush=True)
    caught = drops = others = 0
    for name, (before, after) in SHIFTS.items():
        c50 = n = extra = 0
        for seed in range(args.shift_seeds):
            rng = np.random.default_rng(seed)
            parts, starts, pos = [], [], 0
            for j, length in enumerate(rng.integers(500, 1501, 9).tolist()):
                q, _ = (before if j % 2 == 0 else after)(rng, length)
                if j % 2:
                    starts.append(pos)
                parts.append(q)
                pos += length
            q = np.concatenate(parts)
            fired = _send_feedback(_feedback_session(), q, np.zeros(len(q), np.int64), _embeddings(seed, len(q)), 1)
            for c in starts:
                n += 1
                c50 += any(c <= f < c + 50 for f in fired)
            extra += sum(1 for f in fired if not any(c <= f < c + 200 for c in starts))
        caught, drops, others = caught + c50, drops + n, others + extra
        print(f"  {name:<44} {c50:>3}/{n}   {extra}", flush=True)
    print(f"lasting drops found within 50 events: {caught} of {drops}; firings not after a drop: {others}")
    return 0


def switch_worlds(args: argparse.Namespace) -> int:
    """The default mode on bench/_switch_worlds.py: F1 on other task-switch worlds (qualities one event per
    ``learn_feedback`` call, losses straight into the detector) and resets on non-i.i.d. stationary
    feedback. Reported, not judged (see that module)."""
    from _switch_worlds import LENGTHS, NON_IID, SHAPES, loss_stream, quality_stream

    n = args.switch_worlds
    print(f"learnstream bench boundaries --switch-worlds {n}: cusum (default), {n} streams per cell, a hit fires "
          f"at most {args.tolerance} events after the switch; P / R / F1")
    for kind, sds, make in (("quality", (0.01, 0.05, 0.1, 0.2), quality_stream),
                            ("loss", (0.05, 0.1, 0.2, 0.4), loss_stream)):
        print(f"\n{kind + ' worlds':<24} {'tasks':>7}  " + "  ".join(f"{'sd ' + str(sd):>16}" for sd in sds))
        for shape in ("mixed", *SHAPES):
            for length in LENGTHS:
                cells = []
                for sd in sds:
                    t = [0, 0, 0]
                    for seed in range(n):
                        x, switches = make(shape, length, sd, seed)
                        if kind == "quality":
                            fired = _send_feedback(_feedback_session(), x, np.zeros(len(x), np.int64),
                                                   _embeddings(seed, len(x)), 1)
                        else:
                            push = MODES["cusum (default)"]()
                            fired = [i for i, v in enumerate(x.tolist()) if push(v)]
                        t = [a + b for a, b in zip(t, score(fired, switches, args.tolerance))]
                    cells.append("{:.2f} / {:.2f} / {:.2f}".format(*_prf(*t)))
                print(f"  {shape:<22} {length:>7}  " + "  ".join(f"{c:>16}" for c in cells), flush=True)
    print(f"\nnon-i.i.d. stationary feedback: adapter resets per {args.events:,}-event run (envelopes of 100), "
          f"{n} runs")
    for name, make in NON_IID.items():
        r = []
        for seed in range(n):
            q, m = make(np.random.default_rng(seed), args.events)
            r.append(len(_send_feedback(_feedback_session(), q, m, _embeddings(seed, len(q)), 100)))
        print(f"  {name:<34} total {sum(r):>5}   {r}", flush=True)
    return 0


def bernoulli_sweep(args: argparse.Namespace) -> int:
    """Resets of the default mode on stationary Bernoulli(p) qualities, p = 0.05 ... 0.95; 0 when none fired."""
    mode = list(MODES)[0]
    print(f"learnstream bench boundaries --bernoulli-sweep: adapter resets of {mode} per {args.events:,}-event "
          f"stationary run, {args.bernoulli_sweep} runs per p")
    total = runs = 0
    for pct in range(5, 100, 5):
        kind = f"bernoulli {pct / 100:.2f}"
        r = [feedback_resets(mode.split()[0], kind, 500 + s, args.events) for s in range(args.bernoulli_sweep)]
        total, runs = total + sum(r), runs + len(r)
        print(f"{kind:<16} {r}", flush=True)
    print(f"total: {total} resets in {runs} runs")
    return 0 if total == 0 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="learnstream bench boundaries", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="streams per cell (default 5)")
    ap.add_argument("--tolerance", type=int, default=10, help="a hit fires at most this many losses after the switch")
    ap.add_argument("--events", type=int, default=10_000, help="events per stationary feedback run")
    ap.add_argument("--feedback-seeds", type=int, default=3, help="stationary runs per quality distribution")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bernoulli-sweep", type=int, default=0, metavar="SEEDS",
                    help="only a sweep: adapter resets of the default mode on Bernoulli p = 0.05 ... 0.95 qualities, "
                         "SEEDS stationary runs of --events each per p (seeds 500, 501, ...)")
    ap.add_argument("--wide", type=int, default=0, metavar="SEEDS",
                    help="only the wider feedback worlds (bench/_feedback_worlds.py): SEEDS stationary runs per "
                         "quality kind, and lasting quality drops (reported, not judged)")
    ap.add_argument("--shift-seeds", type=int, default=3, help="with --wide: streams per lasting-drop pair")
    ap.add_argument("--switch-worlds", type=int, default=0, metavar="SEEDS",
                    help="only the other task-switch and non-i.i.d. worlds (bench/_switch_worlds.py), SEEDS streams "
                         "per cell (reported, not judged)")
    args = ap.parse_args(argv)
    if args.bernoulli_sweep:
        return bernoulli_sweep(args)
    if args.wide:
        return wide(args)
    if args.switch_worlds:
        return switch_worlds(args)
    t0 = time.perf_counter()
    print(f"learnstream bench boundaries: {args.seeds} seeds per stream, tolerance {args.tolerance} losses\n")
    res = loss_table(args)
    modes = list(MODES)
    print(f"{'stream':<40} " + "  ".join(f"{m + ' P / R / F1':>32}" for m in modes))
    for name, r in res.items():
        print(f"{name:<40} " + "  ".join(f"{r[m][0]:>20.2f} / {r[m][1]:.2f} / {r[m][2]:.2f}" for m in modes))
    print(f"\nstationary feedback: adapter resets per {args.events:,}-event run (learn_feedback, envelopes of 100), "
          f"{args.feedback_seeds} runs each")
    print(f"{'quality distribution':<22} " + "  ".join(f"{m:>22}" for m in modes))
    resets: dict[str, dict[str, list[int]]] = {}
    for kind in _QUALITIES:
        resets[kind] = {m: [feedback_resets(m.split()[0], kind, args.seed + s, args.events)
                            for s in range(args.feedback_seeds)] for m in modes}
        print(f"{kind:<22} " + "  ".join(f"{str(resets[kind][m]):>22}" for m in modes))
    print("not independent (beside the goal, not in it):")
    for kind in _AUTOCORRELATED:
        print(f"{kind:<22} " + "  ".join(f"{str([feedback_resets(m.split()[0], kind, args.seed + s, args.events) for s in range(args.feedback_seeds)]):>22}"
                                         for m in modes))
    print(f"\nhonest-world check (curves, 25-batch tasks): a two-window test told the noise sd (the last 1..6 "
          f"losses against the 10 before); false alarms over {args.feedback_seeds} x {args.events:,} i.i.d. losses")
    print(f"{'threshold z':>11} {'false alarms':>13}  " + "  ".join(f"{'noise ' + str(n) + ' P / R / F1':>24}" for n in _NOISES))
    for thr, fa, prf in oracle_table(args):
        print(f"{thr:>11.2f} {fa:>13}  " + "  ".join(f"{p:>12.2f} / {r:.2f} / {f:.2f}" for p, r, f in prf))
    print("the same test with a trend-aware reference (a least-squares line through the 10 losses, extrapolated)")
    for thr, fa, prf in oracle_table(args, trend=True):
        print(f"{thr:>11.2f} {fa:>13}  " + "  ".join(f"{p:>12.2f} / {r:.2f} / {f:.2f}" for p, r, f in prf))
    default = modes[0]
    worst = min(res.items(), key=lambda kv: kv[1][default][2])
    all_resets = [r for kind in resets.values() for r in kind[default]]
    goals = [
        (f"F1 >= {_TARGET_F1} on every loss stream (default mode)", worst[1][default][2] >= _TARGET_F1,
         f"lowest {worst[1][default][2]:.2f} ({worst[0]}); "
         f"{sum(r[default][2] >= _TARGET_F1 for r in res.values())}/{len(res)} streams pass"),
        ("0 adapter resets in every stationary feedback run (default mode)", max(all_resets) == 0,
         f"max {max(all_resets)}, total {sum(all_resets)} over {len(all_resets)} runs"),
    ]
    print(f"\ngoals (issue 14):   [{time.perf_counter() - t0:.0f} s]")
    for text, ok, value in goals:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}: {value}")
    return 0 if all(ok for _, ok, _ in goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())
