"""Faust agents, one stream per module; each module's ``register`` declares its agents
on a runtime's app (:func:`register_agents`, called by the factory)."""

from __future__ import annotations

from typing import Any

from notifyd.config import CHANNELS, Settings
from notifyd.stream.agents import audience, callbacks, channel, control, ingest, preferences, status
from notifyd.stream.lanes import FetchPacer, Lanes, install
from notifyd.stream.runtime import Runtime


def register_agents(rt: Runtime) -> None:
    for module in (ingest, preferences, control, status, channel, audience, callbacks):
        module.register(rt)
    if rt.settings.batch_lanes:
        register_lanes(rt)


def pacer_for(settings: Settings, cold_topics: frozenset[str] = frozenset()) -> FetchPacer:
    busy = (settings.fetch_max_wait_ms, settings.fetch_min_bytes)
    behind = (settings.fetch_behind_wait_ms, settings.fetch_min_bytes)
    return FetchPacer(
        busy=busy,
        behind=behind if settings.fetch_behind_wait_ms > settings.fetch_max_wait_ms else None,
        behind_backlog=settings.fetch_behind_backlog,
        # In a fetch session an unchanged partition costs nothing: nothing is cold.
        cold_topics=cold_topics
        if settings.fetch_cold_interval_ms > 0 and not settings.fetch_sessions
        else frozenset(),
        cold_interval_s=settings.fetch_cold_interval_ms / 1000,
        sessions=settings.fetch_sessions,
    )


def cold_topics(rt: Runtime) -> frozenset[str]:
    """Source topics of a few records a minute (``notifyd.stream.fetching``).  Not the
    fan-out's progress: a topic's subscribers are reached bucket after bucket through it."""
    names = rt.topics.names
    return frozenset({names.preferences, names.control, names.subscriptions, names.callbacks})


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
        pacer=pacer_for(rt.settings, cold_topics(rt)),
        direct=rt.settings.direct_delivery,
    )
    install(rt.app, lanes)

    @rt.app.task
    async def run_lanes() -> None:
        await lanes.run()

    async def finish_lanes(app: Any, revoked: set[Any], **_: Any) -> None:
        await lanes.on_revoked(revoked)

    rt.app.on_partitions_revoked.connect(finish_lanes)  # type: ignore[arg-type]

    return lanes
