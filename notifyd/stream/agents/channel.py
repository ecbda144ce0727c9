"""The body shared by the channel agents: own the provider for the stream's lifetime.

Each channel has its own limits (``Settings.concurrency_for``, and the rate limit and
429 pause of :mod:`notifyd.providers.ratelimit`); they hold up that channel's stream only.
"""

from __future__ import annotations

from typing import Any

from faust.types import EventT, StreamT

from notifyd.providers.base import Provider
from notifyd.providers.ratelimit import LimitedProvider, channel_limits
from notifyd.stream.agents.common import run_events, run_events_concurrently
from notifyd.stream.app import settings
from notifyd.stream.handlers.deliver import build_provider, handle_delivery


async def run_channel(channel: str, stream: StreamT[Any], provider: Provider | None = None) -> None:
    limited = LimitedProvider(
        provider or build_provider(channel, settings), channel_limits(channel, settings)
    )
    await limited.start()
    try:

        async def handle(ev: EventT[Any]) -> None:
            await handle_delivery(ev, limited)

        limit = settings.concurrency_for(channel)
        if limit > 1:
            await run_events_concurrently(stream, handle, limit)
        else:
            async for _ in run_events(stream, handle):
                pass
    finally:
        await limited.stop()
