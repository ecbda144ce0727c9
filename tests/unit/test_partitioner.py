"""notifyd's murmur2 is Kafka's, as aiokafka computes it (the partition of every key)."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from notifyd.stream.partitioner import murmur2, partition_of


@given(st.binary(max_size=200))
def test_murmur2_is_aiokafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@given(st.text(max_size=80), st.integers(min_value=1, max_value=1024))
def test_partition_is_the_default_partitioners(key: str, partitions: int) -> None:
    raw = key.encode()
    every = list(range(partitions))
    assert partition_of(raw, partitions) == DefaultPartitioner()(raw, every, every)


def test_known_values() -> None:
    # Kafka's own test vectors (clients/src/test/.../UtilsTest.testMurmur2).
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, signed in cases.items():
        assert murmur2(data) == signed & 0xFFFFFFFF
