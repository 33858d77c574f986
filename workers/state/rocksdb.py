"""ModelStore on a local RocksDB database through rocksdict."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rocksdict import Cache, Options, Rdict, WriteBatch

from workers.errors import StateError
from workers.state.base import ModelStore

__all__ = ("RocksDictStore", "rocksdb_options", "open_database", "iter_prefix", "BLOCK_BYTES")

# One database holds every session of an in-process LearnSession(path=...) (the worker's tables use
# Settings.block_cache_bytes, 16 MiB per table partition, through faust): 64 MiB covers the hot
# working set of one process; faust's default is 2 GiB *per partition database*.
_BLOCK_CACHE_BYTES = 64 * 1024 * 1024
# A session's keys lie together (one head, ~66 pieces of ~1.6 kB at 384-d with a full replay buffer).
# A part read whole (a learner, ~100 pieces and more) is one prefix scan, which blocks of 16 kB instead
# of RocksDB's 4 kB serve with a quarter as many block reads: a head get and scan of a random one of
# 10,000 such sessions took 95-108 instead of 145-149 us of CPU, a head get alone 7.9 instead of 8.3
# (bench/README.md "state", twenty-third session); 64 kB blocks made a head get 20 us. A replay row is
# a point get (12.1 us of CPU at 16 kB, 7.2 at 4 kB: twenty-fourth session).
BLOCK_BYTES = 16 * 1024
# Bits per key of each table file's (whole-file) bloom filter: ~1% false positives, so a point get
# reads the data block of the one sorted run that holds its key. ~1.2 MiB per million keys (a
# 10,000-session worker holds ~1 M). faust's default, 3 bits in per-block filters, was ~20%.
BLOOM_BITS = 10


def rocksdb_options(cache: Cache | None = None, *, block_cache_bytes: int = _BLOCK_CACHE_BYTES) -> Options:
    """The options of every learnstream database: the worker's table partitions
    (``workers.stream.faust_internals.WalStore`` adds its memory budget) and an in-process store.

    Session state is read by point gets (a head, the pieces before the replay rows, a row when a
    kernel replays it) and written as overwrites of a few keys spread over every session: universal
    compaction rewrites such data far less than leveled compaction (at 10,000 sessions leveled
    compaction's threads cost as much as the rest of the worker, bench/README.md "state"), and the
    bloom filters answer a get in any number of sorted runs. ``cache``: a block cache shared with
    other databases (else one of ``block_cache_bytes``); index and filter blocks count against it.
    A database written with other options opens with these (leveled files are sorted runs too)."""
    from rocksdict import BlockBasedIndexType, BlockBasedOptions, DBCompactionStyle

    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_compaction_style(DBCompactionStyle.universal())
    table = BlockBasedOptions()
    table.set_bloom_filter(BLOOM_BITS, False)
    table.set_block_cache(cache if cache is not None else Cache(block_cache_bytes))
    table.set_cache_index_and_filter_blocks(True)
    table.set_block_size(BLOCK_BYTES)
    table.set_index_type(BlockBasedIndexType.binary_search())
    opts.set_block_based_table_factory(table)
    return opts


def open_database(path: str | Path, options: Options, **kwargs: Any) -> Rdict:
    """Open (or create) the database at ``path`` with ``options``, for its data too.

    rocksdict (0.3.29, ``Rdict.__new__``) given ``options`` alone opens an *existing* database's
    column families, the default one included, with the options its OPTIONS file recorded, and a
    new 8 MiB block cache: a reopened database lost the worker's shared cache and memtable sizes,
    and every option changed since it was created; the files it compacted then had no working bloom
    filter, so a point get read a block of each of 3-4 sorted runs. A replay row of a reopened
    10,000-session store took 24-30 us a get, 8-9 with this (bench/README.md "state", thirty-second
    session). So the default column family is named with ``options`` too."""
    return Rdict(str(path), options=options, column_families={"default": options}, **kwargs)


def iter_prefix(db: Rdict, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Items of a raw-mode Rdict whose key starts with ``prefix``, in key order (seek, then stop)."""
    it = db.iter()
    it.seek(prefix)
    while it.valid():
        k = it.key()
        if not k.startswith(prefix):
            break
        yield k, it.value()
        it.next()


class RocksDictStore(ModelStore):
    def __init__(self, path: str | Path, *, block_cache_bytes: int = _BLOCK_CACHE_BYTES) -> None:
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, a read-only or missing parent
            raise StateError(f"{path}: cannot hold the state store ({exc.strerror or exc})") from None
        try:
            self._db = open_database(path, rocksdb_options(block_cache_bytes=block_cache_bytes))
        except Exception as exc:  # rocksdict raises a bare Exception carrying RocksDB's status
            if "lock" in str(exc).lower():  # RocksDB's LOCK file: one opener at a time
                raise StateError(f"{path}: the state store is open in another process (or another "
                                 f"LearnSession of this one); one at a time ({exc})") from None
            raise StateError(f"{path}: cannot open the state store ({exc})") from None

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._db[key] = value

    def delete(self, key: bytes) -> None:
        del self._db[key]

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter_prefix(self._db, prefix)

    def write_batch(self, ops: Mapping[bytes, bytes | None]) -> None:
        wb = WriteBatch(raw_mode=True)
        for k, v in ops.items():
            if v is None:
                wb.delete(k)
            else:
                wb.put(k, v)
        self._db.write(wb)

    def close(self) -> None:
        self._db.close()
