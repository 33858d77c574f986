"""The learner state format and checkpoints: save -> load gives identical predictions; corruption is refused."""
from __future__ import annotations

import numpy as np
import pytest

from workers.errors import CorruptStateError
from workers.online import CheckpointManager, ContinualLearner, MLP, StateReader, StateWriter
from workers.online import snapshot as state_mod


def _trained(seed: int = 0, n: int = 120, **kw) -> ContinualLearner:
    rng = np.random.default_rng(seed)
    learner = ContinualLearner(n_features=8, n_classes=3, classifier=MLP(hidden=16), batch_size=5, seed=seed, **kw)
    X = rng.random((n, 8), dtype=np.float32)
    y = (X[:, 0] * 3).astype(np.int32).clip(0, 2)
    learner.learn_batch(X[: n // 2], y[: n // 2], task="a")
    learner.learn_batch(X[n // 2:], y[n // 2:], task="b")
    learner.learn_one(X[0], int(y[0]))  # a pending example travels too
    return learner


def _probe() -> np.ndarray:
    return np.random.default_rng(99).random((20, 8), dtype=np.float32)


def test_save_load_gives_identical_predictions_and_learning() -> None:
    a = _trained()
    b = ContinualLearner.from_bytes(a.to_bytes())
    np.testing.assert_array_equal(a.predict(_probe()), b.predict(_probe()))
    assert b.pending == a.pending == 1 and b.task == "b"
    rng = np.random.default_rng(5)
    X, y = rng.random((30, 8), dtype=np.float32), rng.integers(0, 3, 30)
    a.learn_batch(X, y)
    b.learn_batch(X, y)
    np.testing.assert_array_equal(a.predict(_probe()), b.predict(_probe()))
    assert a.to_bytes() == b.to_bytes()


def test_save_state_into_a_writer_and_load_state_from_a_reader() -> None:
    a = _trained()
    w = StateWriter()
    a.save_state(w)
    b = a.clone()
    b.load_state(StateReader.from_bytes(w.to_bytes()))
    np.testing.assert_array_equal(a.predict(_probe()), b.predict(_probe()))


@pytest.mark.parametrize("where", ["header", "middle", "end"])
def test_a_corrupted_state_is_refused_with_a_clear_error(where: str) -> None:
    raw = bytearray(_trained().to_bytes())
    pos = {"header": 12, "middle": len(raw) // 2, "end": len(raw) - 1}[where]
    raw[pos] ^= 0x01
    with pytest.raises(CorruptStateError, match="checksum mismatch.*resume from another checkpoint"):
        ContinualLearner.from_bytes(bytes(raw))


def test_truncated_foreign_and_future_states_are_refused() -> None:
    raw = _trained().to_bytes()
    with pytest.raises(CorruptStateError, match="truncated or extended"):
        ContinualLearner.from_bytes(raw[: len(raw) // 3])
    with pytest.raises(CorruptStateError, match="truncated or extended"):
        ContinualLearner.from_bytes(raw + b"\0")
    with pytest.raises(CorruptStateError, match="too short"):
        ContinualLearner.from_bytes(raw[:8])
    with pytest.raises(CorruptStateError, match="bad magic"):
        ContinualLearner.from_bytes(b"XXXX" + raw[4:])
    future = raw[:4] + (state_mod.STATE_VERSION + 1).to_bytes(2, "little") + raw[6:]
    with pytest.raises(CorruptStateError, match=f"version {state_mod.STATE_VERSION + 1} is unknown"):
        ContinualLearner.from_bytes(future)


def _as_version_1(raw: bytes) -> bytes:
    """The same state framed as version 1 wrote it: no total length in the header, the CRC over the
    whole payload."""
    import struct
    import zlib

    import orjson

    (hlen,) = struct.unpack_from("<I", raw, 10)
    header = orjson.loads(raw[14:14 + hlen])
    del header["n"]
    head = orjson.dumps(header)
    payload = struct.pack("<I", len(head)) + head + raw[14 + hlen:]
    return struct.pack("<4sHI", b"LSOL", 1, zlib.crc32(payload)) + payload


def test_a_version_1_state_still_loads_and_its_corruption_is_still_caught() -> None:
    a = _trained()
    old = _as_version_1(a.to_bytes())
    b = ContinualLearner.from_bytes(old)
    np.testing.assert_array_equal(a.predict(_probe()), b.predict(_probe()))
    assert b.to_bytes() == a.to_bytes()  # saved again as version 2
    torn = bytearray(old)
    torn[len(torn) // 2] ^= 0x01
    with pytest.raises(CorruptStateError, match="checksum mismatch"):
        ContinualLearner.from_bytes(bytes(torn))
    with pytest.raises(CorruptStateError, match="checksum mismatch"):
        ContinualLearner.from_bytes(old + b"\0")  # version 1's CRC covers the end too


def test_a_save_runs_no_crc_over_the_whole_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Version 2's frame CRC covers the header (which holds each chunk's CRC), not the chunk bytes
    again: the bytes a save hashes are the chunks once plus the header."""
    a = _trained()
    raw = a.to_bytes()
    hashed = []
    real = state_mod.zlib.crc32

    def counting(data, value=0):
        hashed.append(len(data))
        return real(data, value)

    monkeypatch.setattr(state_mod.zlib, "crc32", counting)
    assert a.to_bytes() == raw
    assert sum(hashed) == len(raw) - 10, (sum(hashed), len(raw))  # every byte after the frame, once


def test_another_estimators_state_is_refused() -> None:
    from workers.online import ReplayBuffer

    with pytest.raises(CorruptStateError, match="holds a 'ReplayBuffer'"):
        ContinualLearner.from_bytes(ReplayBuffer(capacity=3).to_bytes())


def test_a_delta_holds_only_changed_chunks_and_needs_its_base() -> None:
    w = StateWriter()
    big = np.arange(3 * state_mod.CHUNK_BYTES // 4, dtype=np.float32)  # three chunks
    w.put_array("big", big)
    w.put_json("meta", {"n": 1})
    base = StateReader.from_bytes(w.to_bytes())
    w2 = StateWriter()
    big2 = big.copy()
    big2[-1] = -1.0  # only the last chunk changes
    w2.put_array("big", big2)
    w2.put_json("meta", {"n": 2})
    delta = w2.to_bytes(base=base)
    assert len(delta) < state_mod.CHUNK_BYTES + 1024
    r = StateReader.from_bytes(delta, base=base)
    np.testing.assert_array_equal(r.array("big"), big2)
    assert r.json("meta") == {"n": 2}
    with pytest.raises(CorruptStateError, match="needs its base"):
        StateReader.from_bytes(delta)
    other = StateWriter()
    other.put_array("big", big + 1)
    with pytest.raises(CorruptStateError, match="load it with its own base"):
        StateReader.from_bytes(delta, base=StateReader.from_bytes(other.to_bytes()))


def test_checkpoints_keep_the_last_k_and_resume_from_any(tmp_path) -> None:
    mgr = CheckpointManager(tmp_path, keep=3, full_every=2)
    learner = _trained()
    rng = np.random.default_rng(1)
    saved = {}
    for _ in range(6):
        learner.learn_batch(rng.random((10, 8), dtype=np.float32), rng.integers(0, 3, 10))
        info = mgr.save(learner)
        saved[info.version] = learner.predict(_probe())
    infos = mgr.list()
    kept = [c.version for c in infos]
    assert kept[-3:] == [4, 5, 6]
    assert [c.base for c in infos if c.version in (4, 6)] == [3, 5]  # incremental against the last full
    assert set(kept) <= {3, 4, 5, 6}  # 1 and 2 pruned; 3 kept only as 4's base
    for v in (4, 5, 6):
        np.testing.assert_array_equal(mgr.load(v).predict(_probe()), saved[v])
    np.testing.assert_array_equal(mgr.load().predict(_probe()), saved[6])
    full = next(c for c in infos if c.version == 5)
    delta = next(c for c in infos if c.version == 6)
    assert delta.nbytes < full.nbytes


def test_a_corrupted_checkpoint_file_is_refused(tmp_path) -> None:
    mgr = CheckpointManager(tmp_path)
    info = mgr.save(_trained())
    raw = bytearray(info.path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    info.path.write_bytes(bytes(raw))
    with pytest.raises(CorruptStateError, match="checksum mismatch"):
        mgr.load(info.version)
    with pytest.raises(CorruptStateError, match="not found"):
        mgr.load(99)


def test_consolidation_writes_a_checkpoint_while_learning(tmp_path) -> None:
    learner = _trained(checkpoint_dir=str(tmp_path / "ckpt"), keep_checkpoints=2)
    report = learner.consolidate()
    assert report.checkpoint is not None
    mgr = CheckpointManager(tmp_path / "ckpt")
    assert report.checkpoint in mgr.versions()
    np.testing.assert_array_equal(mgr.load(report.checkpoint).predict(_probe()), learner.predict(_probe()))
    assert len(mgr.list()) <= 3  # 2 kept (+ a base a kept delta needs)


def test_a_state_whose_header_is_not_an_object_is_refused() -> None:
    """Its CRC matches (only a forged state gets here), but a header that is not a JSON object is refused
    as corrupt, not an AttributeError."""
    import struct
    import zlib

    import orjson

    head = orjson.dumps([1, 2])
    ulen = struct.pack("<I", len(head))
    for version, crc in ((2, zlib.crc32(head, zlib.crc32(ulen))), (1, zlib.crc32(ulen + head))):
        raw = struct.pack("<4sHI", b"LSOL", version, crc) + ulen + head
        with pytest.raises(CorruptStateError, match="header unreadable"):
            ContinualLearner.from_bytes(raw)
