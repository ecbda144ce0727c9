"""Read partitions from given offsets up to given end offsets: with a group-less
consumer (dead-letter listings, re-drive), or as raw record sets (table restore)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition


async def read_to_end(
    consumer: AIOKafkaConsumer,
    starts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
    timeout_s: float,
    max_records: int = 1000,
) -> AsyncIterator[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]:
    """Assign ``starts``' partitions, seek each to its start and yield the records below
    its end offset, batch by batch, until every partition reached its end or
    ``timeout_s`` passed (the caller tells by what it got)."""
    pending = {tp: ends[tp] for tp, start in starts.items() if start < ends[tp]}
    if not pending:
        return
    consumer.assign(list(pending))
    for tp in pending:
        consumer.seek(tp, starts[tp])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending and loop.time() < deadline:
        batch = await consumer.getmany(*pending, timeout_ms=200, max_records=max_records)
        for tp, recs in batch.items():
            below = [r for r in recs if r.offset < pending.get(tp, 0)]
            if below:
                yield tp, below
        for tp in list(pending):
            # position, not the last record: compaction and transaction markers leave
            # offset gaps.
            if await consumer.position(tp) >= pending[tp]:
                del pending[tp]


#: Parses one partition's fetched record set from ``position``; returns the next position.
RecordsHandler = Callable[[TopicPartition, Any, int], int]


async def fetch_to_end(
    bootstrap: str | list[str],
    starts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
    handle: RecordsHandler,
    timeout_s: float,
    *,
    max_bytes: int = 32 << 20,
    max_partition_bytes: int = 8 << 20,
    lanes_per_node: int = 2,
) -> dict[TopicPartition, int]:
    """Fetch each partition from its start until its position reaches its end, handing
    the raw record sets (``aiokafka`` ``MemoryRecords``) to ``handle``; the positions
    reached (short of the end only after ``timeout_s``).

    The consumer's own fetcher wraps every record in a ``ConsumerRecord`` (most of a
    bulk read's CPU, ``notifyd.stream.restore``); this loop sends Fetch requests itself
    and leaves the records in aiokafka's C record batches.  Each leader's partitions
    are split over ``lanes_per_node`` request loops, so the broker serves one while
    this process parses the other's response.  Errors other than a stale leader are
    raised (a caller such as the restore leaves the rest to Faust).
    """
    from aiokafka import errors
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.fetch import FetchRequest
    from aiokafka.record.memory_records import MemoryRecords

    positions = dict(starts)
    pending = {tp for tp in starts if starts[tp] < ends[tp]}
    if not pending:
        return positions
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.set_topics(sorted({tp.topic for tp in pending}))

        async def lane(node: int, tps: list[TopicPartition]) -> set[TopicPartition]:
            """Fetch ``tps`` from ``node``; the partitions whose leader moved."""
            mine = set(tps)
            while mine and loop.time() < deadline:
                by_topic: dict[str, list[tuple[int, int, int]]] = {}
                for tp in sorted(mine):
                    by_topic.setdefault(tp.topic, []).append(
                        (tp.partition, positions[tp], max_partition_bytes)
                    )
                req = FetchRequest(200, 1, max_bytes, 0, list(by_topic.items()))
                resp = await client.send(node, req)
                moved: set[TopicPartition] = set()
                for topic, parts in resp.topics:
                    for partition, error_code, _highwater, *data in parts:
                        tp = TopicPartition(topic, partition)
                        err = errors.for_code(error_code)
                        if err in (errors.NotLeaderForPartitionError,
                                   errors.UnknownTopicOrPartitionError):
                            moved.add(tp)
                        elif err is not errors.NoError:
                            raise err(f"fetch {tp} at {positions[tp]}")
                        elif tp in mine:
                            positions[tp] = handle(tp, MemoryRecords(data[-1]), positions[tp])
                            if positions[tp] >= ends[tp]:
                                mine.discard(tp)
                if moved:
                    return moved
            return set()

        while pending and loop.time() < deadline:
            by_node: dict[int, list[TopicPartition]] = {}
            for tp in sorted(pending):
                leader = client.cluster.leader_for_partition(tp)
                if leader is None or leader < 0:
                    raise errors.LeaderNotAvailableError(f"no leader for {tp}")
                by_node.setdefault(leader, []).append(tp)
            jobs = [
                lane(node, tps[i::lanes_per_node])
                for node, tps in by_node.items()
                for i in range(min(lanes_per_node, len(tps)))
            ]
            moved = set().union(*await asyncio.gather(*jobs))
            pending = {tp for tp in pending if positions[tp] < ends[tp]}
            if moved:
                await client.force_metadata_update()
    finally:
        await client.close()
    return positions
