"""Agent learning protocols: outcomes -> heuristics, anti-patterns, preferences, knowledge (spec/protocols.md)."""
from __future__ import annotations
