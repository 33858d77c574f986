"""Backend-neutral key-value store every piece of learned state goes through."""
from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping

__all__ = ("ModelStore",)


class ModelStore(abc.ABC):
    """Bytes to bytes, with ordered prefix iteration and atomic batches.

    Implementations: :class:`MemoryStore` (tests, in-process sessions),
    :class:`RocksDictStore` (``LearnSession(path=...)``) and the worker's
    faust-table adapter (``workers.stream.tables``).
    """

    @abc.abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def put(self, key: bytes, value: bytes) -> None: ...

    @abc.abstractmethod
    def delete(self, key: bytes) -> None: ...

    @abc.abstractmethod
    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Items whose key starts with ``prefix``, in key order."""

    def write_batch(self, ops: Mapping[bytes, bytes | None]) -> None:
        """Apply puts (value) and deletes (None). Backends that can, make it atomic."""
        for k, v in ops.items():
            if v is None:
                self.delete(k)
            else:
                self.put(k, v)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; the default has none."""
