"""Waiting, in a unit test's own event loop, for something agents or tasks do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def until(cond: Callable[[], Any], timeout: float = 5.0) -> None:
    """Poll ``cond`` every 5 ms until it is truthy; fail the test after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)
