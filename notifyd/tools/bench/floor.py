"""The floor of ``notifyd bench``: raw aiokafka consume → JSON transform → produce.

Run as its own process (like a notifyd worker) by the bench::

    python -m notifyd.tools.bench.floor --bootstrap 127.0.0.1:9092 --src a --dst b --group g

It does what any Kafka stream processor must do at the least: consume in a group,
decode the JSON value, add a field, encode it and produce it keyed as it came,
committing offsets as it goes (aiokafka auto-commit, every second).  The producer
uses Faust's (and so notifyd's) linger of 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def passthrough(bootstrap: str, src: str, dst: str, group: str) -> None:
    consumer = AIOKafkaConsumer(
        src,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        auto_commit_interval_ms=1000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, acks=1)
    await producer.start()
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=1000)
            for records in batch.values():
                for rec in records:
                    doc = orjson.loads(rec.value)  # type: ignore[arg-type]
                    doc["floor_at"] = time.time()
                    await producer.send(dst, orjson.dumps(doc), key=rec.key)
    finally:
        await consumer.stop()
        await producer.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--group", required=True)
    args = ap.parse_args(argv)
    asyncio.run(passthrough(args.bootstrap, args.src, args.dst, args.group))


if __name__ == "__main__":  # pragma: no cover
    main()
