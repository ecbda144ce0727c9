"""Changelog-backed tables.  Keys are ``str`` with the raw key serializer so a table
key hashes to the same partition as the Kafka message key producers use (murmur2 of
the UTF-8 bytes): the table's partition for a user is the events' partition.

Every table except ``status`` and ``subscribers`` is written while processing a
message keyed by ``user_id`` and so lives in that user's partition; ``status`` is fed
by ``notifyd.status``, keyed by notification id; ``subscribers`` rows are written
while processing a message keyed by their topic name (``notifyd.stream.audience``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, cast

import faust
from faust.streams import _current_event
from faust.types import EventT, TableT

from notifyd.config import Settings
from notifyd.stream.runtime import ref
from notifyd.stream.topology import TABLE_NAMES

Table = TableT[str, Any]


@dataclass(frozen=True)
class Tables:
    #: user_id -> preferences document (see records.Preferences.to_dict).
    preferences: Table
    #: records.idempotency_scope(user_id, event_id) -> [first_seen_epoch, partition,
    #: origin "topic/partition/offset", user_id] (legacy rows: bare event_id -> first three).
    seen: Table
    #: "<notification_id>:<channel>" -> {"status", "ts", "p"}: the delivery ledger.
    ledger: Table
    #: "<notification_id>:<channel>" -> {"due", "p", "delivery", "reason"}: deferred sends;
    #: "event:<scope>" -> a scheduled event, "digest:<scope>" -> an open digest
    #: (notifyd.stream.timing).
    scheduled: Table
    #: user_id -> {channel: [[epoch, notification_id], ...]} recent sends for the throttle.
    throttle: Table
    #: user_id -> {"items": [...newest first], "unread": n}: the in-app inbox.
    inbox: Table
    #: notification_id -> content and per-channel delivery state.
    status: Table
    #: "<topic>#<bucket>" -> {user_id: subscribed_at}: a topic's subscribers, in the topic's
    #: partition, sharded in buckets (layout: notifyd.stream.audience).
    subscribers: Table
    #: user_id -> {topic: subscribed_at}: the topics a user subscribed to (user's partition).
    subscriptions: Table
    #: records.idempotency_scope(user_id, event_id) -> [cancelled_at, partition, user_id]:
    #: cancels remembered (expiring like ``seen``) so one that arrives before its event wins.
    cancels: Table

    @property
    def by_name(self) -> dict[str, Table]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_HELP = {
    "preferences": "User preferences and contact addresses",
    "seen": "Event ids already processed per user (dedupe, expiring)",
    "ledger": "What each channel already did per notification (idempotency)",
    "scheduled": "Deliveries waiting for a time (quiet hours, throttle, retry)",
    "throttle": "Recent sends per user and channel (throttle window)",
    "inbox": "In-app inbox per user, bounded",
    "status": "Delivery state per notification and channel",
    "subscribers": "Subscribers of each topic, in buckets",
    "subscriptions": "Topics each user subscribed to",
    "cancels": "Cancelled (user_id, event_id) pairs (expiring)",
}

assert tuple(_HELP) == TABLE_NAMES, "notifyd.stream.topology.TABLE_NAMES must list every table"


def _table(app: faust.App, settings: Settings, name: str) -> Table:
    table: Any = app.Table(
        name,
        default=None,
        key_type=str,
        value_type=None,
        partitions=settings.topic_partitions,
        help=_HELP[name],
    )
    # Faust derives the serializer from key_type and would pick "json" for str,
    # which quotes the key and so hashes it to another partition than the raw
    # message key.  Raw keys keep table partition == message partition, and make
    # app.router.key_store() (web routing) point at the right worker.
    table.key_serializer = "raw"
    table.value_serializer = "json"
    table._changelog_topic = None  # rebuilt lazily with the serializers above
    return cast("Table", table)


def declare_tables(app: faust.App, settings: Settings) -> Tables:
    """Declare every table on ``app``, in ``TABLE_NAMES`` order (the factory calls it)."""
    return Tables(**{name: _table(app, settings, name) for name in TABLE_NAMES})


# The current runtime's tables (notifyd.stream.runtime.ref), for modules not handed one.
preferences: Table = ref(lambda rt: rt.tables.preferences)
seen: Table = ref(lambda rt: rt.tables.seen)
ledger: Table = ref(lambda rt: rt.tables.ledger)
scheduled: Table = ref(lambda rt: rt.tables.scheduled)
throttle: Table = ref(lambda rt: rt.tables.throttle)
inbox: Table = ref(lambda rt: rt.tables.inbox)
status: Table = ref(lambda rt: rt.tables.status)
cancels: Table = ref(lambda rt: rt.tables.cancels)
subscribers: Table = ref(lambda rt: rt.tables.subscribers)
subscriptions: Table = ref(lambda rt: rt.tables.subscriptions)
TABLES: dict[str, Table] = ref(lambda rt: rt.tables.by_name)


@contextmanager
def current_event(ev: EventT[Any]) -> Iterator[None]:
    """Make ``ev`` Faust's current event while table reads and writes happen outside the
    stream's own iteration (a batch, a task of its own): Faust reads a RocksDB table and
    writes every changelog record in the partition of the current event.  With
    :func:`any_partition`, the one place that touches Faust's private context variable."""
    token = _current_event.set(weakref.ref(ev))
    try:
        yield
    finally:
        _current_event.reset(token)


@contextmanager
def any_partition() -> Iterator[None]:
    """Reads (only) that look in every partition this worker holds, for a row keyed by
    something else than the current event's partition (RocksDB reads only the current
    event's partition while there is one)."""
    token = _current_event.set(None)
    try:
        yield
    finally:
        _current_event.reset(token)
