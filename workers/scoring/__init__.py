"""Memory importance scoring (spec/scoring.md): how much an assistant's responses depend on a
memory, measured as the drop in their log-probability when the memory is left out of the context.

Backends score token ranges (:class:`ScoreBackend`: the built-in n-gram model, the ``/v1/score``
contract, an OpenAI-compatible completions server); the modes (:mod:`workers.scoring.modes`)
build the full matrix, single-memory scores, incremental re-scoring and fine-tune candidates
on top; :mod:`workers.scoring.verbs` puts them on the verb surface (table ``"memory"``).
"""
from __future__ import annotations

from workers.scoring.backends import (
    BuiltinBackend,
    OpenAICompletionsBackend,
    ScoreAPIBackend,
    ScoreBackend,
    build_backend,
)
from workers.scoring.config import ScoringConfig
from workers.scoring.conversation import EncodedConversation, Message
from workers.scoring.modes import (
    Candidate,
    IncrementalReport,
    ScoreMatrix,
    divergence,
    finetune_candidates,
    full_matrix,
    incremental,
    single_memory,
)
from workers.scoring.ngram import CacheLM, KneserNeyLM, builtin_model
from workers.scoring.part import ScoringState
from workers.scoring.tokenizer import CharTokenizer, RemoteTokenizer, Tokenizer, WordTokenizer
from workers.scoring.transport import ScoringError

__all__ = (
    "ScoreBackend", "BuiltinBackend", "ScoreAPIBackend", "OpenAICompletionsBackend", "build_backend",
    "ScoringConfig", "ScoringError", "ScoringState",
    "Message", "EncodedConversation",
    "ScoreMatrix", "Candidate", "IncrementalReport",
    "divergence", "full_matrix", "single_memory", "incremental", "finetune_candidates",
    "KneserNeyLM", "CacheLM", "builtin_model",
    "Tokenizer", "WordTokenizer", "CharTokenizer", "RemoteTokenizer",
)
