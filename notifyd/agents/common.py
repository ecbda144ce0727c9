"""The loop every agent runs: bind log context per record, never let one record kill it."""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

import structlog
from faust.types import EventT, StreamT

log = structlog.stdlib.get_logger("notifyd.agents")


async def run_events(
    stream: StreamT[Any], handler: Callable[[EventT[Any]], Awaitable[None]]
) -> AsyncIterable[None]:
    async for ev in stream.events():
        msg = ev.message
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            topic=msg.topic, partition=msg.partition, offset=msg.offset
        )
        try:
            await handler(ev)
        except Exception:
            # A bug must not stop the partition; the record is logged with its
            # coordinates so it can be replayed once fixed.
            log.exception("agent.record_failed")
        finally:
            structlog.contextvars.clear_contextvars()
        yield None
