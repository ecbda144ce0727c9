"""notifyd.status: fold every delivery transition into the status table."""

from __future__ import annotations

from typing import Any

from faust.types import StreamT

from ..app import app
from ..pipeline import handle_status
from ..topics import status_topic
from .common import run_events


@app.agent(status_topic, name="notifyd.status")
async def status_agent(stream: StreamT[Any]) -> None:
    async for _ in run_events(stream, handle_status):
        pass
