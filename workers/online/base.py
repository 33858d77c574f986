"""Role ABCs of the online learner (River-like, STYLE.md §1).

- :class:`Estimator`: ``__init__`` only stores hyperparameters, each under its own
  name, so :meth:`Estimator.clone` and :meth:`Estimator._get_params` work
  generically, and the parameters (nested estimators included) serialise to JSON.
- :class:`Stateful`: ``save_state(writer)`` / ``load_state(reader)`` over the
  versioned format of :mod:`workers.online.snapshot`, plus ``to_bytes``/``from_bytes``.
- :class:`Model`: a flat float32 parameter vector and the fused C++ step.
- :class:`Learner`: the ``OnlineLearner`` protocol of spec/online.md as an ABC.
- :class:`DriftDetector`: ``update(...)`` plus a read-only ``drift_detected``.
"""
from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar, TypeVar

import numpy as np

from workers.errors import CorruptStateError
from workers.online.snapshot import StateReader, StateWriter

__all__ = ("Estimator", "Stateful", "Model", "Learner", "DriftDetector", "ESTIMATORS")

E = TypeVar("E", bound="Estimator")

# Every Estimator subclass by name: nested hyperparameters are stored as
# {"__estimator__": name, "params": {...}} and rebuilt only from this registry,
# never by importing a name found in the bytes.
ESTIMATORS: dict[str, type[Estimator]] = {}


@functools.cache
def _param_names(cls: type) -> tuple[str, ...]:
    """``__init__``'s parameter names (cached: the state is written on every event)."""
    return tuple(n for n in inspect.signature(cls.__init__).parameters if n != "self")


class Estimator(ABC):
    """Hyperparameters in ``__init__``, fitted state elsewhere."""

    _unit_test_params: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not inspect.isabstract(cls) and not cls.__name__.startswith("_"):
            ESTIMATORS[cls.__name__] = cls

    def _get_params(self) -> dict[str, Any]:
        """The ``__init__`` arguments, read back from attributes of the same name."""
        return {name: getattr(self, name) for name in _param_names(type(self))}

    def in_force(self) -> dict[str, Any]:
        """The hyperparameters with the value each has in force, where ``_get_params`` keeps ``None`` for
        "the default"; a subclass with defaults overrides it."""
        return self._get_params()

    def clone(self: E, new_params: dict[str, Any] | None = None) -> E:
        """A fresh, unfitted copy with the same hyperparameters (nested estimators cloned too)."""
        params = {k: v.clone() if isinstance(v, Estimator) else v for k, v in self._get_params().items()}
        params.update(new_params or {})
        return type(self)(**params)

    def params_json(self) -> dict[str, Any]:
        """The hyperparameters as JSON-ready data (see :func:`Estimator.from_params_json`)."""
        out: dict[str, Any] = {}
        for k, v in self._get_params().items():
            out[k] = {"__estimator__": type(v).__name__, "params": v.params_json()} if isinstance(v, Estimator) else v
        return out

    @classmethod
    def from_params_json(cls: type[E], params: dict[str, Any]) -> E:
        def build(v: Any) -> Any:
            if isinstance(v, dict) and "__estimator__" in v:
                sub = ESTIMATORS.get(v["__estimator__"])
                if sub is None:
                    raise CorruptStateError(f"unknown estimator {v['__estimator__']!r} in learner state")
                return sub.from_params_json(v["params"])
            return v

        return cls(**{k: build(v) for k, v in params.items()})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({args})"


class Stateful(Estimator):
    """An estimator whose fitted state round-trips through the learner state format."""

    @abstractmethod
    def save_state(self, writer: Any) -> None:
        """Write the fitted state as sections of ``writer`` (a StateWriter or a scope of one)."""

    @abstractmethod
    def load_state(self, reader: Any) -> None:
        """Replace the fitted state by the one in ``reader``."""

    def to_bytes(self) -> bytes:
        """Hyperparameters and fitted state in the versioned, checksummed format."""
        w = StateWriter()
        self.write(w)
        data = w.to_bytes()
        self._piece_cuts = w.cuts
        return data

    def piece_cuts(self) -> list[int]:
        """Where the bytes of the last :meth:`to_bytes` are cut into stored pieces (workers.state.layout):
        after the header and at each section, so a save rewrites the sections that changed."""
        return getattr(self, "_piece_cuts", [])

    def write(self, writer: StateWriter) -> None:
        writer.put_json("estimator", {"class": type(self).__name__, "params": self.params_json()})
        self.save_state(writer.scope("state"))

    @classmethod
    def from_reader(cls: type[E], reader: StateReader) -> E:
        meta = reader.json("estimator")
        if meta.get("class") != cls.__name__:
            raise CorruptStateError(f"learner state holds a {meta.get('class')!r}, not a {cls.__name__!r}")
        obj = cls.from_params_json(meta["params"])
        obj.load_state(reader.scope("state"))  # type: ignore[attr-defined]
        return obj

    @classmethod
    def from_bytes(cls: type[E], data: bytes) -> E:
        return cls.from_reader(StateReader.from_bytes(data))  # type: ignore[attr-defined]


class Model(Stateful):
    """A classifier over a flat float32 parameter vector ``theta``.

    Subclasses fix the layout; the arithmetic is the fused kernel of ``cpp/online.h``.
    """

    @property
    @abstractmethod
    def theta(self) -> np.ndarray:
        """The parameters (float32, 1-d, updated in place by :meth:`step`)."""

    @abstractmethod
    def logits(self, X: np.ndarray, theta: np.ndarray | None = None) -> np.ndarray:
        """Class scores (B x n_classes) of ``X``; ``theta`` overrides the parameters (a teacher)."""

    @abstractmethod
    def step(self, X: np.ndarray, y: np.ndarray, **terms: Any) -> tuple[float, np.ndarray, np.ndarray]:
        """One fused forward/backward/update; returns (objective, logits, per-example loss) before it."""

    @abstractmethod
    def fisher(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Mean squared per-example gradient of log p(y|x) (the empirical Fisher diagonal)."""


class Learner(Stateful):
    """Base of online learners: ``learn_one`` updates in place and returns ``None``."""

    @abstractmethod
    def learn_one(self, x: Any, y: int, task: Any = None) -> None:
        """Learn from one example (may buffer it until a batch is full)."""

    def learn_batch(self, xs: Any, ys: Any, task: Any = None) -> None:
        """Learn from examples in order; the default is ``learn_one`` on each."""
        for x, y in zip(xs, ys):
            self.learn_one(x, y, task)

    @abstractmethod
    def consolidate(self) -> Any:
        """Consolidate what was learned ("sleep"); returns a report."""

    @abstractmethod
    def model(self) -> Model:
        """The current model."""

    def predict_proba(self, xs: Any) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not give probabilities")

    @abstractmethod
    def predict(self, xs: Any) -> np.ndarray:
        """Class scores (B x n_classes)."""

    def predict_one(self, x: Any) -> int:
        return int(np.argmax(self.predict(np.asarray(x)[None, :])[0]))

    def evaluate(self, xs: Any, ys: Any) -> dict[str, float]:
        """Accuracy and mean cross-entropy of the current model on labelled examples."""
        raise NotImplementedError


class DriftDetector(Stateful):
    """``update`` with new observations; ``drift_detected`` is True right after an update that found drift."""

    @abstractmethod
    def update(self, *args: Any) -> None:
        """Observe one value (or one example's signals)."""

    @property
    @abstractmethod
    def drift_detected(self) -> bool:
        """Whether the last update detected a drift."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything observed."""
