"""Read-your-writes for the web view: a handler that produced a command to a topic
waits here until the agent on this same worker applied it (the web request was
routed to the partition owner first, so the agent that applies it is local)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any


class Waiters:
    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[Any]] = {}

    def create(self) -> tuple[str, asyncio.Future[Any]]:
        request_id = uuid.uuid4().hex
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = fut
        return request_id, fut

    def resolve(self, request_id: str, value: Any) -> None:
        fut = self._futures.pop(request_id, None)
        if fut is not None and not fut.done():
            fut.set_result(value)

    def discard(self, request_id: str) -> None:
        fut = self._futures.pop(request_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def wait(self, request_id: str, fut: asyncio.Future[Any], timeout: float) -> Any:
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.discard(request_id)


waiters = Waiters()
