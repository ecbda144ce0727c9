"""notifyd.events (+ rekeyed): validate, dedupe, apply rules, fan out to channels."""

from __future__ import annotations

from typing import Any

from faust.types import StreamT

from notifyd.stream.agents.common import run_events
from notifyd.stream.handlers.ingest import decoded_batch, handle_event
from notifyd.stream.lanes import Lane
from notifyd.stream.runtime import Runtime


def register(rt: Runtime) -> None:
    source = rt.app.topic(
        rt.topics.names.events,
        rt.topics.names.events_rekeyed,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    @rt.app.agent(source, name="notifyd.ingest")
    async def ingest(stream: StreamT[Any]) -> None:
        async for _ in run_events(stream, handle_event):
            pass


def ingest_lane(rt: Runtime) -> Lane:
    """Events one after another per fetch: CPU-bound, and a user's order is kept."""
    return Lane(
        name="ingest",
        topics=frozenset({rt.topics.names.events, rt.topics.names.events_rekeyed}),
        handle=handle_event,
        prepare=decoded_batch,
        max_backlog=rt.settings.lane_backlog,
        holds_sources=True,
    )
