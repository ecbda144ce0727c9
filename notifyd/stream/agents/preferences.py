"""notifyd.preferences: keep the preferences table (partition-local, changelog-backed)."""

from __future__ import annotations

from typing import Any

from faust.types import StreamT

from notifyd.stream.agents.common import run_events
from notifyd.stream.handlers.preferences import handle_preferences
from notifyd.stream.runtime import Runtime


def register(rt: Runtime) -> None:
    @rt.app.agent(rt.topics.preferences, name="notifyd.preferences")
    async def preferences_agent(stream: StreamT[Any]) -> None:
        async for _ in run_events(stream, handle_preferences):
            pass
