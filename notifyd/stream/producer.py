"""A plain aiokafka producer for the CLI, the embedded demo and tests: what any other
service does to hand notifyd an event (no Faust involved)."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from notifyd.config import Settings


async def produce(
    settings: Settings,
    topic: str,
    key: bytes | None,
    value: bytes,
    headers: list[tuple[str, bytes]] | None = None,
) -> tuple[int, int]:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, key=key, headers=headers)
        return meta.partition, meta.offset
    finally:
        await producer.stop()
