"""The five learning cores: instant, deep, temporal, attention, router."""
from __future__ import annotations
