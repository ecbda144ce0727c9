"""Status: the updates handlers publish (folded where they happen, or carried by
``notifyd.status``) and the document they fold into (a row of the ``status`` table, in
its user's partition, and ``GET /api/v1/notifications/{id}``).

Writers build updates as plain dicts on the hot path (``notifyd.pipeline``,
``notifyd.timing``, ``notifyd.fallback``, ``notifyd.scheduler``); these models state
their shape once: the unit tests convert every update the pipeline publishes through
:class:`ChannelUpdate`, and the OpenAPI document's ``NotificationStatus`` is generated
from :class:`NotificationStatus`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from notifyd.model.delivery import Delivery
from notifyd.model.event import Channel, FallbackStep, Version

#: Every state of a channel: the delivery states, and pending/skipped for the later
#: steps of a fallback chain.
ChannelState = Literal[
    "queued", "sent", "failed", "suppressed", "deferred", "retrying", "dead", "scheduled",
    "cancelled", "digested", "pending", "skipped",
]
Epoch = Annotated[float, Meta(description="epoch seconds")]


class ChannelUpdate(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """One channel's new state, as published (``publish_status``)."""

    channel: Channel
    status: ChannelState
    ts: Epoch | None
    reason: str | UnsetType = UNSET
    attempt: int | UnsetType = UNSET
    #: scheduled/deferred/retrying/digested/pending: when it goes.
    deliver_at: Epoch | UnsetType = UNSET
    #: digested: the digest's notification id.
    digest_id: str | UnsetType = UNSET
    #: sent: the provider's id of the message, and the provider (of a failover chain).
    provider_id: str | UnsetType | None = UNSET
    provider: str | UnsetType = UNSET
    latency_ms: float | UnsetType = UNSET
    #: queued/deferred/retrying: the delivery, kept until an outcome (requeue on loss).
    delivery: Delivery | UnsetType = UNSET
    #: cancel a digested item (it left a still-open digest).
    force: bool | UnsetType = UNSET


class StatusContent(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """What the document shows of the notification itself (set once, on acceptance)."""

    event_id: str
    user_id: str
    category: str
    priority: str
    title: str | None
    body: str | None
    template: str | None
    created_at: Epoch | None
    accepted_at: Epoch
    send_at: Epoch | UnsetType = UNSET
    digest_id: str | UnsetType = UNSET
    topic: str | UnsetType = UNSET
    callback_url: str | UnsetType = UNSET
    fallback: list[FallbackStep] | UnsetType = UNSET


class CallbackOutcome(msgspec.Struct, omit_defaults=True):
    """The outcome of a delivery callback (``notifyd.callbacks``)."""

    channel: str
    state: str
    result: Literal["delivered", "failed", "dead"]
    attempts: int
    ts: Epoch
    reason: str | UnsetType = UNSET


class CallbackRecord(CallbackOutcome, omit_defaults=True):
    """A callback outcome on ``notifyd.status``, under its Idempotency-Key."""

    key: str = ""


class Cancel(msgspec.Struct):
    at: Epoch


class StatusRecord(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """A status record: folded where it is published, or a record of ``notifyd.status``
    (key: the notification id; partition: its user's)."""

    notification_id: str
    updates: list[ChannelUpdate] = []
    content: StatusContent | UnsetType = UNSET
    callbacks: list[CallbackRecord] | UnsetType = UNSET
    cancel: Cancel | UnsetType = UNSET
    schema_version: Version | UnsetType = UNSET


class HistoryEntry(msgspec.Struct, omit_defaults=True):
    status: ChannelState
    ts: Epoch | None = None
    reason: str | UnsetType = UNSET


class ChannelStatus(msgspec.Struct, omit_defaults=True):
    """A channel in the status document: its latest update, counted attempts and the
    last 20 states."""

    status: Annotated[
        ChannelState, Meta(description="pending/skipped: a later step of a fallback chain")
    ]
    ts: Epoch | None = None
    attempts: int = 0
    history: list[HistoryEntry] = []
    reason: str | UnsetType = UNSET
    attempt: int | UnsetType = UNSET
    deliver_at: Annotated[
        float, Meta(description="scheduled/deferred/retrying/digested: when it goes")
    ] | UnsetType = UNSET
    digest_id: Annotated[
        str, Meta(description="digested: the digest's notification id")
    ] | UnsetType = UNSET
    provider_id: str | UnsetType | None = UNSET
    provider: str | UnsetType = UNSET
    latency_ms: float | UnsetType = UNSET
    delivery: Delivery | UnsetType = UNSET
    force: bool | UnsetType = UNSET


class NotificationStatus(msgspec.Struct, omit_defaults=True):
    """The status document of a notification (the ``status`` row, without its partition
    ``p``).  Rows written before ``schema_version`` existed read as version 1."""

    notification_id: str
    channels: dict[str, ChannelStatus] = {}
    event_id: str | UnsetType = UNSET
    user_id: str | UnsetType = UNSET
    category: str | UnsetType = UNSET
    priority: str | UnsetType = UNSET
    title: str | UnsetType | None = UNSET
    body: str | UnsetType | None = UNSET
    template: str | UnsetType | None = UNSET
    created_at: Epoch | UnsetType | None = UNSET
    accepted_at: Epoch | UnsetType = UNSET
    send_at: Annotated[
        float, Meta(description="scheduled send: when it is due")
    ] | UnsetType = UNSET
    cancelled_at: Epoch | UnsetType | None = UNSET
    digest_id: str | UnsetType = UNSET
    topic: Annotated[
        str, Meta(description="the topic it was fanned out from")
    ] | UnsetType = UNSET
    callback_url: str | UnsetType = UNSET
    fallback: list[FallbackStep] | UnsetType = UNSET
    callbacks: Annotated[
        dict[str, CallbackOutcome],
        Meta(description="Idempotency-Key -> outcome of the delivery callback"),
    ] | UnsetType = UNSET
    schema_version: Version | UnsetType = UNSET


def check_status_document(doc: dict[str, Any]) -> NotificationStatus:
    """``doc`` (a ``status`` row) through its model; raises ``msgspec.ValidationError``."""
    return msgspec.convert({k: v for k, v in doc.items() if k != "p"}, NotificationStatus)
