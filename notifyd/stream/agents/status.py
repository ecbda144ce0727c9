"""notifyd.status: fold every delivery transition into the status table, in batches."""

from __future__ import annotations

from typing import Any

from faust.streams import Stream
from faust.types import StreamT

from notifyd.stream.handlers.status import fold_status_events
from notifyd.stream.runtime import Runtime


def register(rt: Runtime) -> None:
    settings = rt.settings

    @rt.app.agent(rt.topics.status, name="notifyd.status")
    async def status_agent(stream: StreamT[Any]) -> None:
        # take_events acks the batch only after this body has handled it (at least once).
        assert isinstance(stream, Stream)  # take_events is missing from StreamT
        async for events in stream.take_events(
            settings.status_batch_max, within=settings.status_batch_wait_s
        ):
            await fold_status_events(events)
