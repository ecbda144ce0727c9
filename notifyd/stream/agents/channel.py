"""notifyd.deliver.<channel>: one stream (a lane, or a Faust agent) per channel, so a
slow provider holds up no other channel.  The stream owns its provider for its lifetime.

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
from notifyd.stream.lanes import Lane
from notifyd.stream.runtime import Runtime, Timer


def limited_provider(
    channel: str, provider: Provider, settings: Settings, timer: Timer
) -> LimitedProvider:
    limits = channel_limits(channel, settings, clock=timer.time, sleep=timer.sleep)
    return LimitedProvider(provider, limits)


async def run_channel(
    channel: str, stream: StreamT[Any], provider: Provider, settings: Settings, timer: Timer
) -> None:
    limited = limited_provider(channel, provider, settings, timer)
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


def channel_lane(rt: Runtime, channel: str) -> Lane:
    """The lane of ``channel``'s deliveries (``notifyd.stream.lanes``); its provider is
    built when the lane starts, as an agent's is."""
    limited: list[LimitedProvider] = []

    async def open_provider() -> None:
        provider = rt.build_provider(channel, rt.settings)
        limited.append(limited_provider(channel, provider, rt.settings, rt.timer))
        await limited[0].start()

    async def close_provider() -> None:
        if limited:
            await limited.pop().stop()

    async def handle(ev: EventT[Any]) -> None:
        await handle_delivery(ev, limited[0])

    limit = rt.settings.concurrency_for(channel)
    return Lane(
        name=f"deliver.{channel}",
        topics=frozenset({rt.topics.names.deliver(channel)}),
        handle=handle,
        concurrency=limit,
        max_backlog=max(rt.settings.lane_backlog, 2 * limit),
        open=open_provider,
        close=close_provider,
    )


def register(rt: Runtime) -> None:
    for channel in CHANNELS:
        _register(rt, channel)


def _register(rt: Runtime, channel: str) -> None:
    @rt.app.agent(rt.topics.deliver[channel], name=f"notifyd.agent.{channel}")
    async def deliver(stream: StreamT[Any]) -> None:
        provider = rt.build_provider(channel, rt.settings)
        await run_channel(channel, stream, provider, rt.settings, rt.timer)
