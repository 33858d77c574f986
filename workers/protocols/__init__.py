"""Agent learning protocols: outcomes -> heuristics, anti-patterns, preferences, knowledge (spec/protocols.md)."""
from __future__ import annotations

from workers.protocols.memory import AgentMemory, ProtocolConfig, ProtocolsState
from workers.protocols.entries import AntiPattern, Heuristic, Knowledge, Outcome, Preference, strength
from workers.protocols.retrieval import retrieve
from workers.protocols.similarity import Embedder, EmbeddingMatcher, StrategyMatcher, WordOverlap
from workers.protocols.text import error_signature, infer_task_type, normalize_words

__all__ = ("AgentMemory", "ProtocolConfig", "ProtocolsState", "AntiPattern", "Heuristic", "Knowledge", "Outcome",
           "Preference", "strength", "retrieve", "Embedder", "EmbeddingMatcher", "StrategyMatcher", "WordOverlap",
           "error_signature", "infer_task_type", "normalize_words")
