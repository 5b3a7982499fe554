"""ingest/partitioner.py chooses the partition Kafka's own clients choose for a key."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from passpost.ingest.partitioner import murmur2, partition_for


# org.apache.kafka.common.utils.UtilsTest#testMurmur2: the Java client's values, as signed ints.
@pytest.mark.parametrize(("key", "java"), [
    ("21", -973932308),
    ("foobar", -790332482),
    ("a-little-bit-long-string", -985981536),
    ("a-little-bit-longer-string", -1486304829),
    ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    ("abc", 479470107),
])
def test_murmur2_is_the_java_clients(key: str, java: int) -> None:
    assert murmur2(key.encode()) == java & 0xFFFFFFFF


def test_murmur2_agrees_with_aiokafkas_for_every_length_and_byte() -> None:
    rng = random.Random(13)
    for length in range(300):
        for _ in range(10):
            data = bytes(rng.randrange(256) for _ in range(length))
            assert murmur2(data) == aiokafka_murmur2(data), data


@pytest.mark.parametrize("partitions", [1, 3, 6, 7, 64])
def test_a_keyed_record_goes_where_aiokafkas_default_partitioner_sends_it(partitions: int) -> None:
    all_partitions = list(range(partitions))
    rng = random.Random(partitions)
    for _ in range(500):
        key = f"{rng.randrange(10**12):X}-{rng.randrange(10**6)}".encode()
        assert partition_for(key, all_partitions, all_partitions) == DefaultPartitioner()(
            key, all_partitions, all_partitions)


def test_an_unkeyed_record_goes_to_an_available_partition() -> None:
    assert {partition_for(None, [0, 1, 2, 3], [2]) for _ in range(50)} == {2}
    assert {partition_for(None, [0, 1, 2, 3], []) for _ in range(500)} == {0, 1, 2, 3}
