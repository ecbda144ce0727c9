"""notifyd.subscriptions and notifyd.fanout: subscriptions and fan-out (notifyd.stream.audience)."""

from __future__ import annotations

from typing import Any

from faust.types import StreamT

from notifyd.stream.agents.common import run_events
from notifyd.stream.audience import handle_fanout, handle_subscription
from notifyd.stream.runtime import Runtime


def register(rt: Runtime) -> None:
    @rt.app.agent(rt.topics.subscriptions, name="notifyd.subscriptions")
    async def subscriptions_agent(stream: StreamT[Any]) -> None:
        async for _ in run_events(stream, handle_subscription):
            pass

    @rt.app.agent(rt.topics.fanout, name="notifyd.fanout")
    async def fanout_agent(stream: StreamT[Any]) -> None:
        # Its own stream: a 100,000-recipient fan-out holds up no event of the topic's
        # partition on notifyd.events, and produces in chunks (one record per chunk).
        async for _ in run_events(stream, handle_fanout):
            pass
