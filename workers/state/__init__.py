"""Where learned state lives: a small key-value ABC and the state blob format."""
from __future__ import annotations

from workers.state.base import ModelStore
from workers.state.blob import StateBlob, Watermark
from workers.state.memory import MemoryStore
from workers.state.rocksdb import RocksDictStore

__all__ = ("ModelStore", "MemoryStore", "RocksDictStore", "StateBlob", "Watermark")
