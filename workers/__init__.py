"""learnstream: continual learning for LLM agents, run as Kafka stream workers."""
from __future__ import annotations

__all__ = ("__version__",)
__version__ = "0.1.0"
