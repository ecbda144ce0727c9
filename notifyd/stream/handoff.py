"""The hook through which a delivery skips its channel topic (``notifyd.stream.lanes``).

A delivery decided while a lane record is handled (an event, a timer come due) may go
straight to its channel's lane in this process instead of taking a produce, a fetch and
a decode through ``notifyd.deliver.<channel>``: one hop less on the delivery path.  The
record that caused it is then acked only once the delivery is done (its *hold*), so a
crash before that handles the record again, and the ledger keeps the provider from
being called twice for what was already sent.

This module only states the hook, so handlers reach the lanes without importing them
(the lanes import the handlers' loop): the lanes of an app are ``app._notifyd_lanes``.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any, Protocol


class HandOff(Protocol):
    """What the lanes offer the handlers (``notifyd.stream.lanes.Lanes``)."""

    async def offer(self, topic: str, partition: int, key: bytes, value: bytes) -> bool:
        """Hand the record to ``topic``'s lane in this process, held by the current
        source record; False: it must be produced to ``topic`` instead."""

    def topic_headers(
        self, topic: str, partition: int, key: bytes | None
    ) -> list[tuple[str, bytes]] | None:
        """Headers for a record produced to ``topic`` instead (the lanes count it, to
        know when the partition's lane has caught up with it)."""


#: The holds of the source record being handled: futures of the deliveries it handed
#: off, each resolving to whether that delivery ended (None: no source record that can
#: be held, e.g. the scheduler's own loop; nothing is handed off then).
_holds: ContextVar[list[asyncio.Future[bool]] | None] = ContextVar(
    "notifyd_handoff_holds", default=None
)


class _Holding:
    """``with holding() as holds``: a class, not a generator context manager (it runs
    around every ingest record)."""

    __slots__ = ("_token", "holds")

    def __init__(self) -> None:
        self.holds: list[asyncio.Future[bool]] = []

    def __enter__(self) -> list[asyncio.Future[bool]]:
        self._token = _holds.set(self.holds)
        return self.holds

    def __exit__(self, *exc: object) -> None:
        _holds.reset(self._token)


def holding() -> _Holding:
    """Collect the holds of the record handled inside (the lane's ``_one``)."""
    return _Holding()


def current_holds() -> list[asyncio.Future[bool]] | None:
    return _holds.get()


def of(app: Any) -> HandOff | None:
    """The hand-off of ``app``'s lanes (None: no lanes, or hand-off switched off)."""
    lanes = getattr(app, "_notifyd_lanes", None)
    return lanes if lanes is not None and getattr(lanes, "direct", False) else None
