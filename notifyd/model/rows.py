"""Rows of the ``seen``, ``cancels``, ``ledger`` and ``scheduled`` tables.

The writers build them as plain lists and dicts on the hot path; these models state
their shape once (the unit tests convert what the writers store through them), and
:data:`EXPIRY_STAMPS` says, per table, when a row was written and on which partition:
what the scheduler's sweep expires rows by.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from notifyd.model.delivery import Delivery
from notifyd.model.event import FallbackStep, Version


class SeenRow(msgspec.Struct, array_like=True):
    """``[first_seen, partition, origin, user_id, digest_key?]`` under the event's
    idempotency scope.  A row from before ids were scoped to the user (keyed by the bare
    event id) has no ``user_id``: three elements."""

    first_seen: float
    partition: int
    origin: str
    user_id: str | UnsetType = UNSET
    #: The digest the event went into, so a cancel can take it out again.
    digest_key: str | UnsetType = UNSET


class CancelRow(msgspec.Struct, array_like=True):
    """``[at, partition, user_id]``: a cancel that arrived before its event."""

    at: float
    partition: int
    user_id: str


class LedgerRow(msgspec.Struct):
    """The outcome of a delivery (``<notification_id>:<channel>``): ``s`` its state."""

    s: Literal["sent", "failed", "dead"]
    ts: float
    p: int
    schema_version: Version | UnsetType = UNSET


class _Timer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A ``scheduled`` row: due when, on which partition."""

    due: float
    p: int
    schema_version: Version | UnsetType = UNSET


class DeliveryTimer(_Timer, kw_only=True, forbid_unknown_fields=True):
    """A delivery waiting in ``scheduled`` (quiet hours, throttle, retry backoff)."""

    delivery: Delivery
    reason: str


class FallbackPlan(msgspec.Struct, forbid_unknown_fields=True):
    step: int
    steps: list[FallbackStep]
    event: dict[str, Any]
    user_id: str
    nid: str
    accepted_at: float


class FallbackTimer(_Timer, kw_only=True, forbid_unknown_fields=True):
    """A later step of a fallback chain, due ``after_s`` after acceptance."""

    reason: Literal["fallback"]
    fallback: FallbackPlan


class EventTimer(_Timer, kw_only=True, forbid_unknown_fields=True):
    """A scheduled send (``send_at`` / ``delay_s``): the event, kept until it is due."""

    kind: Literal["event"]
    user_id: str
    event_id: str
    nid: str
    channels: list[str]
    event: str
    scheduled_at: float
    title: str


class DigestItem(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    event_id: str
    title: str
    channels: list[str] | None
    ts: float


class DigestTimer(_Timer, kw_only=True, forbid_unknown_fields=True):
    """An open digest window: the items collected so far, sent when it closes."""

    kind: Literal["digest"]
    user_id: str
    category: str
    window: str
    start: float
    event_id: str
    digest_id: str
    items: list[DigestItem]
    count: int


ScheduledRow = DeliveryTimer | FallbackTimer | EventTimer | DigestTimer


def scheduled_model(row: dict[str, Any]) -> type[ScheduledRow]:
    """Which kind of ``scheduled`` row ``row`` is (as ``pipeline.release`` tells them)."""
    if "fallback" in row:
        return FallbackTimer
    kind = row.get("kind")
    if kind == "event":
        return EventTimer
    if kind == "digest":
        return DigestTimer
    return DeliveryTimer


def check_scheduled_row(row: dict[str, Any]) -> ScheduledRow:
    """``row`` through its model; raises ``msgspec.ValidationError``."""
    return msgspec.convert(row, scheduled_model(row))


Stamp = Callable[[Any], tuple[float, int]]


def _listed(row: Any) -> tuple[float, int]:
    return row[0], row[1]  # SeenRow / CancelRow: first_seen / at, partition


def _ledger(row: Any) -> tuple[float, int]:
    return row["ts"], row["p"]


def _status(row: Any) -> tuple[float, int]:
    return row.get("accepted_at") or 0, row.get("p", -1)


#: Table -> (when a row was written, its partition), read straight from the stored row
#: (the sweep walks whole tables: no conversion per row).
EXPIRY_STAMPS: dict[str, Stamp] = {
    "seen": _listed, "cancels": _listed, "ledger": _ledger, "status": _status,
}
