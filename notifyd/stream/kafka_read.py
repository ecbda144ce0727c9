"""Read partitions from given offsets up to given end offsets with a group-less
consumer (dead-letter listings, re-drive, table restore)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

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
