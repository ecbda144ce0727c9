"""Answers of the HTTP API: one model per response body.

The OpenAPI document's component schemas of these answers are generated from these
classes (``notifyd.web.openapi.MODELS``), and the handlers build their answers through
them (``msgspec.to_builtins``), so the shape is written once.  Field order is the order
of the keys on the wire (``kw_only`` where a required key follows an optional one).  A
key that some answers leave out (rather than answer null) defaults to ``UNSET``, which
is never encoded.  A class docstring becomes its schema's ``description``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from notifyd.model.event import Priority
from notifyd.model.status import Epoch


class Error(msgspec.Struct):
    """Every error answer: a stable machine-readable code and a human detail."""

    code: Annotated[str, Meta(examples=["invalid_json"])]
    detail: str


class User(msgspec.Struct, kw_only=True):
    """A user as the API shows it (never the password hash)."""

    user_id: str
    username: str
    # Always answered (null when unknown); documented as optional.
    email: str | UnsetType | None = UNSET
    phone: str | UnsetType | None = UNSET
    roles: list[Literal["user", "operator"]]
    created_at: Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
    disabled: bool


class TokenResponse(msgspec.Struct):
    """An access token, and a refresh token where one is issued."""

    access_token: Annotated[str, Meta(description="HS256 JWT")]
    token_type: Literal["bearer"]
    expires_in: Annotated[int, Meta(description="seconds")]
    refresh_token: Annotated[str, Meta(description="opaque, single use")] | UnsetType = UNSET


class NotificationAccepted(msgspec.Struct):
    """A notification accepted for delivery (to a user, or to a topic's subscribers)."""

    notification_id: Annotated[
        str | None,
        Meta(description="null for a topic: each subscriber's id is derived from "
             "(user_id, event_id)"),
    ]
    event_id: str
    topic: Annotated[str, Meta(description="set when sent to a topic")] | UnsetType = UNSET


class InboxItem(msgspec.Struct, kw_only=True):
    """An item of a user's in-app inbox (a row of the ``inbox`` table's list)."""

    id: Annotated[str, Meta(description="notification id")]
    title: str
    body: str
    category: str | UnsetType = UNSET
    priority: Priority | UnsetType = UNSET
    data: dict[str, Any] | UnsetType = UNSET
    created_at: Epoch | UnsetType = UNSET
    read: bool
    archived: bool


class InboxPage(msgspec.Struct):
    """One page of a user's in-app inbox, newest first."""

    items: list[InboxItem]
    unread: Annotated[int, Meta(description="unread, unarchived items")]
    total: Annotated[int, Meta(description="items matching the filter")]
    limit: int
    offset: int


class DeadLetter(msgspec.Struct):
    """A record of a dead-letter topic."""

    topic: str
    partition: int
    offset: int
    timestamp: Annotated[int, Meta(description="Kafka timestamp, epoch ms")]
    key: str | None
    key_base64: Annotated[bool, Meta(description="key is base64 (not UTF-8)")]
    reason: Annotated[str | None, Meta(description="header notifyd-reason")]
    headers: dict[str, str]
    value: str | None
    value_base64: Annotated[bool, Meta(description="value is base64 (not UTF-8)")]


class RedriveResult(msgspec.Struct):
    """What a re-drive of dead letters did."""

    scanned: int
    redriven: int
    skipped: int
    ids: list[str]


class DeadLetterPage(msgspec.Struct):
    """The newest dead letters of a topic."""

    topic: str
    items: list[DeadLetter]


class Health(msgspec.Struct):
    """The process serves."""

    status: Literal["ok"]
    worker: str


class Readiness(msgspec.Struct, kw_only=True):
    """Whether this worker is ready; a 503 also carries an error's code and detail."""

    code: Annotated[str, Meta(description="not_ready (503 only)")] | UnsetType = UNSET
    detail: str | UnsetType = UNSET
    ready: bool
    recovery_done: bool
    rebalancing: bool
    partitions: list[int]
    worker: str


class TableEntry(msgspec.Struct):
    """One entry of a table, and the worker that answered."""

    table: str
    key: str
    value: Any
    worker: str


class Subscription(msgspec.Struct):
    """A user's subscription to a topic."""

    topic: str
    user_id: str
    subscribed_at: Epoch


class SubscribedTopic(msgspec.Struct):
    """A topic a user subscribed to, and since when."""

    topic: str
    subscribed_at: float


class SubscriptionList(msgspec.Struct):
    """The topics a user subscribed to."""

    user_id: str
    topics: list[SubscribedTopic]


class Subscriber(msgspec.Struct):
    """A subscriber of a topic, and since when."""

    user_id: str
    subscribed_at: float


class SubscriberPage(msgspec.Struct):
    """One page of a topic's subscribers."""

    topic: str
    items: list[Subscriber]
    next_cursor: Annotated[str | None, Meta(description="null on the last page")]
    total: int
    limit: int


#: Every answer with a model, for the OpenAPI document.
RESPONSES: tuple[type[msgspec.Struct], ...] = (
    Error, User, TokenResponse, NotificationAccepted, InboxItem, InboxPage, DeadLetter,
    RedriveResult, DeadLetterPage, Health, Readiness, TableEntry, Subscription,
    SubscriptionList, SubscriberPage,
)
