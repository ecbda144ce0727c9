"""The body shared by the channel agents: own the provider for the stream's lifetime."""

from __future__ import annotations

from typing import Any

from faust.types import EventT, StreamT

from ..app import settings
from ..pipeline import handle_delivery
from ..providers.base import Provider
from ..providers.registry import build_provider
from .common import run_events, run_events_concurrently


async def run_channel(channel: str, stream: StreamT[Any], provider: Provider | None = None) -> None:
    provider = provider or build_provider(channel, settings)
    await provider.start()
    try:

        async def handle(ev: EventT[Any]) -> None:
            await handle_delivery(ev, provider)

        if settings.delivery_concurrency > 1:
            await run_events_concurrently(stream, handle, settings.delivery_concurrency)
        else:
            async for _ in run_events(stream, handle):
                pass
    finally:
        await provider.stop()
