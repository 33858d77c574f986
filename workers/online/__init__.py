"""The online continual learner (spec: online.md) and its parts, each usable on its own."""
from __future__ import annotations

from workers.online.base import DriftDetector, Estimator, Learner, Model, Stateful
from workers.online.checkpoint import CheckpointInfo, CheckpointManager
from workers.online.curriculum import Curriculum
from workers.online.distill import Distillation
from workers.online.drift import DriftReport, KLDriftDetector, MeanShift, PageHinkley
from workers.online.ewc import EWC
from workers.online.learner import ContinualLearner
from workers.online.models import MLP, SoftmaxRegression
from workers.online.replay import ReplayBuffer, SumTree
from workers.online.scheduler import ConsolidationReport, ConsolidationScheduler
from workers.online.snapshot import StateReader, StateWriter

__all__ = (
    "Learner", "Estimator", "Stateful", "Model", "DriftDetector",
    "ContinualLearner", "MLP", "SoftmaxRegression", "ReplayBuffer", "SumTree", "EWC", "Distillation",
    "Curriculum", "ConsolidationScheduler", "ConsolidationReport", "KLDriftDetector", "MeanShift", "PageHinkley",
    "DriftReport", "CheckpointManager", "CheckpointInfo", "StateWriter", "StateReader",
)
