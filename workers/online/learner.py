"""The online continual learner: one learner composing the parts of this package.

Per incoming training batch (``batch_size`` examples; ``learn_one`` buffers):

1. forward the new examples (prequential: the model has not seen them yet) and feed
   predictions, labels and losses to the drift detectors;
2. on a task boundary (a new ``task`` label, or a drift when ``boundary_on_drift``)
   consolidate *before* learning the new data, so the EWC anchor, the Fisher and the
   LwF teacher describe the old task, and restart the curriculum;
3. ``train_steps`` fused kernel steps, each on the new examples plus a replay sample
   whose size the curriculum sets (few new examples right after a boundary, more
   later), with the replayed examples' stored logits (DER), the teacher (LwF) and the
   EWC pull; replayed examples' priorities become their current loss;
4. offer the new examples, with their logits and loss, to the replay memory;
5. consolidate when the scheduler says so (count, event time, or boundary).

What happened is queued as events (``drain_events()``): ``drift``, ``boundaries`` and
``consolidations``, in that role naming the stream uses.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from workers.online.base import Learner, Model
from workers.online.checkpoint import CheckpointManager
from workers.online.curriculum import Curriculum
from workers.online.distill import Distillation
from workers.online.drift import KLDriftDetector, MeanShift, PageHinkley
from workers.online.ewc import EWC
from workers.online.models import MLP, SoftmaxRegression, cross_entropy, softmax
from workers.online.replay import ReplayBuffer
from workers.online.scheduler import ConsolidationReport, ConsolidationScheduler
from workers.online.snapshot import rng_state, set_rng_state

__all__ = ("ContinualLearner",)

_DEFAULT_BATCH = 10
_DEFAULT_TRAIN_STEPS = 1
_DEFAULT_CONSOLIDATION_STEPS = 10
_DEFAULT_RECENT = 50
# Fisher from at most this many examples: the diagonal estimate is stable well
# before that, and consolidation cost stays bounded however large the memory.
_FISHER_SAMPLES = 256
# EMA weight of the prequential accuracy/loss shown in learner_state
_STAT_EMA = 0.02


class ContinualLearner(Learner):
    """Online classifier that learns from a stream without forgetting.

    Parameters
    ----------
    n_features
        Input dimension.
    n_classes
        Number of classes (a single head; class-incremental streams are fine).
    classifier
        A :class:`~workers.online.models.MLP` (default, 128 hidden units) or
        :class:`~workers.online.models.SoftmaxRegression`; its sizes are filled in.
        (Named so because ``model()`` is the protocol's accessor of the fitted model.)
    replay
        A :class:`~workers.online.replay.ReplayBuffer` (default: 200 examples, prioritized by
        loss with reservoir eviction).
        ``capacity=0`` switches replay off.
    ewc
        An :class:`~workers.online.ewc.EWC` (default lam 100); ``lam=0`` switches it off.
    distillation
        A :class:`~workers.online.distill.Distillation` (default DER++, no LwF).
    curriculum
        A :class:`~workers.online.curriculum.Curriculum` (new-example share ramp).
    scheduler
        A :class:`~workers.online.scheduler.ConsolidationScheduler`.
    drift
        A :class:`~workers.online.drift.KLDriftDetector` (its ``n_classes`` is filled in).
    page_hinkley
        A :class:`~workers.online.drift.PageHinkley` on the loss.
    mean_shift
        A :class:`~workers.online.drift.MeanShift` on the 0/1 error (small, gradual and
        concept drifts of the error rate).
    boundary_on_drift
        Treat a detected drift as a task boundary. Default True.
    batch_size
        Examples per training batch (``learn_one`` buffers until it is full). Default 10.
    train_steps
        Kernel steps per incoming batch (each with a fresh replay sample). Default 1.
    consolidation_steps
        Steps on the mixed replay/recent batch at each consolidation. Default 10.
    recent
        Size of the ring of most recent examples consolidation mixes in. Default 50.
    asymmetric
        Cross-entropy of *incoming* examples only over the classes present in their
        batch (ER-ACE), so new classes do not push old classes' logits down. Default False.
    checkpoint_dir
        When set, each consolidation writes a checkpoint there (incremental between
        full ones). Default None.
    keep_checkpoints
        Checkpoints kept in ``checkpoint_dir``. Default 5.
    seed
        Seed of every random choice (model init, replay, batch mixing).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> X = (X / 16.0).astype(np.float32)
    >>> learner = ContinualLearner(n_features=64, n_classes=10, seed=0)
    >>> learner.learn_batch(X[:1500], y[:1500])
    >>> learner.evaluate(X[1500:], y[1500:])["accuracy"] > 0.85
    True
    """

    _unit_test_params = {"n_features": 5, "n_classes": 3, "classifier": MLP(hidden=8), "batch_size": 4,
                         "replay": ReplayBuffer(capacity=16, strategy="prioritized"),
                         "distillation": Distillation(lwf_lambda=1.0), "consolidation_steps": 2, "recent": 8,
                         "scheduler": ConsolidationScheduler(examples_threshold=12)}

    def __init__(self, n_features: int, n_classes: int, classifier: Model | None = None,
                 replay: ReplayBuffer | None = None, ewc: EWC | None = None,
                 distillation: Distillation | None = None, curriculum: Curriculum | None = None,
                 scheduler: ConsolidationScheduler | None = None, drift: KLDriftDetector | None = None,
                 page_hinkley: PageHinkley | None = None, boundary_on_drift: bool | None = None,
                 mean_shift: MeanShift | None = None,
                 batch_size: int | None = None, train_steps: int | None = None,
                 consolidation_steps: int | None = None, recent: int | None = None,
                 asymmetric: bool | None = None, checkpoint_dir: str | None = None,
                 keep_checkpoints: int | None = None, seed: int | None = None) -> None:
        self.n_features = n_features
        self.n_classes = n_classes
        self.classifier = classifier
        self.replay = replay
        self.ewc = ewc
        self.distillation = distillation
        self.curriculum = curriculum
        self.scheduler = scheduler
        self.drift = drift
        self.page_hinkley = page_hinkley
        self.mean_shift = mean_shift
        self.boundary_on_drift = boundary_on_drift
        self.batch_size = batch_size
        self.train_steps = train_steps
        self.consolidation_steps = consolidation_steps
        self.recent = recent
        self.asymmetric = asymmetric
        self.checkpoint_dir = checkpoint_dir
        self.keep_checkpoints = keep_checkpoints
        self.seed = seed
        self._build()

    # -- construction ----------------------------------------------------------
    def _build(self) -> None:
        d, c = int(self.n_features), int(self.n_classes)
        if d < 1 or c < 2:
            raise ValueError("n_features must be >= 1 and n_classes >= 2")
        seed = self.seed
        m = self.classifier if self.classifier is not None else MLP()
        fill: dict[str, Any] = {"n_features": d, "n_classes": c}
        if m.seed is None and seed is not None:  # type: ignore[attr-defined]
            fill["seed"] = seed
        self._model: Model = m.clone(fill)
        r = self.replay if self.replay is not None else ReplayBuffer()
        self._replay = r.clone({"seed": seed} if r.seed is None and seed is not None else None)
        self._ewc = (self.ewc or EWC()).clone()
        self._distill = (self.distillation or Distillation()).clone()
        self._curriculum = (self.curriculum or Curriculum()).clone()
        self._scheduler = (self.scheduler or ConsolidationScheduler()).clone()
        k = self.drift or KLDriftDetector()
        self._kl = k.clone({"n_classes": c} if k.n_classes is None else None)
        self._ph = (self.page_hinkley or PageHinkley()).clone()
        self._ms = (self.mean_shift or MeanShift()).clone()
        self._rng = np.random.default_rng(None if seed is None else seed + 1)
        bs, rc = self._bs, self._recent_cap
        self._pending_x = np.zeros((bs, d), dtype=np.float32)
        self._pending_y = np.zeros(bs, dtype=np.int32)
        self._pending_n = 0
        self._pending_ms: int | None = None
        self._recent_x = np.zeros((rc, d), dtype=np.float32)
        self._recent_y = np.zeros(rc, dtype=np.int32)
        self._recent_n = 0
        self._recent_pos = 0
        self.examples_seen = 0
        self.batches = 0
        self.boundaries = 0
        self.drifts = 0
        self.task: str | None = None
        self._tasks: dict[str, int] = {}
        self.accuracy_ema: float | None = None
        self.loss_ema: float | None = None
        self.last_consolidation: ConsolidationReport | None = None
        self._events: list[tuple[str, dict]] = []
        self._ckpt = None

    @property
    def _bs(self) -> int:
        b = _DEFAULT_BATCH if self.batch_size is None else int(self.batch_size)
        if b < 1:
            raise ValueError("batch_size must be >= 1")
        return b

    @property
    def _recent_cap(self) -> int:
        return max(1, _DEFAULT_RECENT if self.recent is None else int(self.recent))

    @property
    def _steps(self) -> int:
        return max(1, _DEFAULT_TRAIN_STEPS if self.train_steps is None else int(self.train_steps))

    @property
    def _consolidation_steps(self) -> int:
        return _DEFAULT_CONSOLIDATION_STEPS if self.consolidation_steps is None else int(self.consolidation_steps)

    # -- input checks ----------------------------------------------------------
    def _check_batch(self, xs: Any, ys: Any) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(xs, dtype=np.float32)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"features must have {self.n_features} values per example, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("features must be finite (NaN/Inf refused)")
        y = np.asarray(ys)
        y = y.reshape(-1) if y.ndim == 0 else y
        if y.shape != (len(X),):
            raise ValueError(f"expected {len(X)} labels, got shape {y.shape}")
        if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"labels must be integers in [0, {self.n_classes})")
        return X, y.astype(np.int32)

    def _check_x(self, xs: Any) -> np.ndarray:
        X = np.asarray(xs, dtype=np.float32)
        X = X[None, :] if X.ndim == 1 else X
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"features must have {self.n_features} values per example, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("features must be finite (NaN/Inf refused)")
        return X

    # -- learning --------------------------------------------------------------
    def learn_one(self, x: Any, y: int, task: Any = None, now_ms: int | None = None) -> None:
        """Learn from one example; ``task`` (any label) marks boundaries, ``now_ms`` is event time."""
        self.learn_batch(np.asarray(x, dtype=np.float32)[None, :], np.array([y]), task, now_ms)

    def learn_batch(self, xs: Any, ys: Any, task: Any = None, now_ms: Any = None) -> None:
        """Learn from examples in order; exactly ``learn_one`` on each, only faster.

        ``now_ms`` is one event time for all, or one per example (negative: unknown).
        """
        X, y = self._check_batch(xs, ys)
        times = None if now_ms is None else np.broadcast_to(np.asarray(now_ms, dtype=np.int64), (len(X),))
        self._switch_task(task)
        bs, i = self._bs, 0
        while i < len(X):
            take = min(bs - self._pending_n, len(X) - i)
            if times is not None:
                t = int(times[i:i + take].max())
                if t >= 0:
                    self._pending_ms = t if self._pending_ms is None else max(self._pending_ms, t)
            sl = slice(self._pending_n, self._pending_n + take)
            self._pending_x[sl] = X[i:i + take]
            self._pending_y[sl] = y[i:i + take]
            self._pending_n += take
            i += take
            if self._pending_n == bs:
                self._flush()

    def _switch_task(self, task: Any) -> None:
        if task is None:
            return
        key = str(task)
        if key not in self._tasks:
            self._tasks[key] = len(self._tasks)
        if self.task is None:
            self.task = key
        elif key != self.task:
            self._flush()
            prev, self.task = self.task, key
            self._boundary("task", {"previous_task": prev, "task": key})

    def _flush(self) -> None:
        """Train on the pending examples (if any)."""
        n = self._pending_n
        if n == 0:
            return
        X, y = self._pending_x[:n].copy(), self._pending_y[:n].copy()
        self._pending_n = 0
        now_ms, self._pending_ms = self._pending_ms, None
        self._train_batch(X, y, now_ms)

    def _train_batch(self, X: np.ndarray, y: np.ndarray, now_ms: int | None) -> None:
        n = len(X)
        z0 = self._model.logits(X)
        p0 = softmax(z0)
        loss0 = cross_entropy(p0, y)
        pred0 = p0.argmax(1)
        self._track(pred0, y, loss0)
        self._detect(pred0, y, loss0)
        task_code = self._tasks.get(self.task, 0) if self.task is not None else 0
        mask = self._mask(y) if self.asymmetric else None
        for _ in range(self._steps):
            sample = None
            if len(self._replay):
                k = self._curriculum.replay_count(n)
                sample = self._replay.sample(k) if k > 0 else None
            Xb, yb = (X, y) if sample is None else (np.concatenate([X, sample.x]), np.concatenate([y, sample.y]))
            terms = self._distill.terms(self._model, Xb, n, sample)
            terms.update(self._ewc.terms())
            if mask is not None:
                full = np.ones((len(Xb), self.n_classes), dtype=np.uint8)
                full[:n] = mask
                terms["mask"] = full
            _, _, loss = self._model.step(Xb, yb, **terms)
            if sample is not None:
                self._replay.update_priorities(sample.idx, loss[n:])
            self._curriculum.tick()
        self._replay.add_many(X, y, task=task_code, logits=z0 if self._distill.stores_logits else None,
                              priority=loss0)
        self._remember(X, y)
        self.examples_seen += n
        self.batches += 1
        cause = self._scheduler.observe(n, now_ms)
        if cause is not None:
            self._consolidate(cause)

    def _mask(self, y: np.ndarray) -> np.ndarray:
        present = np.zeros(self.n_classes, dtype=np.uint8)
        present[y] = 1
        return np.broadcast_to(present, (len(y), self.n_classes))

    def _track(self, pred: np.ndarray, y: np.ndarray, loss: np.ndarray) -> None:
        acc, lo = float((pred == y).mean()), float(loss.mean())
        w = 1.0 - (1.0 - _STAT_EMA) ** len(y)
        self.accuracy_ema = acc if self.accuracy_ema is None else (1 - w) * self.accuracy_ema + w * acc
        self.loss_ema = lo if self.loss_ema is None else (1 - w) * self.loss_ema + w * lo

    def _detect(self, pred: np.ndarray, y: np.ndarray, loss: np.ndarray) -> None:
        # MeanShift first: the KL test reads the errors before its window from MeanShift's ring
        ms = self._ms.update_many((pred != y).astype(np.float64))
        self._kl.errors_before = self._ms.before
        reports = [r for r in (self._kl.update_many(pred, y, loss), self._ph.update_many(loss), ms) if r is not None]
        for r in reports:
            self.drifts += 1
            self._events.append(("drift", r.to_dict()))
        if reports and self.boundary_on_drift is not False:
            self._boundary("drift", {"detectors": [r.detector for r in reports],
                                     "divergence": reports[0].divergence,
                                     "recommendation": reports[0].recommendation, "task": self.task})

    def _boundary(self, cause: str, stats: dict) -> None:
        self.boundaries += 1
        stats = dict(stats, examples_seen=self.examples_seen, loss_ema=self.loss_ema,
                     accuracy_ema=self.accuracy_ema)
        self._events.append(("boundaries", {"cause": cause, "stats": stats}))
        self._curriculum.restart()
        if self._scheduler.boundary() is not None:
            self._consolidate("boundary")

    def _remember(self, X: np.ndarray, y: np.ndarray) -> None:
        cap = self._recent_cap
        if len(X) >= cap:
            X, y = X[-cap:], y[-cap:]
        idx = (self._recent_pos + np.arange(len(X))) % cap
        self._recent_x[idx], self._recent_y[idx] = X, y
        self._recent_pos = (self._recent_pos + len(X)) % cap
        self._recent_n = min(cap, self._recent_n + len(X))

    # -- consolidation ---------------------------------------------------------
    def consolidate(self, now_ms: int | None = None) -> ConsolidationReport:
        """Train pending examples, then consolidate now (cause ``"manual"``)."""
        if now_ms is not None:
            self._pending_ms = now_ms if self._pending_ms is None else max(self._pending_ms, now_ms)
        self._flush()
        return self._consolidate("manual", now_ms)

    def _consolidate(self, cause: str, now_ms: int | None = None) -> ConsolidationReport:
        rn = self._recent_n
        Xr, yr = self._recent_x[:rn], self._recent_y[:rn]
        k = min(len(self._replay), max(rn, self._bs))
        sample = self._replay.sample(k) if k else None
        if sample is not None and len(sample):
            Xm, ym = np.concatenate([Xr, sample.x]), np.concatenate([yr, sample.y])
        else:
            Xm, ym = Xr, yr
        loss_before = loss_after = 0.0
        steps = 0
        penalty = self._ewc.penalty(self._model.theta)
        if len(Xm):
            loss_before = self._mean_loss(Xm, ym)
            B = min(len(Xm), 2 * self._bs)
            for _ in range(self._consolidation_steps):
                idx = self._rng.choice(len(Xm), size=B, replace=False)
                Xb, yb = Xm[idx], ym[idx]
                terms = self._ewc.terms()
                if sample is not None and self._distill.stores_logits:
                    rep = idx >= rn  # rows from the replay sample carry stored logits
                    ridx = idx[rep] - rn
                    if rep.any() and sample.logits is not None:
                        mse_w = np.zeros(B, dtype=np.float32)
                        mse_w[rep] = self._distill.alpha * sample.has_logits[ridx]
                        target = np.zeros((B, self.n_classes), dtype=np.float32)
                        target[rep] = sample.logits[ridx]
                        terms.update(mse_w=mse_w, target=target)
                self._model.step(Xb, yb, **terms)
                steps += 1
            loss_after = self._mean_loss(Xm, ym)
        index, refresh = self._scheduler.fired(now_ms)
        refreshed = False
        if self._ewc.enabled:
            fisher = None
            if refresh and len(Xm):
                fx, fy = Xm, ym
                if len(fx) > _FISHER_SAMPLES:
                    sel = self._rng.choice(len(fx), size=_FISHER_SAMPLES, replace=False)
                    fx, fy = fx[sel], fy[sel]
                fisher = self._model.fisher(fx, fy)
                refreshed = True
            self._ewc.consolidate(self._model.theta, fisher)
        self._distill.snapshot(self._model.theta)
        report = ConsolidationReport(index=index, cause=cause, examples_seen=self.examples_seen,
                                     replay_size=len(self._replay), steps=steps, loss_before=loss_before,
                                     loss_after=loss_after, ewc_penalty=penalty, fisher_refreshed=refreshed,
                                     now_ms=self._scheduler.now_ms)
        if self.checkpoint_dir:
            report.checkpoint = self._checkpoints().save(self).version
        self.last_consolidation = report
        self._events.append(("consolidations", report.to_dict()))
        return report

    def _checkpoints(self) -> CheckpointManager:
        if self._ckpt is None:
            self._ckpt = CheckpointManager(self.checkpoint_dir, keep=self.keep_checkpoints)
        return self._ckpt

    def _mean_loss(self, X: np.ndarray, y: np.ndarray) -> float:
        return float(cross_entropy(self._model.predict_proba(X), y).mean())

    # -- inference -------------------------------------------------------------
    def model(self) -> Model:  # type: ignore[override]
        return self._model

    def predict(self, xs: Any) -> np.ndarray:
        """Class probabilities (B x n_classes)."""
        return self._model.predict_proba(self._check_x(xs))

    predict_proba = predict

    def evaluate(self, xs: Any, ys: Any) -> dict[str, float]:
        X, y = self._check_batch(xs, ys)
        if len(X) == 0:
            return {"accuracy": 0.0, "loss": 0.0, "n": 0}
        p = self._model.predict_proba(X)
        return {"accuracy": float((p.argmax(1) == y).mean()), "loss": float(cross_entropy(p, y).mean()),
                "n": int(len(y))}

    def drain_events(self) -> list[tuple[str, dict]]:
        """The events since the last call (drift, boundaries, consolidations), oldest first."""
        out, self._events = self._events, []
        return out

    @property
    def pending(self) -> int:
        """Examples buffered until the next training batch."""
        return self._pending_n

    @property
    def replay_memory(self) -> ReplayBuffer:
        return self._replay

    def summary(self) -> dict[str, Any]:
        """Counters and health for ``learner_state``."""
        return {"examples_seen": self.examples_seen, "batches": self.batches, "pending": self._pending_n,
                "task": self.task, "tasks": len(self._tasks), "boundaries": self.boundaries, "drifts": self.drifts,
                "consolidations": self._scheduler.count, "replay_size": len(self._replay),
                "accuracy_ema": self.accuracy_ema, "loss_ema": self.loss_ema,
                "ewc_fisher_refreshes": self._ewc.n_refresh, "n_params": int(self._model.theta.size),
                "now_ms": self._scheduler.now_ms,
                "last_consolidation": self.last_consolidation.to_dict() if self.last_consolidation else None}

    def settings(self) -> dict[str, Any]:
        """The hyperparameters in force, named as ``init_learner``'s fields (defaults filled in):
        what an agent can read back, where ``params_json`` keeps ``None`` for "the default"."""
        model, replay, ewc = self._model.in_force(), self._replay.in_force(), self._ewc.in_force()
        curriculum, scheduler, kl = self._curriculum.in_force(), self._scheduler.in_force(), self._kl.in_force()
        out: dict[str, Any] = {
            "n_features": int(self.n_features), "n_classes": int(self.n_classes),
            "model": "softmax" if isinstance(self._model, SoftmaxRegression) else "mlp"}
        if "hidden" in model:
            out["hidden"] = model["hidden"]
        out.update({
            "lr": model["lr"], "momentum": model["momentum"], "replay": replay["strategy"],
            "capacity": replay["capacity"], "seed": self.seed, "ewc_lambda": ewc["lam"], "fisher_decay": ewc["decay"],
            **self._distill.in_force(), "curriculum_floor": curriculum["floor"],
            "curriculum_steady": curriculum["steady"], "curriculum_ramp": curriculum["ramp"],
            "examples_threshold": scheduler["examples_threshold"], "time_threshold_ms": scheduler["time_threshold_ms"],
            "fisher_every": scheduler["fisher_every"], "drift_window": kl["window"], "drift_alpha": kl["alpha"],
            "boundary_on_drift": self.boundary_on_drift is not False, "batch_size": self._bs,
            "train_steps": self._steps, "consolidation_steps": self._consolidation_steps,
            "asymmetric": bool(self.asymmetric)})
        return out

    # -- state -----------------------------------------------------------------
    _PARTS = ("_model", "_replay", "_ewc", "_distill", "_curriculum", "_scheduler", "_kl", "_ph", "_ms")

    def save_state(self, writer: Any) -> None:
        writer.put_json("learner", {
            "examples_seen": self.examples_seen, "batches": self.batches, "boundaries": self.boundaries,
            "drifts": self.drifts, "task": self.task, "tasks": self._tasks, "pending_n": self._pending_n,
            "pending_ms": self._pending_ms, "recent_n": self._recent_n, "recent_pos": self._recent_pos,
            "accuracy_ema": self.accuracy_ema, "loss_ema": self.loss_ema, "rng": rng_state(self._rng),
            "last_consolidation": self.last_consolidation.to_dict() if self.last_consolidation else None})
        # buffers that fill up (recent) or fill and empty (pending) after the fixed-size arrays
        writer.put_array("pending_x", self._pending_x[:self._pending_n], rank=4)
        writer.put_array("pending_y", self._pending_y[:self._pending_n], rank=4)
        writer.put_array("recent_x", self._recent_x[:self._recent_n], rank=3)
        writer.put_array("recent_y", self._recent_y[:self._recent_n], rank=3)
        for name in self._PARTS:
            getattr(self, name).save_state(writer.scope(name.lstrip("_")))

    def load_state(self, reader: Any) -> None:
        self._build()
        s = reader.json("learner")
        self.examples_seen, self.batches = s["examples_seen"], s["batches"]
        self.boundaries, self.drifts, self.task = s["boundaries"], s["drifts"], s["task"]
        self._tasks = dict(s["tasks"])
        self._pending_n, self._pending_ms = s["pending_n"], s["pending_ms"]
        self._recent_n, self._recent_pos = s["recent_n"], s["recent_pos"]
        self.accuracy_ema, self.loss_ema = s["accuracy_ema"], s["loss_ema"]
        set_rng_state(self._rng, s["rng"])
        lc = s["last_consolidation"]
        self.last_consolidation = ConsolidationReport(**lc) if lc else None
        self._pending_x[:self._pending_n] = reader.array("pending_x")
        self._pending_y[:self._pending_n] = reader.array("pending_y")
        self._recent_x[:self._recent_n] = reader.array("recent_x")
        self._recent_y[:self._recent_n] = reader.array("recent_y")
        for name in self._PARTS:
            if name == "_ms" and not reader.scope("ms").has("stats"):
                continue  # a state saved before the mean-shift detector: it starts fresh
            getattr(self, name).load_state(reader.scope(name.lstrip("_")))
