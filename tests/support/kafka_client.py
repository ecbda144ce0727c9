"""A double of the running Kafka client as notifyd's producers use it: aiokafka's
``create_batch``/``send_batch`` (the batch writer) and Faust's ``Producer.send`` (an
awaited topic).  A batch is taken when ``send_batch`` returns and acknowledged when
``release`` resolves its future, with offsets counted per partition as a broker would."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import RecordMetadata, TopicPartition


class FakeBuilder:
    def __init__(self, capacity: int) -> None:
        self.records: list[tuple[bytes | None, bytes | None, list[Any]]] = []
        self.capacity = capacity

    def append(self, *, timestamp: Any, key: bytes | None, value: bytes | None,
               headers: list[Any]) -> Any:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value, headers))
        return object()


class _Metadata:
    def __init__(self, partitions: int) -> None:
        self.n = partitions

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.n))

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.n))


class FakeKafka:
    """aiokafka's ``AIOKafkaProducer`` as far as the batch writer uses it."""

    def __init__(self, partitions: int = 8, batch_capacity: int = 1000) -> None:
        self._metadata = _Metadata(partitions)
        self._partitioner = DefaultPartitioner()
        self.client = SimpleNamespace(_wait_on_metadata=self._wait_on_metadata)
        self.batch_capacity = batch_capacity
        self.batches: list[tuple[str, int, list[tuple[bytes | None, bytes | None, list[Any]]]]] = []
        self.futures: list[asyncio.Future[RecordMetadata]] = []
        self.fail_next = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self._next_offset: Counter[tuple[str, int]] = Counter()

    async def _wait_on_metadata(self, topic: str) -> None:
        return None

    def create_batch(self) -> FakeBuilder:
        return FakeBuilder(self.batch_capacity)

    async def send_batch(self, builder: FakeBuilder, topic: str, *,
                         partition: int) -> asyncio.Future[RecordMetadata]:
        await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("broker away")
        self.batches.append((topic, partition, builder.records))
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut

    @property
    def sent(self) -> list[tuple[str, bytes | None, bytes | None, int]]:
        """Every record taken, in the order taken: ``(topic, key, value, partition)``."""
        return [(t, k, v, p) for t, p, recs in self.batches for k, v, _ in recs]

    def release(self) -> None:
        for (topic, partition, recs), fut in zip(self.batches, self.futures, strict=True):
            if not fut.done():
                base = 100 + self._next_offset[(topic, partition)]
                self._next_offset[(topic, partition)] += len(recs)
                fut.set_result(RecordMetadata(topic, partition,
                                              TopicPartition(topic, partition),
                                              base, -1, 0, 0))


class RunningProducer:
    """Faust's aiokafka producer once it runs: its client (``_producer``), and ``send``,
    which hands one record to the client and returns the future of its delivery."""

    def __init__(self, client: FakeKafka | None = None) -> None:
        self._producer = client or FakeKafka()
        self.sent: list[tuple[Any, ...]] = []
        self.futures: list[asyncio.Future[Any]] = []

    async def send(self, *args: Any) -> asyncio.Future[Any]:
        self.sent.append(args)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut


class FakeTable:
    """A table as the writer tells it a changelog record's offset (RocksDB keeps it)."""

    def __init__(self) -> None:
        self.persisted: list[tuple[TopicPartition, int]] = []

    def _on_changelog_sent(self, fut: Any) -> None:
        res = fut.result()
        self.persisted.append((res.topic_partition, res.offset))


def app_with(client: FakeKafka) -> Any:
    """An app as the writer sees it: its producer (running on ``client``), its monitor."""
    monitor = SimpleNamespace(messages_sent=0, messages_sent_by_topic=Counter(), send_errors=0)
    return SimpleNamespace(producer=RunningProducer(client), monitor=monitor)
