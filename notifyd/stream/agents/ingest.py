"""notifyd.events (+ rekeyed): validate, dedupe, apply rules, fan out to channels."""

from __future__ import annotations

from typing import Any

from faust.types import StreamT

from notifyd.stream.agents.common import run_events
from notifyd.stream.app import app
from notifyd.stream.handlers.ingest import handle_event
from notifyd.stream.topics import events_topic, rekeyed_topic

source = app.topic(
    events_topic.get_topic_name(),
    rekeyed_topic.get_topic_name(),
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
)


@app.agent(source, name="notifyd.ingest")
async def ingest(stream: StreamT[Any]) -> None:
    async for _ in run_events(stream, handle_event):
        pass
