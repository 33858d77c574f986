"""Verbs of the online continual learner (table ``"learner"``, part ``"learner"``).

- ``init_learner`` (write, ``commands``): create or replace the session's learner.
- ``learn_example`` (write, ``examples``): one example, or an envelope
  ``{session_key, examples: [...]}``, validated whole before anything is learned.
- ``predict`` / ``evaluate`` / ``learner_state`` (reads).
- ``consolidate_learner`` (write, ``commands``): consolidate now.

What the learner noticed is emitted with ``ctx.emit``: ``drift`` (a DriftReport),
``boundaries`` (a task boundary: cause and stats) and ``consolidations`` (a
ConsolidationReport), each with the session key and the source event.

Time is event time: a verb never reads the wall clock. An example's ``now_ms``, or
else the source record's timestamp on the stream, drives the time trigger, so
replaying the same events rebuilds the same model (the learner's seed defaults to
a hash of the session key for the same reason).
"""
from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from workers.verbs.codec import embedding_field
from workers.verbs.fields import MAX_MS, int_accepted, int_in, number_in
from workers.errors import VerbError
from workers.online.curriculum import Curriculum
from workers.online.distill import Distillation
from workers.online.drift import KLDriftDetector
from workers.online.ewc import EWC
from workers.online.learner import ContinualLearner
from workers.online.models import MLP, SoftmaxRegression
from workers.online.replay import ReplayBuffer
from workers.online.scheduler import ConsolidationScheduler
from workers.verbs.registry import VerbContext, params, state_size, verb

__all__ = ("PART", "build_learner", "parse_examples")

PART = "learner"
# Bounds that keep one session's learner a sane size in a RocksDB value and a
# changelog message (Kafka's default max.message.bytes is 1 MiB).
_MAX_FEATURES = 4096
_MAX_CLASSES = 1000
_MAX_HIDDEN = 1024
_MAX_CAPACITY = 10_000
_MAX_EXAMPLES = 10_000  # per envelope, as topics/examples.yaml says
_MAX_TASK_CHARS = 256  # as topics/examples.yaml says
_NOT_READY = "learner not initialized; call init_learner first"
# An SGD step that overflows leaves NaN in the weights for good, and predict / evaluate answered NaN
# probabilities as ok (an outside trial: ten examples with one feature at 10, replayed with their
# stored logits at lr 0.02 and momentum 0.9, and ~150 examples later the loss was NaN).
_DIVERGED = ("learner diverged: its loss is no longer finite (features far off unit scale, or an lr too high "
             "for them, make its SGD unstable); scale the features, then init_learner starts a new one")


# -- reading bodies ------------------------------------------------------------
def _bool(body: dict, field: str) -> bool | None:
    v = body.get(field)
    if v is not None and not isinstance(v, bool):
        raise VerbError(f"{field} must be a boolean")
    return v


def build_learner(body: dict, session_key: str) -> ContinualLearner:
    """The learner an ``init_learner`` body describes (validated; raises VerbError)."""
    if body.get("n_features") is None:
        raise VerbError("n_features required")
    if body.get("n_classes") is None:
        raise VerbError("n_classes required")
    d = int_in(body, "n_features", 1, _MAX_FEATURES)
    c = int_in(body, "n_classes", 2, _MAX_CLASSES)
    kind = body.get("model", "mlp")
    if kind not in ("mlp", "softmax"):
        raise VerbError('model must be "softmax" or "mlp"')
    hidden = int_in(body, "hidden", 1, _MAX_HIDDEN)
    if hidden is not None and kind == "softmax":
        raise VerbError('hidden applies to model "mlp" only')
    lr = number_in(body, "lr", 1e-6, 10.0)
    momentum = number_in(body, "momentum", 0.0, 0.999)
    strategy = body.get("replay")
    if strategy is not None and strategy not in ("uniform", "reservoir", "prioritized"):
        raise VerbError('replay must be "uniform", "reservoir" or "prioritized"')
    capacity = int_in(body, "capacity", 0, _MAX_CAPACITY)
    seed = int_in(body, "seed", 0, 2**32 - 1, zlib.crc32(session_key.encode()))
    model = (SoftmaxRegression(lr=lr, momentum=momentum) if kind == "softmax"
             else MLP(hidden=hidden, lr=lr, momentum=momentum))
    return ContinualLearner(
        n_features=d, n_classes=c, classifier=model,
        replay=ReplayBuffer(capacity=capacity, strategy=strategy),
        ewc=EWC(lam=number_in(body, "ewc_lambda", 0.0, 1e6), decay=number_in(body, "fisher_decay", 0.0, 0.9999)),
        distillation=Distillation(der_alpha=number_in(body, "der_alpha", 0.0, 100.0),
                                  der_beta=number_in(body, "der_beta", 0.0, 100.0),
                                  lwf_lambda=number_in(body, "lwf_lambda", 0.0, 100.0),
                                  temperature=number_in(body, "temperature", 0.05, 100.0)),
        curriculum=Curriculum(floor=number_in(body, "curriculum_floor", 0.01, 1.0),
                              steady=number_in(body, "curriculum_steady", 0.01, 1.0),
                              ramp=int_in(body, "curriculum_ramp", 0, 1_000_000)),
        scheduler=ConsolidationScheduler(
            examples_threshold=int_in(body, "examples_threshold", 0, 10**9),
            time_threshold_ms=int_in(body, "time_threshold_ms", 0, 10**12),
            fisher_every=int_in(body, "fisher_every", 1, 10**6)),
        drift=KLDriftDetector(window=int_in(body, "drift_window", 8, 100_000),
                              alpha=number_in(body, "drift_alpha", 1e-12, 0.5)),
        boundary_on_drift=_bool(body, "boundary_on_drift"),
        batch_size=int_in(body, "batch_size", 1, 4096),
        train_steps=int_in(body, "train_steps", 1, 100),
        consolidation_steps=int_in(body, "consolidation_steps", 0, 10_000),
        asymmetric=_bool(body, "asymmetric"),
        seed=seed,
    )


def _learner(ctx: VerbContext) -> ContinualLearner:
    learner = ctx.state.get(PART, ContinualLearner) if ctx.state is not None else None
    if learner is None:
        raise VerbError(_NOT_READY)
    return learner


def _diverged(learner: ContinualLearner) -> bool:
    return learner.loss_ema is not None and not math.isfinite(learner.loss_ema)


def _usable(ctx: VerbContext) -> ContinualLearner:
    """The session's learner, refused once it has diverged (``_DIVERGED``)."""
    learner = _learner(ctx)
    if _diverged(learner):
        raise VerbError(_DIVERGED)
    return learner


def _finite(P: np.ndarray) -> np.ndarray:
    """Probabilities, refused when the weights hold NaN or inf (a step that overflowed)."""
    if not np.isfinite(P).all():
        raise VerbError(_DIVERGED)
    return P


def _examples(body: dict) -> tuple[list[dict], str]:
    """The examples of a single-example body or an envelope, and the field prefix for errors."""
    if "examples" in body:
        ex = body["examples"]
        if not isinstance(ex, list) or not ex:
            raise VerbError("examples must be a non-empty array")
        if len(ex) > _MAX_EXAMPLES:
            raise VerbError(f"examples holds {len(ex)} items; at most {_MAX_EXAMPLES} per envelope")
        if not all(isinstance(e, dict) for e in ex):
            raise VerbError("examples must hold objects")
        return ex, "examples[{}]."
    if "events" in body:  # the feedback envelope's name: say so, rather than "features: required"
        raise VerbError("an envelope of examples is {session_key, examples: [...]} (events is learn_feedback's)")
    return [body], ""


def _features(ex: dict, d: int, prefix: str) -> np.ndarray:
    return embedding_field(ex, "features", dim=d, prefix=prefix)  # type: ignore[return-value]


def parse_examples(body: dict, learner: ContinualLearner,
                   default_ms: int | None = None) -> tuple[np.ndarray, np.ndarray, list[Any], list[int | None]]:
    """Validate every example first: (X, y, tasks, now_ms); raises on the first bad field."""
    items, pfx = _examples(body)
    n, d, c = len(items), learner.n_features, learner.n_classes
    X = np.empty((n, d), dtype=np.float32)
    y = np.empty(n, dtype=np.int32)
    tasks: list[Any] = []
    times: list[int | None] = []
    for i, ex in enumerate(items):
        p = pfx.format(i)
        X[i] = _features(ex, d, p)
        label = ex.get("label")
        if label is None:
            raise VerbError(f"{p}label required")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < c:
            raise VerbError(f"{p}label must be an integer in [0, {c})")
        y[i] = label
        task = ex.get("task")
        if task is not None and (isinstance(task, bool) or not isinstance(task, (str, int))
                                 or (isinstance(task, str) and not 0 < len(task) <= _MAX_TASK_CHARS)
                                 or (isinstance(task, int) and not -2**63 <= task < 2**63)):
            # a name, not a payload: every task seen stays in the learner's state, and a change is echoed
            # in a boundary event (an outside trial's 900 kB tasks made 1.8 MB boundary events)
            raise VerbError(f"{p}task must be a non-empty string of at most {_MAX_TASK_CHARS} characters "
                            "or a 64-bit integer")
        tasks.append(task)
        now = ex.get("now_ms", default_ms)
        if now is not None and (isinstance(now, bool) or not isinstance(now, int) or not 0 <= now <= MAX_MS):
            raise VerbError(f"{p}now_ms must be a non-negative integer")  # ... at most MAX_MS
        times.append(now)
    return X, y, tasks, times


def _emit(ctx: VerbContext, learner: ContinualLearner) -> dict[str, int]:
    counts: dict[str, int] = {}
    for role, payload in learner.drain_events():
        out = {"session_key": ctx.session_key, **payload}
        if ctx.source is not None:
            out["source"] = dict(ctx.source)
        ctx.emit(role, out)
        counts[role] = counts.get(role, 0) + 1
    return counts


def _source_ms(ctx: VerbContext) -> int | None:
    """The source record's timestamp: event time that replays identically."""
    ts = (ctx.source or {}).get("timestamp_ms")
    return ts if isinstance(ts, int) and not isinstance(ts, bool) and ts >= 0 else None


# -- verbs ---------------------------------------------------------------------
def _num(lo: float, hi: float) -> dict:
    return {"type": "number", "minimum": lo, "maximum": hi}


def _int(lo: int, hi: int) -> dict:
    return {"type": "integer", "minimum": lo, "maximum": hi}


# init_learner's body: what build_learner reads, with the bounds it checks (tool clients read it; a
# field not named here is answered as ignored_fields)
_INIT_PARAMS = params(
    ("n_features", "n_classes"), n_features=_int(1, _MAX_FEATURES), n_classes=_int(2, _MAX_CLASSES),
    model={"enum": ["mlp", "softmax"]}, hidden=_int(1, _MAX_HIDDEN), lr=_num(1e-6, 10.0), momentum=_num(0.0, 0.999),
    replay={"enum": ["uniform", "reservoir", "prioritized"]}, capacity=_int(0, _MAX_CAPACITY),
    seed=_int(0, 2**32 - 1), ewc_lambda=_num(0.0, 1e6), fisher_decay=_num(0.0, 0.9999),
    der_alpha=_num(0.0, 100.0), der_beta=_num(0.0, 100.0), lwf_lambda=_num(0.0, 100.0), temperature=_num(0.05, 100.0),
    curriculum_floor=_num(0.01, 1.0), curriculum_steady=_num(0.01, 1.0), curriculum_ramp=_int(0, 1_000_000),
    examples_threshold=_int(0, 10**9), time_threshold_ms=_int(0, 10**12), fisher_every=_int(1, 10**6),
    drift_window=_int(8, 100_000), drift_alpha=_num(1e-12, 0.5), boundary_on_drift={"type": "boolean"},
    batch_size=_int(1, 4096), train_steps=_int(1, 100), consolidation_steps=_int(0, 10_000),
    asymmetric={"type": "boolean"})


@verb("init_learner", table="learner", writes=True, topic="commands", params=_INIT_PARAMS)
def init_learner(ctx: VerbContext, body: dict) -> dict:
    """{n_features, n_classes, model?, hidden?, replay?, capacity?, lr?, momentum?, ewc_lambda?, ...}
    -> {config, n_params}: ``config`` names every field above with the value in force (defaults
    filled in). Replaces any previous learner of the session."""
    learner = build_learner(body, ctx.session_key)
    ctx.state.set(PART, learner)
    return {"config": learner.settings(), "n_params": int(learner.model().theta.size)}


@verb("learn_example", table="learner", writes=True, topic="examples", envelope="examples")
def learn_example(ctx: VerbContext, body: dict) -> dict:
    """{features|features_b64, label, task?, now_ms?} or {examples: [...]} -> counters and events emitted."""
    learner = _usable(ctx)
    X, y, tasks, times = parse_examples(body, learner, _source_ms(ctx))
    # apply in runs of one task, as learn_one on each example would
    start = 0
    for i in range(1, len(X) + 1):
        if i == len(X) or tasks[i] != tasks[start]:
            ms = times[start:i]
            now = None if all(t is None for t in ms) else np.array([-1 if t is None else t for t in ms])
            learner.learn_batch(X[start:i], y[start:i], tasks[start], now_ms=now)
            start = i
    events = _emit(ctx, learner)
    return {"learned": int(len(X)), "examples_seen": learner.examples_seen, "pending": learner.pending,
            "events": events, "accuracy_ema": learner.accuracy_ema, "loss_ema": learner.loss_ema}


@verb("predict", table="learner", writes=False)
def predict(ctx: VerbContext, body: dict) -> dict:
    """{features|features_b64} -> {label, proba}; {examples: [{features}...]} -> {labels, proba}."""
    learner = _usable(ctx)
    items, pfx = _examples(body)
    X = np.stack([_features(ex, learner.n_features, pfx.format(i)) for i, ex in enumerate(items)])
    P = _finite(learner.predict(X))
    if "examples" in body:
        return {"labels": P.argmax(1).tolist(), "proba": P.tolist()}
    return {"label": int(P[0].argmax()), "proba": P[0].tolist()}


@verb("evaluate", table="learner", writes=False)
def evaluate(ctx: VerbContext, body: dict) -> dict:
    """{examples: [{features, label}...]} (or one example) -> {accuracy, loss, n}."""
    learner = _usable(ctx)
    X, y, _, _ = parse_examples(body, learner)
    out = learner.evaluate(X, y)
    if not math.isfinite(out["loss"]):
        raise VerbError(_DIVERGED)
    return out


@verb("consolidate_learner", table="learner", writes=True, topic="commands")
def consolidate_learner(ctx: VerbContext, body: dict) -> dict:
    """{now_ms?} -> ConsolidationReport (pending examples are learned first)."""
    learner = _usable(ctx)
    now = body.get("now_ms", _source_ms(ctx))
    if now is not None and (isinstance(now, bool) or not isinstance(now, int) or not 0 <= now <= MAX_MS):
        raise VerbError("now_ms must be a non-negative integer")  # ... at most MAX_MS
    report = learner.consolidate(now_ms=now)
    _emit(ctx, learner)
    return report.to_dict()


@verb("learner_state", table="learner", writes=False)
def learner_state(ctx: VerbContext, body: dict) -> dict:
    """{} -> counters, prequential accuracy/loss, drift and consolidation state, config."""
    learner = _learner(ctx)
    return {**learner.summary(), "diverged": _diverged(learner), "config": learner.settings()}


@state_size("init_learner")
def _state_size(body: dict) -> tuple[str, int] | None:
    d, c = int_accepted(body, "n_features", 0, _MAX_FEATURES), int_accepted(body, "n_classes", 0, _MAX_CLASSES)
    h, cap = int_accepted(body, "hidden", 128, _MAX_HIDDEN), int_accepted(body, "capacity", 200, _MAX_CAPACITY)
    bs, rc = int_accepted(body, "batch_size", 10, 4096), int_accepted(body, "recent", 50, 1 << 20)
    win = int_accepted(body, "drift_window", 200, 100_000)
    if not d or not c or None in (h, cap, bs, rc, win):
        return None
    params = d * c + c if body.get("model") == "softmax" else d * h + h + h * c + c
    # theta, velocity, EWC Fisher and anchor, distillation teacher; replay rows with logits;
    # pending and recent rings; the drift windows' class histograms
    total = 5 * 4 * params + cap * (4 * d + 4 * c + 24) + (bs + rc) * (4 * d + 4) + 2 * win * (4 * c + 8)
    field = "capacity" if cap * 4 * d > 5 * 4 * params else "n_features"
    return field, total + 65536
