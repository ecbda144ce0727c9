"""notifyd.status: fold, in batches, the status records a handler could not fold itself
(a timer's, the reconciler's, a callback's: ``publish_status``); each is in its user's
partition, whose owner holds the row."""

from __future__ import annotations

from typing import Any

from faust.streams import Stream
from faust.types import StreamT

from notifyd.stream.handlers.status import fold_status_events
from notifyd.stream.lanes import Lane
from notifyd.stream.runtime import Runtime

#: With batch lanes this agent gets no records in a worker (the status lane folds them):
#: its batch timer then fires at most once a second instead of every
#: ``status_batch_wait_s`` (10 ms), which was half of an idle worker's CPU.
LANES_IDLE_WAIT_S = 1.0


def register(rt: Runtime) -> None:
    settings = rt.settings
    within = settings.status_batch_wait_s
    if settings.batch_lanes:
        within = max(within, LANES_IDLE_WAIT_S)

    @rt.app.agent(rt.topics.status, name="notifyd.status")
    async def status_agent(stream: StreamT[Any]) -> None:
        # take_events acks the batch only after this body has handled it (at least once).
        assert isinstance(stream, Stream)  # take_events is missing from StreamT
        async for events in stream.take_events(
            settings.status_batch_max, within=within
        ):
            await fold_status_events(events)


def status_lane(rt: Runtime) -> Lane:
    """Each fetch's status records of a partition folded in one go."""
    return Lane(
        name="status",
        topics=frozenset({rt.topics.names.status}),
        fold=fold_status_events,
        max_backlog=rt.settings.lane_backlog,
    )
