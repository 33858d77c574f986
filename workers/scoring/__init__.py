"""Memory importance scoring (spec/scoring.md)."""
from __future__ import annotations
