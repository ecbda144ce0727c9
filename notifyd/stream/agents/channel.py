"""notifyd.deliver.<channel>: one agent per channel, each on its own stream, so a slow
provider holds up no other channel.  The agent owns its provider for the stream's
lifetime.

Each channel has its own limits (``Settings.concurrency_for``, and the rate limit and
429 pause of :mod:`notifyd.providers.ratelimit`); they hold up that channel's stream only.
"""

from __future__ import annotations

from typing import Any

from faust.types import EventT, StreamT

from notifyd.config import CHANNELS, Settings
from notifyd.providers.base import Provider
from notifyd.providers.ratelimit import LimitedProvider, channel_limits
from notifyd.stream.agents.common import run_events, run_events_concurrently
from notifyd.stream.handlers.deliver import handle_delivery
from notifyd.stream.runtime import Runtime, Timer


async def run_channel(
    channel: str, stream: StreamT[Any], provider: Provider, settings: Settings, timer: Timer
) -> None:
    limits = channel_limits(channel, settings, clock=timer.time, sleep=timer.sleep)
    limited = LimitedProvider(provider, limits)
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


def register(rt: Runtime) -> None:
    for channel in CHANNELS:
        _register(rt, channel)


def _register(rt: Runtime, channel: str) -> None:
    @rt.app.agent(rt.topics.deliver[channel], name=f"notifyd.agent.{channel}")
    async def deliver(stream: StreamT[Any]) -> None:
        provider = rt.build_provider(channel, rt.settings)
        await run_channel(channel, stream, provider, rt.settings, rt.timer)
