"""Faust agents, one stream per module; each module's ``register`` declares its agents
on a runtime's app (:func:`register_agents`, called by the factory)."""

from __future__ import annotations

from typing import Any

from notifyd.config import CHANNELS
from notifyd.stream.agents import audience, callbacks, channel, control, ingest, preferences, status
from notifyd.stream.lanes import FetchPacer, Lanes, install
from notifyd.stream.runtime import Runtime


def register_agents(rt: Runtime) -> None:
    for module in (ingest, preferences, control, status, channel, audience, callbacks):
        module.register(rt)
    if rt.settings.batch_lanes:
        register_lanes(rt)


def register_lanes(rt: Runtime) -> Lanes:
    """The hot path's topics (ingest, deliveries, status) in batch lanes
    (``notifyd.stream.lanes``); their agents stay declared and get no records."""
    lanes = Lanes(
        rt.app,
        [
            ingest.ingest_lane(rt),
            *(channel.channel_lane(rt, ch) for ch in CHANNELS),
            status.status_lane(rt),
        ],
        pacer=FetchPacer(busy=(rt.settings.fetch_max_wait_ms, rt.settings.fetch_min_bytes)),
    )
    install(rt.app, lanes)

    @rt.app.task
    async def run_lanes() -> None:
        await lanes.run()

    async def finish_lanes(app: Any, revoked: set[Any], **_: Any) -> None:
        await lanes.on_revoked(revoked)

    rt.app.on_partitions_revoked.connect(finish_lanes)  # type: ignore[arg-type]

    return lanes
