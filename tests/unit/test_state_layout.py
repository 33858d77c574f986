"""A session as many small keys (workers/state/layout.py): round trips, writes that cost what
changed, every value small, and no crash point between two keys that could ever be observed."""
from __future__ import annotations

import bisect
import random
import struct
from collections.abc import Callable, Mapping

import numpy as np
import pytest

from workers.cores.instant import InstantState
from workers.errors import CorruptStateError
from workers.state import MemoryStore
from workers.state.access import StoreStateAccess, state_key
from workers.state.blob import StateBlob
from workers.state.layout import _object_bytes, INLINE_BYTES, PIECE_BYTES, SEP, SessionState, StateTooLarge, digest, piece_bounds
from workers.state.limits import Limits
from workers.state.sessions import Sessions

BASE = state_key("session", "s1")


class Bytes:
    """A part that is just its bytes (changed in place by the tests)."""

    def __init__(self, b: bytes) -> None:
        self.b = bytearray(b)

    def to_bytes(self) -> bytes:
        return bytes(self.b)

    @classmethod
    def from_bytes(cls, b: bytes) -> Bytes:
        return cls(b)


def load(store: MemoryStore, base: bytes = BASE) -> SessionState:
    n = len(base) + 1
    return SessionState.decode(store.get(base), ((k[n:], v) for k, v in store.iter_prefix(base + SEP)))


def save(s: SessionState, store: MemoryStore) -> dict[bytes, bytes | None]:
    ops, after = s.changes(BASE)
    store.write_batch(ops)
    s.written(after)
    return ops


def snapshot(s: SessionState) -> tuple:
    return digest(s.blob), dict(s.blob.watermark.offsets)


def test_piece_bounds_cut_at_every_cut_and_every_piece_size() -> None:
    assert piece_bounds(0) == [0]
    assert piece_bounds(10) == [0, 10]
    assert piece_bounds(2 * PIECE_BYTES + 1) == [0, PIECE_BYTES, 2 * PIECE_BYTES, 2 * PIECE_BYTES + 1]
    P = PIECE_BYTES
    assert piece_bounds(3 * P, [100, 100, 2 * P, 0, 4 * P]) == [0, 100, 100 + P, 2 * P, 3 * P]
    assert piece_bounds(3 * P, (100, 2 * P)) == [0, 100, 100 + P, 2 * P, 3 * P]  # cached: any iterable


def test_round_trip_keeps_parts_watermark_and_meta_and_every_value_is_small() -> None:
    store = MemoryStore()
    s = SessionState()
    s.blob.set("big", Bytes(bytes(range(256)) * (PIECE_BYTES * 5 // 256 - 1)))  # five pieces, the last short
    s.blob.set("empty", Bytes(b""))
    s.blob.watermark.advance("t", 3, 17)
    ops = save(s, store)
    assert all(len(v) <= PIECE_BYTES for k, v in ops.items() if k != BASE and v is not None)
    r = load(store)
    assert r.blob.get("big", Bytes).b == s.blob.get("big", Bytes).b and r.blob.get("empty", Bytes).b == b""
    assert snapshot(r) == snapshot(s)
    assert digest(r.blob)[1] == 5  # five keys of "big", none for the empty part


def test_a_save_writes_only_the_changed_pieces_then_the_head() -> None:
    store = MemoryStore()
    s = SessionState()
    s.blob.set("p", Bytes(b"\0" * 10 * PIECE_BYTES))
    save(s, store)
    s.blob.get("p", Bytes).b[3 * PIECE_BYTES + 5] = 1
    s.blob.watermark.advance("t", 0, 1)
    ops = save(s, store)
    assert list(ops) == [BASE + b"\x1fp\x1f000003\x1f1", BASE]  # the changed piece, in the other slot; the head
    s.blob.get("p", Bytes).b[3 * PIECE_BYTES + 6] = 1
    assert list(save(s, store)) == [BASE + b"\x1fp\x1f000003\x1f0", BASE]  # and back


class Hot(Bytes):
    """A part that keeps its first piece in the head (as the instant core does)."""

    HEAD_PIECE = True


class Ranged(Bytes):
    """A part that tells the layout what changed since its last save, built (``changed_since``: the
    pieces its changes touch, each a region), as the instant core does."""

    def __init__(self, b: bytes) -> None:
        super().__init__(b)
        self.token: object = None  # what the store holds of it (``saved``), when known
        self.dirty: list[tuple[int, int]] = []

    @classmethod
    def from_bytes(cls, b: bytes) -> Ranged:
        obj = cls(b)
        obj.token = b  # decoded from what the store holds
        return obj

    def set_byte(self, i: int, v: int) -> None:
        self.b[i] = v
        self.dirty.append((i, i + 1))

    def extend(self, more: bytes) -> None:
        self.dirty.append((len(self.b), len(self.b) + len(more)))
        self.b += more

    def truncate(self, n: int) -> None:
        del self.b[n:]
        self.token = None  # unknown from here: the layout builds and compares it all

    def changed_since(self, token: object) -> tuple[int, tuple[int, ...], list[tuple[int, bytes]]] | None:
        if self.token is None or token is not self.token:
            return None
        bounds = piece_bounds(len(self.b))
        touched = sorted({i for a, b in self.dirty if a < b
                          for i in range(bisect.bisect_right(bounds, a) - 1, bisect.bisect_left(bounds, b))})
        return len(self.b), (), [(bounds[i], bytes(self.b[bounds[i]:bounds[i + 1]])) for i in touched]

    def saved(self, token: object) -> None:
        self.token, self.dirty = token, []


class HotRanged(Ranged):
    HEAD_PIECE = True


def _set_byte(part: Bytes, i: int, v: int) -> None:
    if isinstance(part, Ranged):
        part.set_byte(i, v)
    else:
        part.b[i] = v


class Cut(Bytes):
    """A part cut where it says (a header that grows, then fixed-size records)."""

    def __init__(self, b: bytes, cuts: list[int] | None = None) -> None:
        super().__init__(b)
        self.cuts = cuts or []

    def piece_cuts(self) -> list[int]:
        return self.cuts


def test_a_piece_that_grows_rewrites_itself_not_the_pieces_after_it() -> None:
    store = MemoryStore()
    s = SessionState()
    s.blob.set("p", Cut(b"h" * 10 + b"r" * 400, [10, 110, 210, 310]))  # header, four records (over INLINE_BYTES)
    save(s, store)
    p = s.blob.get("p", Cut)
    p.b, p.cuts = bytearray(b"h" * 12 + b"r" * 400), [12, 112, 212, 312]  # the header grew by 2 bytes
    assert list(save(s, store)) == [BASE + b"\x1fp\x1f000000\x1f1", BASE]
    p.b[12 + 150] = ord("x")  # one record changed
    assert list(save(s, store)) == [BASE + b"\x1fp\x1f000002\x1f1", BASE]
    assert load(store).blob.get("p", Bytes).b == p.b


def test_one_feedback_event_writes_one_replay_slot_and_the_head_with_the_adapter_and_counters() -> None:
    rng = np.random.default_rng(0)
    inst = InstantState(["a", "b", "c"], 384)
    for _ in range(100):
        inst.feedback(rng.standard_normal(384).astype(np.float32), "a", 0.9)
    store = MemoryStore()
    s = SessionState()
    s.blob.set("instant", inst)
    full = sum(len(v) for v in save(s, store).values())
    inst.feedback(rng.standard_normal(384).astype(np.float32), "b", 0.9)
    ops = save(s, store)
    written = sum(len(k) + len(v) for k, v in ops.items())
    slots = [k for k in ops if k != BASE and len(ops[k]) == 4 * 384]  # a slot: its row (target and scale in the head)
    assert len(slots) == 1  # exactly one replay slot, as its own key
    assert len(ops) == 2  # that slot, and the head holding the hot piece (counters, adapter, scalars)
    head = ops[BASE]
    assert 3_000 < len(head) < 4_200 and inst.to_bytes()[:3_000] in head
    assert full > 100_000 and written < 5_500  # ~5.2 kB


class _CountingStore(MemoryStore):
    """A MemoryStore that keeps the keys of each write batch."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[bytes]] = []

    def write_batch(self, ops: Mapping[bytes, bytes | None]) -> None:
        self.batches.append(list(ops))
        super().write_batch(ops)


@pytest.mark.parametrize(("dim", "keys"), [(384, 2), (1536, 6)])
def test_one_learn_feedback_event_writes_two_keys_with_the_loops_small_parts_in_the_head(
        dim: int, keys: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The learning loop's one-event save (instant core, loop counters, deep core, boundary detector) at 384-d
    is the head and the pushed replay slot: the small parts that change with every event ride in the head.
    (At 1536-d the adapter's other pieces and a row's two pieces make 6.) With the head limit at 256 bytes
    the detector's state (324 bytes) took a key of its own: one more key (changelog record) per event."""
    import workers.state.layout as layout
    from workers.verbs.codec import encode_embedding_b64
    from workers.verbs.session import LearnSession

    def keys_per_event() -> list[int]:
        store = _CountingStore()
        s = LearnSession(store=store)
        assert s.dispatch({"verb": "init_instant", "body": {"targets": ["a", "b"], "dim": dim}})["ok"]
        rng = np.random.default_rng(1)
        for i in range(80):  # past a full replay buffer (64 rows)
            store.batches.clear()
            out = s.dispatch({"verb": "learn_feedback", "body": {
                "embedding_b64": encode_embedding_b64(rng.standard_normal(dim).astype(np.float32)),
                "model": "ab"[i % 2], "payload": {"quality": float(rng.random())}, "now_ms": i}})
            assert out["ok"], out
        return [len(b) for b in store.batches]

    assert keys_per_event() == [keys]
    monkeypatch.setattr(layout, "INLINE_BYTES", 256)
    assert keys_per_event() == [keys + 1]


def test_a_learner_batch_rewrites_what_learning_changed_not_the_whole_learner() -> None:
    import orjson

    from workers.stream.processor import Processor
    from workers.stream.records import Record

    d, rng = 256, np.random.default_rng(0)
    proc = Processor(StoreStateAccess(MemoryStore()))

    def send(offset: int, topic: str, body: dict) -> int:
        res = proc.process([Record(topic, 0, offset, b"L", orjson.dumps(body))])
        assert res.applied == 1, res.replies
        return res.state_bytes

    send(0, "learn.commands", {"verb": "init_learner", "body": {"session_key": "L", "n_features": d, "n_classes": 4}})
    written = []
    for i in range(1, 40):
        X = rng.standard_normal((20, d)).astype(np.float32)
        written.append(send(i, "learn.examples", {"session_key": "L", "examples": [
            {"features": x.tolist(), "label": int(rng.integers(4))} for x in X]}))
    learner = proc.sessions.state("learner", "L", 0)
    stored = sum(len(p.data) for p in learner.stored.values())
    model = learner.blob._live["learner"]._model
    weights = model.theta.nbytes * (2 if getattr(model, "_velocity", None) is not None else 1)
    # the weights (all of them move with a dense step), 20 replay and 20 recent rows, headers
    assert max(written[-10:]) < weights + 2 * 20 * 4 * d + 20 * PIECE_BYTES
    assert max(written[-10:]) < 0.75 * stored  # not the EWC arrays, not the rest of the replay
    r = SessionState.decode(*_stored(proc, "learner", "L"))
    assert digest(r.blob) == digest(learner.blob)


def _stored(proc, table: str, sk: str) -> tuple:
    access = proc.sessions.access
    base = access.base_key(table, sk)
    n = len(base) + 1
    return access.get(table, 0, base), [(k[n:], v) for k, v in access.scan(table, 0, base + SEP)]


def test_shrinking_and_dropping_parts_delete_their_keys_after_the_head() -> None:
    store = MemoryStore()
    s = SessionState()
    s.blob.set("a", Bytes(b"x" * 3 * PIECE_BYTES))
    s.blob.set("b", Bytes(b"y" * 500))  # over INLINE_BYTES: in keys
    save(s, store)
    s.blob.get("a", Bytes).b = bytearray(b"x" * 500)
    s.blob.drop("b")
    ops = list(save(s, store))
    head = ops.index(BASE)
    assert all(ops[i] != BASE and store.get(ops[i]) is None for i in range(head + 1, len(ops)))
    assert len(ops) - head - 1 == 2 * 2 + 2  # pieces 1 and 2 of "a" (both slots), piece 0 of "b" (both)
    # what stays: piece 0 of "a" in both slots (the stale one is overwritten by its next change)
    assert [k for k, _ in store.iter_prefix(BASE + SEP)] == [BASE + b"\x1fa\x1f000000\x1f0",
                                                             BASE + b"\x1fa\x1f000000\x1f1"]
    r = load(store)
    assert r.blob.names() == ["a"] and r.blob.get("a", Bytes).b == b"x" * 500


def test_small_parts_live_in_the_head_and_move_out_and_back_with_their_size() -> None:
    store = MemoryStore()
    s = SessionState()
    s.blob.set("big", Bytes(b"b" * 3000))
    s.blob.set("small", Bytes(b"s" * INLINE_BYTES))
    s.blob.watermark.advance("t", 0, 1)
    ops = save(s, store)
    assert not any(b"\x1fsmall\x1f" in k for k in ops)  # in the head: no key of its own
    s.blob.get("small", Bytes).b[0] = ord("x")
    assert list(save(s, store)) == [BASE]  # a change of a small part writes the head alone
    r = load(store)
    assert r.blob.get("small", Bytes).b == s.blob.get("small", Bytes).b and snapshot(r) == snapshot(s)
    s.blob.get("small", Bytes).b += b"+"  # over INLINE_BYTES: out of the head, into a key
    ops = save(s, store)
    assert [k for k in ops if b"\x1fsmall\x1f" in k] == [BASE + b"\x1fsmall\x1f000000\x1f0"]
    assert snapshot(load(store)) == snapshot(s)
    del s.blob.get("small", Bytes).b[-1]  # back into the head: its keys go after the head
    ops = list(save(s, store))
    assert ops.index(BASE) < ops.index(BASE + b"\x1fsmall\x1f000000\x1f0")
    assert store.get(BASE + b"\x1fsmall\x1f000000\x1f0") is None
    r = load(store)
    assert r.blob.get("small", Bytes).b == s.blob.get("small", Bytes).b and snapshot(r) == snapshot(s)


def test_a_head_of_the_first_keys_format_is_still_read() -> None:
    import orjson

    from workers.state.framing import pack_checked

    store = MemoryStore()
    store.put(BASE + b"\x1fp\x1f000000\x1f1", b"abc")
    store.put(BASE, pack_checked(b"LSH", 1, orjson.dumps({"wm": {"t:0": 4}, "parts": {"p": {"n": 3, "p": [[3, 1]], "s": "80"}}})))
    r = load(store)
    assert r.blob.get("p", Bytes).b == b"abc" and r.blob.watermark.offsets == {"t:0": 4}
    assert list(save(r, store)) == [BASE]  # rewritten in the current format, its piece kept where it is
    assert load(store).blob.get("p", Bytes).b == b"abc"


def test_a_first_piece_moves_into_the_head_and_out_of_it_with_its_keys_after_the_head() -> None:
    store = MemoryStore()
    s = SessionState()
    s.blob.set("h", Bytes(b"h" * (PIECE_BYTES + 500)))  # two pieces, both keys (as a version 2 head had them)
    save(s, store)
    first = [k for k, _ in store.iter_prefix(BASE + b"\x1fh\x1f000000")]
    assert len(first) == 1
    s.blob.set("h", Hot(b"h" * (PIECE_BYTES + 500)))
    ops = list(save(s, store))  # the head now holds it; its key goes after the head
    assert ops[0] == BASE and set(ops[1:]) == {BASE + b"\x1fh\x1f000000\x1f0", BASE + b"\x1fh\x1f000000\x1f1"}
    assert [k for k, _ in store.iter_prefix(BASE + b"\x1fh\x1f000000")] == []
    r = load(store)
    assert r.blob.get("h", Bytes).b == b"h" * (PIECE_BYTES + 500) and snapshot(r) == snapshot(s)
    s.blob.get("h", Hot).b[7] = ord("x")
    assert list(save(s, store)) == [BASE]  # a change of the first piece writes the head alone
    r = load(store)
    assert r.blob.get("h", Bytes).b == s.blob.get("h", Hot).b and snapshot(r) == snapshot(s)
    # read and saved again without being decoded (only the watermark moved): it stays in the head
    r = load(store)
    r.blob.watermark.advance("t", 0, 3)
    assert list(save(r, store)) == [BASE]
    assert load(store).blob.get("h", Bytes).b == s.blob.get("h", Hot).b
    s.blob.set("h", Bytes(bytes(s.blob.get("h", Hot).b)))
    ops = list(save(s, store))  # out again: its key before the head
    assert len(ops) == 2 and ops[0].startswith(BASE + b"\x1fh\x1f000000\x1f") and ops[1] == BASE
    assert load(store).blob.get("h", Bytes).b == s.blob.get("h", Bytes).b


def test_a_head_of_the_second_format_is_still_read() -> None:
    import orjson

    from workers.state.framing import pack_checked

    store = MemoryStore()
    store.put(BASE + b"\x1fp\x1f000000\x1f1", b"abc")
    header = orjson.dumps({"wm": {"t:0": 4}, "parts": {"p": {"n": 3, "p": [[3, 1]], "s": "80"}}, "in": [["q", 2]]})
    store.put(BASE, pack_checked(b"LSH", 2, struct.pack("<I", len(header)) + header + b"qq"))
    r = load(store)
    assert r.blob.get("p", Bytes).b == b"abc" and r.blob.get("q", Bytes).b == b"qq"
    assert r.blob.watermark.offsets == {"t:0": 4}


def test_a_stored_value_in_the_one_value_format_is_read_and_rewritten_as_keys() -> None:
    store = MemoryStore()
    old = StateBlob()
    old.set("p", Bytes(b"z" * 5000))
    old.watermark.advance("t", 0, 9)
    store.put(BASE, old.to_bytes())
    s = load(store)
    assert s.blob.watermark.seen("t", 0, 9) and not s.blob.watermark.seen("t", 0, 10) and s.full
    save(s, store)
    assert store.get(BASE)[:3] == b"LSH" and load(store).blob.get("p", Bytes).b == b"z" * 5000


def test_a_missing_piece_is_reported_not_guessed() -> None:
    store = MemoryStore()
    s = SessionState()
    s.blob.set("p", Bytes(b"q" * (PIECE_BYTES + 1000)))  # two pieces
    save(s, store)
    store.delete(BASE + b"\x1fp\x1f000001\x1f0")
    with pytest.raises(CorruptStateError, match="piece 1"):
        load(store)
    store.put(BASE, b"LSH\x01" + b"\0" * 8)
    with pytest.raises(CorruptStateError, match="checksum"):
        load(store)


@pytest.mark.parametrize("seed", range(6))
def test_a_crash_between_any_two_keys_reads_as_before_or_after_never_a_mix(seed: int) -> None:
    """Apply every prefix of every save's writes (a changelog cut there, a store killed there) to the
    keys as they were, and read: the state is the one before that save or the one after it."""
    rng = random.Random(seed)
    store = MemoryStore()
    s = SessionState()
    # even seeds: parts that hand the layout only their changed pieces (the instant core's way)
    plain, hot, kept = (Ranged, HotRanged, Ranged) if seed % 2 == 0 else (Bytes, Hot, Bytes)
    s.blob.set("a", plain(bytes(rng.randrange(256) for _ in range(5 * PIECE_BYTES + 7))))
    s.blob.set("b", Bytes(b"b" * 100))
    s.blob.set("h", hot(bytes(rng.randrange(256) for _ in range(2 * PIECE_BYTES + 3))))
    save(s, store)
    for step in range(25):
        before = snapshot(load(store))
        a = s.blob.get("a", plain)
        for _ in range(rng.randrange(1, 4)):  # a batch: a few changes, a grown or shrunk part, a new part
            kind = rng.random()
            if kind < 0.25:  # the part with its first piece in the head: a change there, or it moves
                h = s.blob.get("h", Bytes)
                if rng.random() < 0.7:
                    _set_byte(h, rng.randrange(min(len(h.b), PIECE_BYTES + 10)), rng.randrange(256))
                else:  # out of the head into a key, or back
                    s.blob.set("h", (kept if getattr(h, "HEAD_PIECE", False) else hot)(bytes(h.b)))
            elif kind < 0.6 and a.b:
                _set_byte(a, rng.randrange(len(a.b)), rng.randrange(256))
            elif kind < 0.75:
                more = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
                if isinstance(a, Ranged):
                    a.extend(more)
                else:
                    a.b += more
            elif kind < 0.85:
                if isinstance(a, Ranged):
                    a.truncate(rng.randrange(len(a.b) + 1))
                else:
                    del a.b[rng.randrange(len(a.b) + 1):]
            elif s.blob.has("c"):
                s.blob.drop("c")
            else:
                s.blob.set("c", Bytes(b"c" * rng.randrange(1, 5000)))
        s.blob.watermark.advance("t", 0, step)
        ops, after = s.changes(BASE)
        items = list(ops.items())
        for cut in range(len(items) + 1):
            crashed = MemoryStore()
            for k, v in store.iter_prefix(b""):
                crashed.put(k, v)
            crashed.write_batch(dict(items[:cut]))
            got = snapshot(load(crashed))
            want = before if cut <= items.index((BASE, ops[BASE])) else snapshot(s)
            assert got == want, f"step {step}, cut after {cut} of {len(items)} writes"
        store.write_batch(ops)
        s.written(after)
        if rng.random() < 0.3:  # a restart: the next save starts from what the store holds
            s = load(store)
    assert snapshot(load(store)) == snapshot(s)


def test_the_session_cache_is_bounded_by_bytes_not_by_count() -> None:
    """Over its budget the cache first leaves the least recently used sessions' replay rows in the store
    (``thin``), then evicts whole sessions; either way what a session holds reads back the same."""
    store = MemoryStore()
    rng = np.random.default_rng(1)
    twins = {}
    for budget, kept in ((400_000, 4), (30_000, 1)):
        sessions = Sessions(StoreStateAccess(store), cache_bytes=budget)
        for i, dim in enumerate([64, 64, 64, 3072]):
            st = sessions.state("session", f"{budget}-{i}", 0)
            inst = InstantState(["a", "b"], dim)
            for _ in range(70):
                inst.feedback(rng.standard_normal(dim).astype(np.float32), "a", 0.9)
            st.blob.set("instant", inst)
            twins[f"{budget}-{i}"] = InstantState.from_bytes(inst.to_bytes())
            sessions.save("session", f"{budget}-{i}", 0)
            sessions.trim()
        # the 3072-d core alone is ~860 kB with its rows in memory, ~75 kB without
        assert len(sessions) == kept and sessions.cached_bytes <= max(budget, 110_000)  # the last one stays
        last = sessions.blob("session", f"{budget}-3", 0).get("instant", InstantState)
        assert last.memory_bytes() < 80_000 and len(last._absent) == 64  # rows in the store, not in memory
        assert last.adapter_norm > 0 and last.logits(np.ones(3072, np.float32)).shape == (2,)  # no row needed
        assert sessions.evictions == 4 - kept and sessions.misses == 4  # what /metrics exports
        for i in range(4):  # evicted, thinned or neither: the same state, rows read back from the store
            got = sessions.blob("session", f"{budget}-{i}", 0).get("instant", InstantState)
            assert got == twins[f"{budget}-{i}"] and got.replay_entries()[5][0].tobytes() == \
                twins[f"{budget}-{i}"].replay_entries()[5][0].tobytes()


def test_a_session_over_its_limit_is_not_written() -> None:
    store = MemoryStore()
    sessions = Sessions(StoreStateAccess(store), limits=Limits(max_session_bytes=10_000))
    st = sessions.state("session", "s1", 0)
    st.blob.set("p", Bytes(b"x" * 5000))
    sessions.save("session", "s1", 0)
    sessions.blob("session", "s1", 0).get("p", Bytes).b += b"y" * 6000
    with pytest.raises(StateTooLarge, match="10000 bytes per session"):
        sessions.save("session", "s1", 0)
    assert sessions.blob("session", "s1", 0).get("p", Bytes).b == b"x" * 5000  # the stored state, read again


def test_a_decoded_session_counts_its_arrays_once() -> None:
    """The cache's budget is real memory: a decoded part's arrays count, each buffer once (an
    instant core's attributes are views into its arena: counting them had doubled its weight)."""
    inst = InstantState(["a", "b", "c", "d"], 384)
    X = np.random.default_rng(0).normal(size=(64, 384)).astype(np.float32)
    inst.feedback_batch(X, np.zeros(64, np.int64), np.full(64, 0.9))
    s = SessionState()
    s.blob.set("instant", inst)
    assert inst.memory_bytes() > 100_000
    assert inst.memory_bytes() <= s.nbytes() <= inst.memory_bytes() + 1_000

    class Views:  # a part without memory_bytes(): its arrays' buffers, each once
        def __init__(self) -> None:
            self.a = np.zeros(1000, np.float32)
            self.head, self.tail = self.a[:10], self.a[10:].reshape(10, 99)
            self.b = np.frombuffer(b"x" * 64, np.uint8)

    assert _object_bytes(Views()) == 4000 + 64


def test_a_cached_session_that_grows_is_counted_at_its_new_size() -> None:
    """The instant core's arena grows with its replay rows (``_room``: doubling, up to 64 rows); the
    cache must count a session at what it holds now. The arena's size was cached per decoded object,
    so a session cached with 4 rows and grown to 64 counted ~110 kB instead of ~210 kB: half of what
    such sessions hold was outside the byte budget. The stored rows are not kept a second time
    (``_Stored.release``): a full session is counted at its arena and its hot piece, ~110 kB, not
    ~210 kB."""
    from workers.cores.loop import learn_feedback  # noqa: F401 - registers the verbs
    from workers.verbs.session import LearnSession

    rng = np.random.default_rng(3)
    s = LearnSession()
    assert s.dispatch({"verb": "init_instant", "body": {"session_key": "g", "targets": ["a", "b"], "dim": 384}})["ok"]

    def feed(n: int) -> None:
        events = [{"embedding": rng.standard_normal(384).tolist(), "model": "a", "quality": 0.9} for _ in range(n)]
        assert s.dispatch({"verb": "learn_feedback", "body": {"session_key": "g", "events": events}})["ok"]

    feed(4)
    small = s.sessions.cached_bytes
    inst = s.sessions.state("session", "g", 0).blob.get("instant", InstantState)
    for _ in range(60):
        feed(1)
    grown = s.sessions.state("session", "g", 0)
    assert grown.blob.get("instant", InstantState) is inst  # the same decoded object, its arena regrown
    stored = sum(p.size for p in grown.stored.values())
    held = sum(p.held for p in grown.stored.values())
    assert inst.memory_bytes() > 100_000 and stored > 90_000  # the arena, and the 64 rows its keys hold
    assert held < 8_000  # of which only the bytes before the rows are kept (the hot piece)
    assert s.sessions.cached_bytes == grown.nbytes() >= held + inst.memory_bytes() > small + 90_000
    assert grown.nbytes() < 120_000


def test_the_slot_bitmap_is_numpys_packbits_in_hex_and_reads_back() -> None:
    from workers.state.layout import _slots_from_hex, _slots_hex

    rng = np.random.default_rng(1)
    for k in [*range(20), 1000, 1537]:
        bits = rng.integers(0, 2, k).astype(np.uint8)
        text = _slots_hex(bytearray(bits.tobytes()))
        assert text == np.packbits(bits).tobytes().hex()
        assert _slots_from_hex(text, k) == bytearray(bits.tobytes())
    with pytest.raises(CorruptStateError):
        _slots_from_hex("ff", 9)


def test_a_decoded_part_a_save_found_unchanged_goes_back_to_its_bytes() -> None:
    """The next save skips it without serialising it, and a verb that needs it decodes it again."""
    store = MemoryStore()
    s = SessionState()
    s.blob.set("a", Bytes(b"a" * 5000))
    s.blob.set("b", Bytes(b"b" * 300))
    save(s, store)
    a = s.blob.get("a", Bytes)
    b = s.blob.get("b", Bytes)
    b.b[0:1] = b"B"  # "b" changes, "a" is only read
    ops = save(s, store)
    assert "a" not in s.blob._live and s.blob._raw["a"] == b"a" * 5000  # back to its stored bytes
    assert "b" in s.blob._live and not any(k.startswith(BASE + SEP + b"a") for k in ops)
    assert s.blob.get("a", Bytes) is not a and s.blob.get("a", Bytes).b == a.b  # decoded again, equal
    assert snapshot(load(store)) == snapshot(s)


def test_a_small_part_with_cuts_has_the_same_digest_decoded_or_stored() -> None:
    """A part small enough for the head is one piece whatever its cuts say."""
    class Cut(Bytes):
        def piece_cuts(self) -> tuple[int, ...]:
            return (10, 20)

    store = MemoryStore()
    s = SessionState()
    s.blob.set("cut", Cut(b"c" * 100))
    assert len(s.blob.get("cut", Cut).to_bytes()) <= INLINE_BYTES  # inline, yet it has cuts
    save(s, store)
    assert digest(load(store).blob) == digest(s.blob)


def test_a_checked_value_of_chunks_equals_one_of_their_join() -> None:
    """The head is packed from its chunks without joining them first: the same bytes, the same CRC."""
    from workers.state.framing import pack_checked, unpack_checked
    chunks = [b"header", b"", bytes(range(256)) * 20, b"tail"]
    packed = pack_checked(b"LSH", 3, *chunks)
    assert packed == pack_checked(b"LSH", 3, b"".join(chunks))
    assert bytes(unpack_checked(packed, b"LSH", 3, "head")) == b"".join(chunks)


@pytest.mark.parametrize("seed", range(8))
def test_key_growth_never_counts_more_keys_than_the_store_gained(seed: int) -> None:
    """``key_growth`` is a lower bound (the changelog rewriter adds it up between counts, and a count
    skipped on an over-estimate would leave the log long): over random saves that grow, shrink, drop
    and add parts and move a first piece into and out of the head, the store's key count changes by
    at least it, every time."""
    from workers.state.layout import key_growth
    rng = random.Random(seed)
    store = MemoryStore()
    s = SessionState()
    headed = False
    for step in range(40):
        for _ in range(rng.randrange(1, 4)):
            kind, name = rng.random(), rng.choice("abh")
            part = s.blob.get(name, Bytes)
            if part is None or kind < 0.15:  # new, or replaced by a part of another kind
                size = rng.randrange(0, 3 * PIECE_BYTES)
                kind_of = rng.choice([Bytes, Hot, Ranged, HotRanged])
                s.blob.set(name, kind_of(bytes(rng.randrange(256) for _ in range(size))))
            elif kind < 0.5 and part.b:
                _set_byte(part, rng.randrange(len(part.b)), rng.randrange(256))
            elif kind < 0.7:
                more = bytes(rng.randrange(1, 3 * PIECE_BYTES))
                if isinstance(part, Ranged):
                    part.extend(more)
                else:
                    part.b.extend(more)
            elif kind < 0.85:
                n = rng.randrange(len(part.b) + 1)
                if isinstance(part, Ranged):
                    part.truncate(n)
                else:
                    del part.b[n:]
            else:
                s.blob.drop(name)
        s.blob.watermark.advance("t", 0, step)
        before = sum(1 for _ in store.iter_prefix(b""))
        ops, after = s.changes(BASE)
        grown = key_growth(s.stored, after, ops, s.headed)
        assert s.headed == headed
        store.write_batch(ops)
        s.written(after)
        headed = True
        assert sum(1 for _ in store.iter_prefix(b"")) - before >= grown, f"step {step}"
        if rng.random() < 0.2:
            s = load(store)


def test_key_growth_is_exact_for_a_young_instant_core() -> None:
    """The case it is for: each event pushes a replay row, a new key the save is sure of."""
    from workers.state.layout import key_growth
    store = MemoryStore()
    s = SessionState()
    core = InstantState(["a", "b"], 64)
    s.blob.set("instant", core)
    rng = np.random.default_rng(3)
    for i in range(20):
        core.feedback(rng.standard_normal(64).astype(np.float32), "a", 0.9)
        before = sum(1 for _ in store.iter_prefix(b""))
        ops, after = s.changes(BASE)
        grown = key_growth(s.stored, after, ops, s.headed)
        store.write_batch(ops)
        s.written(after)
        assert sum(1 for _ in store.iter_prefix(b"")) - before == grown == (2 if i == 0 else 1)


def test_regions_that_overlap_write_each_piece_once_to_its_other_slot() -> None:
    """A part may name a piece in two regions; the save writes it once, a changed piece to the slot the
    current head does not read, a new one to slot 0, and the state reads back."""
    store = MemoryStore()
    s = SessionState()
    part = Ranged(b"a" * (2 * PIECE_BYTES))
    s.blob.set("p", part)
    save(s, store)
    part = s.blob.get("p", Ranged)
    part.extend(b"b" * PIECE_BYTES)
    part.dirty.append((2 * PIECE_BYTES, 3 * PIECE_BYTES))  # the new piece named again
    part.set_byte(0, ord("c"))
    part.dirty.append((0, 1))                              # and a changed one, twice
    before = dict(store.iter_prefix(BASE))
    ops, after = s.changes(BASE)
    assert [int(k.split(SEP)[-1]) for k in ops if k != BASE] == [1, 0]  # piece 0 to its other slot, piece 2 new
    assert all(k not in before for k in ops if k != BASE)
    assert bytes(after["p"].slots) == b"\x01\x00\x00"
    store.write_batch(ops)
    s.written(after)
    assert load(store).blob.get("p", Bytes).b == part.b


@pytest.mark.parametrize("seed", range(4))
def test_a_core_whose_stored_rows_were_dropped_still_saves_exactly_what_it_holds(seed: int) -> None:
    """A decoded instant core is cached without a second copy of its stored replay rows
    (``_Stored.release``): after decodes, batches of any size (one event, a ring gone round, none
    learned), EWC state added, resets and rewrites of every key, the keys always read back as the
    live core and its digest is that of a core never cached."""
    from workers.state.layout import _GONE

    rng = np.random.default_rng(seed)
    store = MemoryStore()
    s = SessionState()
    s.blob.set("instant", InstantState(["a", "b", "c"], 384))
    save(s, store)
    s = load(store)
    for step in range(40):
        core = s.blob.get("instant", InstantState)
        held = s.stored["instant"]
        assert held.count <= 1 or held.pieces.count(_GONE) == core.replay_len  # decoded: its rows dropped
        n = int(rng.choice([0, 1, 1, 2, 5, 70]))
        X = rng.standard_normal((n, 384)).astype(np.float32)
        Q = rng.choice([0.1, 0.5, 0.9], n).astype(np.float32)
        if n:
            core.feedback_batch(X, rng.integers(0, 3, n), Q, np.arange(n, dtype=np.int64) * 7 + step)
        if step == 15:
            core.set_ewc(rng.random(core.n_params).astype(np.float32), np.zeros(core.n_params, np.float32), 2.0)
        if step == 25:
            core.reset()
        if step == 30:
            s.full = True  # rewrite_all: the store may be ahead of its changelog
        save(s, store)
        back = load(store)
        assert back.blob.get("instant", InstantState) == core
        assert digest(back.blob) == digest(s.blob)
        if step % 7 == 3:
            s = back  # the session evicted and read again


@pytest.mark.parametrize("seed", range(3))
def test_sessions_thinned_and_evicted_answer_as_sessions_kept_whole(seed: int, tmp_path) -> None:
    """Twelve full 384-d learning-loop sessions through a cache that holds one of them whole: each touch
    meets a session kept whole, thinned (its rows left in RocksDB) or evicted (read back without its
    rows), and every reply, digest and reopened store equals those of a session whose cache holds all."""
    from workers.verbs.session import LearnSession
    rng = np.random.default_rng(seed)
    small = LearnSession(path=tmp_path / "small", cache_bytes=120_000)
    big = LearnSession()
    keys = [f"s{i}" for i in range(12)]

    def both(verb: str, body: dict) -> dict:
        a, b = small.dispatch({"verb": verb, "body": body}), big.dispatch({"verb": verb, "body": body})
        assert a == b, (verb, a, b)
        return a

    for k in keys:
        both("init_instant", {"session_key": k, "targets": ["a", "b", "c"], "dim": 384})
        X = rng.standard_normal((70, 384)).astype(np.float32)
        for i in range(0, 70, 35):  # envelopes fill the replay buffer
            both("learn_feedback", {"session_key": k, "events": [
                {"embedding": X[j].tolist(), "model": "abc"[j % 3], "quality": float(rng.random()), "now_ms": j}
                for j in range(i, i + 35)]})
    for step in range(150):
        k = keys[int(rng.integers(0, len(keys)))]
        x = rng.standard_normal(384).astype(np.float32).tolist()
        op = rng.random()
        if op < 0.6:
            both("learn_feedback", {"session_key": k, "embedding": x, "model": "abc"[step % 3],
                                    "quality": float(rng.random()), "now_ms": int(rng.integers(0, 2**40))})
        elif op < 0.75:
            both("feedback", {"session_key": k, "embedding": x, "model": "b", "quality": 0.2, "now_ms": step})
        elif op < 0.85:
            both("apply_adapter", {"session_key": k, "embedding": x})
        elif op < 0.9:
            both("reset_adapter", {"session_key": k})
        else:
            both("session_info", {"session_key": k})
    assert small.sessions.evictions > 0
    assert any(s.blob._live.get("instant") is not None and s.blob._live["instant"]._absent
               for s, _ in small.sessions._cache.values())  # some cached session is thinned
    for k in keys:
        both("session_info", {"session_key": k})
    small.close()
    reopened = LearnSession(path=tmp_path / "small")
    for k in keys:
        assert reopened.dispatch({"verb": "session_info", "body": {"session_key": k}}) == \
            big.dispatch({"verb": "session_info", "body": {"session_key": k}})
    reopened.close()


def test_a_session_whose_write_is_pending_keeps_its_rows() -> None:
    """The store does not hold a pending write yet: trim neither thins nor evicts that session."""
    class Pending(StoreStateAccess):
        pending_keys: set[bytes] = set()

        def pending(self, table: str, base: bytes) -> bool:
            return base in self.pending_keys

    access = Pending(MemoryStore())
    sessions = Sessions(access, cache_bytes=1)
    rng = np.random.default_rng(3)
    for i in range(2):
        st = sessions.state("session", f"p{i}", 0)
        inst = InstantState(["a", "b"], 384)
        inst.feedback_batch(rng.standard_normal((70, 384)).astype(np.float32), np.zeros(70, np.int64),
                            np.full(70, 0.9, np.float32))
        st.blob.set("instant", inst)
        sessions.save("session", f"p{i}", 0)
    access.pending_keys = {access.base_key("session", "p0")}
    sessions.trim()
    p0 = sessions._cache[("session", "p0")][0].blob._live["instant"]
    assert not p0._absent and p0.replay_x.shape[0] == 64  # pending: kept whole
    assert sessions._cache[("session", "p1")][0].blob._live["instant"]._absent  # the other one was thinned
    access.pending_keys = set()
    sessions.trim()
    assert p0._absent and sessions.cached_bytes < 30_000  # readable now: thinned too


def test_stored_rows_refuse_what_the_keys_do_not_hold() -> None:
    """A replay row read back from the store: a missing or torn piece, bytes past the rows and a part
    without rows are corrupt state, never a crash or a silently short row."""
    from workers.state.layout import StoredRows
    store = MemoryStore()
    s = SessionState()
    core = InstantState(["a", "b"], 1536)  # a row of 6 kB spans two pieces
    core.feedback_batch(np.ones((5, 1536), np.float32), np.zeros(5, np.int64), np.full(5, 0.9, np.float32))
    s.blob.set("instant", core)
    s.blob.set("small", Bytes(b"x" * 10))
    save(s, store)
    rows = StoredRows(store.get, BASE, s.blob, "instant")
    assert rows(0, 4 * 1536) == core.replay_x[0].tobytes() and rows(4096, 8000) == core.to_bytes()[
        core.rows_offset() + 4096:core.rows_offset() + 8000]
    with pytest.raises(CorruptStateError, match="outside its rows"):
        rows(0, 5 * 4 * 1536 + 1)
    with pytest.raises(CorruptStateError, match="no replay rows"):
        StoredRows(store.get, BASE, s.blob, "small")(0, 1)
    stored = s.stored["instant"]
    i = stored.rows_from + 1
    key = BASE + SEP + b"instant" + SEP + b"%06d" % i + SEP + b"%d" % stored.slots[i]
    store.put(key, store.get(key)[:-1])  # torn
    with pytest.raises(CorruptStateError, match="wrong length"):
        rows(0, 4 * 1536)
    store.delete(key)
    with pytest.raises(CorruptStateError, match="missing"):
        rows(0, 4 * 1536)


def _stored_core(n_events: int, edit: Callable[[dict], None]) -> tuple[MemoryStore, InstantState]:
    """A 64-d instant core of ``n_events`` saved under BASE, its head's entry for it then changed by ``edit``."""
    import orjson
    from workers.state.framing import pack_checked
    from workers.state.layout import _read_head
    store = MemoryStore()
    s = SessionState()
    core = InstantState(["a", "b"], 64)
    core.feedback_batch(np.ones((n_events, 64), np.float32), np.zeros(n_events, np.int64),
                        np.full(n_events, 0.9, np.float32))
    s.blob.set("instant", core)
    save(s, store)
    header, inline, hot = _read_head(bytes(store.get(BASE)))
    assert header["parts"]["instant"]["l"] == 1  # the hot piece, then the rows
    edit(header["parts"]["instant"])
    body = orjson.dumps(header)
    store.put(BASE, pack_checked(b"LSH", 3, struct.pack("<I", len(body)), body, *inline.values(), *hot.values()))
    return store, core


@pytest.mark.parametrize("first", [-1, 99, "2", True, 1.5])
def test_a_head_that_puts_replay_rows_outside_its_part_is_corrupt(first: object) -> None:
    """``l`` in a part's head entry (where its replay rows begin) must be a piece index of that part."""
    store, _ = _stored_core(8, lambda entry: entry.update(l=first))
    sessions = Sessions(StoreStateAccess(store))
    with pytest.raises(CorruptStateError):
        sessions.state("session", "s1", 0).blob.get("instant", InstantState).to_bytes()


def test_a_head_from_before_row_tables_is_read_whole_and_gains_one_on_its_next_save() -> None:
    """Heads written before parts said where their replay rows begin (no ``l``) are read whole, as
    then; the next save writes ``l``, and from then on the session is read without its rows."""
    from workers.state.layout import _read_head
    store, core = _stored_core(70, lambda entry: entry.pop("l"))
    sessions = Sessions(StoreStateAccess(store))
    old = sessions.state("session", "s1", 0)
    got = old.blob.get("instant", InstantState)
    assert not got._absent and got == core  # read whole
    got.feedback(np.ones(64, np.float32), "b", 0.1)
    sessions.save("session", "s1", 0)
    assert _read_head(bytes(store.get(BASE)))[0]["parts"]["instant"]["l"] == 1
    again = Sessions(StoreStateAccess(store)).state("session", "s1", 0).blob.get("instant", InstantState)
    assert len(again._absent) == 64 and again == got  # now read without its rows, the same state
