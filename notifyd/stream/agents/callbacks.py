"""notifyd.callbacks: POST terminal delivery states to producers (notifyd.stream.callbacks)."""

from __future__ import annotations

from typing import Any

from faust.types import EventT, StreamT

from notifyd.stream.agents.common import run_events_concurrently
from notifyd.stream.callbacks import CallbackSender, handle_callback
from notifyd.stream.runtime import Runtime


def register(rt: Runtime) -> None:
    settings = rt.settings

    @rt.app.agent(rt.topics.callbacks, name="notifyd.callbacks")
    async def callbacks_agent(stream: StreamT[Any]) -> None:
        # Own stream, several in flight: a slow receiver holds up neither deliveries nor
        # (up to the limit) other producers' callbacks.
        sender = CallbackSender(settings)
        await sender.start()
        try:

            async def handle(ev: EventT[Any]) -> None:
                await handle_callback(ev, sender)

            await run_events_concurrently(stream, handle, settings.delivery_concurrency)
        finally:
            await sender.stop()
