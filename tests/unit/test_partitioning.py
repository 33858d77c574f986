"""Owning partitions and re-routing decisions (workers/stream/partitioning.py)."""
from __future__ import annotations

import zlib

import pytest

from workers.stream.partitioning import ORIGIN_HEADER, origin_of, owner_partition, split
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
    here, reroute, misplaced = split(recs, n)
    assert misplaced == []
    assert {r.key for r in here} == {k for k in keys if _crc32_partition(k, n) == owner_partition(k, n)}
    assert reroute and all(owner == owner_partition(r.key, n) != r.partition for r, owner in reroute)
    assert len(here) + len(reroute) == len(recs)


def test_keyless_and_non_utf8_keys_stay_for_the_processor_to_judge() -> None:
    recs = [Record("learn.loss", 3, 0, None, b"{}"), Record("learn.loss", 3, 1, b"\xff\xfe", b"{}")]
    assert split(recs, 4) == (recs, [], [])


def test_a_rerouted_copy_on_a_wrong_partition_again_is_misplaced_not_bounced() -> None:
    key = b"s1"
    wrong = (owner_partition(key, 4) + 1) % 4
    rec = Record("learn.loss", wrong, 9, key, b"{}", 0, (2, 5))
    assert split([rec], 4) == ([], [], [rec])


@pytest.mark.parametrize("headers,want", [
    ([(ORIGIN_HEADER, b"3:17")], (3, 17)), ({ORIGIN_HEADER: b"0:0"}, (0, 0)), ([("other", b"x")], None),
    (None, None), ([(ORIGIN_HEADER, b"garbage")], None)])
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
