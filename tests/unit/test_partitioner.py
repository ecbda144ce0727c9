"""notifyd's murmur2 is Kafka's, as aiokafka computes it (the partition of every key;
the partitions themselves and Kafka's own vectors: ``test_pipeline_unit.py``)."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from notifyd.stream.partitioner import murmur2


@given(st.binary(max_size=200))
def test_murmur2_is_aiokafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)
