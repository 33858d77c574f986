"""In-memory ModelStore (ordered, so prefix scans behave like RocksDB)."""
from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedDict

from workers.state.base import ModelStore

__all__ = ("MemoryStore",)


class MemoryStore(ModelStore):
    def __init__(self) -> None:
        self._d: SortedDict = SortedDict()

    def get(self, key: bytes) -> bytes | None:
        return self._d.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._d[key] = value

    def delete(self, key: bytes) -> None:
        self._d.pop(key, None)

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for k in self._d.irange(minimum=prefix):
            if not k.startswith(prefix):
                break
            yield k, self._d[k]

    def __len__(self) -> int:
        return len(self._d)
