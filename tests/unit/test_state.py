"""The state value format and the stores behind it."""
from __future__ import annotations

import struct
import zlib

import pytest

from workers.errors import CorruptStateError
from workers.state import MemoryStore, RocksDictStore, StateBlob, Watermark


class Bytes:
    def __init__(self, b: bytes) -> None:
        self.b = b

    def to_bytes(self) -> bytes:
        return self.b

    @classmethod
    def from_bytes(cls, b: bytes) -> Bytes:
        return cls(b)


def test_blob_round_trip_keeps_parts_and_watermark() -> None:
    b = StateBlob()
    b.set("a", Bytes(b"\x00\x01binary\xff"))
    b.set("b", Bytes(b""))
    b.watermark.advance("t", 0, 41)
    r = StateBlob.from_bytes(b.to_bytes())
    assert r.get("a", Bytes).b == b"\x00\x01binary\xff" and r.get("b", Bytes).b == b""
    assert r.watermark == b.watermark
    assert StateBlob.from_bytes(r.to_bytes()).to_bytes() == b.to_bytes()  # undecoded parts survive as-is


def test_watermark_skips_at_or_below_and_only_advances() -> None:
    w = Watermark()
    assert not w.seen("t", 0, 0)
    w.advance("t", 0, 5)
    assert w.seen("t", 0, 5) and w.seen("t", 0, 0) and not w.seen("t", 0, 6) and not w.seen("t", 1, 0)
    w.advance("t", 0, 3)
    assert w.seen("t", 0, 5) and not w.seen("t", 0, 6)  # 3 did not move it back


def test_flipped_bit_is_refused() -> None:
    raw = bytearray(StateBlob().to_bytes())
    raw[-1] ^= 1
    with pytest.raises(CorruptStateError, match="checksum"):
        StateBlob.from_bytes(bytes(raw))


def test_unknown_version_and_foreign_bytes_are_refused() -> None:
    raw = StateBlob().to_bytes()
    payload = raw[8:]
    with pytest.raises(CorruptStateError, match="version 9"):
        StateBlob.from_bytes(struct.pack("<3sBI", b"LSB", 9, zlib.crc32(payload)) + payload)
    with pytest.raises(CorruptStateError, match="magic"):
        StateBlob.from_bytes(b"XYZ" + raw[3:])
    with pytest.raises(CorruptStateError, match="too short"):
        StateBlob.from_bytes(b"LSB")


@pytest.fixture(params=["memory", "rocksdb"])
def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else RocksDictStore(tmp_path / "db")
    yield s
    s.close()


def test_stores_agree_on_prefix_order_and_batches(store) -> None:
    for k in (b"b/2", b"a/1", b"b/1", b"b", b"c/1", b"b/10"):
        store.put(k, k)
    assert [k for k, _ in store.iter_prefix(b"b/")] == [b"b/1", b"b/10", b"b/2"]
    store.write_batch({b"b/1": None, b"b/3": b"x"})
    assert store.get(b"b/1") is None and store.get(b"b/3") == b"x"
    store.delete(b"nope")  # deleting a missing key is fine
    assert list(store.iter_prefix(b"zzz")) == []


def test_an_in_process_store_has_the_databases_options(tmp_path) -> None:
    """``rocksdb_options`` is every learnstream database's: universal compaction, whole-file bloom
    filters, 16 kB blocks (the worker's tables are checked in test_state_scale.py)."""
    from tests.helpers import database_options
    from workers.state.rocksdb import BLOCK_BYTES

    s = RocksDictStore(tmp_path / "db")
    s.put(b"k", b"v")
    s.close()
    opts = database_options(tmp_path / "db")
    assert opts["compaction_style"] == "kCompactionStyleUniversal"
    assert opts["filter_policy"] == "bloomfilter"
    assert opts["block_size"] == str(BLOCK_BYTES)
    assert opts["cache_index_and_filter_blocks"] == "true"


def test_a_reopened_store_keeps_the_databases_options_not_those_it_was_created_with(tmp_path) -> None:
    """rocksdict given options alone opens an existing database's data with the options of its OPTIONS
    file and a new 8 MiB block cache: a reopened store lost its cache, and the SST files compacted after
    that had no working bloom filter (a row get read a block of every sorted run). ``open_database``
    names the default column family with our options too."""
    import rocksdict

    from tests.helpers import database_options
    from workers.state.rocksdb import RocksDictStore

    # created with RocksDB's defaults (leveled compaction, 4 kB blocks), as another tool would
    db = rocksdict.Rdict(str(tmp_path / "db"), rocksdict.Options(raw_mode=True))
    db[b"k"] = b"v"
    db.close()
    s = RocksDictStore(tmp_path / "db", block_cache_bytes=48 << 20)
    try:
        assert s.get(b"k") == b"v"
        assert s._db.property_int_value("rocksdb.block-cache-capacity") == 48 << 20
    finally:
        s.close()
    opts = database_options(tmp_path / "db")
    assert opts["compaction_style"] == "kCompactionStyleUniversal"
    assert opts["block_size"] == "16384"


def test_rocksdb_store_survives_reopen(tmp_path) -> None:
    s = RocksDictStore(tmp_path / "db")
    s.put(b"k", b"v")
    s.close()
    s2 = RocksDictStore(tmp_path / "db")
    assert s2.get(b"k") == b"v"
    s2.close()


def test_a_store_already_open_is_refused_with_a_clear_error(tmp_path) -> None:
    """RocksDB lets one opener hold a database (its LOCK file): the second gets a StateError naming the
    path (``learnstream dispatch --path`` prints it and exits 2), not rocksdict's bare Exception."""
    from workers.errors import StateError

    s = RocksDictStore(tmp_path / "db")
    try:
        with pytest.raises(StateError, match="open in another process"):
            RocksDictStore(tmp_path / "db")
    finally:
        s.close()
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(StateError, match="cannot hold the state store"):
        RocksDictStore(tmp_path / "file")
    (tmp_path / "db" / "CURRENT").write_text("MANIFEST-999999\n")  # names a manifest that is not there
    with pytest.raises(StateError, match="cannot open the state store"):
        RocksDictStore(tmp_path / "db")


def test_a_learn_session_on_disk_is_a_context_manager_that_releases_its_store(tmp_path) -> None:
    from workers.verbs.session import LearnSession

    with LearnSession(tmp_path / "db") as s:
        assert s.dispatch({"verb": "init_instant", "body": {"targets": ["a", "b"], "dim": 4}})["ok"]
    with LearnSession(tmp_path / "db") as again:  # the first released the LOCK; the state is there
        assert again.dispatch({"verb": "health"})["data"]["instant_ready"] is True
