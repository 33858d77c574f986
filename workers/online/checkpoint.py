"""Checkpoints of a learner on disk: versioned files, the last K kept, resume from any.

Every checkpoint is one file in the learner state format (:mod:`workers.online.snapshot`):
either *full* or *incremental* (a delta holding only the chunks that changed since
the latest full checkpoint, which it names by CRC). Files are written to a temporary
name, fsynced and renamed, so a crash leaves the previous checkpoints intact. A
delta needs exactly one other file (its base), which pruning keeps as long as a kept
delta refers to it.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from workers.errors import CorruptStateError
from workers.online.base import ESTIMATORS, Stateful
from workers.online.snapshot import StateReader, StateWriter

__all__ = ("CheckpointManager", "CheckpointInfo")

logger = logging.getLogger(__name__)

_DEFAULT_KEEP = 5
# Every 4th checkpoint is full, so a delta never drifts far from its base (deltas
# grow as more chunks change) and pruning can drop old bases.
_DEFAULT_FULL_EVERY = 4
_NAME = re.compile(r"^(\d{8})\.(full|delta-(\d{8}))\.lsol$")


@dataclass(frozen=True)
class CheckpointInfo:
    version: int
    path: Path
    base: int | None  # the full checkpoint a delta was saved against (None: full)
    nbytes: int


class CheckpointManager:
    """Versioned checkpoints of one learner in ``directory``.

    Parameters
    ----------
    directory
        Where the files go (created if missing).
    keep
        Checkpoints kept (older ones are deleted unless a kept delta needs them). Default 5.
    full_every
        Every n-th checkpoint is full, the others incremental. Default 4 (1 = always full).

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from workers.online.replay import ReplayBuffer
    >>> d = tempfile.mkdtemp()
    >>> m = CheckpointManager(d, keep=2)
    >>> buf = ReplayBuffer(capacity=10, seed=0)
    >>> for i in range(3):
    ...     buf.add(np.full(4, i, dtype=np.float32), i)
    ...     _ = m.save(buf)
    >>> [(c.version, c.base) for c in m.list()]      # 2 kept, and the full base they need
    [(1, None), (2, 1), (3, 1)]
    >>> [len(m.load(v)) for v in m.versions()], len(m.load())
    ([1, 2, 3], 3)
    """

    def __init__(self, directory: str | os.PathLike, keep: int | None = None, full_every: int | None = None) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.full_every = full_every
        self._base: tuple[int, StateReader] | None = None  # the latest full checkpoint, decoded

    @property
    def _keep(self) -> int:
        return max(1, _DEFAULT_KEEP if self.keep is None else int(self.keep))

    @property
    def _full_every(self) -> int:
        return max(1, _DEFAULT_FULL_EVERY if self.full_every is None else int(self.full_every))

    def list(self) -> list[CheckpointInfo]:
        """All checkpoints on disk, oldest first."""
        if not self.directory.is_dir():
            return []
        out = []
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m:
                out.append(CheckpointInfo(int(m.group(1)), p, int(m.group(3)) if m.group(3) else None,
                                          p.stat().st_size))
        return sorted(out, key=lambda c: c.version)

    def versions(self) -> list[int]:
        return [c.version for c in self.list()]

    def _latest_full(self, infos: list[CheckpointInfo]) -> tuple[int, StateReader] | None:
        if self._base is not None and any(c.version == self._base[0] for c in infos):
            return self._base
        fulls = [c for c in infos if c.base is None]
        if not fulls:
            return None
        c = fulls[-1]
        self._base = (c.version, StateReader.from_bytes(c.path.read_bytes()))
        return self._base

    def save(self, obj: Stateful, *, incremental: bool | None = None) -> CheckpointInfo:
        """Write a new checkpoint of ``obj``; returns its info. ``incremental=None`` follows ``full_every``."""
        infos = self.list()
        version = (infos[-1].version + 1) if infos else 1
        writer = StateWriter()
        obj.write(writer)
        base = self._latest_full(infos)
        if incremental is None:
            incremental = base is not None and (version - 1) % self._full_every != 0
        if incremental and base is not None:
            data = writer.to_bytes(base=base[1])
            name = f"{version:08d}.delta-{base[0]:08d}.lsol"
        else:
            data = writer.to_bytes()
            name = f"{version:08d}.full.lsol"
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if name.endswith(".full.lsol"):
            self._base = (version, StateReader.from_bytes(data))
        info = CheckpointInfo(version, path, base[0] if incremental and base is not None else None, len(data))
        self._prune()
        logger.debug("checkpoint %s (%d bytes)", path.name, len(data))
        return info

    def _prune(self) -> None:
        infos = self.list()
        kept = infos[-self._keep:]
        need = {c.version for c in kept} | {c.base for c in kept if c.base is not None}
        for c in infos:
            if c.version not in need:
                c.path.unlink(missing_ok=True)

    def reader(self, version: int | None = None) -> StateReader:
        """The verified state of checkpoint ``version`` (default: the latest)."""
        infos = self.list()
        if not infos:
            raise CorruptStateError(f"no checkpoints in {self.directory}")
        by_version = {c.version: c for c in infos}
        c = infos[-1] if version is None else by_version.get(version)
        if c is None:
            raise CorruptStateError(f"checkpoint {version} not found in {self.directory} (have {sorted(by_version)})")
        base = None
        if c.base is not None:
            b = by_version.get(c.base)
            if b is None:
                raise CorruptStateError(f"checkpoint {c.version} needs its base {c.base}, which is missing")
            base = StateReader.from_bytes(b.path.read_bytes())
        return StateReader.from_bytes(c.path.read_bytes(), base=base)

    def load(self, version: int | None = None) -> Stateful:
        """Rebuild the object saved in checkpoint ``version`` (default: the latest)."""
        r = self.reader(version)
        cls = ESTIMATORS.get(r.json("estimator").get("class", ""))
        if cls is None or not issubclass(cls, Stateful):
            raise CorruptStateError("checkpoint holds an unknown estimator class")
        return cls.from_reader(r)  # type: ignore[attr-defined]
