"""notifyd.control: partition-local housekeeping (unschedule, expiry, inbox edits)."""

from __future__ import annotations

from typing import Any

from faust.types import StreamT

from notifyd.stream.agents.common import run_events
from notifyd.stream.handlers.control import handle_control
from notifyd.stream.handlers.schedule import run_scheduler
from notifyd.stream.runtime import Runtime
from notifyd.stream.scheduler import scheduler


def register(rt: Runtime) -> None:
    @rt.app.agent(rt.topics.control, name="notifyd.control")
    async def control_agent(stream: StreamT[Any]) -> None:
        async for _ in run_events(stream, handle_control):
            pass

    @rt.app.task
    async def scheduler_task() -> None:
        await run_scheduler()

    def wake_scheduler(sender: Any = None, **_: Any) -> None:
        # A new assignment: index its rows now, not at the end of an idle sleep.
        scheduler.wake()

    complete: Any = rt.app.on_rebalance_complete  # mode's signal (typed for async receivers)
    complete.connect(wake_scheduler, weak=False)
