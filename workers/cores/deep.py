"""Deep core: EWC++ online Fisher and loss z-score task boundaries (spec: cores.md, Deep core).

Per session: a Fisher diagonal and a parameter snapshot per ``param_id``, the
last :data:`RING_CAP` losses and the boundary count, all float32 arrays the C++
kernels (``cpp/deep.h``) update in place. **[beyond]** the loss ring and the
boundary count persist, every firing emits a ``boundaries`` event and every
consolidation a ``consolidations`` event.

Examples
--------
>>> d = DeepState()
>>> [d.record_loss(0.5)["boundary_fired"] for _ in range(6)]
[False, False, False, False, False, False]
>>> d.record_loss(100.0)["boundary_fired"]
True
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers import _kernels as _k
from workers.verbs.codec import embedding_field, numbers_as_float32
from workers.state.framing import pack_part, unpack_part
from workers.cores.instant import InstantState
from workers.errors import CorruptStateError, ValidationError, VerbError
from workers.verbs.fields import epoch_ms, to_float
from workers.verbs.registry import VerbContext, health_contributor, verb

__all__ = (
    "FISHER_DECAY", "LAMBDA", "RING_CAP", "BOUNDARY_Z", "MIN_STD", "MIN_PRIOR",
    "DeepState", "LossOutcome", "hand_ewc", "boundary_event", "consolidation_event", "read_vector",
)

FISHER_DECAY = 0.999
LAMBDA = 2000.0
RING_CAP = 10
BOUNDARY_Z = 2.5
MIN_STD = 1e-4
MIN_PRIOR = 3            # fewer prior losses than this never fire (no meaningful std yet)
# [beyond] limits of the verbs (the reference has none): a loss window of 10 float32 losses keeps
# its spread finite up to ~1e19; a param_id is kept and sent with every consolidation event whole.
LOSS_MAX = 1e18
PARAM_ID_MAX = 256
BOUNDARY_CAUSE = "loss_zscore"

_MAGIC = b"LSD"
_VERSION = 1


@dataclass(frozen=True)
class LossOutcome:
    """Everything one ``record_loss`` learned; :meth:`response` is the spec's answer."""

    boundary_fired: bool
    loss: float
    z: float
    prior_mean: float
    prior_stddev: float
    window_mean: float
    window_stddev: float
    samples: int
    boundaries_total: int

    def response(self) -> dict:
        return {"boundary_fired": self.boundary_fired, "window_mean": self.window_mean,
                "window_stddev": self.window_stddev, "samples": self.samples,
                "boundaries_total": self.boundaries_total}


def _outcome(loss: float, row: np.ndarray) -> LossOutcome:
    """A LossOutcome from one row of ``loss_window_push_many`` (its column order)."""
    fired, _stored, z, prior_mean, prior_std, window_mean, window_std, samples, total = row.tolist()
    return LossOutcome(bool(fired), loss, z, prior_mean, prior_std, window_mean, window_std, int(samples), int(total))


class DeepState:
    """One session's Fisher/snapshot per param_id, loss window and boundary count.

    Parameters
    ----------
    lam
        EWC strength λ; default :data:`LAMBDA` (the verbs pass ``LEARNSTREAM_EWC_LAMBDA`` from Settings).
    """

    __slots__ = ("lam", "ring", "counters", "fisher", "snapshot")

    def __init__(self, lam: float | None = None) -> None:
        self.lam: float = LAMBDA if lam is None else float(lam)
        self.ring = np.zeros(RING_CAP, np.float32)      # oldest first, ``counters[0]`` used
        self.counters = np.zeros(2, np.int64)           # [window length, boundaries_total]
        self.fisher: dict[str, np.ndarray] = {}
        self.snapshot: dict[str, np.ndarray] = {}

    # -- loss window ---------------------------------------------------------
    @property
    def loss_window(self) -> list[float]:
        return [float(v) for v in self.ring[: self.counters[0]]]

    @property
    def boundaries(self) -> int:
        return int(self.counters[1])

    def observe_loss(self, loss: float) -> LossOutcome:
        """Push a loss (non-finite: nothing stored, never fires) and test the z-score."""
        loss = float(loss)
        return _outcome(loss, self._push(np.array([loss]))[0])

    def observe_losses(self, losses: np.ndarray) -> list[tuple[int, LossOutcome]]:
        """:meth:`observe_loss` for each loss in order, in one kernel call; the firings as
        (index, outcome), equal to what ``observe_loss`` returned for those losses."""
        losses = np.ascontiguousarray(losses, dtype=np.float64)
        rows = self._push(losses)
        return [(i, _outcome(float(losses[i]), rows[i])) for i in np.flatnonzero(rows[:, 0]).tolist()]

    def _push(self, losses: np.ndarray) -> np.ndarray:
        return _k.loss_window_push_many(self.ring, self.counters, losses, MIN_STD, BOUNDARY_Z, MIN_PRIOR)

    def record_loss(self, loss: float) -> dict:
        """``{boundary_fired, window_mean, window_stddev, samples, boundaries_total}``."""
        return self.observe_loss(loss).response()

    # -- EWC++ ---------------------------------------------------------------
    @staticmethod
    def check_consolidate(params: np.ndarray, grads: np.ndarray) -> None:
        if not (np.isfinite(params).all() and np.isfinite(grads).all()):
            raise VerbError("params/grads have non-finite values")
        if params.shape != grads.shape:
            raise VerbError("consolidate: params/grads length mismatch")

    def consolidate(self, param_id: str, params: np.ndarray, grads: np.ndarray) -> dict:
        """F (resized to len(params)) <- 0.999 F + 0.001 g^2; snapshot <- params."""
        params = np.asarray(params, dtype=np.float32).ravel()
        grads = np.asarray(grads, dtype=np.float32).ravel()
        self.check_consolidate(params, grads)
        n = params.size
        F = self.fisher.get(param_id)
        if F is None or F.size != n:  # new, or resized by truncation / zero padding
            G = np.zeros(n, np.float32)
            if F is not None:
                m = min(n, F.size)
                G[:m] = F[:m]
            F = self.fisher[param_id] = G
        _k.fisher_ema(F, grads, FISHER_DECAY)
        snap = self.snapshot.get(param_id)
        if snap is None or snap.size != n:
            self.snapshot[param_id] = params.copy()
        else:
            snap[:] = params
        return {"param_id": param_id, "fisher_len": n}

    def penalty(self, param_id: str, theta: np.ndarray) -> float:
        """λ Σ_{i<n} F_i (θ_i − snap_i)², n the shortest length; 0 for an unknown id."""
        F = self.fisher.get(param_id)
        if F is None:
            return 0.0
        return float(_k.ewc_penalty(F, self.snapshot[param_id], np.asarray(theta, np.float32), self.lam))

    # -- bytes ---------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """b"LSD" + version + header length + orjson header + ring + counters + (F, snap) per id."""
        keys = sorted(self.fisher)
        chunks = [self.ring.astype("<f4", copy=False).tobytes(), self.counters.astype("<i8", copy=False).tobytes()]
        for k in keys:
            chunks.append(self.fisher[k].astype("<f4", copy=False).tobytes())
            chunks.append(self.snapshot[k].astype("<f4", copy=False).tobytes())
        return pack_part(_MAGIC, _VERSION, {"lam": self.lam, "keys": [[k, int(self.fisher[k].size)] for k in keys]},
                         *chunks)

    @classmethod
    def from_bytes(cls, data: bytes) -> DeepState:
        header, pos = unpack_part(data, _MAGIC, _VERSION, "deep")
        try:
            obj = cls(lam=float(header["lam"]))
            keys = [(str(k), int(n)) for k, n in header["keys"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStateError(f"deep state header is malformed ({exc})") from None
        need = pos + RING_CAP * 4 + 16 + sum(8 * n for _, n in keys)
        if len(data) != need:
            raise CorruptStateError(f"deep state has {len(data)} bytes, expected {need}")
        obj.ring[:] = np.frombuffer(data, "<f4", RING_CAP, pos)
        pos += RING_CAP * 4
        obj.counters[:] = np.frombuffer(data, "<i8", 2, pos)
        pos += 16
        if not 0 <= obj.counters[0] <= RING_CAP:
            raise CorruptStateError("deep state loss window length out of range")
        for k, n in keys:
            obj.fisher[k] = np.frombuffer(data, "<f4", n, pos).astype(np.float32)
            obj.snapshot[k] = np.frombuffer(data, "<f4", n, pos + 4 * n).astype(np.float32)
            pos += 8 * n
        return obj

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, DeepState) and other.lam == self.lam
                and np.array_equal(other.ring, self.ring) and np.array_equal(other.counters, self.counters)
                and other.fisher.keys() == self.fisher.keys()
                and all(np.array_equal(other.fisher[k], self.fisher[k])
                        and np.array_equal(other.snapshot[k], self.snapshot[k]) for k in self.fisher))

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"DeepState(lam={self.lam:g}, fisher_keys={len(self.fisher)}, "
                f"loss_window={len(self.loss_window)}, boundaries={self.boundaries})")


# -- shared by the verbs and the learning loop -------------------------------------
def hand_ewc(deep: DeepState, instant: Any, param_id: str) -> bool:
    """Give ``param_id``'s EWC state to the instant adapter when it covers θ = [A; B] exactly."""
    if instant is None:
        return False
    F = deep.fisher.get(param_id)
    if F is None or F.size != instant.n_params:
        return False
    instant.set_ewc(F, deep.snapshot[param_id], deep.lam)
    return True


def _with_source(payload: dict, source: dict | None) -> dict:
    if source is not None:
        payload["source"] = dict(source)
    return payload


def boundary_event(session_key: str, o: LossOutcome, source: dict | None = None, cause: str = BOUNDARY_CAUSE,
                   **extra: Any) -> dict:
    """The ``boundaries`` payload of a firing (plain JSON types); ``z`` is the detector's statistic."""
    return _with_source({"session_key": session_key, "cause": cause, "loss": o.loss, "z": o.z,
                         "window_mean": o.window_mean, "window_stddev": o.window_stddev,
                         "prior_mean": o.prior_mean, "prior_stddev": o.prior_stddev,
                         "samples": o.samples, "boundaries_total": o.boundaries_total, **extra}, source)


def consolidation_event(session_key: str, deep: DeepState, param_id: str, cause: str,
                        source: dict | None = None, **extra: Any) -> dict:
    """The ``consolidations`` payload after ``param_id`` was consolidated."""
    F = deep.fisher[param_id]
    return _with_source({"session_key": session_key, "param_id": param_id, "fisher_len": int(F.size),
                         "fisher_mean": float(F.mean()) if F.size else 0.0,
                         "fisher_max": float(F.max()) if F.size else 0.0, "cause": cause, **extra}, source)


def read_vector(body: dict, field: str) -> np.ndarray:
    """A JSON array of numbers (or ``<field>_b64``, LE float32) as float32, finiteness unchecked."""
    b64 = body.get(field + "_b64")
    v = body.get(field)
    if v is None and b64 is None:
        raise VerbError(f"{field} required")
    if v is None:
        if b64 == "":  # an empty vector is allowed here (codec refuses empty embeddings)
            return np.zeros(0, np.float32)
        try:
            return embedding_field({field + "_b64": b64}, field)
        except ValidationError as exc:
            if "finite" in exc.rule:
                raise VerbError("params/grads have non-finite values") from None
            raise
    x = numbers_as_float32(v)  # a value beyond float32 becomes inf: refused as non-finite
    if x is None:
        raise VerbError(f"{field} must be an array of numbers")
    return x


def _param_id(body: dict) -> str:
    """The body's ``param_id``: a name of at most :data:`PARAM_ID_MAX` characters, not blank."""
    param_id = body.get("param_id")
    if param_id is None:
        raise VerbError("param_id required")
    if not isinstance(param_id, str) or not param_id:
        raise VerbError("param_id must be a non-empty string")
    if param_id.isspace():
        raise VerbError("param_id is blank (a name needs a character other than whitespace)")
    if len(param_id) > PARAM_ID_MAX:  # each is kept, and sent in every consolidation event, whole
        raise VerbError(f"param_id must be at most {PARAM_ID_MAX} characters (got {len(param_id)})")
    return param_id


def _deep(ctx: VerbContext, create: bool) -> DeepState | None:
    d = ctx.state.get("deep", DeepState)
    if d is None and create:
        d = DeepState(ctx.options.ewc_lambda)
    return d


# -- verbs ---------------------------------------------------------------------
@verb("record_loss", table="session", writes=True, topic="loss")
def record_loss(ctx: VerbContext, body: dict) -> dict:
    """{loss} -> {boundary_fired, window_mean, window_stddev, samples, boundaries_total}."""
    loss = body.get("loss")
    if loss is None:
        raise VerbError("loss required")
    if isinstance(loss, bool) or not isinstance(loss, (int, float)):
        raise VerbError("loss must be a number")
    value = to_float(loss)
    # Non-finite: nothing stored, as the spec says. A finite loss beyond LOSS_MAX would overflow the window's
    # float32 mean and spread (an outside trial's 3.3e38 blinded the detector for 10 losses and made its
    # boundary event's z and window_stddev null), or be stored as an infinity and silently dropped.
    if math.isfinite(value) and abs(value) > LOSS_MAX:
        raise VerbError(f"loss must be within ±{LOSS_MAX:g} (the loss window is float32; its spread overflows "
                        f"beyond), got {value:g}")
    epoch_ms(body, "now_ms", lo=0)  # not used, but checked as its topic schema says (the reference has none)
    d = _deep(ctx, create=True)
    o = d.observe_loss(value)
    ctx.state.set("deep", d)
    if o.boundary_fired:
        ctx.emit("boundaries", boundary_event(ctx.session_key, o, ctx.source))
    return o.response()


@verb("consolidate", table="session", writes=True, topic="gradients")
def consolidate(ctx: VerbContext, body: dict) -> dict:
    """{param_id, params, grads} -> {param_id, fisher_len}; hands EWC to a matching instant adapter."""
    param_id = _param_id(body)
    params = read_vector(body, "params")
    grads = read_vector(body, "grads")
    DeepState.check_consolidate(params, grads)
    epoch_ms(body, "now_ms", lo=0)  # not used, but checked as its topic schema says
    d = _deep(ctx, create=True)
    out = d.consolidate(param_id, params, grads)
    ctx.state.set("deep", d)
    hand_ewc(d, ctx.state.get("instant", InstantState), param_id)
    ctx.emit("consolidations", consolidation_event(ctx.session_key, d, param_id, "gradients", ctx.source))
    return out


@verb("ewc_penalty", table="session", writes=False)
def ewc_penalty(ctx: VerbContext, body: dict) -> dict:
    """{param_id, params} -> {param_id, penalty}; 0 for an unknown id."""
    param_id = _param_id(body)
    theta = read_vector(body, "params")
    if not np.isfinite(theta).all():
        raise VerbError("params/grads have non-finite values")
    d = _deep(ctx, create=False)
    return {"param_id": param_id, "penalty": 0.0 if d is None else d.penalty(param_id, theta)}


@health_contributor
def _health(ctx: VerbContext) -> dict:
    d = ctx.state.get("deep", DeepState) if ctx.state is not None else None
    if d is None:
        return {"deep_fisher_keys": 0, "loss_window_size": 0, "boundaries_detected": 0}
    return {"deep_fisher_keys": len(d.fisher), "loss_window_size": len(d.loss_window),
            "boundaries_detected": d.boundaries}
