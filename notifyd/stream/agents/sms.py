"""notifyd.deliver.sms: its own stream, so a slow sms provider holds up no other channel."""

from __future__ import annotations

from typing import Any

from faust.types import StreamT

from notifyd.stream.agents.channel import run_channel
from notifyd.stream.app import app
from notifyd.stream.topics import deliver_topics


@app.agent(deliver_topics["sms"], name="notifyd.agent.sms")
async def sms_agent(stream: StreamT[Any]) -> None:
    await run_channel("sms", stream)
