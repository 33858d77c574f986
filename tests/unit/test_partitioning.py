"""Owning partitions and re-routing decisions (workers/stream/partitioning.py)."""
from __future__ import annotations

import zlib

import pytest

from workers.stream.partitioning import ORIGIN_HEADER, UNREADABLE, bad_origin, origin_of, owner_partition, split
from workers.stream.records import Record


def test_owner_is_the_java_default_murmur2_partition() -> None:
    # values from Kafka's DefaultPartitioner (Utils.toPositive(Utils.murmur2(key)) % n)
    from aiokafka.partitioner import DefaultPartitioner

    for key in [b"agent-1", b"alice", b"default", b"\xe2\x82\xac"]:
        assert owner_partition(key, 8) == DefaultPartitioner()(key, list(range(8)), list(range(8)))
        assert owner_partition(key.decode(), 8) == owner_partition(key, 8)


def _crc32_partition(key: bytes, n: int) -> int:  # librdkafka's default (consistent_random) for keyed messages
    return zlib.crc32(key) % n


def test_split_reroutes_keys_a_crc32_partitioner_misplaced_and_keeps_the_rest() -> None:
    n = 4
    keys = [f"s{i}".encode() for i in range(40)]
    recs = [Record("learn.loss", _crc32_partition(k, n), i, k, b"{}") for i, k in enumerate(keys)]
    here, reroute, misplaced, forged = split(recs, n)
    assert misplaced == [] and forged == []
    assert {r.key for r in here} == {k for k in keys if _crc32_partition(k, n) == owner_partition(k, n)}
    assert reroute and all(owner == owner_partition(r.key, n) != r.partition for r, owner in reroute)
    assert len(here) + len(reroute) == len(recs)


def test_keyless_and_non_utf8_keys_stay_for_the_processor_to_judge() -> None:
    recs = [Record("learn.loss", 3, 0, None, b"{}"), Record("learn.loss", 3, 1, b"\xff\xfe", b"{}")]
    assert split(recs, 4) == (recs, [], [], [])


def test_a_rerouted_copy_on_a_wrong_partition_again_is_misplaced_not_bounced() -> None:
    key = b"s1"
    wrong = (owner_partition(key, 4) + 1) % 4
    rec = Record("learn.loss", wrong, 9, key, b"{}", 0, ((wrong + 1) % 4, 5))
    assert split([rec], 4) == ([], [], [rec], [])


@pytest.mark.parametrize("headers,want", [
    ([(ORIGIN_HEADER, b"3:17")], (3, 17)), ({ORIGIN_HEADER: b"0:0"}, (0, 0)), ([("other", b"x")], None),
    (None, None), ([(ORIGIN_HEADER, b"garbage")], UNREADABLE), ([(ORIGIN_HEADER, b"\xff:\x00")], UNREADABLE)])
def test_origin_header(headers, want) -> None:
    assert origin_of(headers) == want


def test_a_copy_counts_at_its_origin_in_the_watermark() -> None:
    from workers.state.memory import MemoryStore
    from workers.stream.processor import Processor, StoreStateAccess

    p = Processor(StoreStateAccess(MemoryStore()))
    copy = Record("learn.loss", 1, 0, b"s", b'{"loss": 0.5}', 0, (2, 7))
    again = Record("learn.loss", 1, 1, b"s", b'{"loss": 0.5}', 0, (2, 7))  # the re-route repeated after a crash
    first = p.process([copy])
    assert first.applied == 1
    second = p.process([again])
    assert second.applied == 0 and second.duplicates == 1


@pytest.mark.parametrize(("origin", "says"), [
    ((1, 99_999_999), "names the partition the record is on (1)"),
    (UNREADABLE, "is not <partition>:<offset>"),
    ((4, 3), "names partition 4, which the topic does not have (0..3)"),
    ((-2, 3), "names partition -2"),
    ((2, -1), "names a negative offset (-1)"),
])
def test_an_origin_header_no_reroute_could_write_is_set_aside_with_its_reason(origin, says) -> None:
    """A copy is always on another partition than its origin: a header naming the record's own partition (by
    hand, or copied by a mirroring tool) would move the session's watermark of that partition past every later
    event. Such records, and headers out of range or unreadable, go to the DLQ (``forged``), not to the
    processor; a possible origin on another partition is a copy as before."""
    key = next(f"k{i}".encode() for i in range(100) if owner_partition(f"k{i}".encode(), 4) == 1)
    rec = Record("learn.loss", 1, 5, key, b"{}", 0, origin)
    why = bad_origin(rec, 4)
    assert why is not None and says in why and ORIGIN_HEADER in why
    assert split([rec], 4) == ([], [], [], [(rec, why)])
    good = rec._replace(origin=(2, 7))
    assert bad_origin(good, 4) is None and split([good], 4) == ([good], [], [], [])
